"""Validation metrics of a model over a whole split: one metric per task (:func:`make_task_metrics`), fed batch
by batch, computed once at the end."""
from __future__ import annotations

from typing import Callable, Dict, Iterable

import torch

from .runtime import Runtime
from .tasks import make_task_metrics, update_metric


@torch.no_grad()
def validation_metrics(forward: Callable, batches: Iterable[Dict[str, torch.Tensor]], tasks, num_classes: int,
                       runtime: Runtime) -> Dict[str, Dict]:
    """``{task: {metric: value}}`` of ``forward`` (images -> {task: prediction}) over ``batches``."""
    metrics = make_task_metrics(tasks, num_classes)
    for batch in batches:
        batch = runtime.to_device(batch)
        with runtime.autocast():
            preds = forward(batch["image"])
        for t in tasks:
            update_metric(t, metrics[t], preds[t], batch)
    return {t: m.compute() for t, m in metrics.items()}
