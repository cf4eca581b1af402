"""The interface every task metric implements: accumulate over a split, then compute once."""
from __future__ import annotations

import abc
from typing import Dict


class Metric(abc.ABC):
    """A stateful metric accumulated over a whole evaluation split.

    ``update(...)`` adds a batch (any batch size, CPU or CUDA tensors, any floating dtype; inputs are detached and
    reduced in fp32/fp64), ``compute()`` returns ``{metric_name: float}`` for everything seen since the last
    ``reset()``, and ``reset()`` clears the state. Accumulated state lives on the device of the latest update;
    ``compute()`` does not clear it. ``compute()`` raises ``RuntimeError`` when nothing valid was accumulated.
    """

    #: the task name this metric belongs to (the key used in results dicts and Δm specs)
    task: str = ""

    @abc.abstractmethod
    def update(self, *args, **kwargs) -> None:
        """Add one batch to the accumulated state."""

    @abc.abstractmethod
    def compute(self) -> Dict[str, float]:
        """The metrics over everything accumulated since the last reset, as plain Python floats."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Clear the accumulated state."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r})"
