"""The multi-task gain Δm of a multi-task model m against explicit single-task baselines b.

For one metric i with higher-is-better flag h_i (l_i = 0 if h_i else 1), the relative gain in % is

    g_i = (−1)^{l_i} · (M_m,i − M_b,i) / M_b,i · 100

so a positive g_i is always an improvement over the baseline: for a lower-is-better metric (depth error, angle)
a smaller value than the baseline gives a positive gain. The published forms differ in *which* metrics enter and
*how* they are averaged; all three are offered, and the metric set is always the explicit ``spec``:

* ``convention="key"`` — one key metric per task, averaged over the T tasks:
      Δm = (1/T) Σ_t g_{key(t)}
  Maninis et al. (ASTMT, CVPR 2019) and Vandenhende et al. (MTI-Net, ECCV 2020; the TPAMI 2021 survey; their
  ``calculate_multi_task_performance``), which Medusa follows: NYUD-v2 uses semseg mIoU, depth RMSE, normals mean
  angle, edges odsF. The spec must list exactly one metric per task (``DEFAULT_KEY_SPEC`` is that set); the number
  is then the same as ``"per_task"`` with that spec.
* ``convention="per_task"`` (default) — average within each task, then over tasks:
      Δm = (1/T) Σ_t (1/N_t) Σ_{i ∈ t} g_i
  AdaShare's Δ_T (per task; averaging it over tasks gives this), ETR-NLP, and LibMTL's ``count_improvement``.
  With a one-metric-per-task spec this is the key convention.
* ``convention="flat"`` — average over all K metrics of all tasks, each metric weighted equally:
      Δm = (1/K) Σ_k g_k
  MTAN-lineage papers (CAGrad, Nash-MTL, FAMO: the nine NYUv2 metrics seg mIoU/pix-acc, depth abs/rel, normals
  mean/median/11.25/22.5/30).

``per_task`` and ``flat`` differ whenever tasks have different numbers of metrics: with ``DEFAULT_SPEC`` on NYUv2
(2 seg + 2 depth + 5 normals metrics) ``flat`` gives normals 5/9 of the weight, ``per_task`` gives it 1/3. Report
the convention and the spec with every Δm (``delta_m_report`` returns both). The baseline must come from the same
metric code as the results (units and conventions matter; e.g. the edge F depends on the matching tolerance
``max_dist``).
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, Iterable, Mapping, Union

import torch

Spec = Mapping[str, Mapping[str, bool]]  # task -> metric -> higher_is_better
Results = Mapping[str, Mapping[str, Union[float, int, torch.Tensor]]]

CONVENTIONS = ("key", "per_task", "flat")

#: every metric this package reports, with its higher-is-better flag
METRIC_DIRECTIONS: Dict[str, Dict[str, bool]] = {
    "semseg": {"mIoU": True, "pixel_acc": True},
    "depth": {"abs_err": False, "rel_err": False, "rmse": False},
    "normals": {"mean": False, "median": False, "rmse": False, "11.25": True, "22.5": True, "30": True},
    "edges": {"F": True, "precision": True, "recall": True, "F_ois": True},
    "attributes": {"accuracy": True, "mAP": True},
}

#: the all-metrics set per task (depth as in the MTAN-lineage nine NYUv2 metrics: abs and rel, not RMSE)
DEFAULT_SPEC: Dict[str, Dict[str, bool]] = {
    "semseg": {"mIoU": True, "pixel_acc": True},
    "depth": {"abs_err": False, "rel_err": False},
    "normals": {"mean": False, "median": False, "11.25": True, "22.5": True, "30": True},
    "edges": {"F": True},
    "attributes": {"accuracy": True},
}

#: one key metric per task, as in Maninis et al. / Vandenhende et al.
DEFAULT_KEY_SPEC: Dict[str, Dict[str, bool]] = {
    "semseg": {"mIoU": True},
    "depth": {"rmse": False},
    "normals": {"mean": False},
    "edges": {"F": True},
    "attributes": {"accuracy": True},
}


def default_spec(tasks: Iterable[str], key: bool = False) -> Dict[str, Dict[str, bool]]:
    """A copy of ``DEFAULT_SPEC`` (or ``DEFAULT_KEY_SPEC`` when ``key``) restricted to ``tasks``, in that order."""
    table = DEFAULT_KEY_SPEC if key else DEFAULT_SPEC
    if isinstance(tasks, str):
        tasks = [tasks]
    out = {}
    for task in tasks:
        if task not in table:
            raise ValueError(f"no default spec for task {task!r}; known tasks: {sorted(table)}")
        out[task] = dict(table[task])
    return out


def _check_spec(spec: Spec) -> None:
    if not isinstance(spec, Mapping) or len(spec) == 0:
        raise ValueError("spec must be a non-empty mapping {task: {metric: higher_is_better}}")
    for task, metrics in spec.items():
        if not isinstance(metrics, Mapping) or len(metrics) == 0:
            raise ValueError(
                f"spec[{task!r}] must be a non-empty mapping {{metric: higher_is_better}}, got {metrics!r}"
            )
        for metric, hib in metrics.items():
            if not isinstance(hib, bool):
                raise ValueError(f"spec[{task!r}][{metric!r}] must be a bool (True = higher is better), got {hib!r}")


def _value(source: Results, source_name: str, task: str, metric: str) -> float:
    if task not in source:
        raise ValueError(f"{source_name} has no task {task!r} (spec asks for it); {source_name} has {sorted(source)}")
    metrics = source[task]
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{source_name}[{task!r}] must be a mapping {{metric: value}}, got {type(metrics).__name__}")
    if metric not in metrics:
        raise ValueError(
            f"{source_name}[{task!r}] has no metric {metric!r} (spec asks for it); it has {sorted(metrics)}"
        )
    raw = metrics[metric]
    if isinstance(raw, torch.Tensor):
        if raw.numel() != 1:
            raise ValueError(
                f"{source_name}[{task!r}][{metric!r}] must be a scalar, got a tensor of shape {tuple(raw.shape)}"
            )
        raw = raw.item()
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        raise ValueError(f"{source_name}[{task!r}][{metric!r}] must be a real number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"{source_name}[{task!r}][{metric!r}] is {value}; Δm needs finite values")
    return value


def relative_gains(results: Results, baseline: Results, spec: Spec) -> Dict[str, Dict[str, float]]:
    """``{task: {metric: g_i}}`` with g_i = (−1)^{l_i} (M_m,i − M_b,i) / M_b,i · 100 for every metric in ``spec``.

    Raises ``ValueError`` naming the task/metric when ``results`` or ``baseline`` lacks something ``spec`` asks
    for, when ``results`` has a task the spec does not list (so no task is silently dropped), on non-finite
    values, and on a zero baseline value. Extra metrics in ``results``/``baseline`` and extra tasks in
    ``baseline`` are ignored.
    """
    _check_spec(spec)
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a mapping {{task: {{metric: value}}}}, got {type(results).__name__}")
    if not isinstance(baseline, Mapping):
        raise ValueError(f"baseline must be a mapping {{task: {{metric: value}}}}, got {type(baseline).__name__}")
    extra = [t for t in results if t not in spec]
    if extra:
        raise ValueError(f"results has task(s) {extra} that spec does not list; add them to spec or drop them")
    gains: Dict[str, Dict[str, float]] = {}
    for task, metrics in spec.items():
        gains[task] = {}
        for metric, higher_is_better in metrics.items():
            m = _value(results, "results", task, metric)
            b = _value(baseline, "baseline", task, metric)
            if b == 0:
                raise ValueError(f"baseline[{task!r}][{metric!r}] is 0; the relative gain is undefined")
            sign = 1.0 if higher_is_better else -1.0
            gains[task][metric] = sign * (m - b) / b * 100.0
    return gains


def delta_m_report(results: Results, baseline: Results, spec: Spec, convention: str = "per_task") -> Dict[str, object]:
    """Δm with everything needed to report it.

    Returns ``{"delta_m": float (%), "convention": str, "spec": {task: {metric: higher_is_better}},
    "per_metric": {task: {metric: g_i}}, "per_task": {task: mean of the task's g_i}, "num_metrics": int}``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    _check_spec(spec)
    if convention == "key":
        for task, metrics in spec.items():
            if len(metrics) != 1:
                raise ValueError(
                    f"convention='key' needs exactly one metric per task, but spec[{task!r}] lists {sorted(metrics)}; "
                    "use DEFAULT_KEY_SPEC / default_spec(tasks, key=True) or pick one"
                )
    gains = relative_gains(results, baseline, spec)
    per_task = {task: sum(g.values()) / len(g) for task, g in gains.items()}
    flat = [v for g in gains.values() for v in g.values()]
    if convention == "flat":
        value = sum(flat) / len(flat)
    else:
        value = sum(per_task.values()) / len(per_task)
    return {
        "delta_m": value,
        "convention": convention,
        "spec": {task: dict(metrics) for task, metrics in spec.items()},
        "per_metric": gains,
        "per_task": per_task,
        "num_metrics": len(flat),
    }


def delta_m(results: Results, baseline: Results, spec: Spec, convention: str = "per_task") -> float:
    """Δm in % of ``results`` against the single-task ``baseline`` over the metrics of ``spec``.

    Args:
        results, baseline: ``{task: {metric: value}}`` (e.g. the ``compute()`` dicts of the task metrics).
        spec: ``{task: {metric: higher_is_better}}``, the explicit metric set (see ``DEFAULT_SPEC``,
            ``DEFAULT_KEY_SPEC``, ``default_spec``).
        convention: ``"key"``, ``"per_task"`` or ``"flat"`` (module docs give the formulas and sources).
    """
    return delta_m_report(results, baseline, spec, convention)["delta_m"]
