"""A complete ETR-NLP network: a backbone whose 3×3 convs (stem excluded) are ETR-NLP blocks, the T task
routes stacked along the batch, and one head per task. With a backbone that exposes its ``stem`` and
``stages`` (the built-in ResNets, torchvision's ResNets) the routes are stacked after the shared, unconverted
stem, which then runs once; with any other (timm models) the images are stacked before the backbone, whose
unconverted layers then compute the same values for every route.

``ETRNLPNet(tasks, backbone="resnet18", head="dense" | "classification", **options)``:
  * tasks: {name: out_channels};
  * head="dense": per task, 3×3 conv + BN + ReLU + 1×1, bilinear to the input size;
    ``forward(images) -> {task: (B, out, H, W)}``. What the heads read is ``decoder``: ``"fpn"`` (default)
    the shared baseline's FPN decoder (mtl_ops/models/shared.py) run on every task's route, so each task's
    head reads its own stride-4 map built from its four stage outputs; ``"none"`` the deepest map alone
    (stride 32: a 2×3 grid at 64×84, too coarse for segmentation — see docs/methods/etr_nlp.md);
  * head="classification" (image-level multi-label, e.g. one CelebA attribute per task): global average
    pool + linear; ``forward(images) -> {task: (B, out)}`` logits;
  * options: width (the built-in ResNets' base width, 32), backbone_kwargs (further ``build_backbone``
    options), pretrained (backbone weights, loaded before the conversion: the converted 3×3 convs' weights give
    way to ETR-NLP blocks, the rest keeps them), output_stride (32; dilated stages are not converted),
    sharing_ratio (0.9), primitives, groups (of the blocks' learnable 1×1; None: each block's gcd of its input
    and shared channels, see ``convert_to_etr_nlp``), exclude (None: the backbone's stem, its ``stem_names``),
    head_channels (64; also the FPN decoder's channels), decoder ("fpn"), seed (of the frozen primitives; None,
    the default: drawn from torch's global generator, so the primitives are part of a seeded run's random draw —
    the trainer seeds that generator from the run's seed before it builds the network — as the learnable
    weights are), backend.
A backbone with no convertible convolution (ETR-NLP converts plain 3×3 convs: stride any, dilation 1, groups 1,
padding 1) is refused: depthwise-separable and transformer models (ConvNeXt, EfficientNet, ViT) have none.
No deep supervision. ``learnable_parameters()`` / ``frozen_parameters()`` give the parameter accounting.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.etr_nlp import frozen_parameters, learnable_parameters
from ..nn.etr_nlp_convert import convert_to_etr_nlp, route_batchnorms
from ..nn.etr_nlp_primitives import DEFAULT_PRIMITIVES
from ..nn.task_names import check_task_channels
from .backbones import backbone_label, build_backbone, check_images, stage_outputs
from .shared import FPNDecoder

DECODERS = ("fpn", "none")


class ETRNLPNet(nn.Module):
    def __init__(self, tasks: dict[str, int], backbone: str | nn.Module = "resnet18", *, head: str = "dense",
                 width: int | None = None, backbone_kwargs: dict | None = None, pretrained=None,
                 output_stride: int = 32, sharing_ratio: float = 0.9, primitives: Sequence = DEFAULT_PRIMITIVES,
                 groups: int | None = None, exclude: Optional[Sequence[str]] = None, head_channels: int = 64,
                 decoder: str = "fpn", seed: int | None = None, backend: str | None = None):
        super().__init__()
        tasks = check_task_channels(tasks, "ETRNLPNet")
        if head not in ("dense", "classification"):
            raise ValueError(f"ETRNLPNet: head must be 'dense' or 'classification', got {head!r}")
        if decoder not in DECODERS:
            raise ValueError(f"ETRNLPNet: decoder must be one of {DECODERS}, got {decoder!r}")
        self.tasks = tasks
        self.head_kind = head
        backbone_kwargs = dict(backbone_kwargs or {})
        if not isinstance(backbone, nn.Module):  # a module comes as it is, at its own output stride
            backbone_kwargs.setdefault("output_stride", output_stride)
        self.backbone = build_backbone(backbone, width=width, default_width=32, owner="ETRNLPNet",
                                       pretrained=pretrained, **backbone_kwargs)
        if exclude is None:
            exclude = tuple(getattr(self.backbone, "stem_names", ()))
        if seed is None:
            seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())
        self.primitive_seed = seed
        self.converted = convert_to_etr_nlp(self.backbone, len(self.tasks), sharing_ratio=sharing_ratio,
                                            primitives=primitives, exclude=exclude, groups=groups, seed=seed,
                                            backend=backend)
        if not self.converted:
            raise ValueError(f"ETRNLPNet: backbone {backbone_label(backbone)} has no convertible convolution (3x3, "
                             f"dilation 1, groups 1, padding 1) outside {tuple(exclude)}, so it would have no task "
                             f"routes; ETR-NLP needs a backbone of plain 3x3 convs (a ResNet)")
        self.stem_first = hasattr(self.backbone, "stem") and hasattr(self.backbone, "stages")
        c = self.backbone.channels[-1]
        # one decoder for all routes: its weights are shared, as the shared baseline's are, and each task's
        # head reads the decoder's output on that task's own route
        self.decoder = FPNDecoder(list(self.backbone.channels), head_channels) \
            if head == "dense" and decoder == "fpn" else None
        if self.decoder is not None:
            route_batchnorms(self.decoder, len(self.tasks))  # it runs on the stacked routes too
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
        if self.stem_first:
            # the stem runs once, then the T routes, stacked along the batch, run the stages
            features = stage_outputs(lambda im: self.backbone.stem(im).repeat(T, 1, 1, 1), self.backbone.stages,
                                     images)
        else:
            features = list(self.backbone(images.repeat(T, 1, 1, 1)))
        x = features[-1]
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
