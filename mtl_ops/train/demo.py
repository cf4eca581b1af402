"""``mtl-ops demo``: the package's main job. On the embedded synthetic scenes, fit the trivial predictor
and train the single-task baselines, the shared baseline and every registered method with the same data,
backbone family and budget; then measure each model's training step time with the fused ops against the
reference ops, and write the report (``report.md``, ``metrics.json``, ``predictions.png``) with
:mod:`mtl_ops.train.report`.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from .config import TrainConfig
from .loop import Trainer
from .methods import available_methods
from .report import write_report
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
#: the demo's data and budget (sized for ~8 minutes on a shared 2-core CPU)
DEMO_DEFAULTS = {"n_train": 384, "n_val": 96, "epochs": 3, "size": (64, 84), "backbone": "resnet18", "width": 16,
                 "batch_size": 16}
DEMO_ORDER = ("single_task", "shared")


@contextmanager
def backend_env(value: Optional[str]):
    old = os.environ.get("MTL_OPS_BACKEND")
    if value is None:
        os.environ.pop("MTL_OPS_BACKEND", None)
    else:
        os.environ["MTL_OPS_BACKEND"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MTL_OPS_BACKEND", None)
        else:
            os.environ["MTL_OPS_BACKEND"] = old


def step_times(trainer: Trainer, steps: int = 3) -> tuple:
    """Median seconds of a training step (forward, backward, optimiser) of the trained model with the default
    (fused) backend and with ``MTL_OPS_BACKEND=reference``, alternating the two on the same training batches
    so that load changes on a shared machine hit both alike; one warm-up step each; weights restored after."""
    model = trainer.wrapper
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    times = {None: [], "reference": []}
    model.train()
    for i, batch in enumerate(trainer.loader(trainer.train_set, 0, True)):
        if i > steps:
            break
        batch = trainer.to_device(batch)
        for backend in (None, "reference"):
            with backend_env(backend):
                start = time.perf_counter()
                total, _ = trainer.compute_loss(batch)
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                if i:
                    times[backend].append(time.perf_counter() - start)
    model.load_state_dict(saved)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return median(times[None]), median(times["reference"])


def demo_methods(methods: Optional[Sequence[str]] = None) -> list:
    registered = available_methods()
    if methods:
        unknown = [m for m in methods if m not in registered]
        if unknown:
            raise ValueError(f"demo: unknown method(s) {unknown}; registered: {registered}")
        return list(methods)
    return list(DEMO_ORDER) + [m for m in registered if m not in DEMO_ORDER]


def run_demo(out_dir, *, methods: Optional[Sequence[str]] = None, base: Optional[TrainConfig] = None,
             timing_steps: int = 3, quiet: bool = False) -> Dict:
    """Train every method, time the steps, write the report into ``out_dir``; returns the results dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = base or TrainConfig()
    started = time.perf_counter()
    results: Dict = {"config": base.to_dict(), "methods": {}}
    first = None
    for method in demo_methods(methods):
        t0 = time.perf_counter()
        schedule = {**DEMO_SCHEDULES.get(method, {}), **(base.schedule_options if base.method == method else {})}
        cfg = replace(base, method=method, schedule_options=schedule, out_dir=str(out_dir / method),
                      quiet=quiet, method_options={})
        trainer = Trainer(cfg)
        if first is None:
            first = trainer
            trivial = TrivialPredictor(trainer.channels).fit(trainer.train_set)
            results["methods"]["trivial"] = {"metrics": trainer.evaluate(forward=trivial), "parameters": 0}
        metrics = trainer.fit()
        train_seconds = time.perf_counter() - t0
        fused, reference = step_times(trainer, timing_steps)
        entry = {"metrics": metrics, "parameters": trainer.learnable_parameters(), "train_seconds": train_seconds,
                 "step_seconds_fused": fused, "step_seconds_reference": reference, "epochs_run": trainer.epoch}
        if hasattr(trainer.net, "set_mode"):  # AdaShare: also time the soft-gate step of policy learning,
            mode = trainer.net.mode           # the one that runs the fused gated_residual op
            trainer.net.set_mode("soft")
            entry["soft_step_seconds_fused"], entry["soft_step_seconds_reference"] = step_times(trainer, timing_steps)
            trainer.net.set_mode(mode)
        if hasattr(trainer, "adashare_policy_table"):
            entry["adashare_policy"] = trainer.adashare_policy_table
            entry["adashare_execute_probabilities"] = trainer.adashare_execute_probabilities  # (T, L), task order
            entry["adashare_tasks"] = list(trainer.net.task_names)
        if hasattr(trainer, "pdf_steps"):
            entry["pdf_steps"] = trainer.pdf_steps
            entry["pdf_groupings"] = [[list(g) for g in p] for p in trainer.net.groupings]
        results["methods"][method] = entry
        results.setdefault("_trainers", {})[method] = trainer
        if not quiet:
            print(f"[demo] {method}: {train_seconds:.0f}s, step {fused * 1e3:.0f} ms fused / "
                  f"{reference * 1e3:.0f} ms reference", flush=True)
    results["wall_seconds"] = time.perf_counter() - started
    trainers = results.pop("_trainers")
    write_report(out_dir, results, trainers, first.val_set, first.num_classes)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    return results
