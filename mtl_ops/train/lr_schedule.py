"""The learning-rate schedule of a run, built from torch's schedulers: ``constant``, ``poly``
(:class:`~torch.optim.lr_scheduler.PolynomialLR`, the usual one in dense-prediction papers), ``cosine``
(:class:`~torch.optim.lr_scheduler.CosineAnnealingLR`), ``step`` (:class:`~torch.optim.lr_scheduler.StepLR`) and
``multistep`` (:class:`~torch.optim.lr_scheduler.MultiStepLR`), optionally after a linear warm-up
(:class:`~torch.optim.lr_scheduler.LinearLR` from ``warmup_start_factor`` × lr to lr, chained with
:class:`~torch.optim.lr_scheduler.SequentialLR`).

The schedule advances once per epoch or once per optimisation step (``lr_interval``); every length —
``warmup``, ``lr_step_size``, ``lr_milestones`` — counts in that unit. ``poly`` and ``cosine`` run over the
rest of the run after the warm-up: ``epochs`` epochs (times the steps per epoch with ``lr_interval="step"``),
so they reach their end value (0, or ``lr_min`` for cosine) at the end of training. The scheduler's state is part
of a run's checkpoint, so a resumed run continues the schedule where it stopped.

A schedule (AdaShare's phases, PDF's stages, Medusa's UFL head) that builds a new optimiser for a phase starts
the learning-rate schedule again with it.
"""
from __future__ import annotations

import torch
from torch.optim import lr_scheduler

LR_SCHEDULES = ("constant", "poly", "cosine", "step", "multistep")
LR_INTERVALS = ("epoch", "step")


def schedule_length(config, steps_per_epoch: int) -> int:
    """How many times the schedule advances over the run: ``epochs`` (× ``steps_per_epoch`` per step)."""
    return config.epochs * (steps_per_epoch if config.lr_interval == "step" else 1)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, config, steps_per_epoch: int) -> lr_scheduler.LRScheduler:
    """The scheduler of ``config`` for ``optimizer``; ``steps_per_epoch`` sizes ``poly`` and ``cosine`` when the
    schedule advances per step."""
    length = schedule_length(config, steps_per_epoch)
    rest = length - config.warmup
    kind = config.lr_schedule
    if kind in ("poly", "cosine") and rest < 1:
        unit = "epochs" if config.lr_interval == "epoch" else "steps"
        raise ValueError(f"config.warmup: expected fewer {unit} than the run's {length} for lr_schedule={kind!r} "
                         f"(it runs over what is left after the warm-up), got {config.warmup}")
    if kind == "constant":
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    elif kind == "poly":
        main = lr_scheduler.PolynomialLR(optimizer, total_iters=rest, power=config.lr_power)
    elif kind == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=rest, eta_min=config.lr_min)
    elif kind == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=config.lr_step_size, gamma=config.lr_gamma)
    elif kind == "multistep":
        main = lr_scheduler.MultiStepLR(optimizer, milestones=list(config.lr_milestones), gamma=config.lr_gamma)
    else:
        raise ValueError(f"config.lr_schedule: expected one of {LR_SCHEDULES}, got {kind!r}")
    if not config.warmup:
        return main
    warmup = lr_scheduler.LinearLR(optimizer, start_factor=config.warmup_start_factor, end_factor=1.0,
                                   total_iters=config.warmup)
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[config.warmup])
