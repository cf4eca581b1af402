"""ms_attention_mix: Medusa's multi-scale attention over S per-scale predictions.

    out = sum_s softmax_s(up(logits_s)) * up(values_s),   up = bilinear resize to size (align_corners=False)

Operators: ``mtl_ops::ms_attention_mix_forward`` / ``_backward`` (C++, CPU and CUDA) and ``..._triton``.
The forward returns (out, lse): lse (B, H, W) is the per-pixel log-sum-exp of the resized logits, kept so
that the backward recomputes the attention weights of one scale from that scale's logits alone. The
backward takes (grad_out, values, logits, lse) and returns the S value gradients then the S logit
gradients. It recomputes the attention weights and bilinear samples: nothing at output resolution is
saved but lse, no resized value or logit map is ever written, and the only output-resolution buffer of
the backward is the fp32 logit gradient (B, S, H, W), 1/K of the output per scale. Deterministic.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import reference
from ..common.dtypes import FLOATING, FLOATING_NAMES, accumulate_dtype
from ..common.limits import MAX_SCALES
from ..triton import limits
from ._fused import FusedOp, Promote, register


def _parse(values, logits, size):
    for name, seq in (("values", values), ("logits", logits)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, (list, tuple)):
            raise TypeError(f"ms_attention_mix: {name} must be a list or tuple of tensors (one per scale), "
                            f"got {type(seq).__name__}")
        for s, t in enumerate(seq):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"ms_attention_mix: {name}[{s}] must be a torch.Tensor, got {type(t).__name__}")
    if not 1 <= len(values) <= MAX_SCALES:
        raise ValueError(f"ms_attention_mix: values must hold 1 to {MAX_SCALES} tensors (one per scale), "
                         f"got {len(values)}")
    if (not isinstance(size, (list, tuple, torch.Size)) or len(size) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)):
        raise ValueError(f"ms_attention_mix: size must be two positive integers (H, W), got {size!r}")
    return list(values), list(logits), [int(size[0]), int(size[1])]


def check_args(values, logits, size) -> None:
    """The value rules past ``_parse`` (csrc/common/ms_attention_mix_args.h makes them all for the C++ operators)."""
    S = len(values)
    if len(logits) != S:
        raise ValueError(f"ms_attention_mix: logits must hold one tensor per scale ({S}), got {len(logits)}")
    v0 = values[0]
    if v0.dim() != 4:
        raise ValueError(f"ms_attention_mix: values[0] must be 4-d (B, K, h, w), got {v0.dim()}-d")
    if v0.dtype not in FLOATING:
        raise TypeError(f"ms_attention_mix: values must be {FLOATING_NAMES}, got {v0.dtype}")
    B, K = v0.shape[:2]
    for s, (v, a) in enumerate(zip(values, logits)):
        if v.dim() != 4 or v.shape[0] != B or v.shape[1] != K or v.shape[2] == 0 or v.shape[3] == 0:
            raise ValueError(f"ms_attention_mix: values[{s}] must have shape (B, K, h, w) = ({B}, {K}, h>0, w>0), "
                             f"got {tuple(v.shape)}")
        if a.dim() != 4 or a.shape[0] != B or a.shape[1] != 1 or a.shape[2:] != v.shape[2:]:
            raise ValueError(f"ms_attention_mix: logits[{s}] must have shape (B, 1, h, w) = "
                             f"({B}, 1, {v.shape[2]}, {v.shape[3]}), got {tuple(a.shape)}")
        if v.dtype != v0.dtype or a.dtype != v0.dtype:
            raise TypeError(f"ms_attention_mix: values[{s}] and logits[{s}] must have the dtype of values[0] "
                            f"({v0.dtype}), got {v.dtype} and {a.dtype}")
        if v.device != v0.device or a.device != v0.device:
            raise ValueError(f"ms_attention_mix: all tensors must be on one device ({v0.device}), got values[{s}] "
                             f"on {v.device} and logits[{s}] on {a.device}")


def _forward_fake(values, logits, size):  # all outputs contiguous; lse in the accumulation dtype
    v0 = values[0]
    out = v0.new_empty(v0.shape[0], v0.shape[1], size[0], size[1])
    return out, v0.new_empty(v0.shape[0], size[0], size[1], dtype=accumulate_dtype(v0.dtype))


def _backward_fake(grad_out, values, logits, lse):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (*values, *logits)]


def _backward(backward_op, grad_out, inputs, outputs):
    """Saves the low-res inputs and lse; the backward recomputes the attention weights and bilinear samples."""
    values, logits, _ = inputs
    grads = backward_op(grad_out, values, logits, outputs[1])
    return list(grads[:len(values)]), list(grads[len(values):]), None


SPEC = FusedOp(
    name="ms_attention_mix",
    backends=("reference", "cpp", "cuda", "triton"),
    reference=reference.ms_attention_mix,
    parse=_parse,
    check=check_args,
    forward_fake=_forward_fake,
    backward_fake=_backward_fake,
    triton_schemas=("(Tensor[] values, Tensor[] logits, int[] size) -> (Tensor, Tensor)",
                    "(Tensor grad_out, Tensor[] values, Tensor[] logits, Tensor lse) -> Tensor[]"),
    backward=_backward,
    saved_outputs=(1,),
    output=0,
    can_run=lambda backend, *args: limits.ms_attention_mix(*args) if backend == "triton" else None,
    autocast=Promote(same=(0, 1)),
)
_OP = register(SPEC)


def ms_attention_mix(values: Sequence[torch.Tensor], logits: Sequence[torch.Tensor], size: Sequence[int], *,
                     backend: str | None = None) -> torch.Tensor:
    """Multi-scale attention (Medusa MSA): resize every scale to ``size``, softmax over scales, mix.

    ``out = sum_s softmax_s(up(logits[s])) * up(values[s])`` where ``up`` is PyTorch's bilinear resize
    (``F.interpolate(mode="bilinear", align_corners=False)`` with an output size: any sizes, not only integer
    factors).

    Args:
        values: a list or tuple of S (1 to 8) tensors (B, K, h_s, w_s), one per scale; one dtype (float32,
            float64, float16 or bfloat16) and device; any strides (non-contiguous ones are copied once).
        logits: S tensors (B, 1, h_s, w_s), the attention logits at the same sizes and dtype.
        size: the output size (H, W).
        backend: None (fastest available for the device; ``MTL_OPS_BACKEND`` overrides), "reference",
            "cpp", "cuda" or "triton".

    Returns (B, K, H, W), contiguous, in the values' dtype. Differentiable in every value and logit. The
    softmax and all sums run in fp32 (fp64 for fp64). The fused backends never materialise a resized map;
    their backward gathers each low-res gradient in a fixed order, so it is deterministic for any sizes. Under
    autocast, values and logits of several floating dtypes all run in the widest one.
    """
    return _OP((values, logits, size), backend)
