"""Reading and writing images with Pillow (PNG of any mode, JPEG and every other format Pillow reads; ``.npy``
arrays with NumPy), and turning what was read into the models' input: float RGB in [0, 1].

Pillow is an optional dependency (``pip install 'mtl_ops[train]'``), imported when an image is read or written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from .files import atomic_write
from ..common.optional import require

PathLike = Union[str, os.PathLike]

# Pillow's modes of 16-bit grey samples (PNG, TIFF); older Pillow releases open a 16-bit grey PNG as "I".
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _pillow(purpose: str):
    return require("PIL.Image", "Pillow", "train", purpose)


def read_image(path: PathLike, argument: str = "image") -> np.ndarray:
    """The pixels of the file at ``path``: a ``.npy`` array as stored; through Pillow, uint8 RGB (H, W, 3) for
    8-bit and lower images of any mode (palette, grey, grey + alpha, RGBA — alpha is dropped —, CMYK, ...),
    uint16 (H, W) for 16-bit grey and float32 (H, W) for 32-bit float images. Errors start with ``argument``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{argument}: no file at {path}")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{argument}: {path} is not a readable .npy array of numbers ({e})") from e
    image_module = _pillow("reading images")
    try:
        with image_module.open(path) as image:
            return _pixels(image, path, argument)
    except image_module.UnidentifiedImageError as e:
        raise ValueError(f"{argument}: {path} is neither a .npy array nor an image format Pillow reads ({e})") from e


def _pixels(image, path: Path, argument: str) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.uint16)
    if image.mode == "I":
        if image.format == "PNG":  # a PNG's integer samples have at most 16 bits
            return np.asarray(image).astype(np.uint16)
        raise ValueError(f"{argument}: {path} holds 32-bit integer pixels (Pillow mode I); expected 8-bit or 16-bit "
                         f"integer or float pixels")
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("P", "PA"):  # through RGBA: a palette with a transparent entry converts without a warning
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def to_unit_rgb(array: np.ndarray, argument: str = "image") -> np.ndarray:
    """float32 RGB (H, W, 3) in [0, 1] of an image array as :func:`read_image` gives it.

    Shapes: (H, W) and (H, W, 1) grey (repeated to RGB), (H, W, 3) RGB, (H, W, 4) RGBA (alpha dropped).
    Values are scaled by the dtype's range: uint8 by 1/255, uint16 by 1/65535, bool as 0 and 1. Float pixels
    must be finite and lie in [0, 1], or in [0, 255] (8-bit levels stored as floats, scaled by 1/255). Any
    other input is refused with a ValueError that starts with ``argument``."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{argument}: expected an (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA image, got shape "
                         f"{array.shape}")
    array = array[..., :3]
    if array.dtype == np.bool_:
        unit = array.astype(np.float32)
    elif array.dtype in (np.uint8, np.uint16):
        unit = array.astype(np.float32) / np.iinfo(array.dtype).max
    elif np.issubdtype(array.dtype, np.floating):
        unit = _unit_float(array, argument)
    else:
        raise ValueError(f"{argument}: expected uint8, uint16, bool or float pixels, got dtype {array.dtype} "
                         f"(convert integer levels with .astype(np.uint8) or .astype(np.uint16))")
    return np.ascontiguousarray(np.repeat(unit, 3, axis=2) if unit.shape[2] == 1 else unit)


def _unit_float(array: np.ndarray, argument: str) -> np.ndarray:
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        raise ValueError(f"{argument}: expected finite pixel values, got {int((~finite).sum())} NaN or infinite "
                         f"value(s) (the first at row {bad[0]}, column {bad[1]}: {array[tuple(bad)]})")
    low, high = float(array.min()), float(array.max())
    if low >= 0.0 and high <= 1.0:
        return array.astype(np.float32)
    if low >= 0.0 and high <= 255.0:
        return array.astype(np.float32) / 255.0
    raise ValueError(f"{argument}: expected float pixels in [0, 1] (or 8-bit levels in [0, 255]), got values in "
                     f"[{low:.6g}, {high:.6g}]")


def write_image(path: PathLike, image: np.ndarray) -> Path:
    """Write uint8 ``image`` — (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA — to ``path`` in the format its
    suffix names (``.png``, ``.jpg``, ...; any case). The file appears whole or not at all (written beside it
    under a temporary name, then renamed) and gets the usual permissions (0666 less the umask)."""
    path = Path(path)
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or array.ndim == 3 and array.shape[2] in (3, 4)) \
            or 0 in array.shape:
        raise ValueError(f"write_image: expected a non-empty uint8 (H, W), (H, W, 3) or (H, W, 4) array, got "
                         f"{array.dtype} of shape {array.shape}")
    image_module = _pillow("writing images")
    image_module.init()  # registers every format plugin, so that the suffix lookup below knows them all
    fmt = image_module.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in image_module.SAVE:
        raise ValueError(f"write_image: {path.name}: expected a suffix of an image format Pillow writes (.png, .jpg, "
                         f".webp, ...), got {path.suffix!r}")

    def save(f):
        try:
            image_module.fromarray(np.ascontiguousarray(array)).save(f, format=fmt)
        except OSError as e:
            if e.errno is not None:  # the file system's error, not the format's
                raise
            raise ValueError(f"write_image: {path.name}: {fmt} cannot hold a uint8 image of shape {array.shape} "
                             f"({e})") from e
    return atomic_write(path, save)
