"""ctal_affinity: CTAL's cross-task affinity core (EMA-Net), without any N x N tensor.

Per task t, with f_t the per-pixel L2-normalised x_t (eps 1e-12) and A_t = f_t^T f_t (N x N, N = H*W):
the T affinity maps of each query pixel i are mixed by its own k x k x T filter over the key grid (zero
padding), M[i, j] = bias[i] + sum_{t', d} weight[i, t', d] A_t'[i, j + d]; then Z_t = V_t M^T and
r_t = gamma Z_t + (1 - gamma) x_t. With per-task weights (T, N, T, k, k) each task has its own M_t.

Operators: ``mtl_ops::ctal_affinity_forward`` / ``_backward`` (C++, CPU and CUDA) and ``..._triton``. The
forward returns (r, gram): gram (k*k, B, T*C, T*C), the per-tap Gram blocks of the exact reassociation, saved
with the inputs for the backward (which recomputes the normalised features); gamma is a constant.

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
from ..common.dtypes import FLOATING, FLOATING_NAMES, accumulate_dtype
from ._fused import FusedOp, Promote, register, tensor_args

_tensors = tensor_args("ctal_affinity", "x", "v", "weight", "bias")


def _parse(x, v, weight, bias, gamma):
    _tensors(x, v, weight, bias)
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"ctal_affinity: gamma must be a Python float, got {type(gamma).__name__}")
    return x, v, weight, bias, float(gamma)


def check_args(x, v, weight, bias, gamma) -> None:
    """The value rules (csrc/common/ctal_affinity_args.h makes the same checks for the C++ operators)."""
    if x.dim() != 5:
        raise ValueError(f"ctal_affinity: x must have shape (B, T, C, H, W), got {tuple(x.shape)}")
    if v.shape != x.shape:
        raise ValueError(f"ctal_affinity: v must have the shape of x {tuple(x.shape)}, got {tuple(v.shape)}")
    B, T, C, H, W = x.shape
    N = H * W
    if N == 0:  # M is N x N mixing over the pixels: no pixel, no affinity (the grouped conv has N groups)
        raise ValueError(f"ctal_affinity: x must have H, W >= 1, got shape {tuple(x.shape)}")
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
    if x.dtype not in FLOATING:
        raise TypeError(f"ctal_affinity: x must be {FLOATING_NAMES}, got {x.dtype}")
    if v.dtype != x.dtype:
        raise TypeError(f"ctal_affinity: v must have the dtype of x ({x.dtype}), got {v.dtype}")
    if weight.dtype not in (x.dtype, torch.float32):
        raise TypeError(f"ctal_affinity: weight must be float32 or the dtype of x ({x.dtype}), got {weight.dtype}")
    if bias.dtype != weight.dtype:
        raise TypeError(f"ctal_affinity: bias must have the dtype of weight ({weight.dtype}), got {bias.dtype}")
    if not (v.device == weight.device == bias.device == x.device):
        raise ValueError(f"ctal_affinity: x, v, weight and bias must be on one device, got {x.device}, "
                         f"{v.device}, {weight.device} and {bias.device}")


def _forward_fake(x, v, weight, bias, gamma, allow_tf32=False):  # r contiguous, gram in the accumulation dtype
    B, T, C = x.shape[:3]
    k = weight.shape[-1]
    return x.new_empty(x.shape), x.new_empty((k * k, B, T * C, T * C), dtype=accumulate_dtype(x.dtype))


def _backward_fake(grad_out, x, v, weight, bias, gamma, gram, allow_tf32=False):
    return x.new_empty(x.shape), x.new_empty(x.shape), weight.new_empty(weight.shape), bias.new_empty(bias.shape)


def _backward(backward_op, grad_out, inputs, outputs):
    """The C++ operators take allow_tf32 after gamma (passed on to their backward); the Triton ones do not."""
    x, v, weight, bias, gamma, *options = inputs
    grads = backward_op(grad_out.contiguous(), x, v, weight, bias, gamma, outputs[1], *options)
    return (*grads, None) + (None,) * len(options)


SPEC = FusedOp(
    name="ctal_affinity",
    backends=("reference", "cpp", "cuda", "triton"),
    reference=lambda x, v, weight, bias, gamma: reference.ctal_affinity(x, v, weight.to(x.dtype), bias.to(x.dtype),
                                                                        gamma),
    parse=_parse,
    check=check_args,
    forward_fake=_forward_fake,
    backward_fake=_backward_fake,
    triton_schemas=("(Tensor x, Tensor v, Tensor weight, Tensor bias, float gamma) -> (Tensor, Tensor)",
                    "(Tensor grad_out, Tensor x, Tensor v, Tensor weight, Tensor bias, float gamma, Tensor gram)"
                    " -> (Tensor, Tensor, Tensor, Tensor)"),
    backward=_backward,
    saved_outputs=(1,),
    output=0,
    autocast=Promote(same=(0, 1), params=(2,), follow=((3, 2),)),
)
_OP = register(SPEC)


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
    (there is no normalisation of M), as in the reference. Under autocast, x and v of two floating dtypes run
    in the wider one, weight of a third dtype in fp32 and bias in weight's dtype.
    """
    return _OP((x, v, weight, bias, gamma), backend, (bool(allow_tf32),))
