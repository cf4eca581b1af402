"""``mtl-ops study``: every method trained with several seeds at a larger budget than the demo's, so that a
difference between methods can be told apart from seed-to-seed noise. The report (:mod:`mtl_ops.train.study_report`)
gives each metric's and each Δm's mean ± standard deviation over the seeds, and figures of the per-seed spread.

The seed changes everything a run draws (initial weights, the training order, the flips; see
:mod:`mtl_ops.train.seeding`); the data are the same synthetic scenes in every run.

Layout of the study folder:

* ``study_config.json`` — the budget every run shares (the training configuration without its seed); a study
  continues in its folder only with the same budget (other methods or more seeds may be added).
* ``<method>/seed<k>/`` — one training run (the trainer's folder: ``config.json``, ``metrics.jsonl``,
  ``curves.png``, checkpoints) and, once it has finished, its ``result.json``.
* ``trivial.json`` — the trivial predictor's metrics (the floor every model must beat).
* ``study.md``, ``study.json``, ``study_spread.png`` — the report.

Resuming: a (method, seed) run whose ``result.json`` exists is read back, not trained again; one that was stopped
part-way is trained again from its start (the multi-phase schedules of AdaShare and PDF cannot continue from an
epoch checkpoint), so a long study that stops loses at most the run in progress.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..utils.files import atomic_write_text
from .config import TrainConfig
from .demo import DEMO_DEFAULTS, DEMO_SCHEDULES, demo_methods, method_config, phase_epochs
from .loop import Trainer
from .study_report import write_study_report
from .trivial import TrivialPredictor

#: the study's default budget: more epochs than the demo, on the demo's data
STUDY_DEFAULTS = {"seeds": 3, "epochs": 20}
#: schedule options per method. PDF keeps the demo's grouping threshold, CKA images and single fusion step; its
#: phases last ``epochs`` each. AdaShare runs its schedule's defaults, whose re-training lasts ``epochs``.
STUDY_SCHEDULES = {"pdf": DEMO_SCHEDULES["pdf"]}
#: what a run's configuration may differ in between two sittings of one study (how and where it runs, not what)
RUN_ONLY_FIELDS = ("seed", "out_dir", "quiet", "num_threads", "num_workers", "device", "cache_dir")
RESULT_FILE = "result.json"
CONFIG_FILE = "study_config.json"


def budget(config: TrainConfig) -> Dict:
    """The fields of ``config`` that every run of a study shares and that decide its results."""
    return {k: v for k, v in config.to_dict().items() if k not in RUN_ONLY_FIELDS}


def check_budget(out_dir: Path, config: TrainConfig, overwrite: bool) -> None:
    """Refuse to continue a study in ``out_dir`` that was run with another budget (ValueError listing the
    differences), unless ``overwrite``; then record this study's budget there."""
    path = out_dir / CONFIG_FILE
    wanted = budget(config)
    if path.is_file() and not overwrite:
        held = json.loads(path.read_text())
        differ = {k: (held.get(k), v) for k, v in wanted.items() if held.get(k) != v}
        if differ:
            listed = "; ".join(f"{k} = {new!r} (the study's: {old!r})" for k, (old, new) in differ.items())
            raise ValueError(f"study: {out_dir} holds a study with another budget: {listed}. Continue it with its "
                             f"own options, use another --out-dir, or pass --overwrite to train every run again")
    atomic_write_text(path, json.dumps(wanted, indent=2) + "\n")


def run_unit(base: TrainConfig, method: str, seed: int, out_dir: Path, *, quiet: bool,
             overwrite: bool) -> Tuple[Dict, bool]:
    """Train ``method`` with ``seed`` into ``out_dir/<method>/seed<seed>``, or read its finished result back
    (unless ``overwrite``); returns (result, whether it was trained now)."""
    folder = out_dir / method / f"seed{seed}"
    done = folder / RESULT_FILE
    if done.is_file() and not overwrite:
        return json.loads(done.read_text()), False
    config = replace(method_config(replace(base, seed=seed), method, out_dir, STUDY_SCHEDULES, quiet),
                     out_dir=str(folder))
    started = time.perf_counter()
    trainer = Trainer(config, overwrite=True)  # a run stopped part-way starts again
    metrics = trainer.fit()
    result = {"method": method, "seed": seed, "metrics": metrics, "parameters": trainer.learnable_parameters(),
              "train_seconds": time.perf_counter() - started, "epochs_run": trainer.epoch,
              "phase_epochs": phase_epochs(trainer), "schedule_options": dict(trainer.config.schedule_options)}
    atomic_write_text(done, json.dumps(result, indent=2) + "\n")
    return result, True


def trivial_metrics(base: TrainConfig, out_dir: Path) -> Dict:
    path = out_dir / "trivial.json"
    if path.is_file():
        return json.loads(path.read_text())
    trainer = Trainer(replace(base, method="shared", out_dir=None, quiet=True))
    trivial = TrivialPredictor(trainer.channels).fit(trainer.train_set)
    metrics = trainer.evaluate(forward=trivial)
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_study(out_dir, *, seeds: int = STUDY_DEFAULTS["seeds"], methods: Optional[Sequence[str]] = None,
              base: Optional[TrainConfig] = None, quiet: bool = False, overwrite: bool = False,
              command: Optional[str] = None) -> Dict:
    """Train every method in ``methods`` (default: the demo's list) with seeds 0 … ``seeds`` − 1, resuming what
    ``out_dir`` already holds, and write the report there. Returns the report's data (``study.json``)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"study: seeds must be a positive int (the number of seeds), got {seeds!r}")
    base = base or TrainConfig(**{**DEMO_DEFAULTS, "epochs": STUDY_DEFAULTS["epochs"]})
    methods = demo_methods(methods)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_budget(out_dir, base, overwrite)
    results: List[Dict] = []
    for seed in range(seeds):  # seed-major: a study stopped early has every method for its first seeds
        for method in methods:
            result, trained = run_unit(base, method, seed, out_dir, quiet=quiet, overwrite=overwrite)
            results.append(result)
            if not quiet:
                print(f"[study] {method} seed {seed}: {'trained' if trained else 'finished before, read back'} "
                      f"({result['train_seconds']:.0f} s of training)", flush=True)
    trivial = trivial_metrics(base, out_dir)
    return write_study_report(out_dir, base.to_dict(), methods, list(range(seeds)), results, trivial, command)
