"""Reference definition of ETR-NLP's routed primitive gather (the oracle for every backend): materialises
the primitive bank, its channel shuffle, both branches and the concatenation, exactly as the block reads."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..common.conv import conv2d
from ..common.primitive_kinds import (AVG_POOL, DENSE_CONV, DW_CONV, IDENTITY, MAX_POOL, NOISE, SHIFT,
                                     output_size)


def primitive_response(x: torch.Tensor, kind: int, a: int, b: int, frozen: torch.Tensor, stride: int) -> torch.Tensor:
    """One primitive applied to x (N, C, H, W) -> (N, C, H', W') (codes in mtl_ops.common.primitive_kinds)."""
    C, H, W = x.shape[1:]
    if kind == IDENTITY:
        return x[:, :, ::stride, ::stride]
    if kind == AVG_POOL:
        return F.avg_pool2d(x, 3, stride, 1, count_include_pad=True)
    if kind == MAX_POOL:
        return F.max_pool2d(x, 3, stride, 1)
    if kind == SHIFT:
        P = max(abs(a), abs(b))
        padded = F.pad(x, (P, P, P, P))  # y[h, w] = x[h - a, w - b], zero outside
        shifted = padded[:, :, P - a:P - a + H, P - b:P - b + W]
        return shifted[:, :, ::stride, ::stride]
    if kind == NOISE:
        Hn, Wn = frozen.shape[1:]
        rows = torch.arange(H, device=x.device) % Hn
        cols = torch.arange(W, device=x.device) % Wn
        mask = frozen[:, rows][:, :, cols].to(x.dtype)
        return (x + mask)[:, :, ::stride, ::stride]
    if kind == DW_CONV:
        return conv2d(x, frozen.to(x.dtype), None, stride, a, a, groups=C)
    if kind == DENSE_CONV:
        return conv2d(x, frozen.to(x.dtype), None, stride, a, a)
    raise ValueError(f"routed_primitive_gather: unknown primitive kind {kind}")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, groups·m, H, W) -> channel index p·m + c becomes c·groups + p."""
    N, C, H, W = x.shape
    return x.reshape(N, groups, C // groups, H, W).transpose(1, 2).reshape(N, C, H, W)


def routed_primitive_gather(x: torch.Tensor, kinds, params, frozen, w_shared: torch.Tensor, b_shared: torch.Tensor,
                            w_task: torch.Tensor, b_task: torch.Tensor, stride: int = 1, groups: int = 1) -> torch.Tensor:
    """y[t·B + b] = concat(Conv1x1_G(shuffle(concat_p prim_p(x))), Conv3x3_t(x)) for every route t.

    x (T·B, C_in, H, W); w_shared (C_sh, k·C_in/G, 1, 1), b_shared (C_sh,); w_task (T, C_sp, C_in, 3, 3),
    b_task (T, C_sp); returns (T·B, C_sh + C_sp, H', W'). Arguments as mtl_ops.ops.routed_primitive_gather.
    """
    k = len(kinds)
    T = w_task.shape[0]
    bank = torch.cat([primitive_response(x, kinds[p], params[2 * p], params[2 * p + 1], frozen[p], stride)
                      for p in range(k)], dim=1)
    shuffled = channel_shuffle(bank, k)
    empty = shuffled[:, :0]  # a branch with no channels (sharing ratio 1, or no shared channels)
    shared = conv2d(shuffled, w_shared, b_shared, groups=groups) if w_shared.shape[0] else empty
    routes = x.chunk(T, dim=0)
    task = torch.cat([conv2d(xt, w_task[t], b_task[t], stride, 1) for t, xt in enumerate(routes)], dim=0) \
        if w_task.shape[1] else empty
    return torch.cat([shared, task], dim=1)
