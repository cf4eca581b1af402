"""The residual blocks the networks are built from: the ResNet basic block (the backbones, AdaShare's gated
blocks, Medusa's per-scale refinement, PDF's extra encoder stage) and the bottleneck (CTAL's task heads).

``BasicBlock`` takes its normalisation as a factory, so one definition serves plain BatchNorm and AdaShare's
per-task BatchNorm (:class:`~mtl_ops.nn.TaskBatchNorm2d`, which also needs the task index of every chunk of
the batch: whatever extra arguments the block is called with go to each of its norms).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class _ConvNorm(nn.Sequential):
    """A 1×1 projection shortcut, conv → norm, with extra arguments passed to the norm. A Sequential, so that
    its parameters keep the names ``shortcut.0`` / ``shortcut.1`` of torchvision-style checkpoints."""

    def forward(self, x: torch.Tensor, *norm_args) -> torch.Tensor:
        return self[1](self[0](x), *norm_args)


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(residual(x) + branch(x))`` with ``branch = conv3x3(stride, dilation) → norm →
    ReLU → conv3x3(dilation) → norm`` and ``residual`` the identity or a conv1x1(stride) → norm projection.

    Args:
        in_channels, planes: input and output channels.
        stride, dilation: of the first 3×3 conv (the second has stride 1 and the same dilation); padding
            equals the dilation, so the spatial size only changes by the stride.
        norm: ``norm(channels) -> module`` for every normalisation (default ``nn.BatchNorm2d``).
        projection: whether the residual is the 1×1 projection; None (default) projects exactly when the
            shape changes (stride != 1 or in_channels != planes), the torchvision rule.

    ``forward(x, *norm_args)``; ``norm_args`` (e.g. the task indices of a :class:`TaskBatchNorm2d`) go to every
    norm. :meth:`branch` and :meth:`residual` are the two paths on their own, for callers that mix them
    (AdaShare's gates). ``shortcut`` is None for the identity.
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1, *,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d, projection: bool | None = None):
        super().__init__()
        self.stride, self.dilation = stride, dilation
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = norm(planes)
        if projection is None:
            projection = stride != 1 or in_channels != planes
        self.shortcut = _ConvNorm(nn.Conv2d(in_channels, planes, 1, stride, bias=False), norm(planes)) \
            if projection else None

    def branch(self, x: torch.Tensor, *norm_args) -> torch.Tensor:
        """f(x): the conv path, without the final ReLU."""
        y = torch.relu(self.bn1(self.conv1(x), *norm_args))
        return self.bn2(self.conv2(y), *norm_args)

    def residual(self, x: torch.Tensor, *norm_args) -> torch.Tensor:
        return x if self.shortcut is None else self.shortcut(x, *norm_args)

    def forward(self, x: torch.Tensor, *norm_args) -> torch.Tensor:
        """x (B, in_channels, H, W) -> (B, planes, H', W'), H' = ceil(H / stride); ``norm_args`` go to every norm."""
        # The branch runs before the residual, as in torchvision's block: autograd sums the gradients of a
        # tensor read by several layers (a stage output also read by a decoder) in an order that follows the
        # forward's, so keeping this order keeps trained weights bit-identical.
        f = self.branch(x, *norm_args)
        return torch.relu(self.residual(x, *norm_args) + f)

    def branch_parameters(self):
        """The parameters of the conv path (what pruning a block that no task executes removes)."""
        for module in (self.conv1, self.bn1, self.conv2, self.bn2):
            yield from module.parameters()


class Bottleneck(nn.Module):
    """torchvision-style bottleneck (1×1 → 3×3 → 1×1, expansion 4) with a 1×1 projection shortcut when the
    channels change."""

    def __init__(self, in_channels: int, planes: int):
        super().__init__()
        out = planes * 4
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out))
        self.shortcut = nn.Identity() if in_channels == out else nn.Sequential(
            nn.Conv2d(in_channels, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> (B, 4·planes, H, W)."""
        return torch.relu(self.body(x) + self.shortcut(x))
