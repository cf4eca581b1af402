"""What every Triton launcher of the package shares: the accumulation dtype, the device guard, the grid-axis
limit with the chunking that respects it, the refusal of inputs beyond the kernels' limits, and 64-bit block
offsets.

Grid axes 1 and 2 of a CUDA launch hold at most 65,535 programs (axis 0 holds 2^31 - 1). Every kernel here
puts its potentially large batch-like axis on axis 1 and takes that axis's first program id as an argument,
so a launcher covers any size by launching ``grid_chunks`` pieces. The limit is read at call time, so a test
can lower ``MAX_GRID_AXIS`` to make tiny inputs take the chunked path under the interpreter.

Index arithmetic: program ids and sizes are int32 in Triton unless converted, and ``pid * BLOCK`` or
``row * plane`` pass 2^31 on tensors an H200 can hold. Kernels form each program's base offset in int64
(``block_start``, or an int64 row index times the plane size) and keep only offsets inside one block, row or
plane in int32 (launchers check that a single plane stays below 2^31 where a kernel relies on it: ``limits``).
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ..common.dtypes import accumulate_dtype

MAX_GRID_AXIS = 65535  # programs along grid axis 1 or 2 of one launch
_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def acc_dtypes(dtype: torch.dtype):
    """(torch dtype, tl dtype) the kernels accumulate in (mtl_ops.common.dtypes.accumulate_dtype)."""
    acc = accumulate_dtype(dtype)
    return acc, _TL_DTYPES[acc]


def device_guard(tensor: torch.Tensor):
    """Context under which to launch kernels on ``tensor``: Triton launches on the current CUDA device, so a
    tensor on another GPU needs it switched; nothing to do for CPU tensors (the interpreter)."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def grid_chunks(n: int):
    """(first program id, program count) pieces of a grid axis of ``n`` programs, each within the limit."""
    step = MAX_GRID_AXIS
    for start in range(0, n, step):
        yield start, min(step, n - start)


def require(reason: str | None) -> None:
    """Refuses inputs beyond the kernels' limits: ``reason`` is a ``limits`` function's answer."""
    if reason is not None:
        raise ValueError(reason)


@triton.jit
def block_start(pid, BLOCK: tl.constexpr):
    """First element of block ``pid``, in int64: pid * BLOCK passes 2^31 from 2^31 / BLOCK programs on."""
    return tl.cast(pid, tl.int64) * BLOCK
