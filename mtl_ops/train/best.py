"""Keeping the best checkpoint: ``best.pt`` holds the model of the evaluated epoch with the best key metric so
far, beside ``last.pt``.

The key metric (``best_metric``) is either

* ``"delta_m"``: Δm in % against ``baseline_metrics`` (``{task: {metric: value}}``, e.g. the ``val`` of
  ``mtl-ops eval --json`` on a single-task run) over one key metric per task (:data:`DEFAULT_KEY_SPEC`:
  semseg mIoU, depth RMSE, normals mean angle, edges F, attributes accuracy), averaged over the tasks — higher
  is better; or
* ``"task.metric"`` (e.g. ``"semseg.mIoU"``, ``"depth.rmse"``): that metric of the validation set, in its own
  direction (:data:`METRIC_DIRECTIONS`: mIoU higher, RMSE lower is better).

Only epochs that evaluate (``eval_every``) can become the best; a tie keeps the earlier epoch. The best value
and its epoch are part of every checkpoint, so a resumed run keeps comparing against them.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

from ..metrics.delta_m import DEFAULT_KEY_SPEC, METRIC_DIRECTIONS, default_spec, delta_m

BEST_FILE = "best.pt"


def check_best_metric(name, tasks: Sequence[str], baseline: Optional[Mapping]) -> Tuple[Optional[str], str, bool]:
    """Validate ``best_metric`` for ``tasks``: returns (task or None for Δm, metric, higher_is_better). Errors name
    the field, what was expected and what came."""
    if not isinstance(name, str):
        raise ValueError(f"config.best_metric: expected 'delta_m' or 'task.metric', got {name!r}")
    if name == "delta_m":
        missing = [t for t in tasks if t not in DEFAULT_KEY_SPEC]
        if missing:
            raise ValueError(f"config.best_metric: 'delta_m' has no key metric for task(s) {missing}")
        if not isinstance(baseline, Mapping):
            raise ValueError(f"config.baseline_metrics: best_metric='delta_m' needs the baseline's metrics "
                             f"{{task: {{metric: value}}}}, got {baseline!r}")
        for task in tasks:
            (key, _), = DEFAULT_KEY_SPEC[task].items()
            value = baseline.get(task, {}).get(key) if isinstance(baseline.get(task), Mapping) else None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value == 0:
                raise ValueError(f"config.baseline_metrics: expected a non-zero number for {task}.{key} (the "
                                 f"key metric Δm compares), got {value!r}")
        return None, "delta_m", True
    task, _, metric = name.partition(".")
    if task not in tasks or metric not in METRIC_DIRECTIONS.get(task, {}):
        choices = ["delta_m"] + [f"{t}.{m}" for t in tasks for m in METRIC_DIRECTIONS.get(t, {})]
        raise ValueError(f"config.best_metric: expected one of {choices}, got {name!r}")
    if baseline is not None:
        raise ValueError("config.baseline_metrics: only used with best_metric='delta_m', got it with "
                         f"best_metric={name!r}")
    return task, metric, METRIC_DIRECTIONS[task][metric]


class BestTracker:
    """Compares each evaluation's key metric with the best so far (see the module docs)."""

    def __init__(self, name: str, tasks: Sequence[str], baseline: Optional[Mapping] = None):
        self.name, self.tasks, self.baseline = name, list(tasks), baseline
        self.task, self.metric, self.higher_is_better = check_best_metric(name, tasks, baseline)
        self.value: Optional[float] = None
        self.epoch: Optional[int] = None

    def score(self, val: Mapping[str, Mapping]) -> float:
        """The key metric of the validation metrics ``val``."""
        if self.task is None:
            return float(delta_m({t: val[t] for t in self.tasks}, self.baseline, default_spec(self.tasks, key=True),
                                 "per_task"))
        return float(val[self.task][self.metric])

    def update(self, val: Mapping[str, Mapping], epoch: int) -> bool:
        """Whether ``val`` (of ``epoch``) is better than the best so far; if so it becomes the best."""
        value = self.score(val)
        if math.isnan(value):  # a NaN metric is never the best
            return False
        better = self.value is None or (value > self.value if self.higher_is_better else value < self.value)
        if better:
            self.value, self.epoch = value, epoch
        return better

    def state_dict(self) -> Dict:
        return {"name": self.name, "value": self.value, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping) -> None:
        self.value, self.epoch = state["value"], state["epoch"]
