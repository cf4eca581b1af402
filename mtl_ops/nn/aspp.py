"""DeepLab-v2 ASPP head, as AdaShare's reference code uses it per task."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ASPPv2Head(nn.Module):
    """DeepLab-v2 ASPP: parallel dilated branches whose outputs are **summed**.

    Each branch r: ``Conv3x3(dilation r, padding r) → ReLU → Dropout → Conv1x1(hidden → hidden) → ReLU →
    Dropout → Conv1x1(hidden → out_channels)``, all convs with bias. AdaShare: rates (6, 12, 18, 24),
    in 512, hidden 1024, dropout 0.5. The output keeps the input's spatial size.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 1024,
                 rates: Sequence[int] = (6, 12, 18, 24), dropout: float = 0.5):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("hidden_channels", hidden_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ASPPv2Head: {name} must be a positive int, got {v!r}")
        rates = tuple(rates)
        if not rates or any(not isinstance(r, int) or r < 1 for r in rates):
            raise ValueError(f"ASPPv2Head: rates must be a non-empty sequence of positive ints, got {rates!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"ASPPv2Head: dropout must be in [0, 1), got {dropout!r}")
        self.rates = rates
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, hidden_channels, 3, padding=r, dilation=r),
                nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Conv2d(hidden_channels, hidden_channels, 1),
                nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Conv2d(hidden_channels, out_channels, 1),
            )
            for r in rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, H, W) -> (B, out_channels, H, W), the sum of the branches."""
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out
