"""Semantic segmentation: mIoU and pixel accuracy from a confusion matrix accumulated over the whole split.

Definitions (C is the K×K confusion matrix summed over every valid pixel of the split, rows = target class,
columns = predicted class):

* ``IoU_c = C[c,c] / (Σ_j C[c,j] + Σ_i C[i,c] − C[c,c])``, i.e. TP / (TP + FP + FN).
* ``mIoU`` = mean of ``IoU_c`` over the classes **present in the target or in the prediction** somewhere in the
  split (TP + FP + FN > 0). A class absent from both has an undefined IoU (0/0) and is left out of the mean,
  as ``nanmean`` does in the MTAN/EMA-Net and MTI-Net code. (AdaShare's code instead drops every class whose
  diagonal entry is 0, i.e. also classes that are present but never hit; this package does not copy that.)
* ``pixel_acc`` = Σ_c C[c,c] / Σ C, over valid pixels.

Both are reported in percent (0–100). Pixels whose target equals ``ignore_index`` are skipped entirely, whatever
is predicted there. Accumulating the confusion matrix and computing once at the end is not the same as averaging
per-image mIoU; this module does the former, as the papers' evaluation code does.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ._validation import as_map, check_integer, check_same_device, check_tensor
from .base import Metric


class SegmentationMetric(Metric):
    """mIoU and pixel accuracy over a split.

    Args:
        num_classes: K, the number of classes; labels are 0..K-1.
        ignore_index: target value to skip (default 255; NYUv2 in the MTAN format uses -1). ``None`` skips nothing.

    ``update(pred, target)``:
        pred: logits/scores (B, K, H, W) (floating; the class is their argmax over dim 1) or a label map
            (B, H, W) / (B, 1, H, W) (integer).
        target: label map (B, H, W) or (B, 1, H, W), integer, values in 0..K-1 or ``ignore_index``.

    ``compute()`` → ``{"mIoU": %, "pixel_acc": %}``.
    """

    task = "semseg"

    def __init__(self, num_classes: int, ignore_index: Optional[int] = 255):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if ignore_index is not None:
            if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
                raise ValueError(f"ignore_index must be an int or None, got {ignore_index!r}")
            if 0 <= ignore_index < num_classes:
                raise ValueError(
                    f"ignore_index={ignore_index} collides with a class label in [0, {num_classes}); "
                    "pick a value outside the class range"
                )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self._confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @property
    def confusion_matrix(self) -> torch.Tensor:
        """The accumulated (K, K) int64 confusion matrix, rows = target class, columns = predicted class."""
        return self._confusion.clone()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = check_tensor(pred, "pred")
        target = check_tensor(target, "target")
        check_same_device(pred, "pred", target, "target")
        check_integer(target, "target")
        target = as_map(target, "target")
        K = self.num_classes

        if pred.is_floating_point():
            if pred.dim() != 4 or pred.shape[1] != K:
                raise ValueError(
                    f"pred is floating, so it must be logits of shape (B, K={K}, H, W), got {tuple(pred.shape)}; "
                    "pass an integer label map (B, H, W) otherwise"
                )
            labels = pred.argmax(dim=1)
            pred_is_labels = False
        else:
            check_integer(pred, "pred")
            labels = as_map(pred, "pred")
            pred_is_labels = True
        if labels.shape != target.shape:
            raise ValueError(
                f"pred gives a label map of shape {tuple(labels.shape)} but target has shape {tuple(target.shape)}; "
                "batch and spatial sizes must match"
            )

        target = target.long()
        labels = labels.long()
        if self.ignore_index is not None:
            valid = target != self.ignore_index
            target = target[valid]
            labels = labels[valid]
        else:
            target = target.reshape(-1)
            labels = labels.reshape(-1)
        if target.numel() == 0:
            return
        bad = (target < 0) | (target >= K)
        if bool(bad.any()):
            value = int(target[bad][0])
            raise ValueError(
                f"target contains label {value} outside [0, {K}) that is not ignore_index={self.ignore_index}"
            )
        if pred_is_labels:
            bad = (labels < 0) | (labels >= K)
            if bool(bad.any()):
                raise ValueError(f"pred contains label {int(labels[bad][0])} outside [0, {K})")

        counts = torch.bincount(target * K + labels, minlength=K * K).view(K, K)
        if self._confusion.device != counts.device:
            self._confusion = self._confusion.to(counts.device)
        self._confusion += counts

    def iou_per_class(self) -> torch.Tensor:
        """IoU per class in percent (float64, CPU); NaN for classes absent from both target and prediction."""
        cm = self._confusion.to(device="cpu", dtype=torch.float64)
        tp = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.full_like(tp, float("nan"))
        present = union > 0
        iou[present] = tp[present] / union[present] * 100.0
        return iou

    def compute(self) -> Dict[str, float]:
        cm = self._confusion.to(device="cpu", dtype=torch.float64)
        total = cm.sum()
        if total == 0:
            raise RuntimeError("SegmentationMetric.compute(): no valid (non-ignored) pixels were accumulated")
        iou = self.iou_per_class()
        miou = iou[~iou.isnan()].mean()
        return {"mIoU": float(miou), "pixel_acc": float(cm.diagonal().sum() / total * 100.0)}
