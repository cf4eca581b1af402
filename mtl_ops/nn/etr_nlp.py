"""ETR-NLP (Explicit Task Routing with Non-Learnable Primitives, CVPR 2023).

``ETRNLPConv`` replaces a 3×3 convolution. Its input holds the T routes stacked along the batch
((T·B, C_in, H, W), route t = rows [t·B, (t+1)·B)); for each route it outputs C_sh = floor(γ·C_out) shared
channels (frozen primitives recombined by a learnable grouped 1×1, parameters shared by all tasks) followed
by C_out − C_sh channels of that task's own 3×3 conv, then a per-task BatchNorm. The whole thing is one
fused op, ``mtl_ops.ops.routed_primitive_gather``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..ops import routed_primitive_gather, routed_primitive_gather_linear
from ..common.primitive_kinds import LINEAR_KINDS
from .etr_nlp_primitives import DEFAULT_PRIMITIVES, make_frozen, parse_primitive
from .inputs import check_map
from .memory_format import StacksOfKernels
from .task_batchnorm import TaskBatchNorm2d


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class ETRNLPConv(StacksOfKernels):
    """Args:
        in_channels, out_channels: C_in, C_out.
        tasks: the number of tasks T, or their names.
        sharing_ratio: γ in (0, 1]; C_sh = floor(γ·C_out) shared channels (at least 1).
        primitives: names or (name, *params) (see ``mtl_ops.nn.etr_nlp_primitives``); default
            DEFAULT_PRIMITIVES (k = 5).
        stride: of the primitives and of the task convs (padding "same").
        groups: of the learnable 1×1; default gcd(C_in, C_sh) (the paper's listing uses G = C_in,
            impossible when C_sh < C_in). Must divide C_in and C_sh.
        seed: of the frozen primitives (buffers, saved in state_dict, never trained).
        backend: passed to the op (None: the fastest available).
        linear_fast_path: when every primitive is linear (no max_pool), run the exact effective-kernel path
            (``routed_primitive_gather_linear``: one conv with K_eff for the shared branch) instead of the
            fused op. Raises ValueError at construction if a primitive is not linear.

    ``forward(x)``: x (T·B, C_in, H, W) -> (T·B, C_out, H', W').
    """

    def __init__(self, in_channels: int, out_channels: int, tasks: int | Sequence[str], sharing_ratio: float = 0.9,
                 primitives: Sequence = DEFAULT_PRIMITIVES, stride: int = 1, groups: int | None = None,
                 seed: int = 0, backend: str | None = None, linear_fast_path: bool = False):
        super().__init__()
        self.num_tasks = tasks if isinstance(tasks, int) else len(tasks)
        if self.num_tasks < 1:
            raise ValueError(f"ETRNLPConv: tasks must be >= 1 tasks, got {tasks!r}")
        if not 0 < sharing_ratio <= 1:
            raise ValueError(f"ETRNLPConv: sharing_ratio must be in (0, 1], got {sharing_ratio!r}")
        c_sh = math.floor(sharing_ratio * out_channels)
        if c_sh < 1:
            raise ValueError(f"ETRNLPConv: sharing_ratio={sharing_ratio} gives no shared channel out of "
                             f"{out_channels}; use sharing_ratio >= {1 / out_channels:.4g}")
        if groups is None:
            groups = math.gcd(in_channels, c_sh)
        if in_channels % groups or c_sh % groups:
            raise ValueError(f"ETRNLPConv: groups={groups} must divide in_channels={in_channels} and the "
                             f"{c_sh} shared channels (floor({sharing_ratio}*{out_channels})); groups in "
                             f"{_divisors(math.gcd(in_channels, c_sh))} would work")
        spec = [parse_primitive(p) for p in primitives]
        if not spec:
            raise ValueError("ETRNLPConv: primitives must name at least one primitive")
        self.in_channels, self.out_channels, self.stride, self.groups = in_channels, out_channels, stride, groups
        self.shared_channels, self.task_channels = c_sh, out_channels - c_sh
        self.sharing_ratio, self.backend = sharing_ratio, backend
        self.kinds = [s[0] for s in spec]
        if linear_fast_path and not set(self.kinds) <= LINEAR_KINDS:
            raise ValueError("ETRNLPConv: linear_fast_path needs linear primitives only; max_pool is not linear")
        self.linear_fast_path = linear_fast_path
        self.params = [v for s in spec for v in s[1:]]
        gen = torch.Generator().manual_seed(seed)
        for p, (kind, _, _) in enumerate(spec):
            self.register_buffer(f"primitive{p}", make_frozen(kind, in_channels, gen))
        k = len(spec)
        self.w_shared = nn.Parameter(torch.empty(c_sh, k * in_channels // groups, 1, 1))
        self.b_shared = nn.Parameter(torch.empty(c_sh))
        self.w_task = nn.Parameter(torch.empty(self.num_tasks, self.task_channels, in_channels, 3, 3))
        self.b_task = nn.Parameter(torch.empty(self.num_tasks, self.task_channels))
        self.bn = TaskBatchNorm2d(out_channels, self.num_tasks, task_specific=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's Conv2d init for the learnable 1×1 and the task convs."""
        for w, b in ((self.w_shared, self.b_shared), (self.w_task, self.b_task)):
            # the fan-in from the shape, not from an element: at sharing_ratio 1 the task weights are empty
            fan_in = w.shape[-3] * w.shape[-2] * w.shape[-1]
            bound = 1 / math.sqrt(max(fan_in, 1))
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    @property
    def frozen(self) -> list[torch.Tensor]:
        return [getattr(self, f"primitive{p}") for p in range(len(self.kinds))]

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, tasks={self.num_tasks}, shared={self.shared_channels}, "
                f"groups={self.groups}, stride={self.stride}, kinds={self.kinds}")

    def routed(self, x: torch.Tensor) -> torch.Tensor:
        """The block before its BatchNorm: the op's output."""
        dt = x.dtype
        frozen = [f.to(dt) if f.is_floating_point() else f for f in self.frozen]
        if self.linear_fast_path:
            return routed_primitive_gather_linear(x, self.kinds, self.params, frozen, self.w_shared.to(dt),
                                                  self.b_shared.to(dt), self.w_task.to(dt), self.b_task.to(dt),
                                                  stride=self.stride, groups=self.groups)
        return routed_primitive_gather(x, self.kinds, self.params, frozen, self.w_shared.to(dt), self.b_shared.to(dt),
                                       self.w_task.to(dt), self.b_task.to(dt), stride=self.stride,
                                       groups=self.groups, backend=self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (T·B, C_in, H, W), route t in rows [t·B, (t+1)·B) -> (T·B, C_out, H', W'), H' = ceil(H / stride);
        the routed convolution, then each task's BatchNorm."""
        check_map(x, "ETRNLPConv", "x", self.in_channels, "(T*B, C_in, H, W)")
        return self.bn(self.routed(x), list(range(self.num_tasks)))


def learnable_parameters(module: nn.Module) -> int:
    """Number of trainable parameter elements (what an optimizer gets)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def frozen_parameters(module: nn.Module) -> int:
    """Number of frozen primitive elements (buffers of the ETR-NLP blocks; BN running statistics excluded)."""
    return sum(b.numel() for m in module.modules() if isinstance(m, ETRNLPConv) for b in m.frozen)
