"""Triton kernels of ctal_affinity: the exact reassociation (csrc/common/ctal_affinity_reassoc.h), as three
tiled GEMM-style kernels over unpadded (B, T*C, N) features; the k x k shifts of the key grid are masked
index arithmetic, so nothing with N x N elements exists. All arithmetic in ACC (fp32; fp64 for fp64 inputs)
with IEEE dots (no TF32).

  _gram_kernel   out[tap, b, m, n] = sum_j A[b, m, j] * S[tw, tap, t(n), j] * Bsrc[b, n, j + SIGN*d_tap]
                 (forward: G_d = V S_d(F)^T;  backward: dG_d = dZ Q_d^T with S the tap weights, SIGN=0)
  _apply_kernel  out[b, m, i] = sum_{tap, n} L_tap[b, m, n] (or L_tap[b, n, m]) * S[..] * Src[b, n, i + SIGN*d]
                 (forward: Z = sum_d G_d Q_d;  backward: dV = sum_d dG_d S_d(F), dF += sum_d S_d^T(dG_d^T V))
  _query_kernel  dQ_d = G_d^T dZ per tap and output-task group, reduced on the spot into dF (query side) and
                 per-program partials of dweight (summed by the launcher: deterministic, no atomics).

Row and column tiles never straddle two tasks, so per-task weights are uniform within a tile. The bias
terms, the L2 normalisation and its backward, and the gamma blend are element-wise PyTorch in the launcher.
The gram kernel's tile axis (B * T^2 * tiles^2 programs) is grid axis 1, launched in chunks
(``_launch.grid_chunks``); the other kernels put all their tiles on axis 0. Offsets of whole rows and
matrices are int64 (the batch index is converted first); offsets inside one N-pixel row are int32.
"""
import torch
import triton
import triton.language as tl

from . import _launch

EPS = 1e-12


@triton.jit
def _shifted(j, dy, dx, H, W, N):
    y = j // W
    x = j % W
    yy = y + dy
    xx = x + dx
    ok = (j < N) & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    return yy * W + xx, ok


@triton.jit
def _gram_kernel(a_ptr, b_ptr, s_ptr, out_ptr, B, T, C, H, W, N, n_mt, n_nt, pid1_base,
                 K: tl.constexpr, SIGN: tl.constexpr, SCALED: tl.constexpr, PER_TASK: tl.constexpr,
                 TAPS_PER_PROGRAM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 ACC: tl.constexpr):
    pid = tl.program_id(1) + pid1_base
    nt = pid % n_nt
    pid = pid // n_nt
    t_col = pid % T
    pid = pid // T
    mt = pid % n_mt
    pid = pid // n_mt
    t_row = pid % T
    b = (pid // T).to(tl.int64)
    P: tl.constexpr = K // 2
    TC = T * C
    m = mt * BM + tl.arange(0, BM)
    n = nt * BN + tl.arange(0, BN)
    m_ok = m < C
    n_ok = n < C
    a_rows = a_ptr + (b * TC + t_row * C + m) * N
    b_rows = b_ptr + (b * TC + t_col * C + n) * N
    tw = t_row if PER_TASK else 0
    for q in range(TAPS_PER_PROGRAM):  # all taps in one program under the interpreter, one per program on GPUs
        tap = tl.program_id(0) * TAPS_PER_PROGRAM + q
        dy = (tap // K - P) * SIGN
        dx = (tap % K - P) * SIGN
        s_base = s_ptr + ((tw * K * K + tap) * T + t_col).to(tl.int64) * N
        acc = tl.zeros((BM, BN), dtype=ACC)
        for j0 in range(0, N, BK):
            j = j0 + tl.arange(0, BK)
            j_ok = j < N
            a = tl.load(a_rows[:, None] + j[None, :], mask=m_ok[:, None] & j_ok[None, :], other=0.0).to(ACC)
            jj, ok = _shifted(j, dy, dx, H, W, N)
            bt = tl.load(b_rows[:, None] + jj[None, :], mask=n_ok[:, None] & ok[None, :], other=0.0).to(ACC)
            if SCALED:
                s = tl.load(s_base + j, mask=j_ok, other=0.0).to(ACC)
                bt = bt * s[None, :]
            acc += tl.dot(a, tl.trans(bt), input_precision="ieee", out_dtype=ACC)
        out = out_ptr + ((tap * B + b) * TC + t_row * C + m)[:, None] * TC + (t_col * C + n)[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _apply_kernel(l_ptr, src_ptr, s_ptr, out_ptr, B, T, C, H, W, N, n_mt, n_it,
                  K: tl.constexpr, SIGN: tl.constexpr, SCALED: tl.constexpr, PER_TASK: tl.constexpr,
                  TRANS_L: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, BI: tl.constexpr,
                  ACC: tl.constexpr):
    pid = tl.program_id(0)
    it = pid % n_it
    pid = pid // n_it
    mt = pid % n_mt
    pid = pid // n_mt
    t_row = pid % T
    b = (pid // T).to(tl.int64)
    P: tl.constexpr = K // 2
    TC = T * C
    m = mt * BM + tl.arange(0, BM)
    m_ok = m < C
    rows = t_row * C + m
    i = it * BI + tl.arange(0, BI)
    i_ok = i < N
    tw = t_row if PER_TASK else 0
    acc = tl.zeros((BM, BI), dtype=ACC)
    for tap in range(K * K):
        dy = (tap // K - P) * SIGN
        dx = (tap % K - P) * SIGN
        ii, ok = _shifted(i, dy, dx, H, W, N)
        l_base = l_ptr + (tap * B + b) * TC * TC
        for t_col in range(T):
            if SCALED:
                s = tl.load(s_ptr + ((tw * K * K + tap) * T + t_col).to(tl.int64) * N + i, mask=i_ok, other=0.0)
            for c0 in range(0, C, BC):
                c = c0 + tl.arange(0, BC)
                c_ok = c < C
                cols = t_col * C + c
                lmask = m_ok[:, None] & c_ok[None, :]
                if TRANS_L:
                    lt = tl.load(l_base + cols[None, :] * TC + rows[:, None], mask=lmask, other=0.0).to(ACC)
                else:
                    lt = tl.load(l_base + rows[:, None] * TC + cols[None, :], mask=lmask, other=0.0).to(ACC)
                src = tl.load(src_ptr + (b * TC + cols)[:, None] * N + ii[None, :],
                              mask=c_ok[:, None] & ok[None, :], other=0.0).to(ACC)
                if SCALED:
                    src = src * s[None, :].to(ACC)
                acc += tl.dot(lt, src, input_precision="ieee", out_dtype=ACC)
    out = out_ptr + (b * TC + rows)[:, None] * N + i[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & i_ok[None, :])


@triton.jit
def _query_kernel(g_ptr, dz_ptr, f_ptr, s_ptr, df_ptr, dwp_ptr, B, T, C, N, n_ct, n_it,
                  K: tl.constexpr, PER_TASK: tl.constexpr, TW: tl.constexpr, BC: tl.constexpr,
                  BM: tl.constexpr, BI: tl.constexpr, ACC: tl.constexpr):
    pid = tl.program_id(0)
    it = pid % n_it
    pid = pid // n_it
    ct = pid % n_ct
    pid = pid // n_ct
    tq = pid % T
    b = (pid // T).to(tl.int64)
    TC = T * C
    c = ct * BC + tl.arange(0, BC)
    c_ok = c < C
    cols = tq * C + c
    i = it * BI + tl.arange(0, BI)
    i_ok = i < N
    fmask = c_ok[:, None] & i_ok[None, :]
    f = tl.load(f_ptr + (b * TC + cols)[:, None] * N + i[None, :], mask=fmask, other=0.0).to(ACC)
    df = tl.zeros((BC, BI), dtype=ACC)
    for tap in range(K * K):
        g_base = g_ptr + (tap * B + b) * TC * TC
        for tw in range(TW):
            acc = tl.zeros((BC, BI), dtype=ACC)
            t_lo = tw if PER_TASK else 0
            t_hi = tw + 1 if PER_TASK else T
            for tm in range(t_lo, t_hi):
                for m0 in range(0, C, BM):
                    m = m0 + tl.arange(0, BM)
                    m_ok = m < C
                    rows = tm * C + m
                    gt = tl.load(g_base + rows[None, :] * TC + cols[:, None], mask=c_ok[:, None] & m_ok[None, :],
                                 other=0.0).to(ACC)
                    dz = tl.load(dz_ptr + (b * TC + rows)[:, None] * N + i[None, :],
                                 mask=m_ok[:, None] & i_ok[None, :], other=0.0).to(ACC)
                    acc += tl.dot(gt, dz, input_precision="ieee", out_dtype=ACC)
            s = tl.load(s_ptr + ((tw * K * K + tap) * T + tq).to(tl.int64) * N + i, mask=i_ok, other=0.0).to(ACC)
            df += acc * s[None, :]
            part = tl.sum(acc * f, axis=0)
            slot = ((((b * n_ct + ct) * TW + tw) * K * K + tap) * T + tq) * N
            tl.store(dwp_ptr + slot + i, part.to(dwp_ptr.dtype.element_ty), mask=i_ok)
    tl.store(df_ptr + (b * TC + cols)[:, None] * N + i[None, :], df.to(df_ptr.dtype.element_ty), mask=fmask)


class _Geometry:
    def __init__(self, x, weight):
        self.B, self.T, self.C, self.H, self.W = x.shape
        self.N = self.H * self.W
        self.k = weight.shape[-1]
        self.taps = self.k * self.k
        self.per_task = weight.dim() == 5
        self.Tw = self.T if self.per_task else 1
        self.TC = self.T * self.C
        self.tile_c = max(16, min(64, triton.next_power_of_2(self.C)))
        self.n_ct = triton.cdiv(self.C, self.tile_c)
        self.tile_n = 64  # pixels per tile
        self.n_it = triton.cdiv(self.N, self.tile_n)


def _prepare(x, v, weight, g: _Geometry):
    acc, _ = _launch.acc_dtypes(x.dtype)
    xa = x.to(acc).contiguous().view(g.B, g.T, g.C, g.N)
    va = v.to(acc).contiguous().view(g.B, g.T, g.C, g.N)
    norm = xa.norm(dim=2, keepdim=True)
    inv = norm.clamp_min(EPS).reciprocal()
    fh = (xa * inv).contiguous()
    # Tap weights (Tw, taps, T, N): S[tw, tap, t', i] = weight[(tw,) i, t', tap].
    s = weight.to(acc).reshape(g.Tw, g.N, g.T, g.taps).permute(0, 3, 2, 1).contiguous()
    return xa, va, fh, s, norm, inv


def _gram(a, src, s, out, g: _Geometry, sign: int, scaled: bool):
    _, ACC = _launch.acc_dtypes(a.dtype)
    per_program = g.taps if a.device.type == "cpu" else 1
    for base, n in _launch.grid_chunks(g.B * g.T * g.n_ct * g.T * g.n_ct):
        _gram_kernel[(g.taps // per_program, n)](
            a, src, s, out, g.B, g.T, g.C, g.H, g.W, g.N, g.n_ct, g.n_ct, base, K=g.k, SIGN=sign, SCALED=scaled,
            PER_TASK=g.per_task, TAPS_PER_PROGRAM=per_program, BM=g.tile_c, BN=g.tile_c, BK=g.tile_n, ACC=ACC)


def _apply(lhs, src, s, g: _Geometry, sign: int, scaled: bool, trans: bool):
    _, ACC = _launch.acc_dtypes(src.dtype)
    out = torch.empty(g.B, g.TC, g.N, dtype=src.dtype, device=src.device)
    grid = (g.B * g.T * g.n_ct * g.n_it,)
    _apply_kernel[grid](lhs, src, s, out, g.B, g.T, g.C, g.H, g.W, g.N, g.n_ct, g.n_it, K=g.k, SIGN=sign,
                        SCALED=scaled, PER_TASK=g.per_task, TRANS_L=trans, BM=g.tile_c, BC=g.tile_c,
                        BI=g.tile_n, ACC=ACC)
    return out.view(g.B, g.T, g.C, g.N)


def forward(x, v, weight, bias, gamma):
    g = _Geometry(x, weight)
    xa, va, fh, s, _, _ = _prepare(x, v, weight, g)
    gram = torch.empty(g.taps, g.B, g.TC, g.TC, dtype=xa.dtype, device=x.device)
    if x.numel():
        with _launch.device_guard(x):
            _gram(va, fh, s, gram, g, sign=1, scaled=False)
            Z = _apply(gram, fh, s, g, sign=0, scaled=True, trans=False)
    else:
        Z = torch.zeros_like(xa)
    Z = Z + va.sum(3, keepdim=True) * bias.to(xa.dtype).reshape(1, g.Tw, 1, g.N)
    r = gamma * Z + (1 - gamma) * xa
    return r.reshape(x.shape).to(x.dtype), gram


def backward(grad_out, x, v, weight, bias, gamma, gram):
    g = _Geometry(x, weight)
    xa, va, fh, s, norm, inv = _prepare(x, v, weight, g)
    dr = grad_out.to(xa.dtype).contiguous().view(g.B, g.T, g.C, g.N)
    dZ = (gamma * dr).contiguous()
    partials = torch.zeros(g.B, g.n_ct, g.Tw, g.taps, g.T, g.N, dtype=xa.dtype, device=x.device)
    if x.numel():
        dG = torch.empty_like(gram)
        dF_query = torch.empty_like(fh)
        _, ACC = _launch.acc_dtypes(xa.dtype)
        with _launch.device_guard(x):
            _gram(dZ, fh, s, dG, g, sign=0, scaled=True)
            dv = _apply(dG, fh, s, g, sign=1, scaled=False, trans=False)
            dF = _apply(dG, va, s, g, sign=-1, scaled=False, trans=True)
            _query_kernel[(g.B * g.T * g.n_ct * g.n_it,)](
                gram, dZ, fh, s, dF_query, partials, g.B, g.T, g.C, g.N, g.n_ct, g.n_it, K=g.k,
                PER_TASK=g.per_task, TW=g.Tw, BC=g.tile_c, BM=g.tile_c, BI=g.tile_n, ACC=ACC)
        dF = dF + dF_query
    else:
        dv, dF = torch.zeros_like(va), torch.zeros_like(fh)
    bias_a = bias.to(xa.dtype).reshape(1, g.Tw, 1, g.N)
    dv = dv + (dZ * bias_a).sum(3, keepdim=True)
    dbias = (dZ * va.sum(3, keepdim=True)).sum((0, 2))
    if not g.per_task:
        dbias = dbias.sum(0)
    proj = (fh * dF).sum(2, keepdim=True).masked_fill(norm <= EPS, 0)
    dx = (dF - fh * proj) * inv + (1 - gamma) * dr
    dweight = partials.sum((0, 1)).permute(0, 3, 2, 1).contiguous().reshape(weight.shape)
    return (dx.reshape(x.shape).to(x.dtype), dv.reshape(x.shape).to(x.dtype), dweight.to(weight.dtype),
            dbias.reshape(bias.shape).to(bias.dtype).contiguous())
