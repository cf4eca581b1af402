"""Reference definition of Medusa's multi-scale attention mix (the oracle for every backend)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..common.dtypes import accumulate_dtype


def _resize(v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if v.shape[1] == 0:  # F.interpolate rejects empty channels: an empty map stays empty (and in the graph)
        return v.new_zeros(v.shape[0], 0, *size) + v.sum()
    return F.interpolate(v, size=size, mode="bilinear", align_corners=False)


def ms_attention_mix(values: Sequence[torch.Tensor], logits: Sequence[torch.Tensor],
                     size: Sequence[int]) -> torch.Tensor:
    """``sum_s softmax_s(up(logits_s)) * up(values_s)`` with ``up`` = bilinear resize to ``size``
    (align_corners=False). values[s]: (B, K, h_s, w_s); logits[s]: (B, 1, h_s, w_s); returns (B, K, H, W).
    Materialises every resized map; the softmax runs in fp32 (fp64 for fp64) and the result is cast back."""
    size = (int(size[0]), int(size[1]))
    acc = accumulate_dtype(values[0].dtype)
    up_values = [_resize(v.to(acc), size) for v in values]
    up_logits = torch.cat([F.interpolate(a.to(acc), size=size, mode="bilinear", align_corners=False)
                           for a in logits], dim=1)                     # (B, S, H, W)
    weights = torch.softmax(up_logits, dim=1)
    out = sum(weights[:, s:s + 1] * v for s, v in enumerate(up_values))
    return out.to(values[0].dtype)
