"""Edges: a dataset-level (ODS-like) F-measure with a pixel tolerance, in pure PyTorch.

Definition. Let s be the predicted edge probability (``sigmoid(pred)`` when ``from_logits``), G the set of valid
ground-truth edge pixels, V the valid pixels, r the tolerance radius in pixels and D_r(X) the dilation of a
binary map X by a (2r+1)×(2r+1) square (max-pooling with stride 1; Chebyshev distance ≤ r, clipped at the
image border). For each threshold t of a fixed set T, and with sums taken over **all images of the split**:

    P_t = { x ∈ V : s(x) ≥ t }                                   predicted edge pixels
    precision_t = |P_t ∩ D_r(G)| / |P_t|                         predicted pixels with a GT edge within r
    recall_t    = |G ∩ D_r(P_t)| / |G|                           GT pixels with a predicted edge within r
    F_t = 2 · precision_t · recall_t / (precision_t + recall_t)  (0 when both are 0; precision_t = 0 if P_t = ∅)

and ``F = max_{t ∈ T} F_t`` (one threshold for the whole dataset: "optimal dataset scale"). The default
T is the 99 thresholds 0.01, 0.02, …, 0.99; a single threshold (e.g. ``thresholds=0.5``) gives a fixed-threshold
F-measure. Pixels where the target equals ``ignore_index`` or ``mask`` is False are neither predictions nor ground
truth and cannot match anything. F, precision and recall are reported in percent, with the arg-max threshold.

This is **not** the odsF of the MATLAB SEISM / BSDS benchmark used in the papers (Maninis, Vandenhende, InvPT):
that one thins predictions by non-maximum suppression, matches predicted and GT pixels one-to-one (bipartite
assignment via ``correspondPixels``) within a Euclidean tolerance given as a fraction of the image diagonal
(``maxDist`` 0.0075 / 0.011), and uses its own threshold set. Here there is no thinning and no one-to-one
matching (a thick prediction near one GT pixel counts fully), and the tolerance is a square of fixed radius in
pixels. Numbers from this metric are therefore generally higher and are not comparable with published odsF;
use them for relative comparisons (e.g. Δm against a baseline evaluated with the same metric).

Implementation: thresholding commutes with max-pooling (max over a window of [s ≥ t] = [max over the window of s
≥ t]), so one max-pool of s and one of G per batch serve every threshold; per threshold only counts are kept
(int64, via bucketize + bincount), so memory does not grow with the split.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ._validation import as_map, as_mask, check_floating, check_same_device, check_same_shape, check_tensor
from .base import Metric


def _count_at_or_above(values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """For each threshold t_k (sorted ascending), how many values are ≥ t_k. int64, shape (T,)."""
    num = thresholds.numel()
    idx = torch.bucketize(values, thresholds, right=True)  # = #{k : t_k ≤ v}
    hist = torch.bincount(idx, minlength=num + 1)
    # count_k = Σ_{j > k} hist[j]
    return hist.flip(0).cumsum(0).flip(0)[1:]


class EdgeMetric(Metric):
    """ODS-like F-measure with pixel tolerance (see module docs for the exact definition).

    Args:
        radius: tolerance r in pixels (square window of side 2r+1); 0 = exact pixel match. Default 2 (a choice
            of this package, not taken from any paper).
        thresholds: a float (fixed threshold) or a sequence of thresholds in [0, 1]; default 0.01..0.99 step 0.01.
        from_logits: ``pred`` holds logits (sigmoid is applied); otherwise probabilities in [0, 1].
        ignore_index: target value marking pixels to ignore (default 255); ``None`` for none.

    ``update(pred, target, mask=None)``:
        pred: (B, H, W) or (B, 1, H, W), floating. target: same shape, values in {0, 1, ignore_index}.
        mask: optional bool (B, H, W) or (B, 1, H, W), True = valid.

    ``compute()`` → ``{"F", "precision", "recall"}`` in % at the best threshold, and ``"threshold"`` (that t).
    """

    task = "edges"

    def __init__(
        self,
        radius: int = 2,
        thresholds: Union[float, Sequence[float], None] = None,
        from_logits: bool = True,
        ignore_index: Optional[int] = 255,
    ) -> None:
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            raise ValueError(f"radius must be a non-negative int (pixels), got {radius!r}")
        if thresholds is None:
            t = torch.arange(1, 100, dtype=torch.float64) / 100.0
        else:
            t = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
        if t.numel() == 0 or bool(((t < 0) | (t > 1) | t.isnan()).any()):
            raise ValueError(f"thresholds must be a non-empty set of values in [0, 1], got {thresholds!r}")
        self.radius = radius
        self.thresholds = torch.unique(t)  # sorted ascending
        self.from_logits = bool(from_logits)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        num = self.thresholds.numel()
        # rows: |P_t|, |P_t ∩ D_r(G)|, |G ∩ D_r(P_t)|; plus |G| separately
        self._counts = torch.zeros(3, num, dtype=torch.int64)
        self._num_gt = torch.zeros((), dtype=torch.int64)

    def _dilate(self, x: torch.Tensor) -> torch.Tensor:
        if self.radius == 0:
            return x
        k = 2 * self.radius + 1
        return F.max_pool2d(x.unsqueeze(1), kernel_size=k, stride=1, padding=self.radius).squeeze(1)

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        pred = check_tensor(pred, "pred")
        target = check_tensor(target, "target")
        check_same_device(pred, "pred", target, "target")
        check_floating(pred, "pred")
        pred = as_map(pred, "pred")
        target = as_map(target, "target")
        check_same_shape(pred, "pred", target, "target")
        mask = as_mask(mask, target, "target")

        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        if mask is not None:
            valid &= mask
        is_edge = target == 1
        if bool((valid & ~is_edge & (target != 0)).any()):
            raise ValueError(f"target must contain only 0, 1 and ignore_index={self.ignore_index}")

        score = pred.to(torch.float64)
        if self.from_logits:
            score = torch.sigmoid(score)
        elif bool(((score < 0) | (score > 1)).any()):
            raise ValueError("pred must hold probabilities in [0, 1] when from_logits=False")
        score = score.masked_fill(~valid, float("-inf"))  # never a prediction, never matches
        gt = is_edge & valid

        thresholds = self.thresholds.to(score.device)
        gt_dilated = self._dilate(gt.to(torch.float32)) > 0
        score_dilated = self._dilate(score)
        counts = torch.stack(
            [
                _count_at_or_above(score[valid], thresholds),
                _count_at_or_above(score[valid & gt_dilated], thresholds),
                _count_at_or_above(score_dilated[gt], thresholds),
            ]
        )
        if self._counts.device != counts.device:
            self._counts = self._counts.to(counts.device)
            self._num_gt = self._num_gt.to(counts.device)
        self._counts += counts
        self._num_gt += gt.sum()

    def curve(self) -> Dict[str, torch.Tensor]:
        """Per-threshold ``thresholds``, ``precision``, ``recall`` and ``F`` (fp64, CPU, in %)."""
        num_gt = int(self._num_gt)
        if num_gt == 0:
            raise RuntimeError("EdgeMetric.compute(): no valid ground-truth edge pixels were accumulated")
        n_pred, tp_pred, tp_gt = self._counts.to(device="cpu", dtype=torch.float64)
        precision = torch.where(n_pred > 0, tp_pred / n_pred.clamp_min(1), torch.zeros_like(n_pred))
        recall = tp_gt / num_gt
        denom = precision + recall
        f = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), torch.zeros_like(denom))
        return {
            "thresholds": self.thresholds.clone(),
            "precision": precision * 100,
            "recall": recall * 100,
            "F": f * 100,
        }

    def compute(self) -> Dict[str, float]:
        c = self.curve()
        best = int(torch.argmax(c["F"]))  # first (lowest) threshold among ties
        return {
            "F": float(c["F"][best]),
            "precision": float(c["precision"][best]),
            "recall": float(c["recall"][best]),
            "threshold": float(c["thresholds"][best]),
        }
