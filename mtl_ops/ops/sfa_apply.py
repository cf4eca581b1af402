"""sfa_apply: Medusa's shared feature attention: T task masks applied to one set of shared features.

    out[t] = sigmoid(mask_logits[t]) * features

Operators: ``mtl_ops::sfa_apply_forward`` / ``_backward`` (C++, CPU and CUDA) and ``..._triton``. The
backward saves both inputs, recomputes the sigmoid and returns (d_features, d_mask_logits); d_features sums
the T task gradients in the same pass.
"""
from __future__ import annotations

import torch

from .. import reference
from ..common.dtypes import FLOATING, FLOATING_NAMES
from ..triton import limits
from ._fused import FusedOp, Promote, register, tensor_args


def check_args(features, mask_logits) -> None:
    """The value rules (csrc/common/sfa_apply_args.h makes the same checks for the C++ operators)."""
    if features.dim() != 4:
        raise ValueError(f"sfa_apply: features must be 4-d (B, C, h, w), got {features.dim()}-d")
    if mask_logits.dim() != 5:
        raise ValueError(f"sfa_apply: mask_logits must be 5-d (T, B, M, h, w), got {mask_logits.dim()}-d")
    B, C, h, w = features.shape
    if mask_logits.shape[1] != B or mask_logits.shape[2] not in (1, C) or mask_logits.shape[3:] != (h, w):
        raise ValueError(f"sfa_apply: mask_logits must have shape (T, B, M, h, w) = (T, {B}, 1 or {C}, {h}, {w}), "
                         f"got {tuple(mask_logits.shape)}")
    if features.dtype not in FLOATING:
        raise TypeError(f"sfa_apply: features must be {FLOATING_NAMES}, got {features.dtype}")
    if mask_logits.dtype != features.dtype:
        raise TypeError(f"sfa_apply: mask_logits must have the dtype of features ({features.dtype}), "
                        f"got {mask_logits.dtype}")
    if mask_logits.device != features.device:
        raise ValueError(f"sfa_apply: features and mask_logits must be on one device, got {features.device} "
                         f"and {mask_logits.device}")


def _forward_fake(features, mask_logits):  # all outputs contiguous
    return features.new_empty(mask_logits.shape[0], *features.shape)


def _backward_fake(grad_out, features, mask_logits):
    return (torch.empty_like(features, memory_format=torch.contiguous_format),
            torch.empty_like(mask_logits, memory_format=torch.contiguous_format))


SPEC = FusedOp(
    name="sfa_apply",
    backends=("reference", "cpp", "cuda", "triton"),
    reference=reference.sfa_apply,
    parse=tensor_args("sfa_apply", "features", "mask_logits"),
    check=check_args,
    forward_fake=_forward_fake,
    backward_fake=_backward_fake,
    triton_schemas=("(Tensor features, Tensor mask_logits) -> Tensor",
                    "(Tensor grad_out, Tensor features, Tensor mask_logits) -> (Tensor, Tensor)"),
    can_run=lambda backend, *args: limits.sfa_apply(*args) if backend == "triton" else None,
    autocast=Promote(same=(0, 1)),
)
_OP = register(SPEC)


def sfa_apply(features: torch.Tensor, mask_logits: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Shared feature attention (Medusa SFA): ``out[t] = sigmoid(mask_logits[t]) * features``.

    Args:
        features: (B, C, h, w), shared by the T tasks; float32, float64, float16 or bfloat16.
        mask_logits: (T, B, M, h, w) with M = 1 (a spatial mask broadcast over channels) or M = C
            (channel-spatial); the dtype and device of features. Any strides (copied once if not contiguous).
        backend: None (fastest available for the device; ``MTL_OPS_BACKEND`` overrides), "reference",
            "cpp", "cuda" or "triton".

    Returns (T, B, C, h, w), contiguous. Differentiable in both inputs: the fused backward sums the T task
    gradients into d_features in one pass, and reduces over channels (M = 1) in fp32 (fp64 for fp64). Under
    autocast, features and mask_logits of two floating dtypes run in the wider one.
    """
    return _OP((features, mask_logits), backend)
