"""A complete ETR-NLP network: a ResNet backbone whose 3×3 convs (stem excluded) are ETR-NLP blocks, the
T task routes stacked along the batch after the (shared, unconverted) stem, and one head per task.

``ETRNLPNet(tasks, backbone="resnet18", head="dense" | "classification", **options)``:
  * tasks: {name: out_channels};
  * head="dense": per task, 3×3 conv + BN + ReLU + 1×1, bilinear to the input size;
    ``forward(images) -> {task: (B, out, H, W)}``. What the heads read is ``decoder``: ``"fpn"`` (default)
    the shared baseline's FPN decoder (mtl_ops/models/shared.py) run on every task's route, so each task's
    head reads its own stride-4 map built from its four stage outputs; ``"none"`` the deepest map alone
    (stride 32: a 2×3 grid at 64×84, too coarse for segmentation — see docs/methods/etr_nlp.md);
  * head="classification" (image-level multi-label, e.g. one CelebA attribute per task): global average
    pool + linear; ``forward(images) -> {task: (B, out)}`` logits;
  * options: width (backbone base width, 32), output_stride (32; dilated stages are not converted),
    sharing_ratio (0.9), primitives, exclude (("stem",)), head_channels (64; also the FPN decoder's
    channels), decoder ("fpn"), seed, backend.
No deep supervision. ``learnable_parameters()`` / ``frozen_parameters()`` give the parameter accounting.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.etr_nlp import frozen_parameters, learnable_parameters
from ..nn.etr_nlp_convert import convert_to_etr_nlp
from ..nn.etr_nlp_primitives import DEFAULT_PRIMITIVES
from ..nn.task_names import check_task_channels
from .backbones import RESNETS, build_backbone, check_images
from .shared import FPNDecoder

DECODERS = ("fpn", "none")


class ETRNLPNet(nn.Module):
    def __init__(self, tasks: dict[str, int], backbone: str = "resnet18", *, head: str = "dense", width: int = 32,
                 output_stride: int = 32, sharing_ratio: float = 0.9, primitives: Sequence = DEFAULT_PRIMITIVES,
                 exclude: Sequence[str] = ("stem",), head_channels: int = 64, decoder: str = "fpn",
                 seed: int = 0, backend: str | None = None):
        super().__init__()
        tasks = check_task_channels(tasks, "ETRNLPNet")
        if head not in ("dense", "classification"):
            raise ValueError(f"ETRNLPNet: head must be 'dense' or 'classification', got {head!r}")
        if decoder not in DECODERS:
            raise ValueError(f"ETRNLPNet: decoder must be one of {DECODERS}, got {decoder!r}")
        self.tasks = tasks
        self.head_kind = head
        if backbone not in RESNETS:
            raise ValueError(f"ETRNLPNet: backbone must be one of the package's ResNets {RESNETS} (their 3x3 convs "
                             f"are converted), got {backbone!r}")
        self.backbone = build_backbone(backbone, width=width, output_stride=output_stride)
        self.converted = convert_to_etr_nlp(self.backbone, len(self.tasks), sharing_ratio=sharing_ratio,
                                            primitives=primitives, exclude=exclude, seed=seed, backend=backend)
        c = self.backbone.channels[-1]
        # one decoder for all routes: its weights are shared, as the shared baseline's are, and each task's
        # head reads the decoder's output on that task's own route
        self.decoder = FPNDecoder(list(self.backbone.channels), head_channels) \
            if head == "dense" and decoder == "fpn" else None
        if self.decoder is not None:
            c = head_channels
        if head == "dense":
            self.heads = nn.ModuleDict({t: nn.Sequential(
                nn.Conv2d(c, head_channels, 3, padding=1, bias=False), nn.BatchNorm2d(head_channels),
                nn.ReLU(inplace=True), nn.Conv2d(head_channels, n, 1)) for t, n in tasks.items()})
        else:
            self.heads = nn.ModuleDict({t: nn.Linear(c, n) for t, n in tasks.items()})

    def learnable_parameters(self) -> int:
        return learnable_parameters(self)

    def frozen_parameters(self) -> int:
        return frozen_parameters(self)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) -> {task: prediction}: (B, K_t, H, W) for dense tasks, (B, K_t) for image-level
        ones. The T routes run stacked along the batch."""
        check_images(images, "ETRNLPNet", self.backbone)
        T = len(self.tasks)
        x = self.backbone.stem(images)
        x = x.repeat(T, 1, 1, 1)  # the T routes, stacked along the batch
        features = []
        for stage in self.backbone.stages:
            x = stage(x)
            features.append(x)
        if self.decoder is not None:
            x = self.decoder(features)
        out = {}
        for t, (name, feat) in enumerate(zip(self.tasks, x.chunk(T, dim=0))):
            if self.head_kind == "dense":
                out[name] = F.interpolate(self.heads[name](feat), size=images.shape[-2:], mode="bilinear",
                                          align_corners=False)
            else:
                out[name] = self.heads[name](feat.mean((2, 3)))
        return out
