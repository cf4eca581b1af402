"""Per-task metrics accumulated over a split, and the multi-task gain Δm.

Each metric is a stateful object: ``update(pred, target[, mask])`` per batch, ``compute()`` → ``{name: float}``,
``reset()``. Definitions and conventions are documented in each module:

* ``SegmentationMetric`` (semseg): ``mIoU``, ``pixel_acc`` (%, confusion matrix over the split).
* ``DepthMetric`` (depth): ``abs_err``, ``rel_err``, ``rmse`` (pixel-wise pooling over valid pixels of the split).
* ``NormalsMetric`` (normals): ``mean``, ``median``, ``rmse`` (°), ``11.25``, ``22.5``, ``30`` (%).
* ``EdgeMetric`` (edges): ``F`` (ODS), ``precision``, ``recall`` (%), ``threshold``, ``F_ois`` (%); the boundary
  F-measure of the BSDS / SEISM benchmark (NMS, thinning, one-to-one matching within ``max_dist`` × the image
  diagonal), computed in Python with SciPy.
* ``AttributeMetric`` (attributes): ``accuracy`` (%), optional ``mAP`` (%).
* ``delta_m`` / ``delta_m_report`` / ``relative_gains``: Δm against an explicit single-task baseline with an
  explicit ``spec`` ``{task: {metric: higher_is_better}}``, conventions ``"key"``, ``"per_task"``, ``"flat"``.
"""
from .attributes import AttributeMetric, average_precision
from .base import Metric
from .delta_m import (
    CONVENTIONS,
    DEFAULT_KEY_SPEC,
    DEFAULT_SPEC,
    METRIC_DIRECTIONS,
    default_spec,
    delta_m,
    delta_m_report,
    relative_gains,
)
from .depth import DepthMetric
from .edges import EdgeMetric
from .factory import TASKS, make_metric
from .normals import NormalsMetric
from .segmentation import SegmentationMetric

__all__ = [
    "Metric",
    "SegmentationMetric",
    "DepthMetric",
    "NormalsMetric",
    "EdgeMetric",
    "AttributeMetric",
    "average_precision",
    "make_metric",
    "TASKS",
    "delta_m",
    "delta_m_report",
    "relative_gains",
    "default_spec",
    "DEFAULT_SPEC",
    "DEFAULT_KEY_SPEC",
    "METRIC_DIRECTIONS",
    "CONVENTIONS",
]
