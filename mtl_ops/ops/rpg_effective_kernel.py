"""The exact fast path of routed_primitive_gather for linear primitives: every
primitive but max_pool is a fixed linear filter, so the shared branch collapses into ONE convolution with an
effective kernel

    K_eff[o, c'] = Σ_{c in group(o)} Σ_p w_shared[o, (c − g·C_in/G)·k + p] · κ_p[c, c']      (K×K, zero-padded)

plus, for a noise mask n, the constant map Σ_c w_shared[o, ·]·n[c] (a spatial bias). K_eff is built from
w_shared by differentiable PyTorch ops, so d w_shared = <d K_eff, κ_p> comes from autograd (the chain rule).
The task branch is the usual per-task 3×3 conv. Same arguments and result as routed_primitive_gather.
"""
from __future__ import annotations

import torch

from ..common.conv import conv2d
from ..common.primitive_kinds import (AVG_POOL, DENSE_CONV, DW_CONV, IDENTITY, KIND_NAMES, LINEAR_KINDS, NOISE,
                                      SHIFT, output_size)
from .routed_primitive_gather import check_args, parse_args


def _radius(kind: int, a: int, b: int) -> int:
    if kind == AVG_POOL:
        return 1
    if kind == SHIFT:
        return max(abs(a), abs(b))
    if kind in (DW_CONV, DENSE_CONV):
        return a
    return 0


def primitive_kernel(kind: int, a: int, b: int, frozen: torch.Tensor, C: int, R: int, like: torch.Tensor) -> torch.Tensor:
    """The primitive as a dense (C, C, 2R+1, 2R+1) cross-correlation kernel (noise: its linear part, identity)."""
    K = 2 * R + 1
    kern = like.new_zeros(C, C, K, K)
    eye = torch.arange(C, device=like.device)
    if kind in (IDENTITY, NOISE):
        kern[eye, eye, R, R] = 1
    elif kind == AVG_POOL:
        kern[eye, eye, R - 1:R + 2, R - 1:R + 2] = 1 / 9
    elif kind == SHIFT:  # y[h, w] = x[h − a, w − b]
        kern[eye, eye, R - a, R - b] = 1
    elif kind in (DW_CONV, DENSE_CONV):
        taps = slice(R - a, R + a + 1, a)
        if kind == DW_CONV:
            kern[eye, eye, taps, taps] = frozen[:, 0].to(like)
        else:
            kern[:, :, taps, taps] = frozen.to(like)
    return kern


def effective_kernel(kinds, params, frozen, w_shared: torch.Tensor, C: int, groups: int) -> tuple[torch.Tensor, int]:
    """(K_eff (C_sh, C_in, K, K), R)."""
    k, C_sh = len(kinds), w_shared.shape[0]
    R = max(_radius(kinds[p], params[2 * p], params[2 * p + 1]) for p in range(k))
    kappa = torch.stack([primitive_kernel(kinds[p], params[2 * p], params[2 * p + 1], frozen[p], C, R, w_shared)
                         for p in range(k)])  # (k, C, C, K, K)
    cpg, opg = C // groups, C_sh // groups
    w = w_shared.reshape(groups, opg, cpg, k)
    kappa = kappa.reshape(k, groups, cpg, C, 2 * R + 1, 2 * R + 1)
    k_eff = torch.einsum("gock,kgcdhw->godhw", w, kappa).reshape(C_sh, C, 2 * R + 1, 2 * R + 1)
    return k_eff, R


def _noise_bias(x, kinds, frozen, w_shared, groups, stride):
    """Σ over noise primitives of w_shared applied to the (tiled, subsampled) masks: (C_sh, H', W') or None."""
    C, H, W = x.shape[1:]
    k, C_sh = len(kinds), w_shared.shape[0]
    cpg, opg = C // groups, C_sh // groups
    bias = None
    for p in range(k):
        if kinds[p] != NOISE:
            continue
        n = frozen[p].to(x.dtype)
        rows = torch.arange(0, H, stride, device=x.device) % n.shape[1]
        cols = torch.arange(0, W, stride, device=x.device) % n.shape[2]
        mask = n[:, rows][:, :, cols].reshape(groups, cpg, output_size(H, stride), output_size(W, stride))
        w = w_shared.reshape(groups, opg, cpg, k)[..., p]
        term = torch.einsum("goc,gchw->gohw", w, mask).reshape(C_sh, *mask.shape[-2:])
        bias = term if bias is None else bias + term
    return bias


def routed_primitive_gather_linear(x: torch.Tensor, kinds, params, frozen, w_shared: torch.Tensor,
                                   b_shared: torch.Tensor, w_task: torch.Tensor, b_task: torch.Tensor, *,
                                   stride: int = 1, groups: int = 1) -> torch.Tensor:
    """routed_primitive_gather through one effective-kernel conv for the shared branch (linear primitives
    only: raises ValueError naming a max_pool). Plain autograd; exact up to floating-point reassociation."""
    args = parse_args(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups)
    check_args(*args)
    kinds, params, frozen = args[1:4]
    bad = [p for p, kind in enumerate(kinds) if kind not in LINEAR_KINDS]
    if bad:
        raise ValueError(f"routed_primitive_gather_linear: every primitive must be linear; primitive {bad[0]} is "
                         f"{KIND_NAMES[kinds[bad[0]]]} (use routed_primitive_gather)")
    T, C = w_task.shape[0], x.shape[1]
    if w_shared.shape[0] == 0:  # no shared channels (conv2d refuses a weight with 0 output channels); a slice
        # of x, (T*B, 0, H', W'), keeps the result in x's autograd graph as the other backends' results are
        shared = x[:, :0, ::stride, ::stride].clone()
    else:
        k_eff, R = effective_kernel(kinds, params, frozen, w_shared, C, groups)
        shared = conv2d(x, k_eff, b_shared, stride, R)
        noise = _noise_bias(x, kinds, frozen, w_shared, groups, stride)
        if noise is not None:
            shared = shared + noise
    if w_task.shape[1] == 0:
        return shared
    task = torch.cat([conv2d(xt, w_task[t], b_task[t], stride, 1) for t, xt in enumerate(x.chunk(T, 0))], 0)
    return torch.cat([shared, task], dim=1)
