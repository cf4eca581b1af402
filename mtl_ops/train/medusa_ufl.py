"""Medusa's universal feature learning (UFL) protocol (Spencer et al., CVPRW 2022) as the schedule
of method ``medusa``. It runs when ``schedule_options`` are given (``held_out`` is then required); without
them Medusa trains jointly in plain epochs as before.

1. **MTL** (``mtl_epochs``, default ``config.epochs``): Medusa without the held-out task's head, trained on
   every other task.
2. **New head** (``head_epochs``, default ``config.epochs``): a fresh head for the held-out task is attached
   (:meth:`~mtl_ops.models.Medusa.add_task`), the backbone (parameters and BN statistics) and the other heads
   are frozen (:meth:`~mtl_ops.models.Medusa.freeze_except`), and only the new head trains, on the held-out
   task's loss: its parameters are the optimiser's only ones (uncertainty weights stay fixed too).
3. **Report** (:mod:`mtl_ops.train.ufl_report`): the held-out task's validation metrics after step 2 against
   the same task trained (a) jointly with all tasks (a normal Medusa run) and (b) alone (Medusa with that one
   head), each trained here for ``baseline_epochs`` (default ``config.epochs``) in its own sub-folder
   (``ufl_joint/``, ``ufl_single_task/``) — unless its metrics are given (``joint_metrics``,
   ``single_task_metrics``: ``{metric: value}`` of the held-out task, or ``mtl-ops eval``'s ``val`` dict, e.g.
   to reuse one joint run for every held-out task) or ``baselines`` is False (the entry is then "skipped").

The report goes to ``ufl_report.json`` in the output folder, ``trainer.ufl_report``, the checkpoint's
``extra["ufl"]`` and a ``ufl-report`` row of ``metrics.jsonl``, and is printed unless ``quiet``. The paper's
UFL score averages such gains over held-out tasks: one run per held-out task.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import replace
from typing import Dict, Tuple

import torch

from ..models import Medusa
from .seeding import derive_seed
from .ufl_report import BASELINES, build_report, format_report, given_metrics

OPTIONS = ("held_out", "mtl_epochs", "head_epochs", "baselines", "baseline_epochs", "joint_metrics",
           "single_task_metrics")


def ufl_requested(config) -> bool:
    """Medusa has no other schedule: any schedule option asks for UFL (and a missing ``held_out`` is an error)."""
    return bool(config.schedule_options)


def medusa_network(net) -> Medusa:
    """The trainer's method network, checked to be a :class:`~mtl_ops.models.Medusa` (the protocol adds,
    freezes and removes its heads)."""
    if not isinstance(net, Medusa):
        raise ValueError(f"UFL protocol: expected a Medusa network, got {type(net).__name__}")
    return net


def held_out_task(config) -> str:
    tasks = list(config.tasks)
    if "held_out" not in config.schedule_options:
        raise ValueError(f"config.schedule_options['held_out']: Medusa's UFL protocol needs the held-out task, "
                         f"one of {tasks}; got options {sorted(config.schedule_options)} without it")
    value = config.schedule_options["held_out"]
    if not isinstance(value, str) or value not in tasks:
        raise ValueError(f"config.schedule_options['held_out']: expected one of the configured tasks {tasks}, "
                         f"got {value!r}")
    if len(tasks) < 2:
        raise ValueError(f"config.schedule_options['held_out']: expected a task other than the only one; UFL first "
                         f"trains the other tasks, so config.tasks needs at least two, got {tasks}")
    return value


def _epochs(trainer, name: str) -> int:
    value = trainer.schedule_option(name, trainer.config.epochs)
    if value < 1:
        raise ValueError(f"config.schedule_options[{name!r}]: expected a positive int, got {value!r}")
    return value


def frozen_state(medusa: Medusa, held_out: str) -> Dict[str, torch.Tensor]:
    """Copies of every state tensor outside the held-out head: parameters and BN statistics."""
    prefix = f"heads.{held_out}."
    return {k: v.detach().clone() for k, v in medusa.state_dict().items() if not k.startswith(prefix)}


def train_other_tasks(trainer, held_out: str, epochs: int) -> Dict:
    """Step 1: remove the held-out head and train the rest jointly. Returns the phase's last log row."""
    medusa = medusa_network(trainer.net)
    if held_out in medusa.heads:
        del medusa.heads[held_out]
    trainer.optimizer = trainer.make_optimizer()
    with trainer.restrict_tasks([t for t in trainer.tasks if t != held_out]):
        return trainer.train_phase("ufl-mtl", epochs)


def train_new_head(trainer, held_out: str, epochs: int) -> Tuple[Dict, list]:
    """Step 2: attach a fresh head for ``held_out``, freeze everything else and train only that head.
    Returns the phase's last log row and the trained parameters."""
    medusa = medusa_network(trainer.net)
    torch.manual_seed(derive_seed(trainer.config.seed, "new_head"))  # the new head's initialisation
    medusa.add_task(held_out, trainer.channels[held_out]).to(trainer.device)
    trainable = medusa.freeze_except(held_out)
    trainer.model.zero_grad(set_to_none=True)  # no stale step-1 gradients left on the frozen parts
    trainer.weighting.zero_grad(set_to_none=True)
    trainer.optimizer = trainer.make_optimizer(trainable)
    weighting = [p for p in trainer.weighting.parameters() if p.requires_grad]
    for p in weighting:
        p.requires_grad_(False)
    try:
        with trainer.restrict_tasks([held_out]):
            return trainer.train_phase("ufl-head", epochs), trainable
    finally:
        for p in weighting:
            p.requires_grad_(True)


def train_baseline(trainer, kind: str, held_out: str, epochs: int) -> Dict:
    """A plain Medusa run on the same data: all tasks (``joint``) or the held-out task alone (``single_task``)."""
    cfg = trainer.config
    tasks = tuple(cfg.tasks) if kind == "joint" else (held_out,)
    out_dir = str(trainer.out_dir / f"ufl_{kind}") if trainer.out_dir is not None else None
    config = replace(cfg, tasks=tasks, epochs=epochs, schedule_options={}, out_dir=out_dir,
                     loss_weights={t: w for t, w in cfg.loss_weights.items() if t in tasks})
    if not cfg.quiet:
        print(f"[medusa-ufl] baseline {kind}: Medusa on {list(tasks)}, {epochs} epoch(s)", flush=True)
    run = type(trainer)(config, trainer.train_set, trainer.val_set, trainer.num_classes,
                        overwrite=trainer.run_dir.overwrite)
    return {"source": "trained", "metrics": run.fit()[held_out], "run_dir": out_dir}


def ufl_schedule(trainer) -> None:
    trainer.check_schedule_options(OPTIONS)
    cfg = trainer.config
    held_out = held_out_task(cfg)
    epochs = {"mtl": _epochs(trainer, "mtl_epochs"), "head": _epochs(trainer, "head_epochs"),
              "baseline": _epochs(trainer, "baseline_epochs")}
    run_baselines = trainer.schedule_option("baselines", True)
    given = {kind: given_metrics(f"{kind}_metrics", cfg.schedule_options[f"{kind}_metrics"], held_out)
             for kind in BASELINES if f"{kind}_metrics" in cfg.schedule_options}
    if trainer.val_set is None:
        raise ValueError("UFL protocol: needs a validation set to report the held-out task's metrics")
    others = [t for t in trainer.tasks if t != held_out]

    train_other_tasks(trainer, held_out, epochs["mtl"])
    before = frozen_state(medusa_network(trainer.net), held_out)
    row, trainable = train_new_head(trainer, held_out, epochs["head"])
    after = frozen_state(medusa_network(trainer.net), held_out)
    unchanged = before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    if not unchanged:
        warnings.warn("UFL protocol: the frozen backbone or heads changed while the new head trained")

    results = {"ufl": {"source": "trained", "metrics": row["val"][held_out]}}
    for kind in BASELINES:
        if kind in given:
            results[kind] = {"source": "given", "metrics": given[kind]}
        elif run_baselines:
            results[kind] = train_baseline(trainer, kind, held_out, epochs["baseline"])
        else:
            results[kind] = {"source": "skipped", "metrics": None}
    report = build_report(held_out, others, epochs, results, unchanged, sum(p.numel() for p in trainable))
    trainer.ufl_report = report
    trainer.log({"phase": "ufl-report", "epoch": trainer.epoch, "step": trainer.step,
                 "ufl": {kind: entry["metrics"] for kind, entry in results.items()}, "gain_vs": report["gain_vs"]})
    if not cfg.quiet:
        print(format_report(report), flush=True)
    trainer.run_dir.write_text("ufl_report.json", json.dumps(report, indent=2))
    trainer.save("last.pt", {"ufl": report})
