"""Registration helpers shared by the op modules: fakes and autograd for the mtl_ops operators."""
from __future__ import annotations

from typing import Callable

import torch

from .._loader import LIBRARIES


def compiled_op(name: str):
    """torch.ops.mtl_ops.<name>.default, or None when the compiled library (the schemas) did not load."""
    if not LIBRARIES["cpp"].loaded:
        return None
    return getattr(torch.ops.mtl_ops, name).default


def register_recompute_autograd(forward_op, backward_op: Callable) -> None:
    """Autograd for an operator whose inputs are all tensors and whose backward operator takes
    ``(grad_out, *inputs)`` and returns one gradient per input: the inputs are saved, and whatever else
    the backward needs is recomputed from them inside the fused backward kernel."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_out):
        return backward_op(grad_out, *ctx.saved_tensors)

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


def kernel_table(op: str, triton_forward, triton_backward, forward_fake: Callable, backward_fake: Callable,
                 register_autograd: Callable = register_recompute_autograd) -> dict:
    """``{backend: (forward operator, backward operator)}`` of a fused op whose C++ operators are
    ``mtl_ops::<op>_forward`` / ``_backward`` and whose Triton operators are the given custom ops; registers
    the fake kernels and the operators' autograd (``register_autograd(forward_op, backward_op)``) on each."""
    kernels = {"triton": (triton_forward._opoverload, triton_backward._opoverload)}
    compiled = (compiled_op(f"{op}_forward"), compiled_op(f"{op}_backward"))
    if compiled[0] is not None:
        kernels["cpp"] = kernels["cuda"] = compiled  # one operator; the dispatcher picks CPU or CUDA
    for forward_op, backward_op in set(kernels.values()):
        torch.library.register_fake(forward_op)(forward_fake)
        torch.library.register_fake(backward_op)(backward_fake)
        register_autograd(forward_op, backward_op)
    return kernels
