"""NYUv2 and Cityscapes in the preprocessed ``.npy`` layout used by MTAN and LibMTL.

Layout: ``root/{train,val}/{image,label,depth,normal}/<index>.npy`` with, per sample,
``image`` (H, W, 3) float, ``label`` (H, W) with -1 for unlabelled pixels, ``depth`` (H, W, 1) with 0 for
missing measurements and ``normal`` (H, W, 3) (NYUv2 only). Sizes: NYUv2 288 x 384, Cityscapes 128 x 256
(7 classes).

Samples have the keys of :class:`~mtl_ops.data.SyntheticScenes`: ``image`` float32 (3, H, W) as stored,
``valid`` bool (1, H, W) (depth > 0 when depth is loaded, else a non-zero normal, else all True), and the
requested tasks: ``semseg`` int64 (H, W), -1 mapped to 255; ``depth`` float32 (1, H, W) as stored
(NYUv2: metres); ``normals`` float32 (3, H, W) as stored; ``edges`` float32 (1, H, W), derived from the
labels (semantic boundaries, plus depth jumps above ``edge_rel_jump`` when that is set); ``attributes``
float32 (num_classes,), derived multi-hot of the classes present.

``augment=True`` applies MTAN's training augmentation: a random scale crop with a scale drawn from
``scales`` (pass ``scales=(1.0,)`` to disable it; depth is divided by the scale) and a random horizontal
flip with probability ``flip_prob`` that negates the normals' x component (``flip_prob=0`` when the caller
flips itself, as the trainer does). Edges and attributes are derived after augmentation.
:meth:`~NpyMultiTaskDataset.augmented` gives an augmenting view of a dataset without scanning it again.
"""
from __future__ import annotations

import copy
import numbers
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import random_flip_scale_crop, valid_zoom_scales
from .labels import IGNORE_INDEX, boundary_edges, class_presence

NYUV2_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa",
                 "table", "tv", "wall", "window")
CITYSCAPES_CLASSES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
ALL_TASKS = ("semseg", "depth", "normals", "edges", "attributes")
_LAYOUT = "root/{train,val}/{image,label,depth,normal}/<index>.npy"
# Stored field per folder: trailing shape after (H, W), and whether integer dtypes are allowed.
_FOLDERS = {"image": ((3,), False), "label": ((), True), "depth": ((1,), False), "normal": ((3,), False)}


class NpyMultiTaskDataset(Dataset):
    """Base class of the ``.npy`` loaders; subclasses set the class list, size and stored tasks."""

    classes: Tuple[str, ...] = ()
    default_size: Tuple[int, int] = (0, 0)
    stored_tasks: Tuple[str, ...] = ("semseg", "depth")
    default_tasks: Tuple[str, ...] = ("semseg", "depth")
    ignore_index = IGNORE_INDEX

    def __init__(self, root: Union[str, Path], split: str = "train", tasks: Optional[Sequence[str]] = None,
                 augment: bool = False, scales: Sequence[float] = (1.0, 1.2, 1.5),
                 size: Optional[Tuple[int, int]] = None, edge_rel_jump: Optional[float] = None,
                 flip_prob: float = 0.5):
        name = type(self).__name__
        tasks = self.default_tasks if tasks is None else tuple(tasks)
        allowed = self.stored_tasks + ("edges", "attributes")
        if isinstance(tasks, str) or any(t not in allowed for t in tasks):
            raise ValueError(f"tasks: {name} provides {allowed}, got {tasks!r}")
        if split not in ("train", "val"):
            raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
        self.size = tuple(size) if size is not None else self.default_size
        self.tasks, self.split, self.augment = tasks, split, augment
        self.scales, self.flip_prob = _check_augmentation(scales, flip_prob)
        self.edge_rel_jump = edge_rel_jump
        self.num_classes = len(self.classes)
        self.root = Path(root)
        self.folders = self._needed_folders()
        self.indices = self._scan()

    def augmented(self, scales: Sequence[float] = (1.0, 1.2, 1.5), flip_prob: float = 0.5) -> "NpyMultiTaskDataset":
        """A copy of this dataset (same files, no new scan) that applies the training augmentation."""
        view = copy.copy(self)
        view.augment = True
        view.scales, view.flip_prob = _check_augmentation(scales, flip_prob)
        return view

    def _needed_folders(self) -> List[str]:
        folders = ["image"]
        if {"semseg", "edges", "attributes"} & set(self.tasks):
            folders.append("label")
        if "depth" in self.tasks or ("edges" in self.tasks and self.edge_rel_jump is not None):
            folders.append("depth")
        if "normals" in self.tasks:
            folders.append("normal")
        return folders

    def _scan(self) -> List[int]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{type(self).__name__} root {self.root} does not exist or is not a "
                                    f"folder; expected the preprocessed layout {_LAYOUT}")
        split_dir = self.root / self.split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"split folder {split_dir} not found; expected the layout {_LAYOUT}")
        present = {}
        for folder in self.folders:
            path = split_dir / folder
            if not path.is_dir():
                raise FileNotFoundError(f"folder {path} not found; expected the layout {_LAYOUT}")
            present[folder] = {int(p.stem) for p in path.glob("*.npy") if p.stem.isdigit()}
        indices = sorted(present["image"])
        if not indices:
            raise FileNotFoundError(f"no <index>.npy files in {split_dir / 'image'}")
        for folder in self.folders[1:]:
            missing = [i for i in indices if i not in present[folder]]
            if missing:
                raise FileNotFoundError(f"{split_dir / folder / f'{missing[0]}.npy'} is missing "
                                        f"({len(missing)} of {len(indices)} files missing in {split_dir / folder})")
        return indices

    def _load(self, folder: str, index: int) -> np.ndarray:
        path = self.root / self.split / folder / f"{index}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; expected the layout {_LAYOUT}")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable .npy array ({err})") from err
        trailing, integer_ok = _FOLDERS[folder]
        expected = (*self.size, *trailing)
        if array.shape != expected:
            raise ValueError(f"{path}: expected shape {expected} for '{folder}', got {array.shape}")
        if not (np.issubdtype(array.dtype, np.floating) or (integer_ok and np.issubdtype(array.dtype, np.integer))):
            kinds = "a floating or integer" if integer_ok else "a floating"
            raise ValueError(f"{path}: expected {kinds} dtype for '{folder}', got {array.dtype}")
        if folder == "label":
            array = self._check_labels(path, array)
        return array

    def _check_labels(self, path: Path, label: np.ndarray) -> np.ndarray:
        if np.issubdtype(label.dtype, np.floating) and not np.array_equal(label, np.round(label)):
            raise ValueError(f"{path}: expected integral class labels, got non-integer values")
        label = label.astype(np.int64)
        label[(label == -1)] = IGNORE_INDEX
        bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= self.num_classes))
        if bad.any():
            raise ValueError(f"{path}: expected labels in [0, {self.num_classes - 1}] or -1/255 for ignore, "
                             f"got {int(label[bad][0])}")
        return label

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        file_index = self.indices[index]

        def channels_first(array):
            return torch.from_numpy(np.ascontiguousarray(array.astype(np.float32).transpose(2, 0, 1)))

        sample = {"image": channels_first(self._load("image", file_index))}
        if "label" in self.folders:
            sample["semseg"] = torch.from_numpy(self._load("label", file_index))
        if "depth" in self.folders:
            sample["depth"] = channels_first(self._load("depth", file_index))
        if "normal" in self.folders:
            sample["normals"] = channels_first(self._load("normal", file_index))
        if self.augment:
            sample = random_flip_scale_crop(sample, self.scales, self.flip_prob)
        return self._finish(sample)

    def _finish(self, sample: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if "depth" in sample:
            valid = sample["depth"] > 0
        elif "normals" in sample:
            valid = sample["normals"].abs().sum(0, keepdim=True) > 0
        else:
            valid = torch.ones(1, *sample["image"].shape[-2:], dtype=torch.bool)
        out = {"image": sample["image"], "valid": valid}
        for task in ("semseg", "depth", "normals"):
            if task in self.tasks:
                out[task] = sample[task]
        if "edges" in self.tasks:
            depth = sample.get("depth")
            edges = boundary_edges(sample["semseg"], None if depth is None else depth[0],
                                   rel_jump=self.edge_rel_jump)
            out["edges"] = edges.float()[None]
        if "attributes" in self.tasks:
            out["attributes"] = class_presence(sample["semseg"], self.num_classes)
        return out


def _check_augmentation(scales, flip_prob) -> Tuple[Tuple[float, ...], float]:
    values = tuple(scales) if isinstance(scales, Iterable) and not isinstance(scales, (str, bytes)) else ()
    if not valid_zoom_scales(values):
        raise ValueError(f"scales: expected a non-empty sequence of scales >= 1, got {scales!r}")
    if isinstance(flip_prob, bool) or not isinstance(flip_prob, numbers.Real) or not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob: expected a probability in [0, 1], got {flip_prob!r}")
    return tuple(float(s) for s in values), float(flip_prob)


class NYUv2(NpyMultiTaskDataset):
    """NYUv2 (13 classes, depth in metres, surface normals) at 288 x 384. See the module docstring."""

    classes = NYUV2_CLASSES
    default_size = (288, 384)
    stored_tasks = ("semseg", "depth", "normals")
    default_tasks = ("semseg", "depth", "normals")


class Cityscapes(NpyMultiTaskDataset):
    """Cityscapes (7 classes, depth as stored, no normals) at 128 x 256. See the module docstring."""

    classes = CITYSCAPES_CLASSES
    default_size = (128, 256)
    stored_tasks = ("semseg", "depth")
    default_tasks = ("semseg", "depth")
