"""The complete Medusa network: a shared multi-scale backbone and one independent ``MedusaHead`` per task.

    model = Medusa({"semseg": 13, "depth": 1}, backbone="resnet18", width=32)
    preds = model(images)                          # {task: (B, K_t, H, W)} at input resolution
    preds, aux = model(images, return_aux=True)    # aux[s]: {task: scale s's prediction (B, K_t, H, W)}

Universal feature learning (UFL): ``add_task(name, out_channels)`` attaches a fresh head;
``freeze_except(name)`` freezes the backbone (parameters and BN statistics) and every other head, so that
only the new head trains; ``unfreeze()`` undoes it. The frozen parts stay in eval mode through
``model.train()``.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.medusa import MedusaHead
from ..nn.task_names import check_task_channels
from .backbones import build_backbone, check_images


class Medusa(nn.Module):
    """Shared backbone + per-task Medusa heads.

    Args:
        tasks: {task name: output channels}.
        backbone: a ``build_backbone`` name (``resnet18`` by default; ``timm:<name>`` and
            ``torchvision:<resnet name>`` work too).
        width: base width of the built-in ResNet backbones (default 64); refused for the others.
        pretrained: backbone weights, a file or True (timm's / torchvision's own).
        backbone_kwargs: further ``build_backbone`` options (e.g. ``output_stride``, or a timm model's
            arguments).
        num_scales: how many backbone maps (finest first) the heads read; all by default.
        **head_options: ``MedusaHead`` options (``sfa_mask``, ``sfa_residual``, ``refine``, ``msa_mode``,
            ``msa_width``, ``backend``).

    ``forward(images)`` runs the backbone once and, per scale, every task's SFA mask multiply in one fused
    ``sfa_apply`` call (the masks come from each head's own layers, so heads stay independent); each head
    predicts at the finest map's resolution, resized bilinearly to the input size.
    ``forward(images, return_aux=True)`` also returns the deep supervision: one ``{task: prediction}`` dict
    per scale, each head's per-scale prediction (its MSA values P_s, see
    :class:`~mtl_ops.nn.MultiScaleAttentionHead`) resized bilinearly to the input size. With
    ``msa_mode="features"`` the per-scale values are features, not predictions, and the list is empty.
    """

    def __init__(self, tasks: Mapping[str, int], backbone: str | nn.Module = "resnet18", *,
                 width: int | None = None, backbone_kwargs: dict | None = None, pretrained=None,
                 num_scales: int | None = None, **head_options):
        super().__init__()
        tasks = check_task_channels(tasks, "Medusa")
        backbone_kwargs = dict(backbone_kwargs or {})
        if "width" in backbone_kwargs:
            raise ValueError(f"Medusa: the backbone width is the width argument, not a backbone_kwargs entry; got "
                             f"backbone_kwargs={backbone_kwargs!r}")
        self.backbone = build_backbone(backbone, width=width, default_width=64, owner="Medusa",
                                       pretrained=pretrained, **backbone_kwargs)
        self.num_scales = len(self.backbone.channels) if num_scales is None else num_scales
        self.in_channels = list(self.backbone.channels[:self.num_scales])
        self.head_options = dict(head_options)
        self.heads = nn.ModuleDict()
        self._frozen: set[str] | None = None  # the trainable tasks while frozen, else None
        for name, out_channels in tasks.items():
            self.add_task(name, out_channels)

    @property
    def tasks(self) -> dict[str, int]:
        return {name: head.out_channels for name, head in self.heads.items()}

    def add_task(self, name: str, out_channels: int) -> MedusaHead:
        """Attaches a fresh head for ``name``; every existing task's output is unchanged (bit-identical)."""
        check_task_channels({name: out_channels}, "Medusa.add_task")
        if name in self.heads:
            raise ValueError(f"Medusa.add_task: task {name!r} already exists")
        head = MedusaHead(self.in_channels, out_channels, **self.head_options)
        self.heads[name] = head
        return head

    def freeze_except(self, *tasks: str) -> list[nn.Parameter]:
        """Freezes the backbone and every head but ``tasks`` (requires_grad off, eval mode so that BN
        statistics stay put, kept through ``train()``). Returns the parameters left trainable."""
        unknown = [t for t in tasks if t not in self.heads]
        if unknown:
            raise ValueError(f"Medusa.freeze_except: unknown tasks {unknown}; tasks are {list(self.heads)}")
        self._frozen = set(tasks)
        for p in self.parameters():
            p.requires_grad_(False)
        trainable = [p for t in tasks for p in self.heads[t].parameters()]
        for p in trainable:
            p.requires_grad_(True)
        self.train(self.training)
        return trainable

    def unfreeze(self) -> None:
        self._frozen = None
        for p in self.parameters():
            p.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self._frozen is not None:
            self.backbone.eval()
            for name, head in self.heads.items():
                if name not in self._frozen:
                    head.eval()
        return self

    def forward(self, images: torch.Tensor, return_aux: bool = False):
        """images (B, 3, H, W) -> {task: (B, K_t, H, W)}; with ``return_aux``, (predictions, [{task: (B, K_t, H,
        W)} per scale]) (see the class docstring)."""
        check_images(images, "Medusa", self.backbone)
        features = self.backbone(images)[:self.num_scales]
        names = list(self.heads)
        heads = [self.heads[n] for n in names]
        masked = [[] for _ in names]
        for s, f in enumerate(features):
            # every task's SFA at scale s in one fused call; heads with other SFA options go alone
            groups: dict[tuple, list[int]] = {}
            for i, head in enumerate(heads):
                sfa = head.sfa[s]
                groups.setdefault((sfa.mask, sfa.residual, sfa.backend), []).append(i)
            for members in groups.values():
                logits = torch.stack([heads[i].sfa[s].mask_logits(f) for i in members])
                out = heads[members[0]].sfa[s].apply_masks(f, logits)
                for j, i in enumerate(members):
                    masked[i].append(out[j])
        size = images.shape[-2:]
        preds, aux = {}, [{} for _ in features]
        for name, head, g in zip(names, heads, masked):
            y, per_scale = head.forward_masked(g, return_aux=True)
            preds[name] = _resize(y, size)
            if return_aux and head.msa.mode == "predictions":
                for s, value in enumerate(per_scale):
                    aux[s][name] = _resize(value, size)
        return (preds, [a for a in aux if a]) if return_aux else preds


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
