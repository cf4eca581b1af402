"""ctal_affinity: CTAL's cross-task affinity core (EMA-Net), without any N x N tensor.

Per task t, with f_t the per-pixel L2-normalised x_t (eps 1e-12) and A_t = f_t^T f_t (N x N, N = H*W):
the T affinity maps of each query pixel i are mixed by its own k x k x T filter over the key grid (zero
padding), M[i, j] = bias[i] + sum_{t', d} weight[i, t', d] A_t'[i, j + d]; then Z_t = V_t M^T and
r_t = gamma Z_t + (1 - gamma) x_t. With per-task weights (T, N, T, k, k) each task has its own M_t.

Operators: ``mtl_ops::ctal_affinity_forward`` / ``_backward`` (C++; CPU and CUDA kernels, schemas in
csrc/ops.cpp) and ``mtl_ops::ctal_affinity_forward_triton`` / ``_backward_triton`` (Triton, defined here).
The forward returns (r, gram): gram (k*k, B, T*C, T*C), the per-tap Gram blocks of the exact
reassociation, saved for the backward. Each operator has a fake kernel and autograd; the public function
applies ``CTALAffinityFunction`` (the reference backend is plain autograd through the naive computation).

TF32 policy: every fused backend computes its fp32 GEMMs in exact IEEE fp32 by default, whatever PyTorch's
global setting (``torch.backends.cuda.matmul.allow_tf32``, ``torch.set_float32_matmul_precision("high"/"medium")``):
Z sums over all N pixels, so TF32's 10-bit operand rounding would put it far outside the fp32 tolerance. The C++
operators take ``allow_tf32`` (default False; guard in csrc/common/fp32_matmul_precision.h): True lets the cpp/cuda
GEMMs follow the global setting (TF32 tensor cores where it enables them). The Triton backend always computes in
IEEE fp32 (``input_precision="ieee"``) and ignores ``allow_tf32``. The reference backend is plain PyTorch and
follows the global setting.
"""
from __future__ import annotations

import numbers

import torch

from .. import reference
from ..backends import register_op, select_backend
from ._registration import kernel_table

OP = "ctal_affinity"
register_op(OP, ("reference", "cpp", "cuda", "triton"))
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_args(x, v, weight, bias, gamma) -> None:
    """The argument checks of every backend (csrc/common/ctal_affinity_args.h says the same in C++)."""
    for name, t in (("x", x), ("v", v), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ctal_affinity: {name} must be a torch.Tensor, got {type(t).__name__}")
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"ctal_affinity: gamma must be a Python float, got {type(gamma).__name__}")
    if x.dim() != 5:
        raise ValueError(f"ctal_affinity: x must have shape (B, T, C, H, W), got {tuple(x.shape)}")
    if v.shape != x.shape:
        raise ValueError(f"ctal_affinity: v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
    B, T, C, H, W = x.shape
    N = H * W
    if weight.dim() == 4:
        per_task, expected = False, "(N, T, k, k)"
        ok = weight.shape[0] == N and weight.shape[1] == T and weight.shape[2] == weight.shape[3]
    elif weight.dim() == 5:
        per_task, expected = True, "(T, N, T, k, k)"
        ok = (weight.shape[0] == T and weight.shape[1] == N and weight.shape[2] == T
              and weight.shape[3] == weight.shape[4])
    else:
        raise ValueError(f"ctal_affinity: weight must have shape (N, T, k, k) or (T, N, T, k, k) with "
                         f"N = H*W = {N}, T = {T}, got {tuple(weight.shape)}")
    if not ok:
        raise ValueError(f"ctal_affinity: weight must have shape {expected} with N = H*W = {N}, T = {T}, "
                         f"got {tuple(weight.shape)}")
    k = weight.shape[-1]
    if k < 1 or k % 2 == 0:
        raise ValueError(f"ctal_affinity: the kernel size k must be odd, got k = {k}")
    want_bias = (T, N) if per_task else (N,)
    if tuple(bias.shape) != want_bias:
        raise ValueError(f"ctal_affinity: bias must have shape {want_bias} for "
                         f"{'per-task' if per_task else 'shared'} weight, got {tuple(bias.shape)}")
    if x.dtype not in _FLOATING:
        raise TypeError(f"ctal_affinity: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if v.dtype != x.dtype:
        raise TypeError(f"ctal_affinity: v must have the dtype of x ({x.dtype}), got {v.dtype}")
    if weight.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"ctal_affinity: weight must be float32 or the dtype of x ({x.dtype}), got {weight.dtype}")
    if bias.dtype != weight.dtype:
        raise TypeError(f"ctal_affinity: bias must have the dtype of weight ({weight.dtype}), got {bias.dtype}")
    if not (v.device == weight.device == bias.device == x.device):
        raise ValueError(f"ctal_affinity: x, v, weight and bias must be on one device, got {x.device}, "
                         f"{v.device}, {weight.device} and {bias.device}")


def _accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# Fake kernels: shapes, dtypes and strides of the real outputs.
def _forward_fake(x, v, weight, bias, gamma, allow_tf32=False):
    B, T, C = x.shape[:3]
    k = weight.shape[-1]
    out = x.new_empty(x.shape)  # contiguous
    gram = x.new_empty((k * k, B, T * C, T * C), dtype=_accumulate_dtype(x.dtype))
    return out, gram


def _backward_fake(grad_out, x, v, weight, bias, gamma, gram, allow_tf32=False):
    return x.new_empty(x.shape), x.new_empty(x.shape), weight.new_empty(weight.shape), bias.new_empty(bias.shape)


@torch.library.custom_op("mtl_ops::ctal_affinity_forward_triton", mutates_args=())
def _triton_forward(x: torch.Tensor, v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    from ..triton import load

    return load("ctal_affinity").forward(x, v, weight, bias, gamma)


@torch.library.custom_op("mtl_ops::ctal_affinity_backward_triton", mutates_args=())
def _triton_backward(grad_out: torch.Tensor, x: torch.Tensor, v: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor, gamma: float,
                     gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..triton import load

    return load("ctal_affinity").backward(grad_out, x, v, weight, bias, gamma, gram)


def _register_autograd(forward_op, backward_op) -> None:
    """Autograd on the forward operator itself (so opcheck and direct operator calls differentiate):
    saves the inputs and the gram output; gamma is a constant. The C++ operators have one more input,
    allow_tf32, passed on to their backward (the Triton ones do not)."""

    def setup_context(ctx, inputs, output):
        x, v, weight, bias, gamma, *options = inputs
        ctx.save_for_backward(x, v, weight, bias, output[1])
        ctx.gamma, ctx.options = gamma, tuple(options)
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, grad_out, _grad_gram):
        x, v, weight, bias, gram = ctx.saved_tensors
        dx, dv, dw, db = backward_op(grad_out.contiguous(), x, v, weight, bias, ctx.gamma, gram, *ctx.options)
        return (dx, dv, dw, db, None) + (None,) * len(ctx.options)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


_KERNELS = kernel_table("ctal_affinity", _triton_forward, _triton_backward, _forward_fake,
                        _backward_fake, _register_autograd)


def _operator_options(backend: str, allow_tf32: bool) -> tuple:
    """The trailing operator arguments of a backend: (allow_tf32,) for the C++ operators, none for Triton
    (always IEEE fp32)."""
    return () if backend == "triton" else (bool(allow_tf32),)


class CTALAffinityFunction(torch.autograd.Function):
    """Differentiable CTAL core on a fused backend: one operator forward, one backward, no N x N tensor.
    The forward's Gram blocks (k*k, B, T*C, T*C) are saved; the normalised features are recomputed."""

    @staticmethod
    def forward(x, v, weight, bias, gamma: float, backend: str, allow_tf32: bool = False):
        out, gram = _KERNELS[backend][0](x, v, weight, bias, gamma, *_operator_options(backend, allow_tf32))
        return out, gram

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, v, weight, bias, gamma, backend, *rest = inputs
        ctx.save_for_backward(x, v, weight, bias, output[1])
        ctx.gamma, ctx.backend = gamma, backend
        ctx.options = _operator_options(backend, rest[0] if rest else False)
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_out, _grad_gram):
        x, v, weight, bias, gram = ctx.saved_tensors
        dx, dv, dw, db = _KERNELS[ctx.backend][1](grad_out.contiguous(), x, v, weight, bias, ctx.gamma, gram,
                                                  *ctx.options)
        return dx, dv, dw, db, None, None, None


def _autocast_promote(x, v, weight, bias):
    """Under autocast x and v can arrive in two dtypes: run in the wider one; parameters of another
    dtype than x go to fp32."""
    if not torch.is_autocast_enabled(x.device.type) or x.dtype not in _FLOATING:
        return x, v, weight, bias
    if v.dtype != x.dtype and v.dtype in _FLOATING:
        common = torch.promote_types(x.dtype, v.dtype)
        x, v = x.to(common), v.to(common)
    if weight.dtype not in (x.dtype, torch.float32) and weight.dtype in _FLOATING:
        weight = weight.float()
    if bias.dtype != weight.dtype and bias.dtype in _FLOATING:
        bias = bias.to(weight.dtype)
    return x, v, weight, bias


def ctal_affinity(x: torch.Tensor, v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  gamma: float, *, backend: str | None = None, allow_tf32: bool = False) -> torch.Tensor:
    """CTAL cross-task affinity: ``r_t = gamma * V_t M^T + (1 - gamma) * x_t``.

    Args:
        x: (B, T, C, H, W), each task's CTAL input (the affinities are the cosine similarities of its pixels).
        v: (B, T, C, H, W), each task's projected features; same dtype and device as x.
        weight: (N, T, k, k), one fusion shared by all tasks (as the reference code), or (T, N, T, k, k),
            one per task (as the paper's figure); N = H*W, k odd. float32 or x's dtype.
        bias: (N,) or (T, N) to match; weight's dtype.
        gamma: the blend (0.05 in EMA-Net), a Python float.
        backend: None (fastest available; ``MTL_OPS_BACKEND`` overrides), "reference", "cpp", "cuda" or
            "triton". The fused backends never allocate a tensor with N x N elements (forward or backward)
            and accumulate in fp32 (fp64 for fp64 inputs).
        allow_tf32: False (default): the cpp/cuda backends' fp32 GEMMs are exact IEEE fp32 even when PyTorch's
            global TF32 / float32 matmul precision setting is on. True: they follow that global setting (TF32
            tensor cores where it enables them: faster, ~1e-3 relative error per product, growing with N).
            The Triton backend is always IEEE fp32; the reference backend always follows the global setting.

    Returns (B, T, C, H, W) in x's dtype. Differentiable in x, v, weight and bias. Note Z grows with N
    (there is no normalisation of M), as in the reference.
    """
    x, v, weight, bias = _autocast_promote(x, v, weight, bias)
    check_args(x, v, weight, bias, gamma)
    gamma = float(gamma)
    chosen = select_backend(OP, x.device, backend)
    if chosen == "reference":
        return reference.ctal_affinity(x, v, weight.to(x.dtype), bias.to(x.dtype), gamma)
    return CTALAffinityFunction.apply(x, v, weight, bias, gamma, chosen, bool(allow_tf32))[0]
