"""Builders that fit the CTAL, Medusa and ETR-NLP networks to the trainer's method contract
(see mtl_ops/train/methods.py): ``width`` is the backbone's base width, and deep-supervision outputs are
returned as a list of ``{task: prediction at input resolution}`` dicts."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from ..models import CTALNet, ETRNLPNet, Medusa


class _CTALForTrainer(nn.Module):
    """CTALNet whose initial (deep-supervised) predictions come back as one auxiliary set."""

    def __init__(self, tasks: Dict[str, int], backbone: str = "resnet18", *, width: int = 16, image_size,
                 itp_channels: int = 64, ctal_channels: int = 32, **options):
        super().__init__()
        self.net = CTALNet(tasks, backbone, image_size=tuple(image_size), backbone_width=width,
                           itp_channels=itp_channels, ctal_channels=ctal_channels, **options)

    def forward(self, images: torch.Tensor, return_aux: bool = False):
        if not return_aux:
            return self.net(images)
        preds, initial = self.net(images, return_aux=True)
        return preds, [initial]


class _MedusaForTrainer(nn.Module):
    """Medusa whose per-scale predictions come back as one auxiliary set per scale, at input resolution."""

    def __init__(self, tasks: Dict[str, int], backbone: str = "resnet18", *, width: int = 16, **options):
        super().__init__()
        self.net = Medusa(tasks, backbone, width=width, **options)

    def forward(self, images: torch.Tensor, return_aux: bool = False):
        if not return_aux:
            return self.net(images)
        preds, per_task = self.net(images, return_aux=True)
        size = images.shape[-2:]
        n_scales = min(len(v) for v in per_task.values())
        aux = [{t: F.interpolate(per_task[t][s], size=size, mode="bilinear", align_corners=False) for t in per_task}
               for s in range(n_scales)]
        return preds, aux


def build_ctal(tasks, backbone="resnet18", **options) -> nn.Module:
    return _CTALForTrainer(tasks, backbone, **options)


def build_medusa(tasks, backbone="resnet18", **options) -> nn.Module:
    return _MedusaForTrainer(tasks, backbone, **options)


def build_etr_nlp(tasks, backbone="resnet18", **options) -> nn.Module:
    return ETRNLPNet(tasks, backbone, **options)  # has learnable_parameters(): primitives are frozen
