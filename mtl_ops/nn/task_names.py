"""The one check of task names and output channels that every module and network taking tasks uses.

Task names become submodule names (``heads[name]``, ``nn.ModuleDict`` keys, which cannot hold ``.``) and the
decoder tree joins a group's names with ``+`` into its node keys, so a name is a non-empty string with
neither character.
"""
from __future__ import annotations

from typing import Mapping, Sequence


def check_task_names(names: Sequence[str], where: str) -> tuple[str, ...]:
    """Validate a sequence of task names (at least one, distinct) and return it as a tuple."""
    if isinstance(names, (str, bytes)) or not isinstance(names, (Sequence, Mapping)):
        raise ValueError(f"{where}: tasks must be a sequence of task names, got {names!r}")
    names = tuple(names)
    if not names:
        raise ValueError(f"{where}: tasks must name at least one task, got {names!r}")
    for name in names:
        if not isinstance(name, str) or not name or "." in name or "+" in name:
            raise ValueError(f"{where}: task names must be non-empty strings without '.' or '+', got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: tasks must be distinct names, got {names!r}")
    return names


def check_task_channels(tasks: Mapping[str, int], where: str) -> dict[str, int]:
    """Validate ``tasks`` (task name → output channels) and return it as a plain dict."""
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError(f"{where}: tasks must be a non-empty dict of task name -> output channels, got {tasks!r}")
    check_task_names(list(tasks), where)
    for name, k in tasks.items():
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"{where}: output channels of task {name!r} must be a positive int, got {k!r}")
    return dict(tasks)
