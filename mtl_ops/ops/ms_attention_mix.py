"""ms_attention_mix: Medusa's multi-scale attention over S per-scale predictions.

    out = sum_s softmax_s(up(logits_s)) * up(values_s),   up = bilinear resize to size (align_corners=False)

Operators: ``mtl_ops::ms_attention_mix_forward`` / ``_backward`` (C++; CPU and CUDA kernels, schemas in
csrc/ops.cpp) and ``mtl_ops::ms_attention_mix_forward_triton`` / ``_backward_triton`` (Triton, defined here).
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
from ..backends import register_op, select_backend
from ._registration import kernel_table

OP = "ms_attention_mix"
MAX_SCALES = 8  # csrc/common/ms_attention_mix_args.h kMaxScales
register_op(OP, ("reference", "cpp", "cuda", "triton"))
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_args(values, logits, size) -> None:
    """The argument checks of every backend (csrc/common/ms_attention_mix_args.h says the same in C++)."""
    for name, seq in (("values", values), ("logits", logits)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, (list, tuple)):
            raise TypeError(f"ms_attention_mix: {name} must be a list or tuple of tensors (one per scale), "
                            f"got {type(seq).__name__}")
        for s, t in enumerate(seq):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"ms_attention_mix: {name}[{s}] must be a torch.Tensor, got {type(t).__name__}")
    S = len(values)
    if not 1 <= S <= MAX_SCALES:
        raise ValueError(f"ms_attention_mix: values must hold 1 to {MAX_SCALES} tensors (one per scale), got {S}")
    if len(logits) != S:
        raise ValueError(f"ms_attention_mix: logits must hold one tensor per scale ({S}), got {len(logits)}")
    if (not isinstance(size, (list, tuple, torch.Size)) or len(size) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)):
        raise ValueError(f"ms_attention_mix: size must be two positive integers (H, W), got {size!r}")
    v0 = values[0]
    if v0.dim() != 4:
        raise ValueError(f"ms_attention_mix: values[0] must be 4-d (B, K, h, w), got {v0.dim()}-d")
    if v0.dtype not in _FLOATING:
        raise TypeError(f"ms_attention_mix: values must be float32, float64, float16 or bfloat16, got {v0.dtype}")
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


# Fake kernels: shapes and dtypes of the real outputs (all contiguous).
def _forward_fake(values, logits, size):
    v0 = values[0]
    out = v0.new_empty(v0.shape[0], v0.shape[1], size[0], size[1])
    return out, v0.new_empty(v0.shape[0], size[0], size[1], dtype=_acc_dtype(v0.dtype))


def _backward_fake(grad_out, values, logits, lse):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (*values, *logits)]


@torch.library.custom_op("mtl_ops::ms_attention_mix_forward_triton", mutates_args=())
def _triton_forward(values: list[torch.Tensor], logits: list[torch.Tensor],
                    size: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import load

    return load("ms_attention_mix").forward(values, logits, size)


@torch.library.custom_op("mtl_ops::ms_attention_mix_backward_triton", mutates_args=())
def _triton_backward(grad_out: torch.Tensor, values: list[torch.Tensor], logits: list[torch.Tensor],
                     lse: torch.Tensor) -> list[torch.Tensor]:
    from ..triton import load

    return load("ms_attention_mix").backward(grad_out, values, logits, lse)


def _register_autograd(forward_op, backward_op) -> None:
    """Autograd on the forward operator (for opcheck, torch.compile and direct operator calls): saves the
    inputs and lse and calls the fused backward operator; lse itself is not differentiable."""

    def setup_context(ctx, inputs, output):
        values, logits, _ = inputs
        ctx.num_scales = len(values)
        ctx.save_for_backward(*values, *logits, output[1])
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, grad_out, _grad_lse):
        S = ctx.num_scales
        saved = ctx.saved_tensors
        values, logits, lse = saved[:S], saved[S:2 * S], saved[2 * S]
        grads = backward_op(grad_out, list(values), list(logits), lse)
        return list(grads[:S]), list(grads[S:]), None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


_KERNELS = kernel_table("ms_attention_mix", _triton_forward, _triton_backward, _forward_fake,
                        _backward_fake, _register_autograd)


class MsAttentionMixFunction(torch.autograd.Function):
    """Differentiable multi-scale attention mix on a fused backend. Inputs are flat: (backend, size, S,
    *values, *logits). Saves the low-res inputs and the per-pixel lse; the backward recomputes the attention
    weights and bilinear samples instead of storing them."""

    @staticmethod
    def forward(backend: str, size, num_scales: int, *tensors):
        values, logits = list(tensors[:num_scales]), list(tensors[num_scales:])
        return _KERNELS[backend][0](values, logits, list(size))

    @staticmethod
    def setup_context(ctx, inputs, output):
        backend, _, num_scales, *tensors = inputs
        ctx.backend, ctx.num_scales = backend, num_scales
        ctx.save_for_backward(*tensors, output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        S = ctx.num_scales
        saved = ctx.saved_tensors
        grads = _KERNELS[ctx.backend][1](grad_out, list(saved[:S]), list(saved[S:2 * S]), saved[2 * S])
        return (None, None, None, *grads)


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
    their backward gathers each low-res gradient in a fixed order, so it is deterministic for any sizes.
    """
    check_args(values, logits, size)
    size = (int(size[0]), int(size[1]))
    chosen = select_backend(OP, values[0].device, backend)
    if chosen == "reference":
        return reference.ms_attention_mix(values, logits, size)
    out, _ = MsAttentionMixFunction.apply(chosen, size, len(values), *values, *logits)
    return out
