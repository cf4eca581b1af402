"""ETR-NLP's non-learnable primitives as the fused op encodes them.

A primitive is named by a string, optionally with parameters: ``"dw_conv"``, ``("dw_conv", 2)`` (dilation),
``("shift", 1, -1)`` (dh, dw), ... Names: identity, avg_pool, max_pool, shift, noise, dw_conv,
dilated_dw_conv (dw_conv with dilation 2), dense_conv, dilated_dense_conv.

DEFAULT_PRIMITIVES (k = 5, the count both third-party ports use; the paper does not give its exact
list): depthwise random 3×3 conv, the same with dilation 2 (LBCNN/"dilated" NLPs of the ports),
a fixed additive noise mask (PNN-style, σ = 0.1, as port B), 3×3 average pool (port A, fixed) and 3×3 max
pool. The random convs are depthwise by default (the dense one of port A makes the block cost a full conv);
pass "dense_conv" to get it.
"""
from __future__ import annotations

import math

import torch

from ..common.primitive_kinds import (AVG_POOL, DENSE_CONV, DW_CONV, IDENTITY, MAX_POOL, NOISE, SHIFT)

DEFAULT_PRIMITIVES = ("dw_conv", "dilated_dw_conv", "noise", "avg_pool", "max_pool")
NOISE_STD = 0.1
NOISE_MASK_SIZE = (32, 32)  # the mask tiles the feature map periodically, so any resolution works

_NAMES = {"identity": (IDENTITY, 0, 0), "avg_pool": (AVG_POOL, 0, 0), "max_pool": (MAX_POOL, 0, 0),
          "shift": (SHIFT, 1, 1), "noise": (NOISE, 0, 0), "dw_conv": (DW_CONV, 1, 0),
          "dilated_dw_conv": (DW_CONV, 2, 0), "dense_conv": (DENSE_CONV, 1, 0),
          "dilated_dense_conv": (DENSE_CONV, 2, 0)}


def parse_primitive(spec) -> tuple[int, int, int]:
    """A name or (name, *params) -> (kind, a, b)."""
    name, *extra = (spec,) if isinstance(spec, str) else tuple(spec)
    if name not in _NAMES:
        raise ValueError(f"unknown primitive {name!r}; expected one of {sorted(_NAMES)}")
    kind, a, b = _NAMES[name]
    if extra:
        a = int(extra[0])
        b = int(extra[1]) if len(extra) > 1 else b
    return kind, a, b


def make_frozen(kind: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """The frozen state of one primitive, sampled once from ``generator`` (empty where the kind has none).
    Random convs use PyTorch's default Conv2d init (uniform ±1/sqrt(fan_in))."""
    if kind == DW_CONV:
        return (torch.rand(channels, 1, 3, 3, generator=generator) * 2 - 1) / 3.0
    if kind == DENSE_CONV:
        return (torch.rand(channels, channels, 3, 3, generator=generator) * 2 - 1) / math.sqrt(9 * channels)
    if kind == NOISE:
        return torch.randn(channels, *NOISE_MASK_SIZE, generator=generator) * NOISE_STD
    return torch.empty(0)
