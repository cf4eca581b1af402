"""Triton kernels of routed_primitive_gather: tiled, deterministic, nothing of the primitive bank's size kept.

Tiles: BP output (or input) pixels, BO <= 64 shared output channels, BQ <= 64 task output channels and
BC = 16 input channels; capping them keeps a program's accumulators in registers at any width (the shared
branch of a wide layer is covered by several output-channel blocks). Primitive responses are computed on
the fly as (BC, BP) tiles (codes from mtl_ops.common.primitive_kinds, the kind chosen at run time from
the meta table) and every channel contraction is a tl.dot with IEEE fp32 (fp64 for fp64 inputs) operands.
Variables of the two sides of a run-time branch get different names where their shapes differ: Triton
merges same-named variables of both sides and requires one type.

forward        grid (image x pixel block, output-channel block): a shared block sums W[o, (c, p)] * R_p[c]
               over the channels of the groups it reads; a task block is the 3x3 conv of its task.
d w_shared     grid (o block x primitive x channel block x split): each program sums dy * R over a fixed
               range of (image, pixel block) items; the launcher sums the splits (at most MAX_SPLITS) in
               order. Partials: MAX_SPLITS weight-sized buffers at most, whatever the batch and image size.
d w_task       the same with the 3x3 taps of x, per task (grid axis 1).
d x            gather form, per chunk of images: the response gradients G[n, c, p] = sum_o W[o, (c, p)] dy[n, o]
               and each max pool's window argmaxes are written once into a workspace of at most
               GRAD_CHUNK_ELEMS elements (or one image's worth, if larger), then every input pixel sums
               what each primitive's adjoint and the task conv send it (the dense conv as tl.dot over
               channel tiles). Each element is written by one program: no atomics, the same bits every run.
d biases       sums of grad_out (PyTorch reductions).

Grid axis 1 is launched in chunks (``_launch.grid_chunks``; ``r0`` is the chunk's first row). Image and
channel-plane offsets are int64 (the image index, the channel indices and the split index are converted
first); offsets inside one plane are int32 and the launcher checks that every plane fits (mtl_ops.triton.limits).
"""
import torch
import triton
import triton.language as tl

from ..common import primitive_kinds as codes
from . import _launch, limits

# The primitive codes as compile-time constants of the kernels (Triton reads globals only as tl.constexpr).
IDENTITY, AVG_POOL, MAX_POOL, SHIFT = (tl.constexpr(codes.IDENTITY), tl.constexpr(codes.AVG_POOL),
                                       tl.constexpr(codes.MAX_POOL), tl.constexpr(codes.SHIFT))
NOISE, DW_CONV = tl.constexpr(codes.NOISE), tl.constexpr(codes.DW_CONV)

BP = 64  # pixels per tile
# Accumulators of up to 64 x 64 and 16-channel contraction tiles over 8 warps: compiled for sm_90 with a
# 256-channel layer, wider tiles (32 channels) or 4 warps spill kilobytes of registers per thread, these
# next to none.
BO_MAX, BQ_MAX, BC_MAX = 64, 64, 16
NUM_WARPS = 8
MIN_DOT = 16  # tl.dot needs every dimension >= 16
MAX_SPLITS = 64  # weight-gradient partials per weight
SPLIT_TARGET = 1024  # programs the weight-gradient kernels aim for
GRAD_CHUNK_ELEMS = 1 << 26  # response-gradient workspace (elements) of one image chunk of the dx pass


@triton.jit
def _inside(h, w, H, W, pmask):
    return pmask & (h >= 0) & (h < H) & (w >= 0) & (w < W)


@triton.jit
def _tile(x_img, cofs, cmask, h, w, H, W, pmask, ACC: tl.constexpr):
    """x at (h, w) for the channels at plane offsets cofs: a (BC, BP) tile, zero outside the image."""
    ok = _inside(h, w, H, W, pmask)
    return tl.load(x_img + cofs[:, None] + (h * W + w)[None, :], mask=cmask[:, None] & ok[None, :],
                   other=0.0).to(ACC)


@triton.jit
def _max_window(x_img, cofs, cmask, hc, wc, H, W, pmask, ACC: tl.constexpr, BC: tl.constexpr,
                BP: tl.constexpr):
    """3x3 max around (hc, wc) over the in-bounds taps and its position h * W + w (-1 where no tap): the first
    maximum in scan order, a NaN taken, as PyTorch's max_pool2d."""
    best = tl.zeros([BC, BP], ACC)
    arg = tl.full([BC, BP], -1, tl.int32)
    for u in tl.static_range(3):
        for v in tl.static_range(3):
            h = hc + u - 1
            w = wc + v - 1
            ok = _inside(h, w, H, W, pmask)[None, :]
            t = tl.load(x_img + cofs[:, None] + (h * W + w)[None, :], mask=cmask[:, None] & ok, other=0.0).to(ACC)
            take = ok & ((arg < 0) | (t > best) | (t != t))
            best = tl.where(take, t, best)
            arg = tl.where(take, (h * W + w)[None, :], arg)
    return best, arg


@triton.jit
def _max_value(x_img, cofs, cmask, hc, wc, H, W, pmask, ACC: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr):
    best, arg = _max_window(x_img, cofs, cmask, hc, wc, H, W, pmask, ACC, BC, BP)
    return best


@triton.jit
def _responses(x_img, fz_ptr, c, cmask, hc, wc, H, W, C, pmask, kind, a, b, foff, Hn, Wn,
               ACC: tl.constexpr, BC: tl.constexpr, BP: tl.constexpr):
    """(BC, BP) tile of primitive (kind, a, b) on channels c at centres (hc, wc)."""
    HW = H * W
    cofs = c.to(tl.int64) * HW
    r = tl.zeros([BC, BP], ACC)
    if kind == IDENTITY:
        r = _tile(x_img, cofs, cmask, hc, wc, H, W, pmask, ACC)
    elif kind == AVG_POOL:  # divisor 9
        for u in tl.static_range(3):
            for v in tl.static_range(3):
                r += _tile(x_img, cofs, cmask, hc + u - 1, wc + v - 1, H, W, pmask, ACC)
        r = r / 9.0
    elif kind == MAX_POOL:
        r = _max_value(x_img, cofs, cmask, hc, wc, H, W, pmask, ACC, BC, BP)
    elif kind == SHIFT:
        r = _tile(x_img, cofs, cmask, hc - a, wc - b, H, W, pmask, ACC)
    elif kind == NOISE:  # fixed additive mask, tiled
        r = _tile(x_img, cofs, cmask, hc, wc, H, W, pmask, ACC)
        r += tl.load(fz_ptr + foff + c[:, None] * (Hn * Wn) + ((hc % Hn) * Wn + wc % Wn)[None, :],
                     mask=cmask[:, None] & pmask[None, :], other=0.0).to(ACC)
    elif kind == DW_CONV:  # depthwise 3x3, dilation a
        for u in tl.static_range(3):
            for v in tl.static_range(3):
                f = tl.load(fz_ptr + foff + c * 9 + (u * 3 + v), mask=cmask, other=0.0).to(ACC)
                r += f[:, None] * _tile(x_img, cofs, cmask, hc + (u - 1) * a, wc + (v - 1) * a, H, W, pmask, ACC)
    else:  # DENSE_CONV, 3x3, dilation a: a (BC x C) by (C x BP) product per tap
        for c20 in range(0, C, BC):
            c2 = c20 + tl.arange(0, BC)
            c2mask = c2 < C
            c2ofs = c2.to(tl.int64) * HW
            for u in tl.static_range(3):
                for v in tl.static_range(3):
                    fd = tl.load(fz_ptr + foff + (c[:, None] * C + c2[None, :]) * 9 + (u * 3 + v),
                                 mask=cmask[:, None] & c2mask[None, :], other=0.0).to(ACC)
                    xt = _tile(x_img, c2ofs, c2mask, hc + (u - 1) * a, wc + (v - 1) * a, H, W, pmask, ACC)
                    r += tl.dot(fd, xt, input_precision="ieee", out_dtype=ACC)
    return r


@triton.jit
def _group_channels(o_first, o_last, opg, cpg):
    """Input channels [lo, hi) of the groups that output channels o_first..o_last read."""
    return (o_first // opg) * cpg, (o_last // opg + 1) * cpg


@triton.jit
def _forward_kernel(x_ptr, meta_ptr, fz_ptr, wsh_ptr, bsh_ptr, wsp_ptr, bsp_ptr, y_ptr,
                    C, H, W, Ho, Wo, B, Csh, Csp, k, cpg, opg, stride, n_pb, n_ob, r0,
                    ACC: tl.constexpr, BP: tl.constexpr, BO: tl.constexpr, BQ: tl.constexpr, BC: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // n_pb).to(tl.int64)
    pix = (pid % n_pb) * BP + tl.arange(0, BP)
    blk = tl.program_id(1) + r0
    HWo = Ho * Wo
    pmask = pix < HWo
    hc = (pix // Wo) * stride
    wc = (pix % Wo) * stride
    x_img = x_ptr + n * C * (H * W)
    y_img = y_ptr + n * (Csh + Csp) * HWo
    if blk < n_ob:  # shared channels o
        o = blk * BO + tl.arange(0, BO)
        omask = o < Csh
        c_lo, c_hi = _group_channels(blk * BO, tl.minimum(blk * BO + BO, Csh) - 1, opg, cpg)
        acc_o = tl.zeros([BO, BP], ACC)
        for c0 in range(c_lo, c_hi, BC):
            c = c0 + tl.arange(0, BC)
            cmask = c < c_hi
            wmask = omask[:, None] & cmask[None, :] & ((o // opg)[:, None] == (c // cpg)[None, :])
            for p in range(k):
                r = _responses(x_img, fz_ptr, c, cmask, hc, wc, H, W, C, pmask, tl.load(meta_ptr + p * 6),
                               tl.load(meta_ptr + p * 6 + 1), tl.load(meta_ptr + p * 6 + 2),
                               tl.load(meta_ptr + p * 6 + 3), tl.load(meta_ptr + p * 6 + 4),
                               tl.load(meta_ptr + p * 6 + 5), ACC, BC, BP)
                wt = tl.load(wsh_ptr + o[:, None] * (k * cpg) + ((c % cpg) * k + p)[None, :], mask=wmask,
                             other=0.0).to(ACC)
                acc_o += tl.dot(wt, r, input_precision="ieee", out_dtype=ACC)
        acc_o += tl.load(bsh_ptr + o, mask=omask, other=0.0).to(ACC)[:, None]
        tl.store(y_img + o.to(tl.int64)[:, None] * HWo + pix[None, :], acc_o.to(y_ptr.dtype.element_ty),
                 mask=omask[:, None] & pmask[None, :])
    else:  # task channels q: the 3x3 conv of task n // B
        t = n // B
        q = (blk - n_ob) * BQ + tl.arange(0, BQ)
        qmask = q < Csp
        acc_q = tl.zeros([BQ, BP], ACC)
        for c0 in range(0, C, BC):
            c = c0 + tl.arange(0, BC)
            cmask = c < C
            cofs = c.to(tl.int64) * (H * W)
            for u in tl.static_range(3):
                for v in tl.static_range(3):
                    xt = _tile(x_img, cofs, cmask, hc + u - 1, wc + v - 1, H, W, pmask, ACC)
                    wq = tl.load(wsp_ptr + ((t * Csp + q[:, None]) * C + c[None, :]) * 9 + (u * 3 + v),
                                 mask=qmask[:, None] & cmask[None, :], other=0.0).to(ACC)
                    acc_q += tl.dot(wq, xt, input_precision="ieee", out_dtype=ACC)
        acc_q += tl.load(bsp_ptr + t * Csp + q, mask=qmask, other=0.0).to(ACC)[:, None]
        tl.store(y_img + (Csh + q).to(tl.int64)[:, None] * HWo + pix[None, :], acc_q.to(y_ptr.dtype.element_ty),
                 mask=qmask[:, None] & pmask[None, :])


@triton.jit
def _wgrad_shared_kernel(dy_ptr, x_ptr, meta_ptr, fz_ptr, part_ptr, C, H, W, Ho, Wo, Csh, Csp, k, cpg, opg,
                         stride, n_pb, n_ob, n_cb, items, per_split,
                         ACC: tl.constexpr, BP: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr):
    pid = tl.program_id(0)
    tiles = n_ob * k * n_cb
    split = pid // tiles
    rest = pid % tiles
    ob = rest // (k * n_cb)
    p = (rest // n_cb) % k
    cb = rest % n_cb
    o = ob * BO + tl.arange(0, BO)
    omask = o < Csh
    c_lo, c_hi = _group_channels(ob * BO, tl.minimum(ob * BO + BO, Csh) - 1, opg, cpg)
    c = c_lo + cb * BC + tl.arange(0, BC)
    cmask = c < c_hi
    kind = tl.load(meta_ptr + p * 6)
    a = tl.load(meta_ptr + p * 6 + 1)
    b = tl.load(meta_ptr + p * 6 + 2)
    foff = tl.load(meta_ptr + p * 6 + 3)
    Hn = tl.load(meta_ptr + p * 6 + 4)
    Wn = tl.load(meta_ptr + p * 6 + 5)
    HWo = Ho * Wo
    acc = tl.zeros([BO, BC], ACC)
    for it in range(split * per_split, tl.minimum(split * per_split + per_split, items)):
        n = (it // n_pb).to(tl.int64)
        pix = (it % n_pb) * BP + tl.arange(0, BP)
        pmask = pix < HWo
        r = _responses(x_ptr + n * C * (H * W), fz_ptr, c, cmask, (pix // Wo) * stride, (pix % Wo) * stride, H, W,
                       C, pmask, kind, a, b, foff, Hn, Wn, ACC, BC, BP)
        dy = tl.load(dy_ptr + n * (Csh + Csp) * HWo + o.to(tl.int64)[:, None] * HWo + pix[None, :],
                     mask=omask[:, None] & pmask[None, :], other=0.0).to(ACC)
        acc += tl.dot(dy, tl.trans(r), input_precision="ieee", out_dtype=ACC)
    wmask = omask[:, None] & cmask[None, :] & ((o // opg)[:, None] == (c // cpg)[None, :])
    out = part_ptr + split.to(tl.int64) * Csh * (k * cpg) + o[:, None] * (k * cpg) + ((c % cpg) * k + p)[None, :]
    tl.store(out, acc, mask=wmask)


@triton.jit
def _wgrad_task_kernel(dy_ptr, x_ptr, part_ptr, T, C, H, W, Ho, Wo, B, Csh, Csp, stride, n_pb, n_qb, n_cb, items,
                       per_split, r0, ACC: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(1) + r0
    pid = tl.program_id(0)
    tiles = n_qb * n_cb * 9
    split = pid // tiles
    rest = pid % tiles
    qb = rest // (n_cb * 9)
    cb = (rest // 9) % n_cb
    tap = rest % 9
    u = tap // 3
    v = tap % 3
    q = qb * BQ + tl.arange(0, BQ)
    qmask = q < Csp
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    cofs = c.to(tl.int64) * (H * W)
    HWo = Ho * Wo
    acc = tl.zeros([BQ, BC], ACC)
    for it in range(split * per_split, tl.minimum(split * per_split + per_split, items)):
        n = (t * B + it // n_pb).to(tl.int64)
        pix = (it % n_pb) * BP + tl.arange(0, BP)
        pmask = pix < HWo
        xt = _tile(x_ptr + n * C * (H * W), cofs, cmask, (pix // Wo) * stride + u - 1, (pix % Wo) * stride + v - 1,
                   H, W, pmask, ACC)
        dy = tl.load(dy_ptr + n * (Csh + Csp) * HWo + (Csh + q).to(tl.int64)[:, None] * HWo + pix[None, :],
                     mask=qmask[:, None] & pmask[None, :], other=0.0).to(ACC)
        acc += tl.dot(dy, tl.trans(xt), input_precision="ieee", out_dtype=ACC)
    out = part_ptr + (((split.to(tl.int64) * T + t) * Csp + q[:, None]) * C + c[None, :]) * 9 + tap
    tl.store(out, acc, mask=qmask[:, None] & cmask[None, :])


@triton.jit
def _response_grad_kernel(dy_ptr, wsh_ptr, x_ptr, meta_ptr, g_ptr, arg_ptr, n0, C, H, W, Ho, Wo, Csh, Csp, k, cpg,
                          opg, stride, n_max, n_pb, n_cb, r0,
                          ACC: tl.constexpr, BP: tl.constexpr, BO: tl.constexpr, BC: tl.constexpr):
    """G[n - n0, c, p] = sum over the outputs o of c's group of W[o, (c, p)] dy[n, o]; for a max pool, also
    the argmax of every window (the meta table's offset field holds its slot among the max pools)."""
    pid = tl.program_id(0)
    nl = (pid // n_pb).to(tl.int64)
    pix = (pid % n_pb) * BP + tl.arange(0, BP)
    row = tl.program_id(1) + r0  # p * n_cb + channel block
    p = row // n_cb
    cb = row % n_cb
    HWo = Ho * Wo
    pmask = pix < HWo
    c = cb * BC + tl.arange(0, BC)
    cmask = c < C
    o_lo = (cb * BC // cpg) * opg
    o_hi = ((tl.minimum(cb * BC + BC, C) - 1) // cpg + 1) * opg
    dy_img = dy_ptr + (nl + n0) * (Csh + Csp) * HWo
    acc = tl.zeros([BC, BP], ACC)
    for o0 in range(o_lo, o_hi, BO):
        o = o0 + tl.arange(0, BO)
        omask = o < o_hi
        wt = tl.load(wsh_ptr + o[None, :] * (k * cpg) + ((c % cpg) * k + p)[:, None],
                     mask=cmask[:, None] & omask[None, :] & ((c // cpg)[:, None] == (o // opg)[None, :]),
                     other=0.0).to(ACC)
        d = tl.load(dy_img + o.to(tl.int64)[:, None] * HWo + pix[None, :], mask=omask[:, None] & pmask[None, :],
                    other=0.0).to(ACC)
        acc += tl.dot(wt, d, input_precision="ieee", out_dtype=ACC)
    tl.store(g_ptr + ((nl * C + c.to(tl.int64)) * k + p)[:, None] * HWo + pix[None, :], acc,
             mask=cmask[:, None] & pmask[None, :])
    if tl.load(meta_ptr + p * 6) == 2:
        best, arg = _max_window(x_ptr + (nl + n0) * C * (H * W), c.to(tl.int64) * (H * W), cmask,
                                (pix // Wo) * stride, (pix % Wo) * stride, H, W, pmask, ACC, BC, BP)
        slot = tl.load(meta_ptr + p * 6 + 3)
        tl.store(arg_ptr + ((nl * C + c.to(tl.int64)) * n_max + slot)[:, None] * HWo + pix[None, :], arg,
                 mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _source(hn, wn, stride, Ho, Wo, pmask):
    """Output pixel whose centre (oh * stride, ow * stride) is (hn, wn), and whether there is one."""
    ok = pmask & (hn >= 0) & (wn >= 0) & (hn % stride == 0) & (wn % stride == 0)
    oh = hn // stride
    ow = wn // stride
    ok = ok & (oh < Ho) & (ow < Wo)
    return oh * Wo + ow, ok


@triton.jit
def _grad_tile(gp, gofs, cmask, opix, ok, ACC: tl.constexpr):
    return tl.load(gp + gofs[:, None] + opix[None, :], mask=cmask[:, None] & ok[None, :], other=0.0).to(ACC)


@triton.jit
def _input_grad_kernel(dy_ptr, g_ptr, arg_ptr, meta_ptr, fz_ptr, wsp_ptr, dx_ptr, n0, C, H, W, Ho, Wo, B, Csh, Csp,
                       k, n_max, stride, n_pb, r0, SHARED: tl.constexpr, ACC: tl.constexpr, BP: tl.constexpr,
                       BQ: tl.constexpr, BC: tl.constexpr):
    pid = tl.program_id(0)
    nl = (pid // n_pb).to(tl.int64)
    n = nl + n0
    pix = (pid % n_pb) * BP + tl.arange(0, BP)
    HW = H * W
    HWo = Ho * Wo
    pmask = pix < HW
    h = pix // W
    w = pix % W
    c = (tl.program_id(1) + r0) * BC + tl.arange(0, BC)
    cmask = c < C
    acc = tl.zeros([BC, BP], ACC)
    # The task's 3x3 conv: input (h, w) is tap (u, v) of the output centred at (h + 1 - u, w + 1 - v).
    t = n // B
    dy_img = dy_ptr + n * (Csh + Csp) * HWo
    for q0 in range(0, Csp, BQ):
        q = q0 + tl.arange(0, BQ)
        qmask = q < Csp
        for u in tl.static_range(3):
            for v in tl.static_range(3):
                opix, ok = _source(h + 1 - u, w + 1 - v, stride, Ho, Wo, pmask)
                d = tl.load(dy_img + (Csh + q).to(tl.int64)[:, None] * HWo + opix[None, :],
                            mask=qmask[:, None] & ok[None, :], other=0.0).to(ACC)
                wq = tl.load(wsp_ptr + ((t * Csp + q[None, :]) * C + c[:, None]) * 9 + (u * 3 + v),
                             mask=cmask[:, None] & qmask[None, :], other=0.0).to(ACC)
                acc += tl.dot(wq, d, input_precision="ieee", out_dtype=ACC)
    if SHARED:  # each primitive's adjoint applied to its response gradient G
        gofs = c.to(tl.int64) * k * HWo
        for p in range(k):
            kind = tl.load(meta_ptr + p * 6)
            a = tl.load(meta_ptr + p * 6 + 1)
            b = tl.load(meta_ptr + p * 6 + 2)
            foff = tl.load(meta_ptr + p * 6 + 3)
            gp = g_ptr + nl * C * k * HWo + p * HWo
            if (kind == IDENTITY) | (kind == NOISE):  # read at the centre
                opix, ok = _source(h, w, stride, Ho, Wo, pmask)
                acc += _grad_tile(gp, gofs, cmask, opix, ok, ACC)
            elif kind == AVG_POOL:
                for u in tl.static_range(3):
                    for v in tl.static_range(3):
                        opix, ok = _source(h + 1 - u, w + 1 - v, stride, Ho, Wo, pmask)
                        acc += _grad_tile(gp, gofs, cmask, opix, ok, ACC) / 9.0
            elif kind == MAX_POOL:  # to the argmax of each window containing (h, w)
                aofs = ((nl * C + c.to(tl.int64)) * n_max + foff) * HWo
                for u in tl.static_range(3):
                    for v in tl.static_range(3):
                        opix, ok = _source(h + 1 - u, w + 1 - v, stride, Ho, Wo, pmask)
                        arg = tl.load(arg_ptr + aofs[:, None] + opix[None, :], mask=cmask[:, None] & ok[None, :],
                                      other=-1)
                        gt = _grad_tile(gp, gofs, cmask, opix, ok, ACC)
                        acc += tl.where(arg == (h * W + w)[None, :], gt, 0.0)
            elif kind == SHIFT:
                opix, ok = _source(h + a, w + b, stride, Ho, Wo, pmask)
                acc += _grad_tile(gp, gofs, cmask, opix, ok, ACC)
            elif kind == DW_CONV:
                for u in tl.static_range(3):
                    for v in tl.static_range(3):
                        opix, ok = _source(h - (u - 1) * a, w - (v - 1) * a, stride, Ho, Wo, pmask)
                        f = tl.load(fz_ptr + foff + c * 9 + (u * 3 + v), mask=cmask, other=0.0).to(ACC)
                        acc += f[:, None] * _grad_tile(gp, gofs, cmask, opix, ok, ACC)
            else:  # DENSE_CONV: d x[c] += sum over c1 of F[c1, c, tap] G[c1]
                for c10 in range(0, C, BC):
                    c1 = c10 + tl.arange(0, BC)
                    c1mask = c1 < C
                    g1ofs = c1.to(tl.int64) * k * HWo
                    for u in tl.static_range(3):
                        for v in tl.static_range(3):
                            opix, ok = _source(h - (u - 1) * a, w - (v - 1) * a, stride, Ho, Wo, pmask)
                            fd = tl.load(fz_ptr + foff + (c1[None, :] * C + c[:, None]) * 9 + (u * 3 + v),
                                         mask=cmask[:, None] & c1mask[None, :], other=0.0).to(ACC)
                            gd = _grad_tile(gp, g1ofs, c1mask, opix, ok, ACC)
                            acc += tl.dot(fd, gd, input_precision="ieee", out_dtype=ACC)
    tl.store(dx_ptr + (n * C + c.to(tl.int64))[:, None] * HW + pix[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=cmask[:, None] & pmask[None, :])


_META_CACHE = {}  # (table, device) -> the table on that device


def _meta_on(meta, device):
    """The meta table as an int32 tensor on ``device``, copied from the host once per table and device: a
    copy from pageable host memory on every call would synchronise, and cannot be captured in a CUDA graph."""
    key = (tuple(map(tuple, meta)), device)
    if key not in _META_CACHE:
        _META_CACHE[key] = torch.tensor(meta, dtype=torch.int32, device=device)
    return _META_CACHE[key]


def _block(n: int, cap: int) -> int:
    return max(MIN_DOT, min(cap, triton.next_power_of_2(max(n, 1))))


class _Plan:
    """Sizes, tiles and the meta table of one call."""

    def __init__(self, x, kinds, params, frozen, w_shared, w_task, stride, groups):
        self.acc_torch, self.acc_tl = _launch.acc_dtypes(x.dtype)
        flat, meta, off, self.n_max = [], [], 0, 0
        for p, kind in enumerate(kinds):
            hn, wn = (frozen[p].shape[1], frozen[p].shape[2]) if kind == codes.NOISE else (1, 1)
            # offset field: into the flat frozen buffer, or a max pool's slot in the backward's argmax buffer
            is_max = kind == codes.MAX_POOL
            meta.append([kind, params[2 * p], params[2 * p + 1], self.n_max if is_max else off, hn, wn])
            self.n_max += is_max
            if kind in codes.FROZEN_KINDS:
                flat.append(frozen[p].detach().to(device=x.device, dtype=self.acc_torch).reshape(-1))
                off += flat[-1].numel()
        self.fz = torch.cat(flat) if flat else torch.zeros(1, dtype=self.acc_torch, device=x.device)
        self.meta = _meta_on(meta, x.device)
        self.N, self.C, self.H, self.W = x.shape
        self.Ho, self.Wo = (self.H - 1) // stride + 1, (self.W - 1) // stride + 1
        self.T, self.Csp = w_task.shape[:2]
        self.Csh, self.k, self.stride = w_shared.shape[0], len(kinds), stride
        self.B = self.N // self.T
        self.cpg, self.opg = self.C // groups, max(self.Csh // groups, 1)
        self.BO, self.BQ, self.BC = _block(self.Csh, BO_MAX), _block(self.Csp, BQ_MAX), _block(self.C, BC_MAX)
        self.n_pb = triton.cdiv(self.Ho * self.Wo, BP)  # output pixel blocks per image
        self.n_ob, self.n_qb = triton.cdiv(self.Csh, self.BO), triton.cdiv(self.Csp, self.BQ)
        self.n_cb = triton.cdiv(self.C, self.BC)

    def shared_channel_blocks(self):
        """Channel blocks an output-channel block reads at most (the channels of the groups it touches)."""
        most = 0
        for ob in range(self.n_ob):
            first, last = ob * self.BO, min(ob * self.BO + self.BO, self.Csh) - 1
            span = (last // self.opg + 1 - first // self.opg) * self.cpg
            most = max(most, triton.cdiv(span, self.BC))
        return most


def _splits(items: int, tiles: int):
    """(splits, items per split) of a weight-gradient reduction: enough programs, at most MAX_SPLITS partials,
    none empty. A function of the sizes alone, so every run sums in the same order."""
    n = max(1, min(MAX_SPLITS, items, triton.cdiv(SPLIT_TARGET, max(tiles, 1))))
    per = triton.cdiv(items, n)
    return triton.cdiv(items, per), per


def forward(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups):
    _launch.require(limits.routed_primitive_gather(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task,
                                                    stride, groups))
    x = x.contiguous()
    pl = _Plan(x, kinds, params, frozen, w_shared, w_task, stride, groups)
    y = torch.empty(pl.N, pl.Csh + pl.Csp, pl.Ho, pl.Wo, dtype=x.dtype, device=x.device)
    if pl.N == 0 or pl.Csh + pl.Csp == 0:
        return y
    with _launch.device_guard(x):
        for r0, n in _launch.grid_chunks(pl.n_ob + pl.n_qb):
            _forward_kernel[(pl.N * pl.n_pb, n)](
                x, pl.meta, pl.fz, w_shared.contiguous(), b_shared.contiguous(), w_task.contiguous(),
                b_task.contiguous(), y, pl.C, pl.H, pl.W, pl.Ho, pl.Wo, pl.B, pl.Csh, pl.Csp, pl.k, pl.cpg, pl.opg,
                stride, pl.n_pb, pl.n_ob, r0, ACC=pl.acc_tl, BP=BP, BO=pl.BO, BQ=pl.BQ, BC=pl.BC,
                num_warps=NUM_WARPS)
    return y


def backward(grad_out, x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups):
    _launch.require(limits.routed_primitive_gather(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task,
                                                    stride, groups))
    x, dy = x.contiguous(), grad_out.contiguous()
    pl = _Plan(x, kinds, params, frozen, w_shared, w_task, stride, groups)
    acc, dt = pl.acc_torch, x.dtype
    dws = torch.zeros(w_shared.shape, dtype=acc, device=x.device)
    dwt = torch.zeros(w_task.shape, dtype=acc, device=x.device)
    if pl.N == 0:
        return (torch.zeros_like(x), dws.to(dt), b_shared.new_zeros(b_shared.shape), dwt.to(dt),
                b_task.new_zeros(b_task.shape))
    dbs = dy[:, :pl.Csh].sum((0, 2, 3), dtype=acc)
    dbt = dy[:, pl.Csh:].reshape(pl.T, pl.B, pl.Csp, pl.Ho * pl.Wo).sum((1, 3), dtype=acc)  # no -1: C_sp may be 0
    dx = torch.empty_like(x)
    wsh, wsp = w_shared.contiguous(), w_task.contiguous()
    with _launch.device_guard(x):
        if pl.Csh:
            n_cb = pl.shared_channel_blocks()
            tiles = pl.n_ob * pl.k * n_cb
            splits, per = _splits(pl.N * pl.n_pb, tiles)
            part = torch.empty(splits, pl.Csh, pl.k * pl.cpg, dtype=acc, device=x.device)
            _wgrad_shared_kernel[(splits * tiles,)](
                dy, x, pl.meta, pl.fz, part, pl.C, pl.H, pl.W, pl.Ho, pl.Wo, pl.Csh, pl.Csp, pl.k, pl.cpg, pl.opg,
                stride, pl.n_pb, pl.n_ob, n_cb, pl.N * pl.n_pb, per, ACC=pl.acc_tl, BP=BP, BO=pl.BO, BC=pl.BC,
                num_warps=NUM_WARPS)
            dws = part.sum(0).reshape(w_shared.shape)
        if pl.Csp:
            tiles = pl.n_qb * pl.n_cb * 9
            splits, per = _splits(pl.B * pl.n_pb, tiles * pl.T)
            part = torch.empty(splits, pl.T, pl.Csp, pl.C, 9, dtype=acc, device=x.device)
            for r0, n in _launch.grid_chunks(pl.T):
                _wgrad_task_kernel[(splits * tiles, n)](
                    dy, x, part, pl.T, pl.C, pl.H, pl.W, pl.Ho, pl.Wo, pl.B, pl.Csh, pl.Csp, stride, pl.n_pb,
                    pl.n_qb, pl.n_cb, pl.B * pl.n_pb, per, r0, ACC=pl.acc_tl, BP=BP, BQ=pl.BQ, BC=pl.BC,
                    num_warps=NUM_WARPS)
            dwt = part.sum(0).reshape(w_task.shape)
        # d x in image chunks whose response gradients (and max-pool argmaxes) fit the workspace.
        g_image = pl.C * pl.k * pl.Ho * pl.Wo if pl.Csh else 0
        a_image = pl.C * pl.n_max * pl.Ho * pl.Wo if pl.Csh else 0
        chunk = pl.N if pl.Csh == 0 else max(1, min(pl.N, GRAD_CHUNK_ELEMS // (g_image + a_image)))
        n_pbi = triton.cdiv(pl.H * pl.W, BP)  # input pixel blocks per image
        for n0 in range(0, pl.N, chunk):
            nc = min(chunk, pl.N - n0)
            g = torch.empty(max(nc * g_image, 1), dtype=acc, device=x.device)
            args = torch.empty(max(nc * a_image, 1), dtype=torch.int32, device=x.device)
            if pl.Csh:
                for r0, n in _launch.grid_chunks(pl.k * pl.n_cb):
                    _response_grad_kernel[(nc * pl.n_pb, n)](
                        dy, wsh, x, pl.meta, g, args, n0, pl.C, pl.H, pl.W, pl.Ho, pl.Wo, pl.Csh, pl.Csp, pl.k,
                        pl.cpg, pl.opg, stride, pl.n_max, pl.n_pb, pl.n_cb, r0, ACC=pl.acc_tl, BP=BP, BO=pl.BO,
                        BC=pl.BC, num_warps=NUM_WARPS)
            for r0, n in _launch.grid_chunks(pl.n_cb):
                _input_grad_kernel[(nc * n_pbi, n)](
                    dy, g, args, pl.meta, pl.fz, wsp, dx, n0, pl.C, pl.H, pl.W, pl.Ho, pl.Wo, pl.B, pl.Csh, pl.Csp,
                    pl.k, pl.n_max, stride, n_pbi, r0, SHARED=pl.Csh > 0, ACC=pl.acc_tl, BP=BP, BQ=pl.BQ, BC=pl.BC,
                    num_warps=NUM_WARPS)
    return dx, dws.to(dt), dbs.to(dt), dwt.to(dt), dbt.to(dt)
