"""Depth target normalisation: the method network predicts standardised depth, and a thin wrapper maps it
back to metres, ``depth = μ + σ · raw`` with μ, σ the mean and standard deviation of valid training depths
(measured on the first images of the training set, stored as buffers so checkpoints carry them). Without
it, a freshly initialised head starts at 0 m and needs thousands of steps just to reach the mean depth.
Every other task passes through unchanged.
"""
from __future__ import annotations

import torch
from torch import nn


def depth_statistics(dataset, num: int = 64) -> tuple:
    values = []
    for i in range(min(num, len(dataset))):
        sample = dataset[i]
        if "depth" in sample:
            d = sample["depth"][sample["valid"]] if "valid" in sample else sample["depth"].flatten()
            values.append(d[d > 0])
    if not values or sum(v.numel() for v in values) < 2:
        return 0.0, 1.0
    v = torch.cat(values).double()
    return float(v.mean()), max(float(v.std()), 1e-3)


class TargetNormalized(nn.Module):
    """Wraps a method network; ``forward`` (and ``return_aux``, whose auxiliary predictions are a list of
    ``{task: prediction}`` dicts) give depth in metres."""

    def __init__(self, net: nn.Module, depth_mean: float = 0.0, depth_std: float = 1.0):
        super().__init__()
        self.net = net
        self.register_buffer("depth_mean", torch.tensor(float(depth_mean)))
        self.register_buffer("depth_std", torch.tensor(float(depth_std)))

    def _map(self, preds: dict) -> dict:
        if "depth" in preds:
            preds = dict(preds)
            preds["depth"] = self.depth_mean.to(preds["depth"].dtype) + \
                self.depth_std.to(preds["depth"].dtype) * preds["depth"]
        return preds

    def forward(self, images: torch.Tensor, return_aux: bool = False):
        if return_aux:
            preds, aux = self.net(images, return_aux=True)
            if not isinstance(aux, (list, tuple)) or not all(isinstance(a, dict) for a in aux):
                raise ValueError(f"{type(self.net).__name__}.forward(images, return_aux=True): expected "
                                 f"(predictions, aux) with aux a list of {{task: prediction}} dicts, got aux of type "
                                 f"{type(aux).__name__}")
            return self._map(preds), [self._map(a) for a in aux]
        return self._map(self.net(images))
