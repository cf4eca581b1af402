"""Depth: absolute error, relative error (abs rel) and RMSE, accumulated pixel-wise over the whole split.

With V the set of valid pixels of the **whole split** (all images pooled), p the prediction and g the target:

* ``abs_err = (1/|V|) Σ_V |p − g|``
* ``rel_err = (1/|V|) Σ_V |p − g| / g``   (a.k.a. abs rel)
* ``rmse    = sqrt((1/|V|) Σ_V (p − g)²)``

Convention: sums and the pixel count are accumulated over every valid pixel of the split and divided once at
the end (pixel-wise pooling). This is what the MTAN/EMA-Net evaluation does. It differs from averaging a
per-image (or per-batch) error over images whenever images have different numbers of valid pixels; for RMSE,
pooling the squared errors also differs from averaging per-image RMSEs even with equal counts. Compare numbers
only across the same convention.

Valid pixels: by default ``target > 0`` (so zeros, negatives and NaNs in the target are invalid, as in the usual
"missing depth = 0" encoding). With an explicit ``mask`` the mask alone decides; every target under the mask must
then be > 0 (relative error is undefined otherwise) or ``update`` raises. Predictions are used as given (no
clamping; abs/rel/RMSE do not need it). Units are the units of the inputs (e.g. metres). Accumulation is fp64.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from ._validation import as_map, as_mask, check_floating, check_same_device, check_same_shape, check_tensor
from .base import Metric


class DepthMetric(Metric):
    """abs_err, rel_err and RMSE over a split (pixel-wise pooling over valid pixels).

    ``update(pred, target, mask=None)``:
        pred, target: (B, H, W) or (B, 1, H, W), floating, same shape.
        mask: optional bool (B, H, W) or (B, 1, H, W), True = valid; replaces the default ``target > 0``.

    ``compute()`` → ``{"abs_err", "rel_err", "rmse"}`` (input units; rel_err is a plain ratio, not %).
    """

    task = "depth"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # [Σ|e|, Σ|e|/g, Σe², count] in fp64
        self._sums = torch.zeros(4, dtype=torch.float64)

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        pred = check_tensor(pred, "pred")
        target = check_tensor(target, "target")
        check_same_device(pred, "pred", target, "target")
        check_floating(pred, "pred")
        check_floating(target, "target")
        pred = as_map(pred, "pred")
        target = as_map(target, "target")
        check_same_shape(pred, "pred", target, "target")
        mask = as_mask(mask, target, "target")

        pred = pred.to(torch.float64)
        target = target.to(torch.float64)
        if mask is None:
            valid = target > 0
        else:
            valid = mask
            if bool((~(target[valid] > 0)).any()):
                raise ValueError("target has values <= 0 (or NaN) inside mask; rel_err is undefined there")
        p = pred[valid]
        g = target[valid]
        err = (p - g).abs()
        count = torch.tensor(float(g.numel()), dtype=torch.float64, device=g.device)
        sums = torch.stack([err.sum(), (err / g).sum(), (err * err).sum(), count])
        if self._sums.device != sums.device:
            self._sums = self._sums.to(sums.device)
        self._sums += sums

    def compute(self) -> Dict[str, float]:
        abs_sum, rel_sum, sq_sum, n = (float(v) for v in self._sums.cpu())
        if n == 0:
            raise RuntimeError("DepthMetric.compute(): no valid pixels were accumulated")
        return {"abs_err": abs_sum / n, "rel_err": rel_sum / n, "rmse": math.sqrt(sq_sum / n)}
