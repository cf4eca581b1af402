"""``mtl-ops demo``: the package's main job. On the embedded synthetic scenes, fit the trivial predictor
and train the single-task baselines, the shared baseline and every registered method with the same data,
backbone family and budget; then time each model's training step with the fused ops against the reference ops
(:mod:`mtl_ops.train.step_timing`), and write the report (``report.md``, ``metrics.json``, ``predictions.png``,
``adashare_policy.png``; each run's folder holds its ``curves.png``) with :mod:`mtl_ops.train.report`.

One seed at a short budget shows that every method runs and learns, not how the methods rank: ``mtl-ops study``
(:mod:`mtl_ops.train.study`) trains several seeds at a larger budget and reports the spread.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional, Sequence

from ..info import machine_description, source_commit
from .config import TrainConfig
from .loop import Trainer
from .methods import available_methods
from .report import write_report
from .step_timing import time_training_step
from .trivial import TrivialPredictor

#: schedule options per method for the demo's budget. AdaShare: 1 warm-up epoch; 16 short search cycles of 2
#: weight and 6 policy steps, so that the curriculum (one more block per cycle) reaches all 8 blocks and the
#: first one still gets 54 policy steps; Adam at lr 0.1 on the logits, because at the reference's 0.01 an Adam
#: step moves a logit by at most 0.01, and the noisy policy gradient moves it much less over the 96 policy
#: steps the demo affords (measurements in docs/methods/adashare.md); then 5 re-training
#: epochs — the sampled network re-trains from scratch with part of its blocks skipped, and with the other
#: methods' 3 epochs its depth only just beat the trivial predictor. PDF: Sep-De, then fusion steps with a
#: CKA threshold suited to short training.
DEMO_SCHEDULES = {
    "adashare": {"warmup_epochs": 1, "search_cycles": 16, "weight_steps": 2, "policy_steps": 6, "policy_lr": 0.1,
                 "retrain_epochs": 5},
    "pdf": {"threshold": 0.5, "cka_images": 64, "max_fusions": 1},
}
#: the demo's data and budget
DEMO_DEFAULTS = {"n_train": 384, "n_val": 96, "epochs": 3, "size": (64, 84), "backbone": "resnet18", "width": 16,
                 "batch_size": 16}
DEMO_ORDER = ("single_task", "shared")
#: alternated training steps per setting when timing a model's step (see mtl_ops.train.step_timing). Measured with
#: benchmarks/demo_timing_stability.py (2-core AMD EPYC, load average 3-7, 2026-11-30): over 4 repeats the median
#: ratio of ctal / etr_nlp / medusa ranged 0.15 / 0.06 / 0.38 with 3 steps (medusa's from 0.87 to 1.25), 0.06 /
#: 0.04 / 0.02 with 6 and 0.03 / 0.07 / 0.02 with 10
TIMING_STEPS = 6


def demo_methods(methods: Optional[Sequence[str]] = None) -> list:
    registered = available_methods()
    if methods:
        unknown = [m for m in methods if m not in registered]
        if unknown:
            raise ValueError(f"demo: unknown method(s) {unknown}; registered: {registered}")
        return list(methods)
    return list(DEMO_ORDER) + [m for m in registered if m not in DEMO_ORDER]


def method_config(base: TrainConfig, method: str, out_dir: Path, schedules: Dict, quiet: bool) -> TrainConfig:
    """``base`` for ``method``: its schedule options (``schedules``, then ``base``'s when ``base`` is for that
    method) and its own folder ``out_dir / method``."""
    schedule = {**schedules.get(method, {}), **(base.schedule_options if base.method == method else {})}
    return replace(base, method=method, schedule_options=schedule, out_dir=str(out_dir / method), quiet=quiet,
                   method_options={})


def phase_epochs(trainer: Trainer) -> Dict[str, int]:
    """{phase: epochs logged} of a finished run, in the order the phases ran (a schedule's budget)."""
    return dict(Counter(row.get("phase", "train") for row in trainer.history if "train_loss" in row))


def adashare_entry(trainer: Trainer) -> Dict:
    """AdaShare's policy for the report: the task names, the sampled hard policy (1 = execute) and, when the
    schedule kept them, the learned execute probabilities, each a list per task of per-block values."""
    net = trainer.net
    return {"adashare_policy": trainer.adashare_policy_table, "adashare_tasks": list(net.task_names),
            "adashare_sampled_policy": net.hard_policy[..., 0].round().int().tolist(),
            "adashare_execute_probabilities": net.policy.probabilities()[..., 0].tolist()}


def run_demo(out_dir, *, methods: Optional[Sequence[str]] = None, base: Optional[TrainConfig] = None,
             timing_steps: int = TIMING_STEPS, quiet: bool = False) -> Dict:
    """Train every method, time the steps, write the report into ``out_dir``; returns the results dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = base or TrainConfig()
    started = time.perf_counter()
    results: Dict = {"config": base.to_dict(), "timing_steps": timing_steps, "commit": source_commit(), "methods": {}}
    trainers: Dict[str, Trainer] = {}
    for method in demo_methods(methods):
        t0 = time.perf_counter()
        # the demo's folder is its own: a new demo replaces the last
        trainer = Trainer(method_config(base, method, out_dir, DEMO_SCHEDULES, quiet), overwrite=True)
        if not trainers:
            # before any training: the load other work leaves the demo, and the threads the trainer chose
            results["machine"] = machine_description()
            trivial = TrivialPredictor(trainer.channels).fit(trainer.train_set)
            results["methods"]["trivial"] = {"metrics": trainer.evaluate(forward=trivial), "parameters": 0}
        metrics = trainer.fit()
        train_seconds = time.perf_counter() - t0
        entry = {"metrics": metrics, "parameters": trainer.learnable_parameters(), "train_seconds": train_seconds,
                 "epochs_run": trainer.epoch, "phase_epochs": phase_epochs(trainer),
                 "schedule_options": dict(trainer.config.schedule_options),
                 "timing": time_training_step(trainer, timing_steps)}
        if hasattr(trainer.net, "set_mode"):  # AdaShare: also time the soft-gate step of policy learning
            mode = trainer.net.mode
            trainer.net.set_mode("soft")
            entry["timing_policy_step"] = time_training_step(trainer, timing_steps)
            trainer.net.set_mode(mode)
        if hasattr(trainer, "adashare_policy_table"):
            entry.update(adashare_entry(trainer))
        if hasattr(trainer, "pdf_steps"):
            entry["pdf_steps"] = trainer.pdf_steps
            entry["pdf_groupings"] = [[list(g) for g in p] for p in trainer.net.groupings]
        results["methods"][method] = entry
        trainers[method] = trainer
        if not quiet:
            timing = entry["timing"]
            versus = (f"{timing['step_seconds_reference'] * 1e3:.0f} ms reference" if "ratio" in timing
                      else "no fused op in the step")
            print(f"[demo] {method}: {train_seconds:.0f}s, step {timing['step_seconds'] * 1e3:.0f} ms fused / "
                  f"{versus}", flush=True)
    results["wall_seconds"] = time.perf_counter() - started
    first = next(iter(trainers.values()))
    write_report(out_dir, results, trainers, first.val_set, first.num_classes)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    return results
