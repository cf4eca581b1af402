"""Triton kernels of sfa_apply. Arithmetic in ACC (fp32, or fp64 for fp64 inputs).

forward            grid (blocks of C*P, T*B): out = sigmoid(m) * f (a spatial mask is read at pixel p % P).
backward features  grid (blocks of C*P, B): d_f = sum over the T tasks of sigmoid(m_t) * g_t (one pass).
backward mask      M = C: grid (blocks of C*P, T*B), element-wise; M = 1: grid (blocks of P, T*B), each
                   program sums f * g over the C channels of its pixels. No atomics: deterministic.
"""
import torch
import triton
import triton.language as tl

BLOCK = 256


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _forward_kernel(f_ptr, m_ptr, out_ptr, B, C, P, M, ACC: tl.constexpr, BLOCK: tl.constexpr):
    tb = tl.program_id(1).to(tl.int64)
    b = tb % B
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < C * P
    f = tl.load(f_ptr + b * C * P + offs, mask=mask, other=0.0).to(ACC)
    m_offs = tl.where(M == 1, offs % P, offs)
    m = tl.load(m_ptr + tb * M * P + m_offs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + tb * C * P + offs, (_sigmoid(m) * f).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _features_grad_kernel(g_ptr, m_ptr, df_ptr, T, B, C, P, M, ACC: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < C * P
    m_offs = tl.where(M == 1, offs % P, offs)
    acc = tl.zeros([BLOCK], ACC)
    for t in range(0, T):
        tb = t * B + b
        g = tl.load(g_ptr + tb * C * P + offs, mask=mask, other=0.0).to(ACC)
        m = tl.load(m_ptr + tb * M * P + m_offs, mask=mask, other=0.0).to(ACC)
        acc += _sigmoid(m) * g
    tl.store(df_ptr + b * C * P + offs, acc.to(df_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mask_grad_kernel(g_ptr, f_ptr, m_ptr, dm_ptr, B, C, P, M, ACC: tl.constexpr, BLOCK: tl.constexpr):
    tb = tl.program_id(1).to(tl.int64)
    b = tb % B
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    n = M * P
    mask = offs < n
    m = tl.load(m_ptr + tb * n + offs, mask=mask, other=0.0).to(ACC)
    s = _sigmoid(m)
    red = tl.zeros([BLOCK], ACC)
    channels = C // M  # C channels share a spatial mask (M = 1); one channel per element when M = C
    for c in range(0, channels):
        idx = c * P + offs
        g = tl.load(g_ptr + tb * C * P + idx, mask=mask, other=0.0).to(ACC)
        f = tl.load(f_ptr + b * C * P + idx, mask=mask, other=0.0).to(ACC)
        red += f * g
    tl.store(dm_ptr + tb * n + offs, (s * (1.0 - s) * red).to(dm_ptr.dtype.element_ty), mask=mask)


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def forward(features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    f, m = features.contiguous(), mask_logits.contiguous()
    T, B, M = m.shape[:3]
    C, P = f.shape[1], f.shape[2] * f.shape[3]
    out = f.new_empty(T, *f.shape)
    if out.numel() == 0:
        return out
    _forward_kernel[(triton.cdiv(C * P, BLOCK), T * B)](f, m, out, B, C, P, M, ACC=_acc(f.dtype), BLOCK=BLOCK)
    return out


def backward(grad_out, features, mask_logits):
    f, m, g = features.contiguous(), mask_logits.contiguous(), grad_out.contiguous()
    T, B, M = m.shape[:3]
    C, P = f.shape[1], f.shape[2] * f.shape[3]
    df, dm = torch.empty_like(f), torch.empty_like(m)
    if f.numel() == 0 or T == 0:
        return df.zero_(), dm.zero_()
    acc = _acc(f.dtype)
    _features_grad_kernel[(triton.cdiv(C * P, BLOCK), B)](g, m, df, T, B, C, P, M, ACC=acc, BLOCK=BLOCK)
    # mask element i (of M * P) covers the features at c * P + i for c < C / M: all C channels of pixel i
    # when M = 1, element i itself when M = C.
    _mask_grad_kernel[(triton.cdiv(M * P, BLOCK), T * B)](g, f, m, dm, B, C, P, M, ACC=acc, BLOCK=BLOCK)
    return df, dm
