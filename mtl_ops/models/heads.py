"""Task heads and the task conventions shared by the complete networks.

Dense tasks get a map at input resolution with ``out_channels`` channels; image-level tasks (``attributes``)
get a vector (B, out_channels) from a globally pooled feature.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: tasks predicted per image rather than per pixel
IMAGE_LEVEL_TASKS = ("attributes",)


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DenseHead(nn.Module):
    """conv3x3-BN-ReLU → conv1x1 → bilinear upsampling to the input size."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_channels
        self.body = conv_bn_relu(in_channels, hidden)
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        y = self.out(self.body(x))
        return F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)


class ImageHead(nn.Module):
    """Global average pooling → linear: image-level logits (B, out_channels)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels)

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def make_head(task: str, in_channels: int, out_channels: int, hidden: int | None = None) -> nn.Module:
    if task in IMAGE_LEVEL_TASKS:
        return ImageHead(in_channels, out_channels)
    return DenseHead(in_channels, out_channels, hidden)
