"""Medusa (Spencer, Bowden, Hadfield, CVPRW 2022): per-task heads on a shared multi-scale backbone.

Each task's ``MedusaHead`` has, per scale s, a Shared Feature Attention (SFA: a mask computed from the
shared feature F_s, applied to it) and a light refinement block, then a Multi-Scale Attention head (MSA:
per-scale predictions mixed with per-pixel softmax attention over scales). Heads never read each other,
so a task can be added to a trained backbone without retraining it (universal feature learning).

The paper's exact layer forms are not public; the defaults are one reconstruction of them, and the
alternatives are options:

* ``sfa_mask``: ``"spatial"`` (M = 1, default) or ``"channel"`` (M = C: channel-spatial, MTAN-like);
  ``sfa_residual``: ``G = (1 + m) F`` instead of ``G = m F``.
* ``refine``: the per-task, per-scale residual block (a ResNet basic block) between SFA and MSA (default on).
* ``msa_mode``: ``"predictions"`` (a, default: attention over per-scale predictions) or ``"features"``
  (b: attention over per-scale features projected to ``msa_width``, then Conv3x3-BN-ReLU-Conv1x1). Variant
  (c) (logits from the concatenation through a 1x1 conv) equals (a)/(b) by linearity and is not separate.

The mask multiply runs on ``mtl_ops.ops.sfa_apply`` and the scale mix on ``mtl_ops.ops.ms_attention_mix``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..ops import ms_attention_mix, sfa_apply
from .blocks import BasicBlock
from .inputs import check_map, check_scales

SFA_MASKS = ("spatial", "channel")
MSA_MODES = ("predictions", "features")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class SharedFeatureAttention(nn.Module):
    """A task's mask over one shared feature map: ``a = Conv3x3-BN-ReLU-Conv1x1(C -> M)(F)``,
    ``G = sigmoid(a) * F`` (or ``(1 + sigmoid(a)) * F`` with ``residual=True``). M = 1 (spatial) or C."""

    def __init__(self, channels: int, *, mask: str = "spatial", residual: bool = False, backend: str | None = None):
        super().__init__()
        _check_choice("SharedFeatureAttention: mask", mask, SFA_MASKS)
        self.channels, self.mask, self.residual, self.backend = channels, mask, residual, backend
        self.attention = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 1 if mask == "spatial" else channels, 1))

    def mask_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, M, h, w): the logits of this task's mask."""
        return self.attention(features)

    def apply_masks(self, features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """(T, B, C, h, w) from T tasks' stacked logits (T, B, M, h, w): one fused op for all tasks."""
        out = sfa_apply(features, mask_logits, backend=self.backend)
        return out + features.unsqueeze(0) if self.residual else out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, C, h, w) -> this task's masked features G (B, C, h, w)."""
        check_map(features, "SharedFeatureAttention", "features", self.channels)
        return self.apply_masks(features, self.mask_logits(features).unsqueeze(0))[0]


class MultiScaleAttentionHead(nn.Module):
    """MSA: per-scale 1x1 convs give values P_s and attention logits A_s; the output at ``size`` is
    ``sum_s softmax_s(up(A_s)) * up(P_s)`` (``ms_attention_mix``).

    ``mode="predictions"``: P_s = Conv1x1(C_s -> K) are per-scale predictions, and the mix is the output.
    ``mode="features"``: P_s = Conv1x1(C_s -> width); the mix goes through Conv3x3-BN-ReLU-Conv1x1(-> K).
    ``forward(features, size, return_aux=True)`` also returns the per-scale values P_s (the per-scale
    predictions in "predictions" mode, for deep supervision).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, *, mode: str = "predictions", width: int = 64,
                 backend: str | None = None):
        super().__init__()
        _check_choice("MultiScaleAttentionHead: mode", mode, MSA_MODES)
        self.mode, self.backend = mode, backend
        value_channels = out_channels if mode == "predictions" else width
        self.values = nn.ModuleList(nn.Conv2d(c, value_channels, 1) for c in in_channels)
        self.logits = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in in_channels)
        self.final = None
        if mode == "features":
            self.final = nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, out_channels, 1))

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int] | None = None, return_aux: bool = False):
        """features: S maps (B, C_s, H_s, W_s); size: (H, W) of the output (default: the first map's).
        Returns (B, out_channels, H, W); with ``return_aux``, also the S per-scale values P_s (B, K or width,
        H_s, W_s)."""
        check_scales(features, "MultiScaleAttentionHead", [conv.in_channels for conv in self.values])
        if size is not None and not (isinstance(size, (tuple, list, torch.Size)) and len(size) == 2):
            raise TypeError(f"MultiScaleAttentionHead: size must be None or (H, W), got {size!r}")
        size = tuple(features[0].shape[-2:]) if size is None else tuple(size)
        values = [conv(f) for conv, f in zip(self.values, features)]
        logits = [conv(f) for conv, f in zip(self.logits, features)]
        mixed = ms_attention_mix(values, logits, size, backend=self.backend)
        out = mixed if self.final is None else self.final(mixed)
        return (out, values) if return_aux else out


class MedusaHead(nn.Module):
    """One task's complete Medusa head over S shared feature maps: per scale SFA -> refinement, then MSA at
    the resolution of the finest map (stride 4). Reads only the shared features: independent of other heads."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, *, sfa_mask: str = "spatial",
                 sfa_residual: bool = False, refine: bool = True, msa_mode: str = "predictions", msa_width: int = 64,
                 backend: str | None = None):
        super().__init__()
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.sfa = nn.ModuleList(SharedFeatureAttention(c, mask=sfa_mask, residual=sfa_residual, backend=backend)
                                 for c in in_channels)
        # the refinement: 2 x (Conv3x3, BN) with a ReLU between, identity skip, ReLU
        self.refine = nn.ModuleList(BasicBlock(c, c) if refine else nn.Identity() for c in in_channels)
        self.msa = MultiScaleAttentionHead(in_channels, out_channels, mode=msa_mode, width=msa_width, backend=backend)

    def forward_masked(self, masked: Sequence[torch.Tensor], return_aux: bool = False):
        """The head after SFA: ``masked[s]`` is this task's masked feature G_s."""
        refined = [block(g) for block, g in zip(self.refine, masked)]
        return self.msa(refined, tuple(masked[0].shape[-2:]), return_aux=return_aux)

    def forward(self, features: Sequence[torch.Tensor], return_aux: bool = False):
        """features: the S shared maps (B, C_s, H_s, W_s), finest first. Returns (B, out_channels, H_0, W_0) at
        the finest map's resolution; with ``return_aux``, also the per-scale values (see MultiScaleAttentionHead)."""
        check_scales(features, "MedusaHead", self.in_channels)
        return self.forward_masked([sfa(f) for sfa, f in zip(self.sfa, features)], return_aux=return_aux)
