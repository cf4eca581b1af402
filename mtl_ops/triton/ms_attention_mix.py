"""Triton kernels of ms_attention_mix. Arithmetic in ACC (fp32, or fp64 for fp64 inputs).

forward   grid (pixel blocks of H*W, B): logits of every scale at the block's pixels -> lse; then for each
          block of KB channels, sum over scales of exp(a_s - lse) * bilinear(value_s). No resized map is stored.
backward  1. grid (pixel blocks, B): gv_s = <grad_out, up(v_s)> per scale, go = sum_s w_s gv_s, and the
             logit gradient at output resolution da_s = w_s (gv_s - go) into a (B, S, H*W) workspace (1/K of
             the output per scale; the only output-resolution buffer of the backward). Every scale's gv_s and
             w_s stay in registers ((S, BLOCK) tiles) until da is written once.
          2. per scale, grid (low-res pixel blocks x window tiles, B x channel blocks): each low-res value
             gradient gathers the output pixels that read it, recomputing w_s. That window is about
             (2H/h + 5) x (2W/w + 5) output pixels, all of H x W for a 1 x 1 scale, so it is cut into
             WINDOW_TILE x WINDOW_TILE tiles, one per program; the per-tile partials are summed by the
             launcher in a fixed order.
          3. per scale, the same for the logit gradients, gathering da_s.
          Gathers and fixed-order sums, no atomics: deterministic for any sizes.

Grid axis 1 is launched in chunks (``_launch.grid_chunks``; ``r0`` is the chunk's first row). Image and
channel offsets are int64 (the batch index is converted first); offsets inside one plane are int32, and the
launcher checks that every plane fits.
"""
import torch
import triton
import triton.language as tl

from . import _launch, limits

BLOCK = 128
KB_MAX = 32
WINDOW_TILE = 16  # rows and columns of the gather window one backward program covers


@triton.jit
def _taps(dst, n_in, n_out, ACC: tl.constexpr):
    """PyTorch's align_corners=False bilinear taps (csrc/common/bilinear.h). Sizes go through tl.cast: an
    integer argument equal to 1 arrives as a constexpr when compiled."""
    scale = tl.cast(n_in, ACC) / tl.cast(n_out, ACC)
    src = (dst.to(ACC) + 0.5) * scale - 0.5
    src = tl.maximum(src, 0.0)
    i0 = tl.minimum(src.to(tl.int32), n_in - 1)
    i1 = tl.where(i0 < n_in - 1, i0 + 1, i0)
    lam = tl.minimum(src - i0.to(ACC), 1.0)
    return i0, i1, lam


@triton.jit
def _tap_weight(i0, i1, lam, i):
    return tl.where(i0 == i, 1.0 - lam, 0.0) + tl.where(i1 == i, lam, 0.0)


@triton.jit
def _bilerp(ptr, w, y0, y1, ly, x0, x1, lx, mask, ACC: tl.constexpr):
    v00 = tl.load(ptr + y0 * w + x0, mask=mask, other=0.0).to(ACC)
    v01 = tl.load(ptr + y0 * w + x1, mask=mask, other=0.0).to(ACC)
    v10 = tl.load(ptr + y1 * w + x0, mask=mask, other=0.0).to(ACC)
    v11 = tl.load(ptr + y1 * w + x1, mask=mask, other=0.0).to(ACC)
    return (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)


@triton.jit
def _logit_at(l_ptr, b, h, w, y, x, H, W, mask, ACC: tl.constexpr):
    y0, y1, ly = _taps(y, h, H, ACC)
    x0, x1, lx = _taps(x, w, W, ACC)
    return _bilerp(l_ptr + b * h * w, w, y0, y1, ly, x0, x1, lx, mask, ACC)


@triton.jit
def _forward_kernel(v_ptrs, l_ptrs, hs, ws, out_ptr, lse_ptr, K, H, W, r0,
                    S: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, KB: tl.constexpr):
    b = (tl.program_id(1) + r0).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = offs < H * W
    y = offs // W
    x = offs % W
    m = tl.full([BLOCK], float("-inf"), ACC)
    for s in tl.static_range(S):
        m = tl.maximum(m, _logit_at(l_ptrs[s], b, hs[s], ws[s], y, x, H, W, pm, ACC))
    total = tl.zeros([BLOCK], ACC)
    for s in tl.static_range(S):
        total += tl.exp(_logit_at(l_ptrs[s], b, hs[s], ws[s], y, x, H, W, pm, ACC) - m)
    lse = m + tl.log(total)
    tl.store(lse_ptr + b * H * W + offs, lse, mask=pm)
    for k0 in range(0, K, KB):
        ks = k0 + tl.arange(0, KB)
        mask2 = (ks < K)[:, None] & pm[None, :]
        acc = tl.zeros([KB, BLOCK], ACC)
        for s in tl.static_range(S):
            h = hs[s]
            w = ws[s]
            wgt = tl.exp(_logit_at(l_ptrs[s], b, h, w, y, x, H, W, pm, ACC) - lse)
            y0, y1, ly = _taps(y, h, H, ACC)
            x0, x1, lx = _taps(x, w, W, ACC)
            plane = v_ptrs[s] + (b * K + ks[:, None]) * h * w
            v = _bilerp(plane, w, y0[None, :], y1[None, :], ly[None, :], x0[None, :], x1[None, :], lx[None, :],
                        mask2, ACC)
            acc += wgt[None, :] * v
        o_ptr = out_ptr + (b * K + ks[:, None]) * H * W + offs[None, :]
        tl.store(o_ptr, acc.to(out_ptr.dtype.element_ty), mask=mask2)


@triton.jit
def _row_terms_kernel(g_ptr, lse_ptr, v_ptrs, l_ptrs, hs, ws, da_ptr, K, H, W, r0,
                      S: tl.constexpr, SP: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                      KB: tl.constexpr):
    b = (tl.program_id(1) + r0).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = offs < H * W
    y = offs // W
    x = offs % W
    srow = tl.arange(0, SP)
    go = tl.zeros([BLOCK], ACC)
    gv_all = tl.zeros([SP, BLOCK], ACC)  # row s: gv_s
    w_all = tl.zeros([SP, BLOCK], ACC)  # row s: w_s
    lse = tl.load(lse_ptr + b * H * W + offs, mask=pm, other=0.0)
    for s in tl.static_range(S):
        h = hs[s]
        w = ws[s]
        wgt = tl.exp(_logit_at(l_ptrs[s], b, h, w, y, x, H, W, pm, ACC) - lse)
        y0, y1, ly = _taps(y, h, H, ACC)
        x0, x1, lx = _taps(x, w, W, ACC)
        gv = tl.zeros([BLOCK], ACC)
        for k0 in range(0, K, KB):
            ks = k0 + tl.arange(0, KB)
            mask2 = (ks < K)[:, None] & pm[None, :]
            g = tl.load(g_ptr + (b * K + ks[:, None]) * H * W + offs[None, :], mask=mask2, other=0.0).to(ACC)
            plane = v_ptrs[s] + (b * K + ks[:, None]) * h * w
            v = _bilerp(plane, w, y0[None, :], y1[None, :], ly[None, :], x0[None, :], x1[None, :], lx[None, :],
                        mask2, ACC)
            gv += tl.sum(g * v, axis=0)
        go += wgt * gv
        here = (srow == s)[:, None]
        gv_all = tl.where(here, gv[None, :], gv_all)
        w_all = tl.where(here, wgt[None, :], w_all)
    da = w_all * (gv_all - go[None, :])
    tl.store(da_ptr + (b * S + srow[:, None]) * H * W + offs[None, :], da, mask=(srow < S)[:, None] & pm[None, :])


@triton.jit
def _window_start(i, n_in, n_out, ACC: tl.constexpr):
    """First output position that can read input index i (csrc/common/bilinear.h gather_range)."""
    lo_f = (i.to(ACC) - 0.5) * (tl.cast(n_out, ACC) / tl.cast(n_in, ACC)) - 0.5
    return tl.where(lo_f < 0, 0, tl.maximum(lo_f.to(tl.int32) - 1, 0))


@triton.jit
def _window_tile(n_pb, n_tx, WY, WX, TILE: tl.constexpr):
    """(pixel block, window rows, window columns) of this program: axis 0 enumerates the window tiles of
    every pixel block."""
    pid = tl.program_id(0)
    tile = pid // n_pb
    ty = tile // n_tx
    tx = tile % n_tx
    return pid % n_pb, tile, ty * TILE, tl.minimum(ty * TILE + TILE, WY), tx * TILE, tl.minimum(tx * TILE + TILE, WX)


@triton.jit
def _gather_values_kernel(g_ptr, lse_ptr, l_ptr, dv_ptr, B, K, H, W, h, w, WY, WX, n_pb, n_tx, n_kb, r0,
                          TILE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, KB: tl.constexpr):
    pb, tile, dy0, dy1, dx0, dx1 = _window_tile(n_pb, n_tx, WY, WX, TILE)
    row = tl.program_id(1) + r0  # b * n_kb + channel block
    b = (row // n_kb).to(tl.int64)
    offs = pb * BLOCK + tl.arange(0, BLOCK)
    pm = offs < h * w
    i = offs // w
    j = offs % w
    ks = (row % n_kb) * KB + tl.arange(0, KB)
    km = ks < K
    lo_y = _window_start(i, h, H, ACC)
    lo_x = _window_start(j, w, W, ACC)
    acc = tl.zeros([KB, BLOCK], ACC)
    for dy in range(dy0, dy1):
        yy = lo_y + dy
        y0, y1, ly = _taps(yy, h, H, ACC)
        wy = _tap_weight(y0, y1, ly, i)
        for dx in range(dx0, dx1):
            xx = lo_x + dx
            x0, x1, lx = _taps(xx, w, W, ACC)
            valid = pm & (yy < H) & (xx < W)
            wt = tl.where(valid, wy * _tap_weight(x0, x1, lx, j), 0.0)
            a = _bilerp(l_ptr + b * h * w, w, y0, y1, ly, x0, x1, lx, valid, ACC)
            lse = tl.load(lse_ptr + b * H * W + yy * W + xx, mask=valid, other=0.0)
            c = wt * tl.exp(a - lse)
            g = tl.load(g_ptr + (b * K + ks[:, None]) * H * W + (yy * W + xx)[None, :],
                        mask=km[:, None] & valid[None, :], other=0.0).to(ACC)
            acc += c[None, :] * g
    out = dv_ptr + ((tile.to(tl.int64) * B + b) * K + ks[:, None]) * h * w + offs[None, :]
    tl.store(out, acc, mask=km[:, None] & pm[None, :])


@triton.jit
def _gather_logits_kernel(da_ptr, dl_ptr, s, S, B, H, W, h, w, WY, WX, n_pb, n_tx, r0,
                          TILE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pb, tile, dy0, dy1, dx0, dx1 = _window_tile(n_pb, n_tx, WY, WX, TILE)
    b = (tl.program_id(1) + r0).to(tl.int64)
    offs = pb * BLOCK + tl.arange(0, BLOCK)
    pm = offs < h * w
    i = offs // w
    j = offs % w
    lo_y = _window_start(i, h, H, ACC)
    lo_x = _window_start(j, w, W, ACC)
    acc = tl.zeros([BLOCK], ACC)
    for dy in range(dy0, dy1):
        yy = lo_y + dy
        y0, y1, ly = _taps(yy, h, H, ACC)
        wy = _tap_weight(y0, y1, ly, i)
        for dx in range(dx0, dx1):
            xx = lo_x + dx
            x0, x1, lx = _taps(xx, w, W, ACC)
            valid = pm & (yy < H) & (xx < W)
            wt = tl.where(valid, wy * _tap_weight(x0, x1, lx, j), 0.0)
            d = tl.load(da_ptr + (b * S + s) * H * W + yy * W + xx, mask=valid, other=0.0)
            acc += wt * d
    tl.store(dl_ptr + (tile.to(tl.int64) * B + b) * h * w + offs, acc, mask=pm)


def _kb(K: int) -> int:
    return max(1, min(KB_MAX, triton.next_power_of_2(max(K, 1))))


def _window(n_in: int, n_out: int) -> int:
    """Largest gather window (csrc/common/bilinear.h gather_window)."""
    return min(int(2.0 * n_out / n_in) + 5, n_out)


def forward(values, logits, size):
    values = [v.contiguous() for v in values]
    logits = [a.contiguous() for a in logits]
    B, K = values[0].shape[:2]
    H, W = int(size[0]), int(size[1])
    _launch.require(limits.ms_attention_mix(values, logits, (H, W)))
    acc_torch, acc_tl = _launch.acc_dtypes(values[0].dtype)
    out = values[0].new_empty(B, K, H, W)
    lse = values[0].new_empty(B, H, W, dtype=acc_torch)
    if B == 0:
        return out, lse
    hs, ws = tuple(v.shape[2] for v in values), tuple(v.shape[3] for v in values)
    with _launch.device_guard(values[0]):
        for r0, n in _launch.grid_chunks(B):
            _forward_kernel[(triton.cdiv(H * W, BLOCK), n)](tuple(values), tuple(logits), hs, ws, out, lse, K, H, W,
                                                            r0, S=len(values), ACC=acc_tl, BLOCK=BLOCK, KB=_kb(K))
    return out, lse


def backward(grad_out, values, logits, lse):
    values = [v.contiguous() for v in values]
    logits = [a.contiguous() for a in logits]
    g, lse = grad_out.contiguous(), lse.contiguous()
    S = len(values)
    B, K, H, W = g.shape
    _launch.require(limits.ms_attention_mix(values, logits, (H, W)))
    acc_torch, acc_tl = _launch.acc_dtypes(values[0].dtype)
    dtype = values[0].dtype
    if B == 0:
        return [torch.zeros_like(t, memory_format=torch.contiguous_format) for t in values + logits]
    kb = _kb(K)
    n_kb = triton.cdiv(K, kb)
    hs, ws = tuple(v.shape[2] for v in values), tuple(v.shape[3] for v in values)
    da = torch.empty(B, S, H, W, dtype=acc_torch, device=g.device)
    d_values, d_logits = [], []
    with _launch.device_guard(g):
        for r0, n in _launch.grid_chunks(B):
            _row_terms_kernel[(triton.cdiv(H * W, BLOCK), n)](
                g, lse, tuple(values), tuple(logits), hs, ws, da, K, H, W, r0, S=S,
                SP=triton.next_power_of_2(S), ACC=acc_tl, BLOCK=BLOCK, KB=kb)
        for s in range(S):
            h, w = hs[s], ws[s]
            wy, wx = _window(h, H), _window(w, W)
            tile = WINDOW_TILE
            n_pb, n_ty, n_tx = triton.cdiv(h * w, BLOCK), triton.cdiv(wy, tile), triton.cdiv(wx, tile)
            grid0 = n_pb * n_ty * n_tx
            dv = torch.zeros(n_ty * n_tx, B, K, h, w, dtype=acc_torch, device=g.device)
            if K > 0:
                for r0, n in _launch.grid_chunks(B * n_kb):
                    _gather_values_kernel[(grid0, n)](g, lse, logits[s], dv, B, K, H, W, h, w, wy, wx, n_pb, n_tx,
                                                      n_kb, r0, TILE=tile, ACC=acc_tl, BLOCK=BLOCK, KB=kb)
            dl = torch.empty(n_ty * n_tx, B, 1, h, w, dtype=acc_torch, device=g.device)
            for r0, n in _launch.grid_chunks(B):
                _gather_logits_kernel[(grid0, n)](da, dl, s, S, B, H, W, h, w, wy, wx, n_pb, n_tx, r0, TILE=tile,
                                                  ACC=acc_tl, BLOCK=BLOCK)
            # Window tiles summed in tile order (a fixed order: deterministic).
            d_values.append(dv.sum(0).to(dtype) if n_ty * n_tx > 1 else dv[0].to(dtype))
            d_logits.append(dl.sum(0).to(dtype) if n_ty * n_tx > 1 else dl[0].to(dtype))
    return d_values + d_logits
