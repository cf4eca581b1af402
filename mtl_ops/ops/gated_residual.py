"""gated_residual: AdaShare's select-or-skip residual block for T tasks at once.

    y[t] = gates[t, 0] * relu(residual[t] + branch[t]) + gates[t, 1] * residual[t]

Operators: ``mtl_ops::gated_residual_forward`` / ``_backward`` (C++, CPU and CUDA) and ``..._triton``. The
backward saves the three inputs and recomputes relu(residual + branch) instead of storing it.
"""
from __future__ import annotations

import torch

from .. import reference
from ..common.dtypes import FLOATING, FLOATING_NAMES
from ..common.layout import task_major_pair
from ._fused import FusedOp, Promote, register, tensor_args


def check_args(residual, branch, gates) -> None:
    """The value rules (csrc/common/gated_residual_args.h makes the same checks for the C++ operators)."""
    if residual.dim() < 1:
        raise ValueError("gated_residual: residual must have a leading task dimension T, got a 0-d tensor")
    if branch.shape != residual.shape:
        raise ValueError(f"gated_residual: branch must have the shape of residual {tuple(residual.shape)}, "
                         f"got {tuple(branch.shape)}")
    T = residual.shape[0]
    if gates.dim() != 2 or gates.shape[0] != T or gates.shape[1] != 2:
        raise ValueError(f"gated_residual: gates must have shape (T, 2) = ({T}, 2), got {tuple(gates.shape)}")
    if residual.dtype not in FLOATING:
        raise TypeError(f"gated_residual: residual must be {FLOATING_NAMES}, got {residual.dtype}")
    if branch.dtype != residual.dtype:
        raise TypeError(f"gated_residual: branch must have the dtype of residual ({residual.dtype}), got {branch.dtype}")
    if gates.dtype not in (residual.dtype, torch.float32):
        raise TypeError(f"gated_residual: gates must be float32 or the dtype of residual ({residual.dtype}), "
                        f"got {gates.dtype}")
    if branch.device != residual.device or gates.device != residual.device:
        raise ValueError(f"gated_residual: residual, branch and gates must be on one device, got {residual.device}, "
                         f"{branch.device} and {gates.device}")


def _forward_fake(residual, branch, gates):  # the output takes the layout the kernels run in (common.layout)
    return torch.empty_like(task_major_pair(residual, branch)[0])


def _backward_fake(grad_out, residual, branch, gates):
    r = task_major_pair(residual, branch)[0]
    return torch.empty_like(r), torch.empty_like(r), gates.new_empty(gates.shape[0], 2)


SPEC = FusedOp(
    name="gated_residual",
    backends=("reference", "cpp", "cuda", "triton"),
    reference=reference.gated_residual,
    parse=tensor_args("gated_residual", "residual", "branch", "gates"),
    check=check_args,
    forward_fake=_forward_fake,
    backward_fake=_backward_fake,
    triton_schemas=("(Tensor residual, Tensor branch, Tensor gates) -> Tensor",
                    "(Tensor grad_out, Tensor residual, Tensor branch, Tensor gates) -> (Tensor, Tensor, Tensor)"),
    autocast=Promote(same=(0, 1), params=(2,)),
)
_OP = register(SPEC)


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
    reduced in fp32 (fp64 for fp64 inputs) and deterministically. Under autocast, residual and branch of two
    floating dtypes run in the wider one, and gates of a third dtype in fp32.
    """
    return _OP((residual, branch, gates), backend)
