"""Triton kernels of gated_residual. Grid: (blocks over one task's elements, tasks), axis 1 launched in
chunks (``_launch.grid_chunks``). Arithmetic is done in ACC (fp32, or fp64 for fp64 inputs) whatever the
storage dtype; offsets in int64 (a task can hold more than 2^31 elements). The backward writes one
gate-gradient partial per program; the launcher sums them (deterministic, no atomics)."""
import torch
import triton
import triton.language as tl

from ..common.layout import task_major_pair, with_layout_of
from . import _launch
from ._launch import block_start

BLOCK = 1024


@triton.jit
def _relu(x):
    return tl.where(x < 0, 0.0, x)  # relu(NaN) = NaN, as torch.relu


@triton.jit
def _forward_kernel(r_ptr, b_ptr, g_ptr, y_ptr, inner, t0, ACC: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(1) + t0
    offs = t.to(tl.int64) * inner + block_start(tl.program_id(0), BLOCK) + tl.arange(0, BLOCK)
    mask = offs < (t.to(tl.int64) + 1) * inner
    r = tl.load(r_ptr + offs, mask=mask).to(ACC)
    b = tl.load(b_ptr + offs, mask=mask).to(ACC)
    g_exec = tl.load(g_ptr + 2 * t)
    g_skip = tl.load(g_ptr + 2 * t + 1)
    y = g_exec * _relu(r + b) + g_skip * r
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(dy_ptr, r_ptr, b_ptr, g_ptr, dr_ptr, db_ptr, partial_ptr, inner, t0,
                     ACC: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(1) + t0
    pid = tl.program_id(0)
    offs = t.to(tl.int64) * inner + block_start(pid, BLOCK) + tl.arange(0, BLOCK)
    mask = offs < (t.to(tl.int64) + 1) * inner
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(ACC)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(ACC)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(ACC)
    g_exec = tl.load(g_ptr + 2 * t)
    g_skip = tl.load(g_ptr + 2 * t + 1)
    s = r + b
    d_s = g_exec * tl.where(s <= 0, 0.0, dy)  # threshold_backward semantics, as autograd
    tl.store(db_ptr + offs, d_s.to(db_ptr.dtype.element_ty), mask=mask)
    tl.store(dr_ptr + offs, (g_skip * dy + d_s).to(dr_ptr.dtype.element_ty), mask=mask)
    slot = (t.to(tl.int64) * tl.num_programs(0) + pid) * 2
    tl.store(partial_ptr + slot, tl.sum(dy * _relu(s), axis=0))
    tl.store(partial_ptr + slot + 1, tl.sum(dy * r, axis=0))


def _blocks(r: torch.Tensor):
    T = r.shape[0]
    inner = r.numel() // T
    return T, inner, triton.cdiv(inner, BLOCK)


def forward(residual: torch.Tensor, branch: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    r, b = task_major_pair(residual, branch)
    y = torch.empty_like(r)
    if r.numel() == 0:
        return y
    acc_torch, acc_tl = _launch.acc_dtypes(r.dtype)
    T, inner, blocks = _blocks(r)
    g = gates.to(acc_torch).contiguous()
    with _launch.device_guard(r):
        for t0, nt in _launch.grid_chunks(T):
            _forward_kernel[(blocks, nt)](r, b, g, y, inner, t0, ACC=acc_tl, BLOCK=BLOCK)
    return y


def backward(grad_out, residual, branch, gates):
    r, b = task_major_pair(residual, branch)
    dy = with_layout_of(grad_out, r)
    dr, db = torch.empty_like(r), torch.empty_like(r)
    if r.numel() == 0:
        return dr, db, gates.new_zeros(gates.shape[0], 2)
    acc_torch, acc_tl = _launch.acc_dtypes(r.dtype)
    T, inner, blocks = _blocks(r)
    partials = torch.empty(T, blocks, 2, dtype=acc_torch, device=r.device)
    g = gates.to(acc_torch).contiguous()
    with _launch.device_guard(r):
        for t0, nt in _launch.grid_chunks(T):
            _backward_kernel[(blocks, nt)](dy, r, b, g, dr, db, partials, inner, t0, ACC=acc_tl, BLOCK=BLOCK)
    return dr, db, partials.sum(1).to(gates.dtype)
