"""Task conventions of the trainer: output channels, losses, and predictions as the metrics want them.

Losses (each a mean over the valid elements of the batch):

* ``semseg``: cross-entropy, ignore label 255.
* ``depth``: L1 over valid pixels (``valid`` mask and target > 0).
* ``normals``: L1 between the L2-normalised prediction and the target over valid pixels (PDF's NormalsL1).
* ``edges``: class-balanced binary cross-entropy (HED style): edge pixels weighted ``edge_pos_weight``
  (0.95), the rest ``1 − edge_pos_weight``; ignore label 255.
* ``attributes``: binary cross-entropy with logits over the classes (multi-label).

A dense prediction for an image-level task (B, K, H, W) is average-pooled to (B, K) first, so that a
network that only makes dense heads can still learn ``attributes``.
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch
import torch.nn.functional as F

from ..metrics import make_metric
from ..models.heads import IMAGE_LEVEL_TASKS

KNOWN_TASKS = ("semseg", "depth", "normals", "edges", "attributes")
EDGE_POS_WEIGHT = 0.95


def task_channels(tasks, num_classes: int) -> Dict[str, int]:
    """Output channels per task: semseg and attributes ``num_classes``, depth 1, normals 3, edges 1."""
    table = {"semseg": num_classes, "depth": 1, "normals": 3, "edges": 1, "attributes": num_classes}
    unknown = [t for t in tasks if t not in table]
    if unknown:
        raise ValueError(f"tasks: unknown task(s) {unknown}; known tasks: {list(KNOWN_TASKS)}")
    return {t: table[t] for t in tasks}


def as_task_prediction(task: str, pred: torch.Tensor) -> torch.Tensor:
    """Pool dense maps of image-level tasks; pass everything else through. Computes in fp32."""
    pred = pred.float()
    if task in IMAGE_LEVEL_TASKS and pred.dim() == 4:
        pred = pred.mean(dim=(2, 3))
    return pred


def _valid_pixels(batch, target: torch.Tensor) -> torch.Tensor:
    valid = batch["valid"] if "valid" in batch else torch.ones_like(target[:, :1], dtype=torch.bool)
    return valid[:, 0]


def task_loss(task: str, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The loss of ``task`` (see the module docstring) for ``pred`` against ``batch[task]``."""
    pred = as_task_prediction(task, pred)
    target = batch[task]
    if task == "semseg":
        return F.cross_entropy(pred, target, ignore_index=255)
    if task == "depth":
        mask = _valid_pixels(batch, target) & (target[:, 0] > 0)
        return (pred[:, 0] - target[:, 0]).abs()[mask].sum() / mask.sum().clamp_min(1)
    if task == "normals":
        mask = _valid_pixels(batch, target)
        unit = F.normalize(pred, dim=1, eps=1e-6)
        return (unit - target).abs().sum(1)[mask].sum() / mask.sum().clamp_min(1)
    if task == "edges":
        t = target[:, 0]
        keep = t != 255
        weight = torch.where(t == 1, EDGE_POS_WEIGHT, 1 - EDGE_POS_WEIGHT) * keep
        losses = F.binary_cross_entropy_with_logits(pred[:, 0], (t == 1).float(), reduction="none")
        return (losses * weight).sum() / keep.sum().clamp_min(1)
    if task == "attributes":
        return F.binary_cross_entropy_with_logits(pred, target.float())
    raise ValueError(f"task_loss: unknown task {task!r}; known tasks: {list(KNOWN_TASKS)}")


def task_losses(preds: Mapping[str, torch.Tensor], batch, tasks) -> Dict[str, torch.Tensor]:
    missing = [t for t in tasks if t not in preds]
    if missing:
        raise ValueError(f"the model returned no prediction for task(s) {missing}; it returned {sorted(preds)}")
    return {t: task_loss(t, preds[t], batch) for t in tasks}


def make_task_metrics(tasks, num_classes: int) -> Dict[str, object]:
    return {t: make_metric(t, num_classes=num_classes) if t == "semseg" else make_metric(t) for t in tasks}


def update_metric(task: str, metric, pred: torch.Tensor, batch) -> None:
    """Feed one batch to ``task``'s metric; depth and normals are scored on ``batch["valid"]`` pixels."""
    pred = as_task_prediction(task, pred.detach())
    if task in ("depth", "normals"):
        metric.update(pred, batch[task], batch["valid"])
    else:
        metric.update(pred, batch[task])
