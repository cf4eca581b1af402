"""Multi-process data-parallel training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m mtl_ops.cli train ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; the
trainer then joins a process group (``gloo`` on CPU, ``nccl`` on CUDA), wraps the model in DDP, shards the
training set with a ``DistributedSampler`` (``batch_size`` is per process) and only rank 0 evaluates,
logs and writes checkpoints. BatchNorm statistics stay per process (no SyncBatchNorm on CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
