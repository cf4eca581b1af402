"""The checks of what modules' forwards are given, with one message form: where, which argument, what was
expected, what came. (A list where a dict of tasks belongs, one tensor where a list of scales belongs, or
uint8 images would otherwise fail deep inside with PyTorch's message about something else.)"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch


def describe(value) -> str:
    """What came, in a message: a tensor by its shape and dtype, anything else by its type."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    return type(value).__name__


def check_map(x, where: str, name: str, channels: int | None = None, layout: str = "(B, C, H, W)") -> None:
    """``x`` is a floating-point 4-D torch.Tensor laid out as ``layout``, with ``channels`` channels if given."""
    channel_name = layout.strip("()").split(", ")[1]
    want = f"a floating-point torch.Tensor {layout}"
    if channels is not None:
        want += f" with {channel_name} = {channels}"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: {name} must be {want}, got {describe(x)}")
    if x.dim() != 4 or channels is not None and x.shape[1] != channels:
        raise ValueError(f"{where}: {name} must be {want}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{where}: {name} must be {want}, got dtype {x.dtype}")


def check_scales(features, where: str, channels: Sequence[int]) -> None:
    """``features`` is a list (or tuple) of ``len(channels)`` maps, map s with ``channels[s]`` channels."""
    n = len(channels)
    if isinstance(features, torch.Tensor) or not isinstance(features, (list, tuple)):
        raise TypeError(f"{where}: features must be a list of {n} feature maps (B, C_s, H_s, W_s), one per scale, "
                        f"got {describe(features)}")
    if len(features) != n:
        raise ValueError(f"{where}: expected {n} feature maps, got {len(features)}")
    for s, (f, c) in enumerate(zip(features, channels)):
        check_map(f, where, f"features[{s}]", c, "(B, C_s, H_s, W_s)")


def check_task_maps(features, where: str, tasks: Sequence[str]) -> None:
    """``features`` is a dict {task name: map} with exactly ``tasks`` as keys."""
    if not isinstance(features, Mapping):
        raise TypeError(f"{where}: features must be a dict {{task name: (B, C, H, W) tensor}} for tasks "
                        f"{list(tasks)}, got {describe(features)}")
    if set(features) != set(tasks):
        raise ValueError(f"{where}: expected features for tasks {list(tasks)}, got {sorted(features)}")
