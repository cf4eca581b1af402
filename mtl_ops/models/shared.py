"""The shared-backbone baseline (hard parameter sharing) and the single-task baseline.

``SharedNet``: one backbone and one light FPN decoder shared by every task, then a small head per task.
With a single task it is that task's single-task baseline (same backbone, decoder and head), so the two
baselines differ only in what is shared. ``SingleTaskNets`` holds one independent ``SharedNet`` per task
behind the common multi-task interface; because no parameter is shared, training it on the sum of the
task losses trains each network exactly as if it were trained alone on the same batches.
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.task_names import check_task_channels
from .backbones import build_backbone, check_images
from .heads import IMAGE_LEVEL_TASKS, conv_bn_relu, make_head


class FPNDecoder(nn.Module):
    """Lateral 1x1 convs on every backbone map, top-down sum with bilinear upsampling, then conv3x3-BN-ReLU
    at the finest stride. Returns (finest map, deepest map)."""

    def __init__(self, in_channels: list, channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = conv_bn_relu(channels, channels)

    def forward(self, features: list) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            x = lateral(f) + F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.smooth(x)


class SharedNet(nn.Module):
    """Hard parameter sharing: ``backbone`` (``mtl_ops.models.build_backbone`` name, with ``backbone_kwargs``)
    → FPN decoder with ``decoder_channels`` → per-task heads. ``width`` is the built-in ResNets' base width
    (default 16), ``pretrained`` a weights file (or True: timm's / torchvision's published weights). Dense
    predictions come at input resolution; image-level tasks (``attributes``) read the pooled deepest backbone
    map. The FPN reads every map the backbone gives (timm's stride-2 one too; ``out_indices`` in
    ``backbone_kwargs`` chooses others)."""

    def __init__(self, tasks: Mapping[str, int], backbone: str | nn.Module = "resnet18", *,
                 width: int | None = None, backbone_kwargs: dict | None = None, pretrained=None,
                 decoder_channels: int = 64, head_hidden: int | None = None):
        super().__init__()
        self.tasks = check_task_channels(tasks, "SharedNet")
        self.backbone = build_backbone(backbone, width=width, default_width=16, owner="SharedNet",
                                       pretrained=pretrained, **dict(backbone_kwargs or {}))
        self.decoder = FPNDecoder(list(self.backbone.channels), decoder_channels)
        self.heads = nn.ModuleDict({
            t: make_head(t, self.backbone.channels[-1] if t in IMAGE_LEVEL_TASKS else decoder_channels, k,
                         head_hidden) for t, k in self.tasks.items()})

    def forward(self, images: torch.Tensor) -> dict:
        """images (B, 3, H, W) -> {task: prediction}: (B, K_t, H, W) for dense tasks, (B, K_t) for image-level
        ones."""
        check_images(images, "SharedNet", self.backbone)
        features = self.backbone(images)
        dense = self.decoder(features) if any(t not in IMAGE_LEVEL_TASKS for t in self.tasks) else None
        return {t: head(features[-1] if t in IMAGE_LEVEL_TASKS else dense, images.shape[-2:])
                for t, head in self.heads.items()}


class SingleTaskNets(nn.Module):
    """One independent :class:`SharedNet` per task (the single-task baselines), with the multi-task
    interface ``forward(images) -> {task: prediction}``. A backbone module is copied for every task (each
    network has its own), after loading ``pretrained`` into each."""

    def __init__(self, tasks: Mapping[str, int], backbone: str | nn.Module = "resnet18", **options):
        super().__init__()
        self.tasks = check_task_channels(tasks, "SingleTaskNets")
        self.nets = nn.ModuleDict({t: SharedNet({t: k}, copy.deepcopy(backbone) if isinstance(backbone, nn.Module)
                                                else backbone, **options) for t, k in self.tasks.items()})

    def forward(self, images: torch.Tensor) -> dict:
        """images (B, 3, H, W) -> {task: prediction}: (B, K_t, H, W) for dense tasks, (B, K_t) for image-level
        ones. Each task's own network runs on the images."""
        check_images(images, "SingleTaskNets", next(iter(self.nets.values())).backbone)
        return {t: net(images)[t] for t, net in self.nets.items()}
