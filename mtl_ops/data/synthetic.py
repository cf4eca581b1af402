"""The embedded synthetic multi-task dataset: generation, on-disk cache and the ``Dataset``.

Image ``i`` of a split is rendered from its own random stream, ``SeedSequence(seed, spawn_key=(split, i))``
(train is split 0, val is split 1), so the splits never share a scene and changing ``n`` leaves the
layouts of the first images unchanged.

Cache: one folder per key ``v<GENERATOR_VERSION>-<split>-seed<seed>-n<n>-<H>x<W>`` under the cache
directory (``cache_dir`` argument, else ``$MTL_OPS_CACHE/synthetic``, else ``~/.cache/mtl_ops/synthetic``)
holding one ``.npy`` per field and ``meta.json``; the arrays are memory-mapped, not read into memory.
Stored types: image uint8, semseg uint8, depth float32, normals int8 (x127, re-normalised on load:
angular error below 0.5 degree), edges uint8, attributes uint8.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .camera import Intrinsics, pinhole_intrinsics
from .render import render_scenes
from .scenes import IGNORE_INDEX, SYNTHETIC_CLASSES, sample_scene

GENERATOR_VERSION = 1
SYNTHETIC_TASKS = ("semseg", "depth", "normals", "edges", "attributes")
DEFAULT_SIZE = (96, 128)
DEFAULT_COUNTS = {"train": 2000, "val": 500}
_SPLIT_IDS = {"train": 0, "val": 1}
_RENDER_BATCH = 32


def _field_specs(n: int, size: Tuple[int, int]) -> Dict[str, Tuple[tuple, np.dtype]]:
    height, width = size
    return {
        "image": ((n, 3, height, width), np.dtype(np.uint8)),
        "semseg": ((n, height, width), np.dtype(np.uint8)),
        "depth": ((n, height, width), np.dtype(np.float32)),
        "normals": ((n, 3, height, width), np.dtype(np.int8)),
        "edges": ((n, height, width), np.dtype(np.uint8)),
        "attributes": ((n, len(SYNTHETIC_CLASSES)), np.dtype(np.uint8)),
    }


def _check_args(split: str, n: int, size: Sequence[int], seed: int) -> Tuple[int, int]:
    if split not in _SPLIT_IDS:
        raise ValueError(f"split: expected one of {tuple(_SPLIT_IDS)}, got {split!r}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if (len(size) != 2 or not all(isinstance(s, (int, np.integer)) for s in size)
            or min(size) < 8):
        raise ValueError(f"size: expected (H, W) with ints >= 8, got {size!r}")
    return int(size[0]), int(size[1])


def generate_synthetic(n: int, size: Tuple[int, int] = DEFAULT_SIZE, seed: int = 0, split: str = "train",
                       out: Optional[Dict[str, np.ndarray]] = None,
                       num_threads: Optional[int] = 1) -> Dict[str, np.ndarray]:
    """Render ``n`` scenes of ``split`` into arrays in the stored layout (see the module docstring).

    ``out`` may hold preallocated arrays (e.g. memory maps) of the right shapes and dtypes.
    ``num_threads``: torch intra-op threads while rendering (restored afterwards; None keeps the current
    setting). The renderer runs many mid-sized element-wise ops, which gain little from more threads and
    slow down several-fold when the cores are shared with other work, hence the default of 1.
    """
    size = _check_args(split, n, size, seed)
    specs = _field_specs(n, size)
    if out is None:
        out = {name: np.empty(shape, dtype) for name, (shape, dtype) in specs.items()}
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        _render_into(out, specs, n, size, seed, split)
    finally:
        torch.set_num_threads(previous_threads)
    return out


def _render_into(out, specs, n, size, seed, split) -> None:
    intrinsics = pinhole_intrinsics(size)
    for start in range(0, n, _RENDER_BATCH):
        stop = min(start + _RENDER_BATCH, n)
        rngs = [np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_SPLIT_IDS[split], i)))
                for i in range(start, stop)]
        scenes = [sample_scene(rng) for rng in rngs]
        noise = np.stack([rng.standard_normal((3, *size), dtype=np.float32) for rng in rngs])
        rendered = render_scenes(scenes, size, intrinsics, noise)
        rendered["normals"] = (rendered["normals"] * 127).round()
        for name, (_, dtype) in specs.items():
            out[name][start:stop] = rendered[name].numpy().astype(dtype)


def default_cache_dir() -> Path:
    """``$MTL_OPS_CACHE/synthetic`` when the variable is set, else ``~/.cache/mtl_ops/synthetic``."""
    root = os.environ.get("MTL_OPS_CACHE")
    return Path(root) / "synthetic" if root else Path.home() / ".cache" / "mtl_ops" / "synthetic"


def cache_key(split: str, n: int, size: Tuple[int, int], seed: int) -> str:
    return f"v{GENERATOR_VERSION}-{split}-seed{seed}-n{n}-{size[0]}x{size[1]}"


def _meta(split, n, size, seed) -> dict:
    return {"version": GENERATOR_VERSION, "split": split, "n": int(n), "size": list(size), "seed": int(seed)}


def _open_cached(path: Path, meta: dict, specs) -> Optional[Dict[str, np.ndarray]]:
    """The memory-mapped arrays of a complete cache entry matching ``meta``, else None."""
    try:
        if json.loads((path / "meta.json").read_text()) != meta:
            return None
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in specs}
    except (OSError, ValueError):
        return None
    if any(arrays[name].shape != shape or arrays[name].dtype != dtype for name, (shape, dtype) in specs.items()):
        return None
    return arrays


def load_or_generate(split: str, n: int, size: Tuple[int, int], seed: int,
                     cache_dir: Optional[Union[str, Path]] = None) -> Tuple[Dict[str, np.ndarray], Path]:
    """Memory-mapped arrays of the cache entry for this key, generating and storing it first if needed."""
    size = _check_args(split, n, size, seed)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / cache_key(split, n, size, seed)
    meta, specs = _meta(split, n, size, seed), _field_specs(n, size)
    arrays = _open_cached(path, meta, specs)
    if arrays is not None:
        return arrays, path
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=root))
    try:
        out = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
               for name, (shape, dtype) in specs.items()}
        generate_synthetic(n, size, seed, split, out=out)
        for array in out.values():
            array.flush()
        del out
        (tmp / "meta.json").write_text(json.dumps(meta))
        if path.exists():  # stale or incomplete entry under the same key
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:  # another process stored the same key meanwhile
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    arrays = _open_cached(path, meta, specs)
    if arrays is None:
        raise RuntimeError(f"synthetic cache entry {path} could not be written or read back")
    return arrays, path


class SyntheticScenes(Dataset):
    """Synthetic indoor scenes with every dense label derived from the same geometry.

    A sample is a dict with ``image`` float32 (3, H, W) in [0, 1] and ``valid`` bool (1, H, W), plus the
    requested ``tasks``: ``semseg`` int64 (H, W) with ``ignore_index = 255`` where undefined; ``depth``
    float32 (1, H, W), z-depth along the optical axis in metres; ``normals`` float32 (3, H, W), unit
    vectors in the camera frame (x right, y down, z forward), facing the camera; ``edges`` float32
    (1, H, W), 1 on semantic boundaries and on occlusion boundaries (depth jumps of more than 5% between
    different surfaces), 2 pixels thick; ``attributes`` float32 (num_classes,), multi-hot classes present.

    ``valid`` is False where depth and normals are undefined (beyond the 10 m far plane); there depth is
    0, normals are (0, 0, 0) and semseg is 255 -- the same convention as the NYUv2 ``.npy`` files.
    Intrinsics: :attr:`intrinsics` (60 degree horizontal field of view, principal point at the centre).
    """

    classes = SYNTHETIC_CLASSES
    num_classes = len(SYNTHETIC_CLASSES)
    ignore_index = IGNORE_INDEX

    def __init__(self, split: str = "train", n: Optional[int] = None, size: Tuple[int, int] = DEFAULT_SIZE,
                 seed: int = 0, tasks: Sequence[str] = SYNTHETIC_TASKS,
                 cache_dir: Optional[Union[str, Path]] = None, cache: bool = True):
        if n is None and split in DEFAULT_COUNTS:
            n = DEFAULT_COUNTS[split]
        self.size = _check_args(split, n, size, seed)
        unknown = [t for t in tasks if t not in SYNTHETIC_TASKS]
        if unknown or isinstance(tasks, str):
            raise ValueError(f"tasks: expected a sequence drawn from {SYNTHETIC_TASKS}, got {tasks!r}")
        self.split, self.n, self.seed, self.tasks = split, int(n), int(seed), tuple(tasks)
        if cache:
            self._arrays, self.cache_path = load_or_generate(split, self.n, self.size, self.seed, cache_dir)
        else:
            self._arrays, self.cache_path = generate_synthetic(self.n, self.size, self.seed, split), None

    @property
    def intrinsics(self) -> Intrinsics:
        return pinhole_intrinsics(self.size)

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.cache_path is not None:  # workers re-open the memory maps instead of pickling them
            state["_arrays"] = None
        return state

    def _fields(self) -> Dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays, _ = load_or_generate(self.split, self.n, self.size, self.seed,
                                               self.cache_path.parent)
        return self._arrays

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        fields = self._fields()
        # numpy (single-threaded) for the per-sample conversions: small torch ops would spread over
        # threads and stall when the cores are busy, e.g. in the main process next to training.
        depth = np.array(fields["depth"][index])[None]
        sample = {"image": torch.from_numpy(fields["image"][index] * np.float32(1 / 255)),
                  "valid": torch.from_numpy(depth > 0)}
        if "semseg" in self.tasks:
            sample["semseg"] = torch.from_numpy(fields["semseg"][index].astype(np.int64))
        if "depth" in self.tasks:
            sample["depth"] = torch.from_numpy(depth)
        if "normals" in self.tasks:
            normals = fields["normals"][index].astype(np.float32)
            norm = np.sqrt((normals * normals).sum(0, keepdims=True))
            sample["normals"] = torch.from_numpy(normals / np.maximum(norm, np.float32(1e-6)))
        if "edges" in self.tasks:
            sample["edges"] = torch.from_numpy(fields["edges"][index][None].astype(np.float32))
        if "attributes" in self.tasks:
            sample["attributes"] = torch.from_numpy(fields["attributes"][index].astype(np.float32))
        return sample
