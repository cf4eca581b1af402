"""Triton kernels of routed_primitive_gather: a direct loop over output pixels (spec §2.7, first version).

Grid: (image n of the T·B, block of BLOCK_P output pixels). A program keeps the C_sh shared and C_sp task
accumulators of its pixels (BLOCK_O × BLOCK_P, BLOCK_Q × BLOCK_P) and loops over input channels c and
primitives p, computing each response on the fly (codes as mtl_ops/reference/primitive_kinds.py, the kind
chosen at run time) and adding its outer product with the matching column of w_shared; the task's 3×3 reads
the same input taps. The backward recomputes the responses (max-pool argmax included), scatters d x through
each primitive's adjoint with atomic adds into an fp32 buffer, and writes one weight-gradient partial per
program, summed on the host in a fixed order. Arithmetic in fp32 (fp64 for fp64 inputs).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _tap(x_ptr, plane, h, w, H, W, pmask, ACC: tl.constexpr):
    ok = pmask & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    return tl.load(x_ptr + plane + h * W + w, mask=ok, other=0.0).to(ACC), ok


@triton.jit
def _response(x_ptr, fz_ptr, xplane, c, h0, w0, H, W, C, pmask, kind, a, b, foff, Hn, Wn, ACC: tl.constexpr):
    """Response of primitive (kind, a, b) on channel c at centres (h0, w0); also the max-pool argmax."""
    r = tl.zeros_like(h0).to(ACC)
    arg = tl.full(h0.shape, -1, tl.int64)
    if kind == 0:  # identity
        r, _ = _tap(x_ptr, xplane, h0, w0, H, W, pmask, ACC)
    elif kind == 1:  # avg pool, divisor 9
        for u in tl.static_range(3):
            for v in tl.static_range(3):
                t, _ = _tap(x_ptr, xplane, h0 + u - 1, w0 + v - 1, H, W, pmask, ACC)
                r += t
        r = r / 9.0
    elif kind == 2:  # max pool: first maximum in scan order, a NaN wins
        best = tl.zeros_like(r)
        for u in tl.static_range(3):
            for v in tl.static_range(3):
                t, ok = _tap(x_ptr, xplane, h0 + u - 1, w0 + v - 1, H, W, pmask, ACC)
                take = ok & ((arg < 0) | (t > best) | (t != t))
                best = tl.where(take, t, best)
                arg = tl.where(take, ((h0 + u - 1) * W + (w0 + v - 1)).to(tl.int64), arg)
        r = best
    elif kind == 3:  # shift
        r, _ = _tap(x_ptr, xplane, h0 - a, w0 - b, H, W, pmask, ACC)
    elif kind == 4:  # fixed additive noise mask, tiled
        r, _ = _tap(x_ptr, xplane, h0, w0, H, W, pmask, ACC)
        r += tl.load(fz_ptr + foff + c * Hn * Wn + (h0 % Hn) * Wn + (w0 % Wn), mask=pmask, other=0.0).to(ACC)
    elif kind == 5:  # depthwise 3x3, dilation a
        for u in tl.static_range(3):
            for v in tl.static_range(3):
                t, _ = _tap(x_ptr, xplane, h0 + (u - 1) * a, w0 + (v - 1) * a, H, W, pmask, ACC)
                r += tl.load(fz_ptr + foff + c * 9 + u * 3 + v).to(ACC) * t
    else:  # dense 3x3, dilation a
        xbase = xplane - c * H * W
        for c2 in range(C):
            for u in tl.static_range(3):
                for v in tl.static_range(3):
                    t, _ = _tap(x_ptr, xbase + c2 * H * W, h0 + (u - 1) * a, w0 + (v - 1) * a, H, W, pmask, ACC)
                    r += tl.load(fz_ptr + foff + (c * C + c2) * 9 + u * 3 + v).to(ACC) * t
    return r, arg


@triton.jit
def _forward_kernel(x_ptr, meta_ptr, fz_ptr, wsh_ptr, bsh_ptr, wsp_ptr, bsp_ptr, y_ptr,
                    C, H, W, Ho, Wo, B, Csh, Csp, k, cpg, opg, stride,
                    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_Q: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    t = n // B
    pix = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pix < Ho * Wo
    h0 = (pix // Wo) * stride
    w0 = (pix % Wo) * stride
    o = tl.arange(0, BLOCK_O)
    q = tl.arange(0, BLOCK_Q)
    acc_sh = tl.zeros([BLOCK_O, BLOCK_P], ACC)
    acc_sp = tl.zeros([BLOCK_Q, BLOCK_P], ACC)
    for c in range(C):
        xplane = (n * C + c) * H * W
        for p in range(k):
            kind = tl.load(meta_ptr + p * 6)
            r, _ = _response(x_ptr, fz_ptr, xplane, c, h0, w0, H, W, C, pmask, kind, tl.load(meta_ptr + p * 6 + 1),
                             tl.load(meta_ptr + p * 6 + 2), tl.load(meta_ptr + p * 6 + 3),
                             tl.load(meta_ptr + p * 6 + 4), tl.load(meta_ptr + p * 6 + 5), ACC)
            omask = (o < Csh) & (o // opg == c // cpg)
            wcol = tl.load(wsh_ptr + o * (k * cpg) + (c % cpg) * k + p, mask=omask, other=0.0).to(ACC)
            acc_sh += wcol[:, None] * r[None, :]
        for u in tl.static_range(3):
            for v in tl.static_range(3):
                xv, _ = _tap(x_ptr, xplane, h0 + u - 1, w0 + v - 1, H, W, pmask, ACC)
                wq = tl.load(wsp_ptr + ((t * Csp + q) * C + c) * 9 + u * 3 + v, mask=q < Csp, other=0.0).to(ACC)
                acc_sp += wq[:, None] * xv[None, :]
    Cout = Csh + Csp
    acc_sh += tl.load(bsh_ptr + o, mask=o < Csh, other=0.0).to(ACC)[:, None]
    acc_sp += tl.load(bsp_ptr + t * Csp + q, mask=q < Csp, other=0.0).to(ACC)[:, None]
    ybase = y_ptr + n * Cout * Ho * Wo
    tl.store(ybase + o[:, None] * Ho * Wo + pix[None, :], acc_sh.to(y_ptr.dtype.element_ty),
             mask=(o[:, None] < Csh) & pmask[None, :])
    tl.store(ybase + (Csh + q[:, None]) * Ho * Wo + pix[None, :], acc_sp.to(y_ptr.dtype.element_ty),
             mask=(q[:, None] < Csp) & pmask[None, :])


@triton.jit
def _scatter(dx_ptr, plane, h, w, H, W, ok, val):
    ok = ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    tl.atomic_add(dx_ptr + plane + h * W + w, val, mask=ok)


@triton.jit
def _backward_kernel(dy_ptr, x_ptr, meta_ptr, fz_ptr, wsh_ptr, wsp_ptr, dx_ptr, pwsh_ptr, pbsh_ptr, pwsp_ptr,
                     pbsp_ptr, C, H, W, Ho, Wo, B, Csh, Csp, k, cpg, opg, stride,
                     ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_Q: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    t = n // B
    prog = n * tl.num_programs(1) + tl.program_id(1)
    pix = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pix < Ho * Wo
    h0 = (pix // Wo) * stride
    w0 = (pix % Wo) * stride
    o = tl.arange(0, BLOCK_O)
    q = tl.arange(0, BLOCK_Q)
    Cout = Csh + Csp
    dybase = dy_ptr + n * Cout * Ho * Wo
    dy_sh = tl.load(dybase + o[:, None] * Ho * Wo + pix[None, :], mask=(o[:, None] < Csh) & pmask[None, :],
                    other=0.0).to(ACC)
    dy_sp = tl.load(dybase + (Csh + q[:, None]) * Ho * Wo + pix[None, :], mask=(q[:, None] < Csp) & pmask[None, :],
                    other=0.0).to(ACC)
    tl.store(pbsh_ptr + prog * Csh + o, tl.sum(dy_sh, axis=1), mask=o < Csh)
    tl.store(pbsp_ptr + prog * Csp + q, tl.sum(dy_sp, axis=1), mask=q < Csp)
    for c in range(C):
        xplane = (n * C + c) * H * W
        for p in range(k):
            kind = tl.load(meta_ptr + p * 6)
            a = tl.load(meta_ptr + p * 6 + 1)
            b = tl.load(meta_ptr + p * 6 + 2)
            foff = tl.load(meta_ptr + p * 6 + 3)
            r, arg = _response(x_ptr, fz_ptr, xplane, c, h0, w0, H, W, C, pmask, kind, a, b, foff,
                               tl.load(meta_ptr + p * 6 + 4), tl.load(meta_ptr + p * 6 + 5), ACC)
            omask = (o < Csh) & (o // opg == c // cpg)
            col = (c % cpg) * k + p
            wcol = tl.load(wsh_ptr + o * (k * cpg) + col, mask=omask, other=0.0).to(ACC)
            tl.store(pwsh_ptr + (prog * Csh + o) * (k * cpg) + col, tl.sum(dy_sh * r[None, :], axis=1), mask=omask)
            g = tl.sum(wcol[:, None] * dy_sh, axis=0)  # d response, (BLOCK_P,)
            if (kind == 0) | (kind == 4):
                _scatter(dx_ptr, xplane, h0, w0, H, W, pmask, g)
            elif kind == 1:
                for u in tl.static_range(3):
                    for v in tl.static_range(3):
                        _scatter(dx_ptr, xplane, h0 + u - 1, w0 + v - 1, H, W, pmask, g / 9.0)
            elif kind == 2:
                tl.atomic_add(dx_ptr + xplane + arg, g, mask=pmask & (arg >= 0))
            elif kind == 3:
                _scatter(dx_ptr, xplane, h0 - a, w0 - b, H, W, pmask, g)
            elif kind == 5:
                for u in tl.static_range(3):
                    for v in tl.static_range(3):
                        wt = tl.load(fz_ptr + foff + c * 9 + u * 3 + v).to(ACC)
                        _scatter(dx_ptr, xplane, h0 + (u - 1) * a, w0 + (v - 1) * a, H, W, pmask, wt * g)
            else:
                for c2 in range(C):
                    for u in tl.static_range(3):
                        for v in tl.static_range(3):
                            wt = tl.load(fz_ptr + foff + (c * C + c2) * 9 + u * 3 + v).to(ACC)
                            _scatter(dx_ptr, (n * C + c2) * H * W, h0 + (u - 1) * a, w0 + (v - 1) * a, H, W,
                                     pmask, wt * g)
        for u in tl.static_range(3):
            for v in tl.static_range(3):
                xv, _ = _tap(x_ptr, xplane, h0 + u - 1, w0 + v - 1, H, W, pmask, ACC)
                wq = tl.load(wsp_ptr + ((t * Csp + q) * C + c) * 9 + u * 3 + v, mask=q < Csp, other=0.0).to(ACC)
                tl.store(pwsp_ptr + ((prog * Csp + q) * C + c) * 9 + u * 3 + v, tl.sum(dy_sp * xv[None, :], axis=1),
                         mask=q < Csp)
                _scatter(dx_ptr, xplane, h0 + u - 1, w0 + v - 1, H, W, pmask, tl.sum(wq[:, None] * dy_sp, axis=0))


BLOCK_P = 64


def _acc(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _prepare(x, kinds, params, frozen, w_shared, w_task, stride, groups):
    """Flat frozen buffer (accumulation dtype) and the (k, 6) int64 table kind, a, b, offset, Hn, Wn."""
    acc_torch, acc_tl = _acc(x.dtype)
    flat, meta, off = [], [], 0
    for p, kind in enumerate(kinds):
        f = frozen[p].detach().to(device=x.device, dtype=acc_torch).reshape(-1) if kind in (4, 5, 6) else None
        hn, wn = (frozen[p].shape[1], frozen[p].shape[2]) if kind == 4 else (1, 1)
        meta.append([kind, params[2 * p], params[2 * p + 1], off, hn, wn])
        if f is not None:
            flat.append(f)
            off += f.numel()
    fz = torch.cat(flat) if flat else torch.zeros(1, dtype=acc_torch, device=x.device)
    meta = torch.tensor(meta, dtype=torch.int64, device=x.device)
    N, C, H, W = x.shape
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    Csh, Csp, T = w_shared.shape[0], w_task.shape[1], w_task.shape[0]
    dims = dict(C=C, H=H, W=W, Ho=Ho, Wo=Wo, B=N // T, Csh=Csh, Csp=Csp, k=len(kinds), cpg=C // groups,
                opg=max(Csh // groups, 1), stride=stride)
    blocks = dict(ACC=acc_tl, BLOCK_P=BLOCK_P, BLOCK_O=triton.next_power_of_2(max(Csh, 1)),
                  BLOCK_Q=triton.next_power_of_2(max(Csp, 1)))
    grid = (N, triton.cdiv(Ho * Wo, BLOCK_P))
    return fz, meta, dims, blocks, grid, acc_torch


def forward(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups):
    x = x.contiguous()
    fz, meta, d, blocks, grid, _ = _prepare(x, kinds, params, frozen, w_shared, w_task, stride, groups)
    y = torch.empty(x.shape[0], d["Csh"] + d["Csp"], d["Ho"], d["Wo"], dtype=x.dtype, device=x.device)
    if x.shape[0] == 0:
        return y
    _forward_kernel[grid](x, meta, fz, w_shared.contiguous(), b_shared.contiguous(), w_task.contiguous(),
                          b_task.contiguous(), y, *d.values(), **blocks)
    return y


def backward(grad_out, x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups):
    x = x.contiguous()
    fz, meta, d, blocks, grid, acc = _prepare(x, kinds, params, frozen, w_shared, w_task, stride, groups)
    T, C = w_task.shape[0], d["C"]
    n_prog = grid[0] * grid[1]
    dx = torch.zeros(x.shape, dtype=acc, device=x.device)
    pwsh = torch.zeros(n_prog, d["Csh"], d["k"] * d["cpg"], dtype=acc, device=x.device)
    pbsh = torch.zeros(n_prog, d["Csh"], dtype=acc, device=x.device)
    pwsp = torch.zeros(n_prog, d["Csp"], C * 9, dtype=acc, device=x.device)
    pbsp = torch.zeros(n_prog, d["Csp"], dtype=acc, device=x.device)
    if n_prog:
        _backward_kernel[grid](grad_out.contiguous(), x, meta, fz, w_shared.contiguous(), w_task.contiguous(), dx,
                               pwsh, pbsh, pwsp, pbsp, *d.values(), **blocks)
    dt = x.dtype
    return (dx.to(dt), pwsh.sum(0).reshape(w_shared.shape).to(dt), pbsh.sum(0).to(dt),
            pwsp.reshape(T, -1, d["Csp"], C, 3, 3).sum(1).to(dt), pbsp.reshape(T, -1, d["Csp"]).sum(1).to(dt))
