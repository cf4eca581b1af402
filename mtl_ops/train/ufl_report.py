"""The UFL comparison (see :mod:`mtl_ops.train.medusa_ufl`): the held-out task's metrics after universal
feature learning against the same task trained jointly and alone, with the gain of UFL over each baseline,
as a JSON-ready dict and a printed table.

Gains are Δm in % (:func:`mtl_ops.metrics.delta_m_report`, ``per_task`` convention, one task), so a positive
value means UFL is better: ``key`` over the task's key metric (``DEFAULT_KEY_SPEC``: mIoU, depth RMSE,
normals mean angle, edge F, attribute accuracy), ``all`` over its all-metrics set (``DEFAULT_SPEC``). A gain is
None where a baseline value is 0 (the relative change is undefined) or the baseline was skipped.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

from ..metrics import DEFAULT_KEY_SPEC, DEFAULT_SPEC, default_spec, delta_m_report

BASELINES = ("joint", "single_task")


def required_metrics(task: str) -> list:
    """The metrics a baseline of ``task`` must have for both gains."""
    return sorted(set(DEFAULT_SPEC[task]) | set(DEFAULT_KEY_SPEC[task]))


def given_metrics(option: str, value, task: str) -> Dict[str, float]:
    """``{metric: float}`` of ``task`` from a schedule option: ``{metric: number}``, or ``{task: {metric:
    number}}`` as in ``mtl-ops eval``'s ``val``. Errors name the option, what is expected and what came."""
    if isinstance(value, Mapping) and isinstance(value.get(task), Mapping):
        value = value[task]
    needed = required_metrics(task)
    expected = (f"the held-out task {task!r}'s metrics as {{metric: finite number}} (or {{{task!r}: {{...}}}}) "
                f"with at least {needed}")
    if not isinstance(value, Mapping):
        raise ValueError(f"config.schedule_options[{option!r}]: expected {expected}, got {value!r}")
    missing = [m for m in needed if m not in value]
    bad = [m for m, v in value.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if missing or bad:
        problem = f"missing {missing}" if missing else f"not finite numbers: {bad}"
        raise ValueError(f"config.schedule_options[{option!r}]: expected {expected}; {problem} in {dict(value)!r}")
    return {m: float(v) for m, v in value.items()}


def gain(ufl: Mapping[str, float], baseline: Optional[Mapping[str, float]], task: str, key: bool) -> Optional[float]:
    """Δm (%) of ``ufl`` against ``baseline`` for ``task``; None when undefined (see the module docstring)."""
    if baseline is None:
        return None
    spec = default_spec([task], key=key)
    if any(baseline[m] == 0 for m in spec[task]):
        return None
    return delta_m_report({task: ufl}, {task: baseline}, spec, "per_task")["delta_m"]


def build_report(held_out: str, trained_first, epochs: Mapping[str, int], results: Mapping[str, Dict],
                 frozen_unchanged: bool, head_parameters: int) -> Dict:
    """``results``: ``{"ufl" | "joint" | "single_task": {"source": "trained" | "given" | "skipped",
    "metrics": {metric: value} or None, ...}}``."""
    ufl = results["ufl"]["metrics"]
    gains = {kind: {"key_metric": next(iter(DEFAULT_KEY_SPEC[held_out])),
                    "key": gain(ufl, results[kind]["metrics"], held_out, key=True),
                    "all": gain(ufl, results[kind]["metrics"], held_out, key=False)} for kind in BASELINES}
    return {"held_out": held_out, "trained_first": list(trained_first), "epochs": dict(epochs),
            "results": {k: dict(v) for k, v in results.items()}, "gain_vs": gains,
            "frozen_unchanged": bool(frozen_unchanged), "head_parameters": int(head_parameters)}


def _number(value) -> str:
    return "—" if value is None else f"{value:.4g}"


def _signed(value) -> str:
    return "—" if value is None else f"{value:+.2f} %"


def format_report(report: Mapping) -> str:
    """The comparison as a plain-text table (metrics per row, ufl / joint / single_task per column)."""
    task, results = report["held_out"], report["results"]
    columns = ["ufl", *BASELINES]
    metrics = list(results["ufl"]["metrics"])
    width = max(len(m) for m in metrics + ["metric"]) + 2
    lines = [f"UFL report, held-out task {task!r} (trained first: {', '.join(report['trained_first'])}; "
             f"then only a new {task} head, backbone and other heads frozen)",
             "metric".ljust(width) + "".join(f"{c:>14}" for c in columns),
             "source".ljust(width) + "".join(f"{results[c]['source']:>14}" for c in columns)]
    for m in metrics:
        row = [(results[c]["metrics"] or {}).get(m) for c in columns]
        lines.append(m.ljust(width) + "".join(f"{_number(v):>14}" for v in row))
    for kind in BASELINES:
        g = report["gain_vs"][kind]
        lines.append(f"gain of UFL vs {kind}: key ({g['key_metric']}) {_signed(g['key'])}, "
                     f"all metrics {_signed(g['all'])}")
    if not report["frozen_unchanged"]:
        lines.append("WARNING: the frozen backbone or heads changed while the new head trained")
    return "\n".join(lines)
