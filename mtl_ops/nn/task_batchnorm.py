"""BatchNorm over a task-stacked batch: (n·B, C, H, W) made of n equal chunks, one per task (or per trie node)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .inputs import describe


class TaskBatchNorm2d(nn.Module):
    """BatchNorm2d for T tasks stacked along the batch axis (AdaShare's per-task statistics).

    Args:
        num_features: C.
        num_tasks: T.
        task_specific: one BatchNorm (affine parameters and running statistics) per task (AdaShare's
            ``task_bn: True``, DomainNet branch). False (the reference master): one BatchNorm shared by all tasks.
        per_task_stats: in training mode, normalise each chunk with its own batch statistics (reduce over
            (B, H, W) within the chunk), as the reference does by running the backbone once per task. False:
            one BatchNorm over all n·B rows, which mixes the tasks' statistics (only with task_specific=False).
        eps, momentum: as in ``nn.BatchNorm2d``.

    ``forward(x, tasks)``: ``x`` is (n·B, C, H, W), ``tasks`` the n task indices of its chunks, in order.
    Chunk i uses the parameters of task ``tasks[i]`` (any index when not task_specific). With per-chunk
    statistics the shared running statistics are updated once per chunk, sequentially (as the reference's
    T sequential passes do). In eval mode the running statistics are used and the chunking only selects
    the parameters.
    """

    def __init__(self, num_features: int, num_tasks: int, *, task_specific: bool = False,
                 per_task_stats: bool = True, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        if task_specific and not per_task_stats:
            raise ValueError("TaskBatchNorm2d: task_specific=True normalises each task with its own statistics; "
                             "per_task_stats=False is only meaningful with one shared BatchNorm")
        self.num_tasks = num_tasks
        self.task_specific = task_specific
        self.per_task_stats = per_task_stats
        n_sets = num_tasks if task_specific else 1
        self.bns = nn.ModuleList(nn.BatchNorm2d(num_features, eps=eps, momentum=momentum) for _ in range(n_sets))

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, task_specific={self.task_specific}, per_task_stats={self.per_task_stats}"

    def _bn(self, task: int) -> nn.BatchNorm2d:
        return self.bns[task] if self.task_specific else self.bns[0]

    def forward(self, x: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        """x (n·B, C, H, W), n = len(tasks) equal chunks; chunk i is normalised as task ``tasks[i]``. Returns
        (n·B, C, H, W)."""
        if isinstance(tasks, (str, torch.Tensor)) or not isinstance(tasks, Sequence):
            raise TypeError(f"TaskBatchNorm2d: tasks must be a sequence of task indices (one per batch chunk), "
                            f"got {describe(tasks)}")
        n = len(tasks)
        if n == 0 or x.shape[0] % n:
            raise ValueError(f"TaskBatchNorm2d: the batch ({x.shape[0]} rows) must split into len(tasks) = {n} "
                             "equal chunks")
        if any(not 0 <= t < self.num_tasks for t in tasks):
            raise ValueError(f"TaskBatchNorm2d: task indices must be in [0, {self.num_tasks}), got {list(tasks)}")
        bn = self._bn(tasks[0])
        uses_batch_stats = self.training or not bn.track_running_stats
        one_normalisation = (len(set(tasks)) == 1 or not self.task_specific) and (
            not uses_batch_stats or not self.per_task_stats)
        if n == 1 or one_normalisation:
            return bn(x)
        chunks = x.split(x.shape[0] // n)
        return torch.cat([self._bn(t)(c) for t, c in zip(tasks, chunks)])


class RouteBatchNorm2d(nn.BatchNorm2d):
    """One BatchNorm2d (its parameters shared by every route) over ``num_routes`` routes stacked along the batch
    ((R·B, C, H, W), route r = rows [r·B, (r+1)·B)): in training each route is normalised with its own batch
    statistics and the running statistics are updated once per route, in order — what R separate forward
    passes through a plain BatchNorm2d do. A plain BatchNorm2d over the stacked batch would normalise every route
    with the statistics of all of them, so one route's output, and the gradient of its loss, would depend on the
    other routes. In eval mode the running statistics are used, as by a plain BatchNorm2d. Parameters, buffers and
    state_dict keys are those of ``nn.BatchNorm2d``."""

    def __init__(self, num_features: int, num_routes: int, **kwargs):
        super().__init__(num_features, **kwargs)
        if isinstance(num_routes, bool) or not isinstance(num_routes, int) or num_routes < 1:
            raise ValueError(f"RouteBatchNorm2d: num_routes must be a positive int, got {num_routes!r}")
        self.num_routes = num_routes

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, num_routes: int) -> "RouteBatchNorm2d":
        """The same BatchNorm (options, parameters and statistics), route by route."""
        new = cls(bn.num_features, num_routes, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        return new.to(device=bn.weight.device if bn.affine else None)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_routes={self.num_routes}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (R·B, C, H, W), the ``num_routes`` = R routes stacked along the batch; returns the same shape, each
        route's chunk of B rows normalised with its own batch statistics in training (the running statistics in
        eval mode, where the routes need no splitting)."""
        if x.shape[0] % self.num_routes:
            raise ValueError(f"RouteBatchNorm2d: the batch ({x.shape[0]} rows) must split into num_routes = "
                             f"{self.num_routes} equal chunks")
        batch_statistics = self.training or not self.track_running_stats  # as nn.BatchNorm2d decides
        if self.num_routes == 1 or not batch_statistics:
            return super().forward(x)
        return torch.cat([super(RouteBatchNorm2d, self).forward(c) for c in x.chunk(self.num_routes)])
