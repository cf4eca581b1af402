"""Which training samples the training steps read: the ``.npy`` loaders' random scale crop
(:meth:`~mtl_ops.data.NpyMultiTaskDataset.augmented`, MTAN's augmentation) when ``config.scale_crop`` resolves
on, else the training set as it is.

``scale_crop=None`` (the default) means on with ``augment`` for a dataset that has the augmentation (NYUv2,
Cityscapes) and off otherwise (the synthetic scenes have none: their edges are rendered from the geometry).
The flip stays the trainer's own (seeded per epoch, ``augment``), so the view flips nothing itself. The crop
draws from torch's global generator, which the trainer reseeds at every epoch, so resumed runs repeat it.
Only training steps read the view: evaluation and measurements on the training set (depth statistics, PDF's
CKA subset, the trivial predictor) read the plain set.
"""
from __future__ import annotations

from torch.utils.data import Dataset

from ..data import NpyMultiTaskDataset
from .config import TrainConfig


def scale_crop_enabled(config: TrainConfig, train_set: Dataset) -> bool:
    supported = isinstance(train_set, NpyMultiTaskDataset)
    if config.scale_crop is None:
        return supported and config.augment
    if config.scale_crop and not supported:
        raise ValueError(f"config.scale_crop: True needs a training set with the scale-crop augmentation (the "
                         f"NYUv2/Cityscapes .npy loaders), got {type(train_set).__name__}")
    return config.scale_crop


def training_view(train_set: Dataset, config: TrainConfig) -> Dataset:
    """``train_set`` as the training steps read it (see the module docstring)."""
    if not scale_crop_enabled(config, train_set):
        return train_set
    return train_set.augmented(config.crop_scales, flip_prob=0.0)
