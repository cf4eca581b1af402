"""Turns a ResNet-style backbone into an ETR-NLP one: every 3×3 convolution (stride any, dilation 1,
groups 1, padding 1) outside the excluded modules becomes an ``ETRNLPConv`` (which layers the paper replaces
it does not say exactly, so it is configurable). The block brings its own per-task
BatchNorm, so the BatchNorm that follows the conv in the host block (``convN`` -> ``bnN``) becomes an
Identity; shortcut 1×1 convs and their BatchNorms stay shared. After conversion the backbone expects the T
routes stacked along the batch.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .etr_nlp import ETRNLPConv
from .etr_nlp_primitives import DEFAULT_PRIMITIVES


def _convertible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding == (1, 1) and conv.stride[0] == conv.stride[1])


def convert_to_etr_nlp(module: nn.Module, tasks: int | Sequence[str], *, sharing_ratio: float = 0.9,
                       primitives: Sequence = DEFAULT_PRIMITIVES, exclude: Sequence[str] = ("stem",),
                       seed: int = 0, backend: str | None = None) -> list[str]:
    """Replaces in place; returns the qualified names of the replaced convs. ``exclude``: name prefixes
    left alone (default: the stem). Convs that are dilated, grouped or not 3×3 are left alone too.
    Each block gets its own primitive seed (seed + its index), so the blocks' primitives differ."""
    replaced = []
    for name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if any(full == e or full.startswith(e + ".") for e in exclude) or not _convertible(child):
                continue
            block = ETRNLPConv(child.in_channels, child.out_channels, tasks, sharing_ratio, primitives,
                               stride=child.stride[0], seed=seed + len(replaced), backend=backend)
            setattr(parent, child_name, block)
            if child_name.startswith("conv") and isinstance(getattr(parent, "bn" + child_name[4:], None),
                                                             nn.BatchNorm2d):
                setattr(parent, "bn" + child_name[4:], nn.Identity())
            replaced.append(full)
    return replaced
