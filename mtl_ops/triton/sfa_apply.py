"""Triton kernels of sfa_apply. Arithmetic in ACC (fp32, or fp64 for fp64 inputs).

forward            grid (blocks of C*P, T*B): out = sigmoid(m) * f (a spatial mask is read at pixel p % P).
backward features  grid (blocks of C*P, B): d_f = sum over the T tasks of sigmoid(m_t) * g_t (one pass).
backward mask      M = C: grid (blocks of C*P, T*B), element-wise; M = 1: grid (blocks of P, T*B), each
                   program sums f * g over the C channels of its pixels. No atomics: deterministic.

Axis 1 is launched in chunks (``_launch.grid_chunks``; ``r0`` is the chunk's first row). A row (C*P
elements) may pass 2^31: block starts and row offsets are int64, and the pixel index of a spatial mask is
the int64 block start reduced modulo P once per program plus an int32 lane offset, so no element pays a
64-bit division.
"""
import torch
import triton
import triton.language as tl

from . import _launch, limits
from ._launch import block_start

BLOCK = 256


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _mask_offsets(start, lane, P, SPATIAL: tl.constexpr):
    """Offsets into one (M, P) mask row of the elements start + lane of a (C, P) feature row."""
    if SPATIAL:
        return ((start % P).to(tl.int32) + lane) % P
    else:
        return start + lane


@triton.jit
def _forward_kernel(f_ptr, m_ptr, out_ptr, B, CP, P, r0, SPATIAL: tl.constexpr, ACC: tl.constexpr,
                    BLOCK: tl.constexpr):
    tb = (tl.program_id(1) + r0).to(tl.int64)
    b = tb % B
    start = block_start(tl.program_id(0), BLOCK)
    lane = tl.arange(0, BLOCK)
    mask = lane < CP - start
    f = tl.load(f_ptr + b * CP + start + lane, mask=mask, other=0.0).to(ACC)
    if SPATIAL:
        m_row = m_ptr + tb * P
    else:
        m_row = m_ptr + tb * CP
    m = tl.load(m_row + _mask_offsets(start, lane, P, SPATIAL), mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + tb * CP + start + lane, (_sigmoid(m) * f).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _features_grad_kernel(g_ptr, m_ptr, df_ptr, T, B, CP, P, r0, SPATIAL: tl.constexpr, ACC: tl.constexpr,
                          BLOCK: tl.constexpr):
    b = (tl.program_id(1) + r0).to(tl.int64)
    start = block_start(tl.program_id(0), BLOCK)
    lane = tl.arange(0, BLOCK)
    mask = lane < CP - start
    m_offs = _mask_offsets(start, lane, P, SPATIAL)
    acc = tl.zeros([BLOCK], ACC)
    for t in range(0, T):
        tb = t * B + b
        g = tl.load(g_ptr + tb * CP + start + lane, mask=mask, other=0.0).to(ACC)
        if SPATIAL:
            m_row = m_ptr + tb * P
        else:
            m_row = m_ptr + tb * CP
        m = tl.load(m_row + m_offs, mask=mask, other=0.0).to(ACC)
        acc += _sigmoid(m) * g
    tl.store(df_ptr + b * CP + start + lane, acc.to(df_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mask_grad_kernel(g_ptr, f_ptr, m_ptr, dm_ptr, B, C, P, r0, SPATIAL: tl.constexpr, ACC: tl.constexpr,
                      BLOCK: tl.constexpr):
    tb = (tl.program_id(1) + r0).to(tl.int64)
    b = tb % B
    start = block_start(tl.program_id(0), BLOCK)
    lane = tl.arange(0, BLOCK)
    CP = tl.cast(C, tl.int64) * P
    if SPATIAL:  # elements of one mask row
        n = tl.cast(P, tl.int64)
    else:
        n = CP
    mask = lane < n - start
    m = tl.load(m_ptr + tb * n + start + lane, mask=mask, other=0.0).to(ACC)
    s = _sigmoid(m)
    if SPATIAL:  # all C channels share the pixel's mask logit
        red = tl.zeros([BLOCK], ACC)
        for c in range(0, C):
            g = tl.load(g_ptr + (tb * C + c) * P + start + lane, mask=mask, other=0.0).to(ACC)
            f = tl.load(f_ptr + (b * C + c) * P + start + lane, mask=mask, other=0.0).to(ACC)
            red += f * g
    else:
        g = tl.load(g_ptr + tb * CP + start + lane, mask=mask, other=0.0).to(ACC)
        f = tl.load(f_ptr + b * CP + start + lane, mask=mask, other=0.0).to(ACC)
        red = f * g
    tl.store(dm_ptr + tb * n + start + lane, (s * (1.0 - s) * red).to(dm_ptr.dtype.element_ty), mask=mask)


def _sizes(f, m):
    T, B, M = m.shape[:3]
    C, P = f.shape[1], f.shape[2] * f.shape[3]
    _launch.require(limits.sfa_apply(f, m))
    return T, B, C, P, M == 1


def forward(features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    f, m = features.contiguous(), mask_logits.contiguous()
    T, B, C, P, spatial = _sizes(f, m)
    out = f.new_empty(T, *f.shape)
    if out.numel() == 0:
        return out
    acc = _launch.acc_dtypes(f.dtype)[1]
    with _launch.device_guard(f):
        for r0, n in _launch.grid_chunks(T * B):
            _forward_kernel[(triton.cdiv(C * P, BLOCK), n)](f, m, out, B, C * P, P, r0, SPATIAL=spatial,
                                                           ACC=acc, BLOCK=BLOCK)
    return out


def backward(grad_out, features, mask_logits):
    f, m, g = features.contiguous(), mask_logits.contiguous(), grad_out.contiguous()
    T, B, C, P, spatial = _sizes(f, m)
    df, dm = torch.empty_like(f), torch.empty_like(m)
    if f.numel() == 0 or T == 0:
        return df.zero_(), dm.zero_()
    acc = _launch.acc_dtypes(f.dtype)[1]
    with _launch.device_guard(f):
        for r0, n in _launch.grid_chunks(B):
            _features_grad_kernel[(triton.cdiv(C * P, BLOCK), n)](g, m, df, T, B, C * P, P, r0, SPATIAL=spatial,
                                                                 ACC=acc, BLOCK=BLOCK)
        # mask element i of a row covers the features at c * P + i for every c when the mask is spatial
        # (M = 1), element i itself when it is per channel (M = C).
        for r0, n in _launch.grid_chunks(T * B):
            _mask_grad_kernel[(triton.cdiv(P if spatial else C * P, BLOCK), n)](
                g, f, m, dm, B, C, P, r0, SPATIAL=spatial, ACC=acc, BLOCK=BLOCK)
    return df, dm
