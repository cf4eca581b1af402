"""``curves.png`` of a run: the training loss (total and per task) and each task's key validation metric per
epoch, read from the run's ``metrics.jsonl``; each phase of a multi-phase schedule (AdaShare, PDF, Medusa's
UFL) is marked where it first starts.

The trainer writes it at the end of every run; ``write_curves(folder)`` draws it again for any run folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..metrics import DEFAULT_KEY_SPEC
from .figures import curves_figure, metric_label, save_figure

CURVES_FILE = "curves.png"


def key_metric(task: str) -> Tuple[str, bool]:
    """(name, higher is better) of ``task``'s key metric (``DEFAULT_KEY_SPEC``: the one Δm key uses)."""
    (name, higher), = DEFAULT_KEY_SPEC[task].items()
    return name, higher


def read_rows(folder: Union[str, Path]) -> List[Dict]:
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"curves: no metrics.jsonl in {folder} (the log every run writes)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(rows: Sequence[Dict], tasks: Optional[Sequence[str]] = None):
    """(loss {name: [(epoch, value)]}, metrics {task: [(epoch, key metric)]}, phases [(start epoch, name)]) of
    log ``rows``: losses from the training epochs' rows, metrics from every row with validation metrics (also the
    trainer's final ``evaluation`` row). A phase is marked at the start of the first epoch it logs."""
    loss: Dict[str, List[Tuple[float, float]]] = {}
    metrics: Dict[str, List[Tuple[float, float]]] = {}
    phases: List[Tuple[float, str]] = []
    for row in rows:
        epoch = row.get("epoch")
        if epoch is None:
            continue
        if "train_loss" in row:
            phase = row.get("phase", "train")
            if phase not in [name for _, name in phases]:
                phases.append((epoch - 1, phase))
            for name, value in row["train_loss"].items():
                loss.setdefault(name, []).append((epoch, value))
        for task, values in (row.get("val") or {}).items():
            if (tasks is None or task in tasks) and task in DEFAULT_KEY_SPEC:
                metrics.setdefault(task, []).append((epoch, values[key_metric(task)[0]]))
    if "total" in loss:  # the total first: the legend's first entry
        loss = {"total": loss.pop("total"), **loss}
    return loss, metrics, phases if len(phases) > 1 else []


def run_curves_figure(rows: Sequence[Dict], title: str = ""):
    loss, metrics, phases = series(rows)
    labels = {t: metric_label(t, *key_metric(t)) for t in metrics}
    return curves_figure(loss, metrics, labels, phases, title)


def write_curves(folder: Union[str, Path], title: Optional[str] = None) -> Optional[Path]:
    """Draw ``folder``'s ``metrics.jsonl`` into ``folder/curves.png``; returns its path (None when the log holds
    no training epoch, e.g. a run that only evaluated)."""
    folder = Path(folder)
    rows = read_rows(folder)
    if not any("train_loss" in row for row in rows):
        return None
    if title is None:
        config = folder / "config.json"
        title = json.loads(config.read_text()).get("method", "") if config.is_file() else ""
    return save_figure(run_curves_figure(rows, title), folder / CURVES_FILE)
