"""Combining per-task losses into one: fixed weights, or homoscedastic uncertainty weighting.

* ``FixedWeighting(weights)``: ``L = Σ_t w_t L_t`` (missing tasks weigh 1).
* ``UncertaintyWeighting(tasks)`` (Kendall, Gal & Cipolla, CVPR 2018, in the common log-variance form):
  ``L = Σ_t exp(−s_t) L_t + s_t`` with one learnable ``s_t = log σ_t²`` per task, initialised to 0. Its
  parameters go into the optimiser with the model's.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
from torch import nn

WEIGHTINGS = ("fixed", "uncertainty")


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


def make_weighting(kind: str, tasks: Sequence[str], weights: Optional[Mapping[str, float]] = None) -> nn.Module:
    if kind == "fixed":
        return FixedWeighting(tasks, weights)
    if kind == "uncertainty":
        if weights:
            raise ValueError("loss_weights: fixed weights cannot be combined with weighting='uncertainty'")
        return UncertaintyWeighting(tasks)
    raise ValueError(f"weighting: expected one of {WEIGHTINGS}, got {kind!r}")
