"""EMA-Net-style complete network around CTAL, with a configurable backbone:

  images -> backbone (multi-scale) -> fuse: upsample every map to the finest (stride 4), concat, 1x1 conv+BN+ReLU
         -> per task: initial task prediction (2 bottlenecks -> features; 1x1 conv -> initial prediction, deeply
            supervised) -> CTAL (features at 1/4 -> 1/2 resolution) -> per task head (2 bottlenecks, 1x1 conv)
         -> bilinear upsampling of every prediction to the input size.

``CTALNet({"semseg": 13, "depth": 1}, backbone="resnet18", image_size=(288, 384))``;
``forward(images) -> {task: (B, n_t, H0, W0)}``; ``forward(images, return_aux=True)`` also returns the
initial predictions (same shapes) for deep supervision, as the one auxiliary set of the network contract:
``(predictions, [initial_predictions])``.
The fusion weights of CTAL are tied to the feature grid, so the network runs at ``image_size`` only.
"""
from __future__ import annotations

import numbers
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.blocks import Bottleneck
from ..nn.ctal import CTAL
from ..nn.task_names import check_task_channels
from .backbones import build_backbone, check_images


class CTALNet(nn.Module):
    """Backbone -> initial task predictions -> CTAL -> task heads.

    Args:
        tasks: {task name: output channels}.
        backbone: a name for ``mtl_ops.models.build_backbone`` (resnet10/18/34, timm:<name>,
            torchvision:<resnet name>); ``backbone_kwargs`` go with it.
        width: base width of the built-in ResNet backbones (default 64); refused for the others.
        pretrained: backbone weights, a file or True (timm's / torchvision's own).
        image_size: (H0, W0) of the input images; the CTAL grid is (H0/4, W0/4) (default (288, 384), NYUv2).
        itp_channels: width of the initial-task-prediction features (default 256).
        ctal_channels, kernel_size, gamma, per_task_fusion, backend: CTAL's options (defaults 128, 3, 0.05,
            False, None).
    """

    def __init__(self, tasks: Mapping[str, int], backbone: str | nn.Module = "resnet18", *,
                 width: int | None = None, backbone_kwargs: dict | None = None, pretrained=None,
                 image_size: tuple[int, int] = (288, 384), itp_channels: int = 256, ctal_channels: int = 128,
                 kernel_size: int = 3, gamma: float = 0.05, per_task_fusion: bool = False,
                 backend: str | None = None):
        super().__init__()
        self.tasks = tasks = check_task_channels(tasks, "CTALNet")
        if not isinstance(image_size, (tuple, list)) or len(image_size) != 2 \
                or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 4 for s in image_size):
            raise ValueError(f"CTALNet: image_size must be (H, W), two ints >= 4, got {image_size!r}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if self.image_size[0] % 4 or self.image_size[1] % 4:
            raise ValueError(f"CTALNet: image_size must be divisible by 4, got {image_size!r}")
        self.backbone = build_backbone(backbone, width=width, default_width=64, owner="CTALNet",
                                       pretrained=pretrained, **dict(backbone_kwargs or {}))
        fused = sum(self.backbone.channels)
        self.fuse = nn.Sequential(nn.Conv2d(fused, fused, 1), nn.BatchNorm2d(fused), nn.ReLU(inplace=True))
        if itp_channels % 4:
            raise ValueError(f"CTALNet: itp_channels must be divisible by 4, got {itp_channels}")
        self.itp = nn.ModuleDict({t: nn.Sequential(Bottleneck(fused, itp_channels // 4),
                                                   Bottleneck(itp_channels, itp_channels // 4)) for t in tasks})
        self.initial_head = nn.ModuleDict({t: nn.Conv2d(itp_channels, n, 1) for t, n in tasks.items()})
        grid = (self.image_size[0] // 4, self.image_size[1] // 4)
        self.ctal = CTAL(list(tasks), itp_channels, grid, channels=ctal_channels, kernel_size=kernel_size,
                         gamma=gamma, per_task_fusion=per_task_fusion, backend=backend)
        if ctal_channels % 4:
            raise ValueError(f"CTALNet: ctal_channels must be divisible by 4, got {ctal_channels}")
        self.head = nn.ModuleDict({t: nn.Sequential(Bottleneck(ctal_channels, ctal_channels // 4),
                                                    Bottleneck(ctal_channels, ctal_channels // 4),
                                                    nn.Conv2d(ctal_channels, n, 1)) for t, n in tasks.items()})

    def _fused_features(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.backbone(images)
        size = (self.image_size[0] // 4, self.image_size[1] // 4)
        up = [m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
              for m in maps]
        return self.fuse(torch.cat(up, dim=1))

    def forward(self, images: torch.Tensor, return_aux: bool = False):
        """images (B, 3, H, W) at the built ``image_size`` -> {task: (B, K_t, H, W)}; with ``return_aux``,
        (predictions, [{task: (B, K_t, H, W)}]): the initial predictions before CTAL, for deep supervision."""
        check_images(images, "CTALNet", self.backbone)
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"CTALNet: expected images (B, C, {self.image_size[0]}, {self.image_size[1]}) (the CTAL "
                             f"fusion is tied to that size), got shape {tuple(images.shape)}")
        shared = self._fused_features(images)
        feats = {t: self.itp[t](shared) for t in self.tasks}
        size = self.image_size
        refined = self.ctal(feats)
        preds = {t: F.interpolate(self.head[t](refined[t]), size=size, mode="bilinear", align_corners=False)
                 for t in self.tasks}
        if not return_aux:
            return preds
        initial = {t: F.interpolate(self.initial_head[t](feats[t]), size=size, mode="bilinear", align_corners=False)
                   for t in self.tasks}
        return preds, [initial]
