"""CTAL (EMA-Net's Cross-Task Affinity Learning module) as a drop-in nn.Module over dicts of task features.

Per task t: conv_in_t (1x1, C_in -> C, bias) gives x_t; proj_t (3x3, C -> C, bias) gives V_t; the fused core
``mtl_ops.ops.ctal_affinity`` mixes the T cosine-affinity maps of every pixel with its own k x k x T filter
and diffuses V_t through the result (r_t = gamma V_t M^T + (1 - gamma) x_t); then conv_out_t =
ConvTranspose2d(C, C, 2, stride 2) -> BN -> ReLU -> 3x3 conv (C -> C), so the output is at twice the input
resolution. The fusion weights are indexed by absolute pixel position: the module only runs at the
feature size it was built for.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from ..ops.ctal_affinity import ctal_affinity
from .inputs import check_map, check_task_maps
from .memory_format import StacksOfKernels
from .task_names import check_task_names


class CTAL(StacksOfKernels):
    """Cross-task affinity learning over T tasks.

    Args:
        tasks: task names (the keys of the input and output dicts; the order fixes the task index t).
        in_channels: channels of each task's input feature map (an int for all, or a dict per task).
        feature_size: (H, W) of the input feature maps; the fusion has N = H*W filters.
        channels: the CTAL width C (default 128).
        kernel_size: k of the k x k affinity mixing (odd, default 3).
        gamma: the fixed blend of the diffused features (default 0.05).
        per_task_fusion: one fusion (weight (T, N, T, k, k)) per task as the paper's figure, instead of one
            shared by all tasks as the reference code (default False).
        backend: passed to ``ctal_affinity`` (None: the fastest available).

    ``forward({task: (B, C_in, H, W)}) -> {task: (B, C, 2H, 2W)}``.
    """

    def __init__(self, tasks: Sequence[str], in_channels: int | Mapping[str, int], feature_size: tuple[int, int],
                 *, channels: int = 128, kernel_size: int = 3, gamma: float = 0.05, per_task_fusion: bool = False,
                 backend: str | None = None):
        super().__init__()
        self.tasks = list(check_task_names(tasks, "CTAL"))
        if isinstance(in_channels, Mapping):
            if set(in_channels) != set(self.tasks):
                raise ValueError(f"CTAL: in_channels must have one entry per task {self.tasks}, got {sorted(in_channels)}")
            c_in = dict(in_channels)
        else:
            c_in = {t: int(in_channels) for t in self.tasks}
        if len(feature_size) != 2 or min(feature_size) < 1:
            raise ValueError(f"CTAL: feature_size must be (H, W) with H, W >= 1, got {feature_size!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CTAL: kernel_size must be odd, got {kernel_size}")
        self.feature_size = (int(feature_size[0]), int(feature_size[1]))
        self.channels, self.kernel_size, self.gamma = channels, kernel_size, float(gamma)
        self.per_task_fusion, self.backend = per_task_fusion, backend
        T, N, k = len(self.tasks), self.feature_size[0] * self.feature_size[1], kernel_size
        self.conv_in = nn.ModuleDict({t: nn.Conv2d(c_in[t], channels, 1) for t in self.tasks})
        self.projection = nn.ModuleDict({t: nn.Conv2d(channels, channels, 3, padding=1) for t in self.tasks})
        self.fusion_weight = nn.Parameter(torch.empty((T, N, T, k, k) if per_task_fusion else (N, T, k, k)))
        self.fusion_bias = nn.Parameter(torch.empty((T, N) if per_task_fusion else (N,)))
        self.conv_out = nn.ModuleDict({t: nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1)) for t in self.tasks})
        self.reset_fusion_parameters()

    def reset_fusion_parameters(self) -> None:
        """As nn.Conv2d(T*N, N, k, groups=N): uniform(+-1/sqrt(fan_in)) with fan_in = T*k*k."""
        bound = 1.0 / math.sqrt(len(self.tasks) * self.kernel_size ** 2)
        nn.init.uniform_(self.fusion_weight, -bound, bound)
        nn.init.uniform_(self.fusion_bias, -bound, bound)

    def forward(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{task: (B, C_in, H, W)} at the built ``feature_size`` (H, W) -> {task: (B, channels, 2H, 2W)}."""
        check_task_maps(features, "CTAL", self.tasks)
        H, W = self.feature_size
        for t in self.tasks:
            f = features[t]
            check_map(f, "CTAL", f"features[{t!r}]", self.conv_in[t].in_channels, "(B, C_in, H, W)")
            if tuple(f.shape[-2:]) != (H, W):
                raise ValueError(
                    f"CTAL: features[{t!r}] has spatial size {tuple(f.shape[-2:])}, but this module was built for "
                    f"{(H, W)}: the fusion weights are tied to N = H*W = {H * W} pixel positions; build a CTAL "
                    f"with feature_size={tuple(f.shape[-2:])} for that size")
        x = torch.stack([self.conv_in[t](features[t]) for t in self.tasks], dim=1)   # (B, T, C, H, W)
        v = torch.stack([self.projection[t](x[:, i]) for i, t in enumerate(self.tasks)], dim=1)
        r = ctal_affinity(x, v, self.fusion_weight, self.fusion_bias, self.gamma, backend=self.backend)
        return {t: self.conv_out[t](r[:, i]) for i, t in enumerate(self.tasks)}

    def extra_repr(self) -> str:
        return (f"tasks={self.tasks}, channels={self.channels}, feature_size={self.feature_size}, "
                f"kernel_size={self.kernel_size}, gamma={self.gamma}, per_task_fusion={self.per_task_fusion}")
