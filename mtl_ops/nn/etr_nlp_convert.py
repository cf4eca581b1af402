"""Turns a ResNet-style backbone into an ETR-NLP one: every 3×3 convolution (stride any, dilation 1,
groups 1, padding 1) outside the excluded modules becomes an ``ETRNLPConv`` (which layers the paper replaces
it does not say exactly, so it is configurable). The block brings its own per-task
BatchNorm, so the BatchNorm that follows the conv in the host block (``convN`` -> ``bnN``) becomes an
Identity; shortcut 1×1 convs and their BatchNorms stay shared. After conversion the backbone expects the T
routes stacked along the batch, so every other BatchNorm outside the excluded modules becomes a
``RouteBatchNorm2d``: its parameters stay shared, but each route is normalised with its own batch statistics, as
in one forward pass per task — otherwise a task's output, and the gradient of its loss on the other tasks'
private weights, would depend on the other routes through the shared statistics.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .etr_nlp import ETRNLPConv
from .etr_nlp_primitives import DEFAULT_PRIMITIVES
from .task_batchnorm import RouteBatchNorm2d, TaskBatchNorm2d


def _convertible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding == (1, 1) and conv.stride[0] == conv.stride[1])


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(name == e or name.startswith(e + ".") for e in exclude)


def _children(module: nn.Module, exclude: Sequence[str]):
    """(parent, child's attribute name, child, child's qualified name) for every submodule of ``module`` outside
    the ``exclude`` prefixes, listed before any is replaced."""
    for name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if not _excluded(full, exclude):
                yield parent, child_name, child, full


def route_batchnorms(module: nn.Module, num_routes: int, exclude: Sequence[str] = ()) -> list[str]:
    """Replaces in place every ``nn.BatchNorm2d`` of ``module`` outside the ``exclude`` prefixes by a
    ``RouteBatchNorm2d`` over ``num_routes`` routes, with the same parameters and statistics; returns their
    qualified names."""
    # the BatchNorms inside a TaskBatchNorm2d (an ETR-NLP block's) already get one route each
    exclude = tuple(exclude) + tuple(n for n, m in module.named_modules() if isinstance(m, TaskBatchNorm2d))
    replaced = []
    for parent, child_name, child, full in _children(module, exclude):
        if type(child) is nn.BatchNorm2d:
            setattr(parent, child_name, RouteBatchNorm2d.from_batchnorm(child, num_routes))
            replaced.append(full)
    return replaced


def convert_to_etr_nlp(module: nn.Module, tasks: int | Sequence[str], *, sharing_ratio: float = 0.9,
                       primitives: Sequence = DEFAULT_PRIMITIVES, exclude: Sequence[str] = ("stem",),
                       groups: int | None = None, seed: int = 0, backend: str | None = None) -> list[str]:
    """Replaces in place; returns the qualified names of the replaced convs. ``exclude``: name prefixes
    left alone (default: the stem). Convs that are dilated, grouped or not 3×3 are left alone too.
    ``groups``: of every block's learnable 1×1 (None: each block's default, gcd of its input and shared
    channels, which varies with the layer's widths; 1 recombines all primitive responses in every block).
    Each block gets its own primitive seed (seed + its index), so the blocks' primitives differ."""
    num_tasks = tasks if isinstance(tasks, int) else len(tasks)
    replaced = []
    for parent, child_name, child, full in _children(module, exclude):
        if not _convertible(child):
            continue
        block = ETRNLPConv(child.in_channels, child.out_channels, tasks, sharing_ratio, primitives,
                           stride=child.stride[0], groups=groups, seed=seed + len(replaced), backend=backend)
        setattr(parent, child_name, block)
        if child_name.startswith("conv") and isinstance(getattr(parent, "bn" + child_name[4:], None),
                                                         nn.BatchNorm2d):
            setattr(parent, "bn" + child_name[4:], nn.Identity())
        replaced.append(full)
    route_batchnorms(module, num_tasks, exclude)
    return replaced
