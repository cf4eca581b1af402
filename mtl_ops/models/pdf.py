"""The complete Progressive Decoder Fusion network (Gurulingan et al., CoLLAs 2022), scaled down to the
package's small ResNets.

Structure (where it is simpler than the authors' network, their version in brackets):

* **Encoder**, shared: a ``mtl_ops.models`` backbone (c1..c4 at strides 4, 8, 16, 32) plus one extra
  encoder stage ``e5`` (a strided BasicBlock, stride 64) [PDF: two extra Bottleneck stages e5, e6].
* **Decoder**: a :class:`~mtl_ops.nn.DecoderTree` of ``num_stages = 4`` stages, stage 0 the deepest; stage
  k reads the previous stage's output (``e5`` at k = 0) and the skip ``en[3 − k]`` (c4, c3, c2, c1), so its
  output has stride 32, 16, 8, 4 [PDF: 5 stages with skips e5, c4..c1]. Each stage is PDF's "bottleneck with
  skip" (:class:`DecoderBlock`): upsample the input to the skip's size, concatenate, 1x1 → 3x3 → 1x1 with BN,
  add the (projected at stage 0) upsampled input, ReLU.
* **Heads**, per task: every stage output on the task's path goes through a 1x1 conv to
  ``decoder_channels // 4`` channels, is upsampled to stride 4, concatenated, and a 3x3 conv predicts the
  task; the result is upsampled to the input size. Image-level tasks (``attributes``) pool the concatenation
  and apply a linear layer.

``groupings`` is the decoder tree (one partition of the tasks per stage; None = Sep-De, every task alone).
:meth:`stage_features` gives the spatially pooled stage-g output of every task, PDF's CKA input.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.decoder_tree import DecoderTree
from ..nn.blocks import BasicBlock
from ..nn.task_names import check_task_channels
from .backbones import build_backbone, check_images
from .heads import IMAGE_LEVEL_TASKS


class DecoderBlock(nn.Module):
    """PDF's decoder block: ``u = up(x_prev → size(skip))``; ``h = 1x1-BN-ReLU → 3x3-BN-ReLU → 1x1-BN`` of
    ``cat(u, skip)``; ``out = relu(h + r)`` with ``r = u`` (or a 1x1 projection when channels differ)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        mid = max(out_channels // 4, 8)
        self.project = None if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels + skip_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, h, w), skip (B, skip_channels, H, W) -> (B, out_channels, H, W)."""
        u = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        r = u if self.project is None else self.project(u)
        return torch.relu(self.body(torch.cat([u, skip], 1)) + r)


class PDFHead(nn.Module):
    """Reads every stage output of its task (the pattern of PDF's SegHead/DepthHead)."""

    def __init__(self, num_stages: int, channels: int, out_channels: int, image_level: bool):
        super().__init__()
        q = max(channels // 4, 8)
        self.reduce = nn.ModuleList(nn.Conv2d(channels, q, 1) for _ in range(num_stages))
        self.image_level = image_level
        self.out = nn.Linear(q * num_stages, out_channels) if image_level else \
            nn.Conv2d(q * num_stages, out_channels, 3, padding=1)

    def forward(self, stage_outputs: Sequence[torch.Tensor], size) -> torch.Tensor:
        finest = stage_outputs[-1].shape[-2:]
        qs = [F.interpolate(r(d), size=finest, mode="bilinear", align_corners=False)
              for r, d in zip(self.reduce, stage_outputs)]
        z = torch.cat(qs, 1)
        if self.image_level:
            return self.out(z.mean(dim=(2, 3)))
        return F.interpolate(self.out(z), size=tuple(size), mode="bilinear", align_corners=False)


@dataclasses.dataclass(frozen=True)
class _StageFactory:
    """The decoder tree's stage factory (a module-level class, not a closure: the network then pickles)."""
    deepest: int                 # channels of the backbone's deepest map (stage 0's input)
    skips: list[int]             # skip channels per stage (c4, c3, c2, c1)
    decoder_channels: int

    def __call__(self, k: int) -> nn.Module:
        return DecoderBlock(self.deepest if k == 0 else self.decoder_channels, self.skips[k], self.decoder_channels)


class PDFNet(nn.Module):
    """PDF multi-task network; see the module docstring.

    Args:
        tasks: task name → output channels.
        backbone: ``resnet10|resnet18|resnet34`` (with ``width``), ``timm:<name>``,
            ``torchvision:<resnet name>`` (with ``backbone_kwargs``) or a module; the decoder reads 4 maps, the
            backbone's deepest 4 when it has more (pass timm's ``out_indices`` in ``backbone_kwargs`` to choose
            others); one with fewer is refused.
        width: the built-in ResNets' base width (default 16).
        pretrained: backbone weights, a file or True (timm's / torchvision's own); :meth:`with_groupings`
            restores them when it re-initialises.
        decoder_channels: channels of every decoder stage output (PDF: 256).
        groupings: the decoder tree, one partition per stage (stage 0 deepest); None = Sep-De.
    """

    num_stages = 4

    def __init__(self, tasks: Mapping[str, int], backbone: str | nn.Module = "resnet18", *,
                 width: int | None = None, backbone_kwargs: dict | None = None, pretrained=None,
                 decoder_channels: int = 64, groupings: Optional[Sequence] = None):
        super().__init__()
        self.tasks = check_task_channels(tasks, "PDFNet")
        self.backbone = build_backbone(backbone, width=width, default_width=16, num_maps=self.num_stages,
                                       owner="PDFNet", pretrained=pretrained, **dict(backbone_kwargs or {}))
        # PDF retrains every configuration from the same start: with pretrained weights that start is them
        self._backbone_init = None if pretrained in (None, False) else \
            {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        channels = list(self.backbone.channels)
        self.extra = BasicBlock(channels[-1], channels[-1], stride=2)
        self.decoder_channels = decoder_channels
        stage_factory = _StageFactory(channels[-1], channels[::-1], decoder_channels)  # skips c4, c3, c2, c1
        self.decoder = DecoderTree(list(self.tasks), stage_factory, self.num_stages, groupings)
        self.heads = nn.ModuleDict({t: PDFHead(self.num_stages, decoder_channels, k, t in IMAGE_LEVEL_TASKS)
                                    for t, k in self.tasks.items()})

    @property
    def groupings(self):
        return self.decoder.groupings

    def _stages(self, images: torch.Tensor) -> dict:
        features = self.backbone(images)
        e5 = self.extra(features[-1])
        return self.decoder(e5, features[::-1], return_all_stages=True)

    def forward(self, images: torch.Tensor) -> dict:
        """images (B, 3, H, W) -> {task: prediction}: (B, K_t, H, W) for dense tasks, (B, K_t) for image-level
        ones."""
        check_images(images, "PDFNet", self.backbone)
        stages = self._stages(images)
        return {t: self.heads[t](stages[t], images.shape[-2:]) for t in self.tasks}

    @torch.no_grad()
    def stage_features(self, images: torch.Tensor, stage: int) -> torch.Tensor:
        """(T, B, decoder_channels): each task's stage-``stage`` output, globally average-pooled (the input of
        PDF's CKA)."""
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"PDFNet.stage_features: stage must be in [0, {self.num_stages}), got {stage!r}")
        stages = self._stages(images)
        return torch.stack([stages[t][stage].mean(dim=(2, 3)) for t in self.tasks])

    def with_groupings(self, stage: int, groups, *, reset: bool = True) -> "PDFNet":
        """A copy whose decoder fuses ``groups`` at ``stage`` (``DecoderTree.fuse``); ``reset`` re-initialises
        every weight (PDF retrains each configuration from scratch; pretrained backbone weights are restored)."""
        new = copy.deepcopy(self)
        new.decoder = self.decoder.fuse(stage, groups)
        if reset:
            for m in new.modules():
                if m is not new and m is not new.decoder and hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            if self._backbone_init is not None:
                new.backbone.load_state_dict(self._backbone_init)
        return new
