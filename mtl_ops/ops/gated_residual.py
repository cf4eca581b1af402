"""gated_residual: AdaShare's select-or-skip residual block for T tasks at once.

    y[t] = gates[t, 0] * relu(residual[t] + branch[t]) + gates[t, 1] * residual[t]

Operators: ``mtl_ops::gated_residual_forward`` / ``_backward`` (C++; CPU and CUDA kernels, schemas in
csrc/ops.cpp) and ``mtl_ops::gated_residual_forward_triton`` / ``_backward_triton`` (Triton, defined here).
Each has a fake kernel and autograd; the public function applies ``GatedResidualFunction``, whose forward
and backward call the chosen backend's operators (the reference backend is plain autograd).
"""
from __future__ import annotations

import torch

from .. import reference
from ..backends import register_op, select_backend
from ._layout import task_major_pair
from ._registration import kernel_table

OP = "gated_residual"
register_op(OP, ("reference", "cpp", "cuda", "triton"))
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_args(residual, branch, gates) -> None:
    """The argument checks of every backend (csrc/common/gated_residual_args.h says the same in C++)."""
    for name, t in (("residual", residual), ("branch", branch), ("gates", gates)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"gated_residual: {name} must be a torch.Tensor, got {type(t).__name__}")
    if residual.dim() < 1:
        raise ValueError("gated_residual: residual must have a leading task dimension T, got a 0-d tensor")
    if branch.shape != residual.shape:
        raise ValueError(f"gated_residual: branch must have the shape of residual {tuple(residual.shape)}, "
                         f"got {tuple(branch.shape)}")
    T = residual.shape[0]
    if gates.dim() != 2 or gates.shape[0] != T or gates.shape[1] != 2:
        raise ValueError(f"gated_residual: gates must have shape (T, 2) = ({T}, 2), got {tuple(gates.shape)}")
    if residual.dtype not in _FLOATING:
        raise TypeError(f"gated_residual: residual must be float32, float64, float16 or bfloat16, got {residual.dtype}")
    if branch.dtype != residual.dtype:
        raise TypeError(f"gated_residual: branch must have the dtype of residual ({residual.dtype}), got {branch.dtype}")
    if gates.dtype not in (residual.dtype, torch.float32):
        raise TypeError(f"gated_residual: gates must be float32 or the dtype of residual ({residual.dtype}), "
                        f"got {gates.dtype}")
    if branch.device != residual.device or gates.device != residual.device:
        raise ValueError(f"gated_residual: residual, branch and gates must be on one device, got {residual.device}, "
                         f"{branch.device} and {gates.device}")


# Fake kernels: shapes, dtypes and strides of the real outputs (see _layout for the stride rule).
def _forward_fake(residual, branch, gates):
    return torch.empty_like(task_major_pair(residual, branch)[0])


def _backward_fake(grad_out, residual, branch, gates):
    r = task_major_pair(residual, branch)[0]
    return torch.empty_like(r), torch.empty_like(r), gates.new_empty(gates.shape[0], 2)


@torch.library.custom_op("mtl_ops::gated_residual_forward_triton", mutates_args=())
def _triton_forward(residual: torch.Tensor, branch: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    from ..triton import load

    return load("gated_residual").forward(residual, branch, gates)


@torch.library.custom_op("mtl_ops::gated_residual_backward_triton", mutates_args=())
def _triton_backward(grad_out: torch.Tensor, residual: torch.Tensor, branch: torch.Tensor,
                     gates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..triton import load

    return load("gated_residual").backward(grad_out, residual, branch, gates)


_KERNELS = kernel_table("gated_residual", _triton_forward, _triton_backward, _forward_fake,
                        _backward_fake)


class GatedResidualFunction(torch.autograd.Function):
    """Differentiable gated residual on a fused backend: forward and backward are one kernel each; the
    backward recomputes relu(residual + branch) from the saved inputs instead of storing it."""

    @staticmethod
    def forward(residual, branch, gates, backend: str):
        return _KERNELS[backend][0](residual, branch, gates)

    @staticmethod
    def setup_context(ctx, inputs, output):
        residual, branch, gates, backend = inputs
        ctx.save_for_backward(residual, branch, gates)
        ctx.backend = backend

    @staticmethod
    def backward(ctx, grad_out):
        d_residual, d_branch, d_gates = _KERNELS[ctx.backend][1](grad_out, *ctx.saved_tensors)
        return d_residual, d_branch, d_gates, None


def _autocast_promote(residual, branch, gates):
    """Under autocast, activations can arrive in two dtypes (a half conv output beside an fp32 skip path):
    run in the wider one, as PyTorch's element-wise ops do. Gates of another dtype go to fp32."""
    if not torch.is_autocast_enabled(residual.device.type) or residual.dtype not in _FLOATING:
        return residual, branch, gates
    if branch.dtype != residual.dtype and branch.dtype in _FLOATING:
        common = torch.promote_types(residual.dtype, branch.dtype)
        residual, branch = residual.to(common), branch.to(common)
    if gates.dtype not in (residual.dtype, torch.float32) and gates.dtype in _FLOATING:
        gates = gates.float()
    return residual, branch, gates


def gated_residual(residual: torch.Tensor, branch: torch.Tensor, gates: torch.Tensor, *,
                   backend: str | None = None) -> torch.Tensor:
    """AdaShare gated residual for T tasks: ``gates[t,0] * relu(residual[t] + branch[t]) + gates[t,1] * residual[t]``.

    Args:
        residual, branch: (T, B, C, H, W) (any trailing shape), same shape, dtype and device; float32,
            float64, float16 or bfloat16; any strides (contiguous and channels-last run in place, other
            layouts are copied once). The output has residual's layout.
        gates: (T, 2); column 0 the execute weight, column 1 the skip weight (soft Gumbel-softmax samples
            in training, 0/1 at inference); float32 or residual's dtype.
        backend: None (fastest available for the device; ``MTL_OPS_BACKEND`` overrides), "reference",
            "cpp", "cuda" or "triton".

    Returns (T, B, C, H, W) in residual's dtype. Differentiable in all three inputs; the gate gradients are
    reduced in fp32 (fp64 for fp64 inputs) and deterministically.
    """
    residual, branch, gates = _autocast_promote(residual, branch, gates)
    check_args(residual, branch, gates)
    chosen = select_backend(OP, residual.device, backend)
    if chosen == "reference":
        return reference.gated_residual(residual, branch, gates)
    return GatedResidualFunction.apply(residual, branch, gates, chosen)
