"""Attributes (multi-label classification, e.g. the 40 CelebA attributes): accuracy and optional mAP.

* ``accuracy`` — element-wise: the % of (sample, attribute) pairs whose thresholded prediction equals the label,
  over the whole split. The prediction is positive when ``sigmoid(logit) ≥ threshold`` (default 0.5); this is
  evaluated as ``logit ≥ log(threshold / (1 − threshold))`` so that low-precision sigmoids cannot round a
  negative logit up to 0.5. With every attribute labelled for every sample this equals the mean over attributes
  of the per-attribute accuracy (see ``accuracy_per_attribute``).
* ``mAP`` (only with ``compute_map=True``, since it keeps every score of the split) — the mean over attributes
  of the non-interpolated average precision AP = Σ_k (R_k − R_{k−1}) · P_k, with precision/recall taken at each
  distinct score (tied scores form one step), the same definition as scikit-learn's
  ``average_precision_score``. AP depends only on the ranking, so raw scores are used (no sigmoid saturation
  ties). Attributes without any positive label in the split have no AP and are left out of the mean; if no
  attribute has a positive, mAP is NaN. In %.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from ._validation import check_floating, check_same_device, check_same_shape, check_tensor
from .base import Metric


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Non-interpolated AP of one attribute (scores and {0,1} labels, 1-D), in [0, 1]; NaN with no positive."""
    scores = scores.to(torch.float64).reshape(-1)
    labels = labels.to(torch.float64).reshape(-1)
    num_pos = float(labels.sum())
    if num_pos == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    s = scores[order]
    y = labels[order]
    tp = y.cumsum(0)
    seen = torch.arange(1, y.numel() + 1, dtype=torch.float64)
    last_of_tie = torch.ones_like(s, dtype=torch.bool)
    last_of_tie[:-1] = s[:-1] != s[1:]
    tp = tp[last_of_tie]
    precision = tp / seen[last_of_tie]
    recall = tp / num_pos
    recall_prev = torch.cat([recall.new_zeros(1), recall[:-1]])
    return float(((recall - recall_prev) * precision).sum())


class AttributeMetric(Metric):
    """Element-wise accuracy (and optionally mAP) for multi-label classification.

    Args:
        threshold: probability threshold for a positive prediction, in (0, 1). Default 0.5.
        from_logits: ``pred`` holds logits (default); otherwise probabilities in [0, 1].
        compute_map: also keep every score and report mean average precision.

    ``update(pred, target)``: pred (B, A) floating; target (B, A) with values in {0, 1} (any dtype).

    ``compute()`` → ``{"accuracy": %}`` plus ``"mAP": %`` when ``compute_map``.
    """

    task = "attributes"

    def __init__(self, threshold: float = 0.5, from_logits: bool = True, compute_map: bool = False) -> None:
        if not (0.0 < float(threshold) < 1.0):
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)
        self.compute_map = bool(compute_map)
        self._cut = math.log(self.threshold / (1.0 - self.threshold)) if self.from_logits else self.threshold
        self.reset()

    def reset(self) -> None:
        self._correct = None  # int64 (A,) per-attribute correct counts
        self._num_samples = 0
        self._scores = []
        self._labels = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = check_tensor(pred, "pred")
        target = check_tensor(target, "target")
        check_same_device(pred, "pred", target, "target")
        check_floating(pred, "pred")
        if pred.dim() != 2:
            raise ValueError(f"pred must have shape (B, A), got {tuple(pred.shape)}")
        check_same_shape(pred, "pred", target, "target")
        if bool(((target != 0) & (target != 1)).any()):
            raise ValueError("target must contain only 0 and 1")
        if self._correct is not None and pred.shape[1] != self._correct.numel():
            raise ValueError(f"pred has {pred.shape[1]} attributes but earlier updates had {self._correct.numel()}")
        scores = pred.to(torch.float64)
        if not self.from_logits and bool(((scores < 0) | (scores > 1)).any()):
            raise ValueError("pred must hold probabilities in [0, 1] when from_logits=False")
        positive = scores >= self._cut
        correct = (positive == (target == 1)).sum(dim=0, dtype=torch.int64)
        if self._correct is None:
            self._correct = correct
        else:
            self._correct = self._correct.to(correct.device) + correct
        self._num_samples += pred.shape[0]
        if self.compute_map:
            self._scores.append(scores.cpu())
            self._labels.append((target == 1).cpu())

    def accuracy_per_attribute(self) -> torch.Tensor:
        """Per-attribute accuracy in % (float64, CPU)."""
        if self._correct is None or self._num_samples == 0:
            raise RuntimeError("AttributeMetric.compute(): no samples were accumulated")
        return self._correct.to(device="cpu", dtype=torch.float64) / self._num_samples * 100.0

    def compute(self) -> Dict[str, float]:
        per_attr = self.accuracy_per_attribute()
        out = {"accuracy": float(per_attr.mean())}
        if self.compute_map:
            scores = torch.cat(self._scores)
            labels = torch.cat(self._labels)
            aps = torch.tensor([average_precision(scores[:, a], labels[:, a]) for a in range(scores.shape[1])])
            aps = aps[~aps.isnan()]
            out["mAP"] = float(aps.mean() * 100.0) if aps.numel() else float("nan")
        return out
