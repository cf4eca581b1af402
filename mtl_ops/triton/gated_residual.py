"""Triton kernels of gated_residual. Grid: (blocks over one task's elements, T). Arithmetic is done in
ACC (fp32, or fp64 for fp64 inputs) whatever the storage dtype. The backward writes one gate-gradient
partial per program; the launcher sums them (deterministic, no atomics)."""
import torch
import triton
import triton.language as tl

from ..ops._layout import task_major_pair, with_layout_of

BLOCK = 1024
MAX_TASKS = 65535  # grid axis 1


@triton.jit
def _relu(x):
    return tl.where(x < 0, 0.0, x)  # relu(NaN) = NaN, as torch.relu


@triton.jit
def _forward_kernel(r_ptr, b_ptr, g_ptr, y_ptr, inner, ACC: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inner
    base = t.to(tl.int64) * inner
    r = tl.load(r_ptr + base + offs, mask=mask).to(ACC)
    b = tl.load(b_ptr + base + offs, mask=mask).to(ACC)
    g_exec = tl.load(g_ptr + 2 * t)
    g_skip = tl.load(g_ptr + 2 * t + 1)
    y = g_exec * _relu(r + b) + g_skip * r
    tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(dy_ptr, r_ptr, b_ptr, g_ptr, dr_ptr, db_ptr, partial_ptr, inner,
                     ACC: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(1)
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inner
    base = t.to(tl.int64) * inner
    dy = tl.load(dy_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    r = tl.load(r_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    b = tl.load(b_ptr + base + offs, mask=mask, other=0.0).to(ACC)
    g_exec = tl.load(g_ptr + 2 * t)
    g_skip = tl.load(g_ptr + 2 * t + 1)
    s = r + b
    d_s = g_exec * tl.where(s <= 0, 0.0, dy)  # threshold_backward semantics, as autograd
    tl.store(db_ptr + base + offs, d_s.to(db_ptr.dtype.element_ty), mask=mask)
    tl.store(dr_ptr + base + offs, (g_skip * dy + d_s).to(dr_ptr.dtype.element_ty), mask=mask)
    slot = (t.to(tl.int64) * tl.num_programs(0) + pid) * 2
    tl.store(partial_ptr + slot, tl.sum(dy * _relu(s), axis=0))
    tl.store(partial_ptr + slot + 1, tl.sum(dy * r, axis=0))


def _acc(dtype: torch.dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _grid(r: torch.Tensor):
    T = r.shape[0]
    if T > MAX_TASKS:
        raise ValueError(f"gated_residual (triton backend): at most {MAX_TASKS} tasks, got T = {T}")
    inner = r.numel() // T
    return (triton.cdiv(inner, BLOCK), T), inner


def forward(residual: torch.Tensor, branch: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    r, b = task_major_pair(residual, branch)
    y = torch.empty_like(r)
    if r.numel() == 0:
        return y
    acc_torch, acc_tl = _acc(r.dtype)
    grid, inner = _grid(r)
    _forward_kernel[grid](r, b, gates.to(acc_torch).contiguous(), y, inner, ACC=acc_tl, BLOCK=BLOCK)
    return y


def backward(grad_out, residual, branch, gates):
    r, b = task_major_pair(residual, branch)
    dy = with_layout_of(grad_out, r)
    dr, db = torch.empty_like(r), torch.empty_like(r)
    if r.numel() == 0:
        return dr, db, gates.new_zeros(gates.shape[0], 2)
    acc_torch, acc_tl = _acc(r.dtype)
    grid, inner = _grid(r)
    partials = torch.empty(grid[1], grid[0], 2, dtype=acc_torch, device=r.device)
    _backward_kernel[grid](dy, r, b, gates.to(acc_torch).contiguous(), dr, db, partials, inner,
                           ACC=acc_tl, BLOCK=BLOCK)
    return dr, db, partials.sum(1).to(gates.dtype)
