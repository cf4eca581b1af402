"""``make_metric(task)``: the metric object for a task name."""
from __future__ import annotations

from typing import Callable, Dict

from .attributes import AttributeMetric
from .base import Metric
from .depth import DepthMetric
from .edges import EdgeMetric
from .normals import NormalsMetric
from .segmentation import SegmentationMetric

METRIC_CLASSES: Dict[str, Callable[..., Metric]] = {
    "semseg": SegmentationMetric,
    "depth": DepthMetric,
    "normals": NormalsMetric,
    "edges": EdgeMetric,
    "attributes": AttributeMetric,
}

TASKS = tuple(METRIC_CLASSES)


def make_metric(task: str, **kwargs) -> Metric:
    """A fresh metric for ``task`` (one of ``TASKS``); ``kwargs`` go to its constructor.

    ``semseg`` needs ``num_classes``; the others have defaults (see each class).
    """
    if task not in METRIC_CLASSES:
        raise ValueError(f"unknown task {task!r}; known tasks: {list(TASKS)}")
    if task == "semseg" and "num_classes" not in kwargs:
        raise ValueError("make_metric('semseg') needs num_classes=<number of classes>")
    return METRIC_CLASSES[task](**kwargs)
