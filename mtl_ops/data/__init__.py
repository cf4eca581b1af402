"""Datasets: the embedded synthetic scenes and loaders for NYUv2 / Cityscapes in the ``.npy`` layout.

Every dataset returns dicts with ``image`` (3, H, W) float32, ``valid`` (1, H, W) bool and the requested
tasks among ``semseg`` (H, W) int64 (255 = ignore), ``depth`` (1, H, W) float32, ``normals`` (3, H, W)
float32 (camera frame: x right, y down, z forward), ``edges`` (1, H, W) float32 and ``attributes``
(num_classes,) float32.
"""
from .augment import hflip, random_flip_scale_crop, scale_crop
from .camera import Intrinsics, backproject, pinhole_intrinsics
from .labels import IGNORE_INDEX, boundary_edges, class_presence
from .npy_datasets import CITYSCAPES_CLASSES, NYUV2_CLASSES, Cityscapes, NpyMultiTaskDataset, NYUv2
from .scenes import SYNTHETIC_CLASSES
from .synthetic import (GENERATOR_VERSION, SYNTHETIC_TASKS, SyntheticScenes, default_cache_dir,
                        generate_synthetic)

__all__ = [
    "SyntheticScenes", "SYNTHETIC_CLASSES", "SYNTHETIC_TASKS", "GENERATOR_VERSION", "generate_synthetic",
    "default_cache_dir", "NYUv2", "Cityscapes", "NpyMultiTaskDataset", "NYUV2_CLASSES", "CITYSCAPES_CLASSES",
    "IGNORE_INDEX", "Intrinsics", "pinhole_intrinsics", "backproject", "boundary_edges", "class_presence",
    "hflip", "scale_crop", "random_flip_scale_crop",
]
