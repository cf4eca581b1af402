"""Inputs of routed_primitive_gather for the tests: primitive sets (each kind alone and mixtures) with
their frozen tensors, weights and biases, seeded."""
from __future__ import annotations

import torch

from mtl_ops.common.primitive_kinds import (AVG_POOL, DENSE_CONV, DW_CONV, IDENTITY, MAX_POOL, NOISE,
                                            SHIFT)

# name -> list of (kind, a, b)
PRIMITIVE_SETS = {
    "identity": [(IDENTITY, 0, 0)],
    "avg_pool": [(AVG_POOL, 0, 0)],
    "max_pool": [(MAX_POOL, 0, 0)],
    "shift": [(SHIFT, 2, -1)],
    "noise": [(NOISE, 0, 0)],
    "dw_conv": [(DW_CONV, 1, 0)],
    "dw_conv_dilated": [(DW_CONV, 2, 0)],
    "dense_conv": [(DENSE_CONV, 1, 0)],
    "dense_conv_dilated": [(DENSE_CONV, 2, 0)],
    "default5": [(DW_CONV, 1, 0), (DW_CONV, 2, 0), (NOISE, 0, 0), (AVG_POOL, 0, 0), (MAX_POOL, 0, 0)],
    "all": [(IDENTITY, 0, 0), (AVG_POOL, 0, 0), (MAX_POOL, 0, 0), (SHIFT, -1, 1), (NOISE, 0, 0), (DW_CONV, 2, 0),
            (DENSE_CONV, 1, 0)],
    "linear": [(IDENTITY, 0, 0), (AVG_POOL, 0, 0), (SHIFT, 1, -2), (NOISE, 0, 0), (DW_CONV, 2, 0), (DENSE_CONV, 1, 0)],
    # more primitives than the CUDA kernels take per launch (16), max pools and dense convs on both sides
    "many18": [(IDENTITY, 0, 0), (AVG_POOL, 0, 0), (MAX_POOL, 0, 0), (SHIFT, -1, 1), (NOISE, 0, 0), (DW_CONV, 2, 0),
               (DENSE_CONV, 1, 0), (SHIFT, 2, 0), (DW_CONV, 1, 0), (MAX_POOL, 0, 0), (AVG_POOL, 0, 0), (NOISE, 0, 0),
               (DENSE_CONV, 2, 0), (IDENTITY, 0, 0), (SHIFT, 0, -2), (DW_CONV, 3, 0), (MAX_POOL, 0, 0),
               (DENSE_CONV, 1, 0)],
}


def make_case(prims="default5", T=2, B=2, C=4, H=7, W=9, C_sh=4, C_sp=3, stride=1, groups=2,
              dtype=torch.float32, device="cpu", seed=0, noise_shape=(3, 5)):
    """(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task) and the keyword arguments. ``prims`` is a
    name in PRIMITIVE_SETS or a list of (kind, a, b); a noise mask is (C, *noise_shape)."""
    g = torch.Generator().manual_seed(seed)
    spec = PRIMITIVE_SETS[prims] if isinstance(prims, str) else list(prims)
    k = len(spec)
    kinds = [s[0] for s in spec]
    params = [v for s in spec for v in s[1:]]
    frozen = []
    for kind, _, _ in spec:
        if kind == DW_CONV:
            f = torch.randn(C, 1, 3, 3, generator=g) / 3
        elif kind == DENSE_CONV:
            f = torch.randn(C, C, 3, 3, generator=g) / (3 * C ** 0.5)
        elif kind == NOISE:
            f = torch.randn(C, *noise_shape, generator=g) * 0.1
        else:
            f = torch.empty(0)
        frozen.append(f.to(device=device, dtype=dtype))
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
    x = rnd(T * B, C, H, W)
    w_shared = rnd(C_sh, k * C // groups, 1, 1, scale=max(1, k * C // groups) ** -0.5)  # C = 0: refused by the checks
    b_shared = rnd(C_sh)
    w_task = rnd(T, C_sp, C, 3, 3, scale=max(1, 9 * C) ** -0.5)
    b_task = rnd(T, C_sp)
    return (x, kinds, params, frozen, w_shared, b_shared, w_task, b_task), dict(stride=stride, groups=groups)
