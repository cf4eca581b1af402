"""One epoch of optimisation steps, and what a non-finite loss does to it.

At its start an epoch reseeds its randomness from ``(seed, epoch)`` (:func:`seed_epoch`, see
:mod:`mtl_ops.train.seeding`): torch's global generator (dropout, Gumbel noise, the loaders' scale crops) and the
generator of the random flips.

A step whose loss is NaN or infinite stops the run with :class:`NonFiniteLossError` before the step changes the
weights; the error names the tasks whose losses were not finite and the step. Checkpoints are written after
complete epochs only, so the last one on disk stays the last good state. With ``skip_nonfinite`` such steps are
skipped instead: no backward, no optimiser step, and the buffers the forward pass updated (BatchNorm
statistics and counters) are put back; the epoch reports each skipped step. Under torchrun every process takes the
same decision — a step is stopped or skipped everywhere when its loss is non-finite anywhere — because DDP's
gradient all-reduce needs every process to run each backward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from ..data.augment import hflip
from .runtime import Runtime
from .seeding import derive_seed


class NonFiniteLossError(FloatingPointError):
    """A training step's loss was NaN or infinite. ``step`` is the run's step (counted from 1), ``epoch`` the
    epoch (counted from 1), ``terms`` the names of the losses that were not finite."""

    def __init__(self, message: str, *, step: int, epoch: int, terms: List[str]):
        super().__init__(message)
        self.step, self.epoch, self.terms = step, epoch, terms


@dataclass
class EpochResult:
    losses: Dict[str, float]   # mean over the steps taken: per task and "total"
    steps: int                 # steps read: taken and skipped
    skipped: List[Tuple[int, List[str]]] = field(default_factory=list)  # (step, non-finite terms) per skipped step


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Reseed torch's global generator for epoch ``epoch`` (counted from 0) of a run with ``seed``; returns the
    epoch's flip generator."""
    torch.manual_seed(derive_seed(seed, "global", epoch))
    return torch.Generator().manual_seed(derive_seed(seed, "flip", epoch))


def flip_batches(batches: Iterable[Dict[str, torch.Tensor]], generator: torch.Generator) -> Iterator[Dict]:
    """``batches`` with each sample mirrored left-right with probability 1/2 (drawn from ``generator``)."""
    for batch in batches:
        yield hflip(batch, flip=torch.rand(batch["image"].shape[0], generator=generator) < 0.5)


def nonfinite_terms(losses: Dict[str, torch.Tensor], extra: Optional[torch.Tensor] = None) -> List[str]:
    """What made a total loss non-finite: the tasks whose losses are, else the extra loss, else the combination
    itself (the loss weighting or the deep-supervision losses)."""
    tasks = [f"task {t!r} ({float(v.detach())})" for t, v in losses.items() if not torch.isfinite(v.detach()).all()]
    if tasks:
        return tasks
    if extra is not None and not torch.isfinite(extra.detach()).all():
        return [f"the phase's extra loss ({float(extra.detach())})"]
    return ["the weighted total (every task loss is finite: the loss weighting or the deep-supervision losses)"]


def run_epoch(batches: Iterable[Dict[str, torch.Tensor]], steps: int, *,
              loss_fn: Callable[[Dict], Tuple[torch.Tensor, Dict[str, torch.Tensor]]],
              optimizer: torch.optim.Optimizer, runtime: Runtime, model: torch.nn.Module, epoch: int,
              first_step: int = 0, skip_nonfinite: bool = False, grad_clip: Optional[float] = None,
              backward: Optional[Callable[[torch.Tensor], None]] = None,
              extra_loss: Optional[Callable[[], torch.Tensor]] = None,
              on_step: Optional[Callable[[float], None]] = None,
              on_skip: Optional[Callable[[int, List[str]], None]] = None) -> EpochResult:
    """Up to ``steps`` optimisation steps on ``batches`` (already on the device): ``loss_fn(batch)`` gives
    (total, {task: loss}); ``extra_loss()`` is added to the total; ``runtime.scaler`` scales the backward.
    ``backward(total)``, when given, fills the gradients instead of ``scaler.scale(total).backward()`` (a torchjd
    aggregator's step, see :mod:`mtl_ops.train.aggregation`). ``grad_clip``: the gradients of the optimiser's
    parameters are clipped to this global L2 norm (after unscaling) before the step.
    ``epoch`` (from 0) and ``first_step`` (steps before this epoch) only name steps in messages."""
    buffers = list(model.buffers()) if skip_nonfinite else []
    sums: Dict[str, float] = {}
    taken, read, skipped = 0, 0, []
    for i, batch in enumerate(batches):
        if i >= steps:
            break
        read, step = i + 1, first_step + i + 1
        saved = [b.clone() for b in buffers]
        total, losses = loss_fn(batch)
        extra = extra_loss() if extra_loss is not None else None
        if extra is not None:
            total = total + extra
        local_finite = bool(torch.isfinite(total.detach()).all())
        if not runtime.all_true(local_finite):
            terms = nonfinite_terms(losses, extra) if not local_finite else ["a loss in another process"]
            if not skip_nonfinite:
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} (epoch {epoch + 1}, batch {i + 1} of {steps}): "
                    f"{', '.join(terms)}; the run stopped before this step changed the weights. To skip such "
                    f"steps instead, pass --skip-nonfinite (TrainConfig.skip_nonfinite=True).",
                    step=step, epoch=epoch + 1, terms=terms)
            with torch.no_grad():
                for b, s in zip(buffers, saved):
                    b.copy_(s)
            skipped.append((step, terms))
            if on_skip is not None:
                on_skip(step, terms)
            continue
        optimizer.zero_grad(set_to_none=True)
        if backward is None:
            runtime.scaler.scale(total).backward()
        else:
            backward(total)
        if grad_clip is not None:
            runtime.scaler.unscale_(optimizer)  # clip the true gradients (a no-op without loss scaling)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
        runtime.scaler.step(optimizer)
        runtime.scaler.update()
        taken += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums["total"] = sums.get("total", 0.0) + float(total.detach())
        if on_step is not None:
            on_step(float(total.detach()))
    if read and not taken:
        raise NonFiniteLossError(f"every step of epoch {epoch + 1} ({read}) had a non-finite loss and was "
                                 f"skipped: {', '.join(skipped[-1][1])} at step {skipped[-1][0]}",
                                 step=skipped[-1][0], epoch=epoch + 1, terms=skipped[-1][1])
    return EpochResult({k: v / max(taken, 1) for k, v in sums.items()}, read, skipped)
