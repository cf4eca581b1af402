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
