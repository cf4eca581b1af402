"""What the Triton kernels can index: every one computes offsets inside one plane (an image channel, a row of
a flattened tensor, the concatenated frozen tensors) in int32, so each such plane must stay below
``PLANE_MAX`` elements. Each function returns why an op's inputs are beyond that, or None. The launchers
refuse such inputs (``_launch.require``), and the op layer asks the same functions before choosing Triton
(so ``backend=None`` moves on to another backend), before the arguments are checked: inputs of another rank
get None here and their error from the checks. Pure Python: importing this does not import Triton."""
from __future__ import annotations

from ..common.primitive_kinds import FROZEN_KINDS, output_size

PLANE_MAX = 2 ** 31 - 2 ** 16  # int32 offsets inside one plane, with room for a block past its end


def plane(what: str, numel: int) -> str | None:
    if numel > PLANE_MAX:
        return f"{what} must have at most {PLANE_MAX} elements for the triton backend, got {numel}"
    return None


def first(*reasons: str | None) -> str | None:
    return next((r for r in reasons if r is not None), None)


def sfa_apply(features, mask_logits) -> str | None:
    if features.dim() != 4:
        return None
    return plane("sfa_apply: one feature plane (h*w)", features.shape[2] * features.shape[3])


def ms_attention_mix(values, logits, size) -> str | None:
    return first(plane("ms_attention_mix: the output plane (H*W)", size[0] * size[1]),
                 *(plane(f"ms_attention_mix: values[{s}]'s plane (h*w)", v.shape[2] * v.shape[3])
                   for s, v in enumerate(values) if v.dim() == 4))


def routed_primitive_gather(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups):
    if x.dim() != 4:
        return None
    H, W = x.shape[2], x.shape[3]
    together = sum(f.numel() for kind, f in zip(kinds, frozen) if kind in FROZEN_KINDS)
    return first(plane("routed_primitive_gather: the frozen tensors together", together),
                 plane("routed_primitive_gather: an input plane (H*W)", H * W),
                 plane("routed_primitive_gather: an output plane (H'*W')",
                       output_size(H, stride) * output_size(W, stride)))
