"""Timing a trained model's training step with the fused ops against the reference ops, and finding out first
whether the step calls a fused op at all.

Whether a step runs fused ops is measured, not declared: one step runs under a dispatch mode that counts the
operators of the ``mtl_ops`` namespace (every fused kernel — C++, CUDA, Triton — is one; the reference backend
runs plain PyTorch operators only). A model whose step calls none runs the same code under both settings, so only
its fused-backend step is timed and no ratio is reported: a ratio there would measure noise.

Otherwise the two settings alternate on the same batches (the order swapped every pair, so that a slow spell of
a shared machine and any first-in-pair effect hit both alike) after one warm-up step each. The ratio reported is
the median of the per-pair ratios reference / fused, with its quartiles, which says how stable it is.
"""
from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: the namespace of the package's fused operators
FUSED_NAMESPACE = "mtl_ops"


@contextmanager
def backend_env(value: Optional[str]):
    """``MTL_OPS_BACKEND`` set to ``value`` (unset for None: the fused default) inside the block."""
    old = os.environ.get("MTL_OPS_BACKEND")
    if value is None:
        os.environ.pop("MTL_OPS_BACKEND", None)
    else:
        os.environ["MTL_OPS_BACKEND"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MTL_OPS_BACKEND", None)
        else:
            os.environ["MTL_OPS_BACKEND"] = old


class FusedOpCounter(TorchDispatchMode):
    """Counts the calls of operators in the ``mtl_ops`` namespace (``counts``: {operator name: calls})."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == FUSED_NAMESPACE:
            self.counts[func.name()] += 1
        return func(*args, **(kwargs or {}))


def fused_op_calls(step: Callable[[], None]) -> Dict[str, int]:
    """{fused operator: calls} made by ``step()`` with the default (fused) backend."""
    with backend_env(None), FusedOpCounter() as counter:
        step()
    return dict(counter.counts)


def _quartiles(values: List[float]) -> tuple:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def time_step(step: Callable[[int], None], steps: int) -> Dict:
    """Time ``step(i)`` (a training step on batch ``i``) with the fused and the reference backends.

    Returns ``{"fused_op_calls": {op: calls}, "steps": n, "step_seconds": median fused step, and when the step
    calls a fused op: "step_seconds_reference", "ratio" (median of per-pair reference / fused), "ratio_q1",
    "ratio_q3"}``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"timing steps: expected a positive int, got {steps!r}")
    calls = fused_op_calls(lambda: step(0))  # also the fused warm-up step
    backends = (None, "reference") if calls else (None,)
    if calls:
        with backend_env("reference"):
            step(0)
    times: Dict[Optional[str], List[float]] = {b: [] for b in backends}
    for i in range(steps):
        for backend in backends if i % 2 == 0 else backends[::-1]:
            with backend_env(backend):
                start = time.perf_counter()
                step(i)
                times[backend].append(time.perf_counter() - start)
    out = {"fused_op_calls": calls, "steps": steps, "step_seconds": statistics.median(times[None])}
    if calls:
        ratios = [r / f for f, r in zip(times[None], times["reference"])]
        q1, q3 = _quartiles(ratios)
        out.update(step_seconds_reference=statistics.median(times["reference"]), ratio=statistics.median(ratios),
                   ratio_q1=q1, ratio_q3=q3)
    return out


def time_training_step(trainer, steps: int) -> Dict:
    """:func:`time_step` of ``trainer``'s model: forward, loss, backward and an SGD step at learning rate 0 on the
    first training batches (cycled when ``steps`` exceeds them); the weights and buffers are restored after."""
    model = trainer.wrapper
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    batches = []
    for batch in trainer.loader(trainer.train_set, 0, True):
        batches.append(trainer.to_device(batch))
        if len(batches) >= steps:
            break

    def step(i: int) -> None:
        total, _ = trainer.compute_loss(batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    model.train()
    try:
        return time_step(step, steps)
    finally:
        model.load_state_dict(saved)
