"""The study's report: ``study.json`` (every run's metrics and the summaries), ``study.md`` (each metric's and each
Δm's mean ± standard deviation over the seeds, with the date, commit and machine) and ``study_spread.png`` (every
seed's value per method: each task's key metric and Δm against both baselines).

Δm of a run is measured against the baseline's metrics averaged over its seeds, so the spread of a method's Δm
is the spread of the method's runs alone; the baselines' own rows show how far single runs scatter around their
mean. The standard deviation is the sample one (n − 1); with one seed there is none.
"""
from __future__ import annotations

import datetime
import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..info import machine_description, source_commit
from ..metrics import DEFAULT_KEY_SPEC, METRIC_DIRECTIONS
from ..utils.files import atomic_write_text
from .config import backbone_description
from .figures import metric_label, save_figure, spread_figure
from .report import BASELINES, SHOWN, beats_trivial, delta_m

SPREAD_FILE = "study_spread.png"


def stats(values: Sequence[float]) -> Dict:
    """{"mean", "std" (sample; None for one value), "n", "values"}."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}


def mean_metrics(runs: Sequence[Dict]) -> Dict[str, Dict[str, float]]:
    """Each metric averaged over ``runs`` (their ``metrics`` dicts)."""
    first = runs[0]["metrics"]
    return {t: {m: statistics.fmean(r["metrics"][t][m] for r in runs) for m in first[t]} for t in first}


def summarize(methods: Sequence[str], results: Sequence[Dict], tasks: Sequence[str]) -> Dict:
    """Per method: every shown metric's stats, Δm (key and all) against each baseline's mean, parameters and
    training time."""
    runs = {m: [r for r in results if r["method"] == m] for m in methods}
    baselines = {b: mean_metrics(runs[b]) for b in BASELINES if runs.get(b)}
    summary = {}
    for method, own in runs.items():
        if not own:
            continue
        entry = {"seeds": [r["seed"] for r in own],
                 "metrics": {t: {m: stats([r["metrics"][t][m] for r in own]) for m in SHOWN[t]} for t in tasks},
                 "delta_m": {b: {kind: stats([delta_m(r["metrics"], base, tasks, kind == "key") for r in own])
                                 for kind in ("key", "all")} for b, base in baselines.items()},
                 "parameters": own[0]["parameters"], "train_seconds": stats([r["train_seconds"] for r in own]),
                 "epochs_run": own[0]["epochs_run"], "phase_epochs": own[0]["phase_epochs"]}
        summary[method] = entry
    return summary


def _pm(s: Dict, digits: int, sign: bool = False) -> str:
    """``mean ± std`` with ``digits`` decimals (a mean that rounds to zero is written without a sign)."""
    mean = s["mean"] if abs(s["mean"]) >= 0.5 * 10 ** -digits else 0.0
    text = format(mean, f"{'+' if sign and mean else ''}.{digits}f")
    return text + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")


def spread_panels(summary: Dict, tasks: Sequence[str], trivial: Optional[Dict] = None) -> List:
    """The panels of ``study_spread.png``: each task's key metric (with the trivial predictor's value as a
    reference line when given) and Δm key against each baseline."""
    panels = []
    for task in tasks:
        (key, higher), = DEFAULT_KEY_SPEC[task].items()
        floor = (trivial[task][key], "trivial predictor") if trivial else None
        panels.append((f"{task} {key}", metric_label(task, key, higher),
                       {m: e["metrics"][task][key]["values"] for m, e in summary.items()}, floor))
    for b in BASELINES:
        if any(b in e["delta_m"] for e in summary.values()):
            panels.append((f"Δm key vs {b}", "Δm key (%, higher is better)",
                           {m: e["delta_m"][b]["key"]["values"] for m, e in summary.items()}, (0.0, b)))
    return panels


def markdown(data: Dict) -> str:
    c, summary, tasks = data["config"], data["summary"], data["config"]["tasks"]
    h, w = c["size"] or (64, 84)
    trivial = data["trivial"]
    lines = ["# mtl-ops study", "",
             f"* date: {data['date']}; commit: {data['commit'] or 'unknown'}; machine: {data['machine']}",
             f"* command: `{data['command']}`" if data.get("command") else "* command: (run from Python)",
             f"* seeds: {', '.join(map(str, data['seeds']))}; total training time of the runs: "
             f"{sum(r['train_seconds'] for r in data['runs']) / 60:.1f} min",
             "", "## Budget", "",
             f"Every run trains from scratch on {c['n_train']} synthetic training images of {h}×{w} pixels "
             f"(validation: {c['n_val']} images, the same scenes in every run), backbone {backbone_description(c)}, "
             f"batch {c['batch_size']}, {c['epochs']} epoch(s) per training phase; the seed changes the "
             f"initial weights, the training order and the flips. Epochs each method ran, per phase:", "",
             "| model | epochs run | phases (epochs) | learnable parameters | training time per run (s) |",
             "|---|---|---|---|---|"]
    for m, e in summary.items():
        phases = ", ".join(f"{p} {n}" for p, n in e["phase_epochs"].items())
        lines.append(f"| {m} | {e['epochs_run']} | {phases} | {e['parameters']:,} | {_pm(e['train_seconds'], 0)} |")
    cols = [(t, m) for t in tasks for m in SHOWN[t]]
    arrows = {True: "↑", False: "↓"}
    lines += ["", "## Validation metrics (mean ± standard deviation over the seeds)", "",
              "| model | " + " | ".join(f"{t} {m} {arrows[METRIC_DIRECTIONS[t][m]]}" for t, m in cols) +
              " | runs beating trivial on every task |", "|---" * (len(cols) + 2) + "|",
              "| trivial | " + " | ".join(f"{trivial[t][m]:.3f}" for t, m in cols) + " | — |"]
    for m, e in summary.items():
        runs = [r for r in data["runs"] if r["method"] == m]
        beat = sum(all(beats_trivial(r["metrics"], trivial).values()) for r in runs)
        lines.append(f"| {m} | " + " | ".join(_pm(e["metrics"][t][k], 3) for t, k in cols) +
                     f" | {beat} of {len(runs)} |")
    baselines = [b for b in BASELINES if any(b in e["delta_m"] for e in summary.values())]
    if baselines:
        lines += ["", "## Δm against the single-task and the shared baselines (mean ± standard deviation)", "",
                  "Δm (%) of each run against the baseline's metrics averaged over its seeds, `per_task` convention; "
                  "*key*: one metric per task (`DEFAULT_KEY_SPEC`), *all*: `DEFAULT_SPEC`. A baseline's own row "
                  "shows how far single runs scatter around its mean: a difference between methods smaller than "
                  "that scatter is not one this study can resolve.", "",
                  "| model |" + "".join(f" Δm key vs {b} | Δm all vs {b} |" for b in baselines),
                  "|---" * (2 * len(baselines) + 1) + "|"]
        for m, e in summary.items():
            cells = [_pm(e["delta_m"][b][kind], 2, sign=True) for b in baselines for kind in ("key", "all")]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "## Per-seed spread", "", f"![per-seed spread]({SPREAD_FILE})", "",
              "Each dot is one seed's run; the black bar is the mean with ± one standard deviation.", ""]
    return "\n".join(lines)


def write_study_report(out_dir, config: Dict, methods: Sequence[str], seeds: Sequence[int], results: Sequence[Dict],
                       trivial: Dict, command: Optional[str] = None) -> Dict:
    out_dir = Path(out_dir)
    tasks = list(config["tasks"])
    summary = summarize(methods, results, tasks)
    data = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": source_commit(), "machine": machine_description(), "command": command, "config": config,
            "methods": list(methods), "seeds": list(seeds), "trivial": trivial, "runs": list(results),
            "summary": summary}
    save_figure(spread_figure(spread_panels(summary, tasks, trivial), title=f"{len(seeds)} seed(s), {config['epochs']} epoch(s) per phase"),
                out_dir / SPREAD_FILE)
    atomic_write_text(out_dir / "study.json", json.dumps(data, indent=2) + "\n")
    atomic_write_text(out_dir / "study.md", markdown(data))
    return data
