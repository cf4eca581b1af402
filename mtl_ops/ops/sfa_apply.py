"""sfa_apply: Medusa's shared feature attention: T task masks applied to one set of shared features.

    out[t] = sigmoid(mask_logits[t]) * features

Operators: ``mtl_ops::sfa_apply_forward`` / ``_backward`` (C++; CPU and CUDA kernels, schemas in
csrc/ops.cpp) and ``mtl_ops::sfa_apply_forward_triton`` / ``_backward_triton`` (Triton, defined here). The
backward returns (d_features, d_mask_logits); d_features sums the T task gradients in the same pass.
"""
from __future__ import annotations

import torch

from .. import reference
from ..backends import register_op, select_backend
from ._registration import kernel_table

OP = "sfa_apply"
register_op(OP, ("reference", "cpp", "cuda", "triton"))
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_args(features, mask_logits) -> None:
    """The argument checks of every backend (csrc/common/sfa_apply_args.h says the same in C++)."""
    for name, t in (("features", features), ("mask_logits", mask_logits)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"sfa_apply: {name} must be a torch.Tensor, got {type(t).__name__}")
    if features.dim() != 4:
        raise ValueError(f"sfa_apply: features must be 4-d (B, C, h, w), got {features.dim()}-d")
    if mask_logits.dim() != 5:
        raise ValueError(f"sfa_apply: mask_logits must be 5-d (T, B, M, h, w), got {mask_logits.dim()}-d")
    B, C, h, w = features.shape
    if mask_logits.shape[1] != B or mask_logits.shape[2] not in (1, C) or mask_logits.shape[3:] != (h, w):
        raise ValueError(f"sfa_apply: mask_logits must have shape (T, B, M, h, w) = (T, {B}, 1 or {C}, {h}, {w}), "
                         f"got {tuple(mask_logits.shape)}")
    if features.dtype not in _FLOATING:
        raise TypeError(f"sfa_apply: features must be float32, float64, float16 or bfloat16, got {features.dtype}")
    if mask_logits.dtype != features.dtype:
        raise TypeError(f"sfa_apply: mask_logits must have the dtype of features ({features.dtype}), "
                        f"got {mask_logits.dtype}")
    if mask_logits.device != features.device:
        raise ValueError(f"sfa_apply: features and mask_logits must be on one device, got {features.device} "
                         f"and {mask_logits.device}")


# Fake kernels: shapes and dtypes of the real outputs (all contiguous).
def _forward_fake(features, mask_logits):
    return features.new_empty(mask_logits.shape[0], *features.shape)


def _backward_fake(grad_out, features, mask_logits):
    return (torch.empty_like(features, memory_format=torch.contiguous_format),
            torch.empty_like(mask_logits, memory_format=torch.contiguous_format))


@torch.library.custom_op("mtl_ops::sfa_apply_forward_triton", mutates_args=())
def _triton_forward(features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    from ..triton import load

    return load("sfa_apply").forward(features, mask_logits)


@torch.library.custom_op("mtl_ops::sfa_apply_backward_triton", mutates_args=())
def _triton_backward(grad_out: torch.Tensor, features: torch.Tensor,
                     mask_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import load

    return load("sfa_apply").backward(grad_out, features, mask_logits)


_KERNELS = kernel_table("sfa_apply", _triton_forward, _triton_backward, _forward_fake,
                        _backward_fake)


class SfaApplyFunction(torch.autograd.Function):
    """Differentiable shared feature attention on a fused backend: one kernel forward, one backward that
    recomputes the sigmoid from the saved logits and reduces the T task gradients into features."""

    @staticmethod
    def forward(features, mask_logits, backend: str):
        return _KERNELS[backend][0](features, mask_logits)

    @staticmethod
    def setup_context(ctx, inputs, output):
        features, mask_logits, backend = inputs
        ctx.save_for_backward(features, mask_logits)
        ctx.backend = backend

    @staticmethod
    def backward(ctx, grad_out):
        d_features, d_mask = _KERNELS[ctx.backend][1](grad_out, *ctx.saved_tensors)
        return d_features, d_mask, None


def sfa_apply(features: torch.Tensor, mask_logits: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Shared feature attention (Medusa SFA): ``out[t] = sigmoid(mask_logits[t]) * features``.

    Args:
        features: (B, C, h, w), shared by the T tasks; float32, float64, float16 or bfloat16.
        mask_logits: (T, B, M, h, w) with M = 1 (a spatial mask broadcast over channels) or M = C
            (channel-spatial); the dtype and device of features. Any strides (copied once if not contiguous).
        backend: None (fastest available for the device; ``MTL_OPS_BACKEND`` overrides), "reference",
            "cpp", "cuda" or "triton".

    Returns (T, B, C, h, w), contiguous. Differentiable in both inputs: the fused backward sums the T task
    gradients into d_features in one pass, and reduces over channels (M = 1) in fp32 (fp64 for fp64).
    """
    check_args(features, mask_logits)
    chosen = select_backend(OP, features.device, backend)
    if chosen == "reference":
        return reference.sfa_apply(features, mask_logits)
    return SfaApplyFunction.apply(features, mask_logits, chosen)
