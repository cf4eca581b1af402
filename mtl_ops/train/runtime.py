"""Where and how a run computes: the device, the process group under ``torchrun`` (see
:mod:`mtl_ops.train.distributed`) and mixed precision.

AMP autocasts to bfloat16 on CPU and to float16 on CUDA, where a ``GradScaler`` scales the loss so that small
float16 gradients do not flush to zero (bfloat16 has float32's range and needs no scaling). The scaler's state
is part of a run's checkpoint.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional

import torch

from .config import TrainConfig
from .cpu_threads import choose_num_threads
from .distributed import DistInfo, barrier, init_distributed


def choose_device(name: str) -> torch.device:
    """``config.device`` as a device: ``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("config.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


class Runtime:
    """The device, the process group and AMP of one run. :meth:`create` sets them up from a config."""

    def __init__(self, device: torch.device, dist: Optional[DistInfo] = None, amp: bool = False):
        self.device = device
        self.dist = dist or DistInfo()
        self.amp = amp
        self.amp_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")

    @classmethod
    def create(cls, config: TrainConfig) -> "Runtime":
        """Choose the device, set the CPU threads (:func:`choose_num_threads`), join torchrun's process group
        (one CUDA device per local rank)."""
        device = choose_device(config.device)
        if device.type == "cpu":
            torch.set_num_threads(choose_num_threads(config.num_threads))
        dist = init_distributed(device.type)
        if dist.enabled and device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
        return cls(device, dist, config.amp)

    @property
    def is_main(self) -> bool:
        """Whether this process evaluates, logs and writes (rank 0, or the only process)."""
        return self.dist.is_main

    def autocast(self):
        """The AMP context of forward passes (a no-op without AMP)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel under torchrun (once), else ``model``."""
        if self.dist.enabled and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds in every process (all-reduced under torchrun), so that all processes take the
        same branch, e.g. all skip a step: a process that skips a backward that others run would stall DDP."""
        if not self.dist.enabled:
            return bool(flag)
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return bool(value.item() == 1.0)

    def mean_over_processes(self, values: Dict[str, float]) -> Dict[str, float]:
        """``values`` averaged over the processes under torchrun (the same dict in every process), else as given."""
        if not self.dist.enabled:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return {k: float(v) / self.dist.world_size for k, v in zip(keys, tensor.tolist())}

    def barrier(self) -> None:
        barrier(self.dist)
