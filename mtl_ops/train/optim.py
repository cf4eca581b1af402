"""The optimiser of a run, torch's own: SGD (momentum, Nesterov), Adam, AdamW or RAdam (betas, eps), each with
``weight_decay``.

Adam's (and RAdam's) ``weight_decay`` adds ``weight_decay · θ`` to the gradient (L2 regularisation, as the AdaShare, PDF and
EMA-Net code use it); AdamW decays the weights directly, apart from the adaptive step (Loshchilov & Hutter).
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

OPTIMIZERS = ("adamw", "adam", "radam", "sgd")


def build_optimizer(params: Iterable, config, lr: Optional[float] = None) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``params`` (tensors or param groups) at ``lr`` (default ``config.lr``)."""
    lr = config.lr if lr is None else lr
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
    if config.optimizer in classes:
        cls = classes[config.optimizer]
        return cls(params, lr=lr, betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay)
    raise ValueError(f"config.optimizer: expected one of {OPTIMIZERS}, got {config.optimizer!r}")
