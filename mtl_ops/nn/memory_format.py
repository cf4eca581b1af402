"""Whole-model memory-format conversion for modules whose 5-D parameters are not volumes.

``nn.Module.to(memory_format=torch.channels_last)`` converts every 4-D and 5-D tensor of the model, and
torch refuses the 4-D channels-last format on a 5-D tensor ("required rank 4 tensor to use channels_last
format"). CTAL's per-task fusion weight (T, N, T, k, k) and ETR-NLP's per-task convolutions
(T, C_sp, C_in, 3, 3) are 5-D stacks of 4-D kernels, so a network holding them could not be converted.
"""
from __future__ import annotations

import torch
from torch import nn


class StacksOfKernels(nn.Module):
    """A module whose 5-D tensors are stacks of 4-D kernels: a conversion that refuses a 5-D tensor (a 4-D
    memory format) runs on its 4-D view that merges the two leading dimensions, and the result is viewed
    back with the same shape (parameter shapes and ``state_dict`` keys stay as they are; the fused ops take
    any strides). Every other conversion, and every tensor of another rank, goes through unchanged."""

    def _apply(self, fn, recurse=True):
        def convert(t: torch.Tensor) -> torch.Tensor:
            if t.dim() != 5:
                return fn(t)
            try:
                return fn(t)
            except RuntimeError:  # a 4-D memory format; anything else fails again on the view and is raised
                return fn(t.flatten(0, 1)).unflatten(0, t.shape[:2])

        return super()._apply(convert, recurse)
