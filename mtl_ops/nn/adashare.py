"""Parts of the AdaShare network (:class:`~mtl_ops.models.AdaShareNet`; Sun et al., NeurIPS 2020): its stem
and the trie plan by which a hard policy computes each distinct prefix of executed blocks once.

The gated residual blocks are :class:`~mtl_ops.nn.BasicBlock` with per-task BatchNorm
(:class:`~mtl_ops.nn.TaskBatchNorm2d`); the policy is :class:`~mtl_ops.nn.AdaSharePolicy`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .adashare_policy import execute_mask
from .task_batchnorm import TaskBatchNorm2d


class Stem(nn.Module):
    """Conv7x7(stride 2, pad 3, no bias) → BN → ReLU → MaxPool(3, stride 2, pad 1, ceil_mode=True).

    DeepLab's stem, with per-task BN; the backbones' stem (``ResNetBackbone.stem``) rounds the pooled size down
    and has one BN, so the two are not the same module."""

    def __init__(self, in_channels: int, out_channels: int, bn: dict):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False)
        self.bn = TaskBatchNorm2d(out_channels, **bn)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def forward(self, x: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x), tasks)))


@dataclass
class TriePlan:
    """Execution plan of a hard policy: tasks share the activation after block l iff they use the
    same BatchNorm group and took the same decisions for blocks 1..l.

    Node ids are ints. ``roots[i]`` is the BN group of root node i (the stem output, nodes 0..len(roots)-1);
    ``group[n]`` the BN group of node n; ``execute_edges[l]`` / ``skip_edges[l]`` the (parent, child) pairs
    that execute / skip block l; ``leaf_of_task[t]`` the node holding task t's backbone output.
    """

    roots: list[int]
    group: list[int]
    execute_edges: list[list[tuple[int, int]]]
    skip_edges: list[list[tuple[int, int]]]
    leaf_of_task: list[int]

    @classmethod
    def build(cls, execute: torch.Tensor | Sequence[Sequence[bool]], groups: Sequence[int]) -> "TriePlan":
        """``execute``: (T, L) bool mask (a tensor, or nested lists: a plan from lists involves no tensor, so
        torch.compile traces it as constants); ``groups``: the BN group of each task (all equal when BN is
        shared)."""
        mask = execute.tolist() if isinstance(execute, torch.Tensor) else [list(row) for row in execute]
        roots: list[int] = list(dict.fromkeys(groups))
        group = list(roots)
        node_of_task = [roots.index(g) for g in groups]
        execute_edges, skip_edges = [], []
        for l in range(len(mask[0]) if mask else 0):
            children: dict[tuple[int, bool], int] = {}
            level_exec, level_skip = [], []
            for t, parent in enumerate(node_of_task):
                key = (parent, bool(mask[t][l]))
                if key not in children:
                    children[key] = len(group)
                    group.append(group[parent])
                    (level_exec if key[1] else level_skip).append((parent, children[key]))
                node_of_task[t] = children[key]
            execute_edges.append(level_exec)
            skip_edges.append(level_skip)
        return cls(roots, group, execute_edges, skip_edges, node_of_task)

    def block_executions(self) -> list[int]:
        """How many times the plan computes each block's conv path (in units of B images)."""
        return [len(edges) for edges in self.execute_edges]


def shared_block_executions(policy, *, task_bn: bool = False) -> list[int]:
    """Per block, how many times :meth:`AdaShareNet.forward_hard <mtl_ops.models.AdaShareNet.forward_hard>` computes its conv path for this hard
    policy (in units of the B images): the number of distinct executed prefixes through it. With
    ``task_bn=True`` no two tasks share a node (their BatchNorms differ)."""
    mask = execute_mask(policy)
    groups = list(range(mask.shape[0])) if task_bn else [0] * mask.shape[0]
    return TriePlan.build(mask, groups).block_executions()
