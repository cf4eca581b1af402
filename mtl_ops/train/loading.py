"""The data of a run: the datasets a config names, and loaders that read them in a seeded order.

A training loader's order in epoch ``e`` comes from ``derive_seed(seed, "shuffle", e)`` alone (see
:mod:`mtl_ops.train.seeding`), so a resumed run reads the same batches as the uninterrupted one. Under torchrun
a ``DistributedSampler`` seeded the same way shards that order (``batch_size`` is per process).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..data import Cityscapes, NYUv2, SyntheticScenes
from .config import TrainConfig
from .distributed import DistInfo
from .seeding import derive_seed

#: the synthetic scenes' image size when ``config.size`` is None (divisible by 4, as CTAL needs)
SYNTHETIC_SIZE = (64, 84)


def build_datasets(config: TrainConfig):
    """(train, val, num_classes) for ``config.dataset``."""
    if config.dataset == "synthetic":
        kw = dict(size=config.size or SYNTHETIC_SIZE, seed=config.data_seed, tasks=config.tasks, cache_dir=config.cache_dir)
        train = SyntheticScenes("train", n=config.n_train, **kw)
        val = SyntheticScenes("val", n=config.n_val, **kw)
        return train, val, SyntheticScenes.num_classes
    cls = {"nyuv2": NYUv2, "cityscapes": Cityscapes}[config.dataset]
    train = cls(config.data_root, "train", tasks=config.tasks, size=config.size)
    val = cls(config.data_root, "val", tasks=config.tasks, size=config.size)
    return train, val, train.num_classes


def make_loader(dataset: Dataset, config: TrainConfig, dist: Optional[DistInfo] = None, *, epoch: int = 0,
                shuffle: bool = True, indices=None) -> DataLoader:
    """Batches of ``dataset`` (or of its ``indices``): shuffled in epoch ``epoch``'s order and without a last
    partial batch for training (``shuffle``), in order and complete for measurements."""
    if indices is not None:
        dataset = Subset(dataset, list(indices))
    seed = derive_seed(config.seed, "shuffle", epoch)
    if shuffle and dist is not None and dist.enabled:
        sampler = DistributedSampler(dataset, dist.world_size, dist.rank, shuffle=True, seed=seed, drop_last=True)
        return DataLoader(dataset, config.batch_size, sampler=sampler, num_workers=config.num_workers, drop_last=True)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    drop_last = shuffle and len(dataset) >= config.batch_size
    return DataLoader(dataset, config.batch_size, shuffle=shuffle, generator=generator,
                      num_workers=config.num_workers, drop_last=drop_last)
