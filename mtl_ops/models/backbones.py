"""Multi-scale backbones shared by the complete multi-task networks: a small ResNet family (basic blocks,
trained from scratch: nothing is downloaded) and an adapter for any timm ``features_only`` model.

Every backbone maps images (B, 3, H, W) to a list of feature maps, shallow to deep, and exposes
``channels`` (per map) and ``strides`` (per map, relative to the input).

Every network names its backbone the same way (``backbone``: ``resnet10|resnet18|resnet34`` or
``timm:<model name>``) and sets the built-in ResNets' base width with ``width``; :func:`build_backbone`
is the one place that reads these options.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn.blocks import BasicBlock
from ..nn.inputs import check_map
from ..common.optional import require

_DEPTHS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class ResNetBackbone(nn.Module):
    """ResNet-10/18/34 with a configurable base ``width``; returns the four stage outputs (strides 4, 8,
    16, 32). ``output_stride=8`` dilates the last two stages instead of striding (DeepLab style), and
    ``output_stride=16`` the last one."""

    def __init__(self, depth: int = 18, *, width: int = 64, in_channels: int = 3, output_stride: int = 32):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNetBackbone: depth must be one of {sorted(_DEPTHS)}, got {depth!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"ResNetBackbone: output_stride must be 8, 16 or 32, got {output_stride!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"ResNetBackbone: width must be a positive int, got {width!r}")
        self.in_channels = in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        strides = [1, 2, 2, 2]
        dilations = [1, 1, 1, 1]
        if output_stride <= 16:
            strides[3], dilations[3] = 1, 2
        if output_stride == 8:
            strides[2], dilations[2], dilations[3] = 1, 2, 4
        stages, inplanes = [], width
        for i, n_blocks in enumerate(_DEPTHS[depth]):
            planes = width * 2 ** i
            blocks = [BasicBlock(inplanes, planes, strides[i], dilations[i])]
            blocks += [BasicBlock(planes, planes, 1, dilations[i]) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.stages = nn.ModuleList(stages)
        self.channels = [width * 2 ** i for i in range(4)]
        total, self.strides = 4, []
        for s in strides:
            total *= s
            self.strides.append(total)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """images (B, in_channels, H, W) -> the four stage outputs [(B, C_i, H / s_i, W / s_i)], ``channels[i]``
        channels at ``strides[i]`` (4, 8, 16, 32 unless dilated)."""
        check_map(x, "ResNetBackbone", "images", self.in_channels)
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class TimmBackbone(nn.Module):
    """Any timm model created with ``features_only=True`` (random init unless weights are local)."""

    def __init__(self, name: str, *, pretrained: bool = False, **kwargs):
        super().__init__()
        timm = require("timm", "timm", "timm", "TimmBackbone")
        self.model = timm.create_model(name, features_only=True, pretrained=pretrained, **kwargs)
        self.channels = list(self.model.feature_info.channels())
        self.strides = list(self.model.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """images (B, C, H, W) -> timm's feature maps [(B, channels[i], H / strides[i], W / strides[i])]."""
        return list(self.model(x))


def check_images(images, where: str, backbone: nn.Module) -> None:
    """A network's input: floating-point (B, C, H, W) images with the backbone's C (when it says it)."""
    check_map(images, where, "images", getattr(backbone, "in_channels", None))


RESNETS = tuple(f"resnet{depth}" for depth in _DEPTHS)


def build_backbone(name: str = "resnet18", *, width: int | None = None, **kwargs) -> nn.Module:
    """``resnet10|resnet18|resnet34`` (our ResNetBackbone at base ``width``, default 64; kwargs:
    output_stride, in_channels) or ``timm:<model name>`` (TimmBackbone; kwargs go to ``timm.create_model``).

    ``width`` is the base width of the built-in ResNets; a timm model has its own widths, so ``width`` is
    ignored for ``timm:`` names (every network passes its ``width`` here whatever the backbone, so that one
    configuration works for both kinds)."""
    if not isinstance(name, str):
        raise ValueError(f"backbone: name must be a string, got {name!r}")
    if name.startswith("timm:"):
        return TimmBackbone(name[5:], **kwargs)
    if name in RESNETS:
        return ResNetBackbone(int(name[6:]), **({} if width is None else {"width": width}), **kwargs)
    raise ValueError(f"backbone: name must be resnet10, resnet18, resnet34 or timm:<name>, got {name!r}")
