"""Combining per-task losses into one: fixed weights, homoscedastic uncertainty weighting, or dynamic weight
average. (Gradient balancing — a torchjd aggregator as ``weighting`` — is in :mod:`mtl_ops.train.aggregation`.)

* ``FixedWeighting(weights)``: ``L = Σ_t w_t L_t`` (missing tasks weigh 1).
* ``UncertaintyWeighting(tasks)`` (Kendall, Gal & Cipolla, CVPR 2018, in the common log-variance form):
  ``L = Σ_t exp(−s_t) L_t + s_t`` with one learnable ``s_t = log σ_t²`` per task, initialised to 0. Its
  parameters go into the optimiser with the model's.
* ``DynamicWeightAverage(tasks, temperature)`` (DWA; Liu, Johns & Davison, MTAN, CVPR 2019):
  ``L = Σ_t w_t L_t`` with ``w_t = T · softmax_t(r_t / temperature)`` (T tasks), ``r_t = L̄_t(e−1) / L̄_t(e−2)``
  the ratio of task t's mean training losses in the two previous epochs; ``w_t = 1`` in the first two epochs.
  The trainer reports each epoch's mean losses (averaged over the processes under torchrun, so every process
  uses the same weights) through :meth:`DynamicWeightAverage.end_epoch`; the two last epochs' losses and the
  weights are buffers, so they are part of the checkpoint and a resumed run continues with them.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import nn

from .aggregation import AGGREGATORS

WEIGHTINGS = ("fixed", "uncertainty", "dwa")


class FixedWeighting(nn.Module):
    def __init__(self, tasks: Sequence[str], weights: Optional[Mapping[str, float]] = None):
        super().__init__()
        weights = dict(weights or {})
        unknown = [t for t in weights if t not in tasks]
        if unknown:
            raise ValueError(f"loss_weights: task(s) {unknown} are not trained; tasks are {list(tasks)}")
        for t, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ValueError(f"loss_weights[{t!r}] must be a non-negative number, got {w!r}")
        self.weights = {t: float(weights.get(t, 1.0)) for t in tasks}

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[t] * loss for t, loss in losses.items())

    def current_weights(self) -> Dict[str, float]:
        return dict(self.weights)


class UncertaintyWeighting(nn.Module):
    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        self.tasks = list(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for i, t in enumerate(self.tasks):
            if t in losses:
                s = self.log_vars[i]
                total = total + torch.exp(-s) * losses[t].float() + s
        return total

    def current_weights(self) -> Dict[str, float]:
        return {t: float(torch.exp(-s)) for t, s in zip(self.tasks, self.log_vars.detach())}


class DynamicWeightAverage(nn.Module):
    def __init__(self, tasks: Sequence[str], temperature: float = 2.0):
        super().__init__()
        self.tasks = list(tasks)
        self.temperature = float(temperature)
        # the mean losses of the last two epochs (row 1 the latest; NaN: not seen yet) and the current weights
        self.register_buffer("history", torch.full((2, len(self.tasks)), float("nan"), dtype=torch.float64))
        self.register_buffer("weights", torch.ones(len(self.tasks), dtype=torch.float64))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return sum(float(self.weights[self.tasks.index(t)]) * loss for t, loss in losses.items())

    def end_epoch(self, losses: Mapping[str, float]) -> None:
        """Record an epoch's mean task losses; the weights of the next epoch follow from the last two."""
        latest = torch.tensor([float(losses[t]) for t in self.tasks], dtype=torch.float64,
                              device=self.history.device)
        self.history.copy_(torch.stack([self.history[1], latest]))
        if torch.isfinite(self.history).all() and (self.history[0] > 0).all():
            ratios = self.history[1] / self.history[0]
            self.weights.copy_(len(self.tasks) * torch.softmax(ratios / self.temperature, dim=0))

    def current_weights(self) -> Dict[str, float]:
        return {t: float(w) for t, w in zip(self.tasks, self.weights)}


def make_weighting(kind: str, tasks: Sequence[str], weights: Optional[Mapping[str, float]] = None, *,
                   dwa_temperature: float = 2.0) -> nn.Module:
    """The loss weighting ``kind`` for ``tasks``. A torchjd aggregator as ``kind`` combines the gradients instead
    (:mod:`mtl_ops.train.aggregation`); its losses are weighted by the fixed ``weights``."""
    if kind == "fixed" or kind in AGGREGATORS:
        return FixedWeighting(tasks, weights)
    if kind in ("uncertainty", "dwa"):
        if weights:
            raise ValueError(f"loss_weights: fixed weights cannot be combined with weighting={kind!r} (it sets the "
                             f"weights itself), got {dict(weights)}")
        return UncertaintyWeighting(tasks) if kind == "uncertainty" else DynamicWeightAverage(tasks, dwa_temperature)
    raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {kind!r}")
