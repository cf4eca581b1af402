"""Colour maps in numpy for the prediction figures (uint8 RGB outputs, (H, W, 3))."""
from __future__ import annotations

import numpy as np


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 distinct colours (the usual bit-interleaving PASCAL-style palette)."""
    colours = np.zeros((num_classes, 3), np.uint8)
    for index in range(num_classes):
        c, label = [0, 0, 0], index + 1
        for bit in range(8):
            for ch in range(3):
                c[ch] |= ((label >> ch) & 1) << (7 - bit)
            label >>= 3
        colours[index] = c
    return colours


def colorize_segmentation(labels: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Label map (H, W) → RGB; ignored pixels black."""
    labels = np.asarray(labels).astype(np.int64)
    out = np.zeros(labels.shape + (3,), np.uint8)
    ok = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    out[ok] = palette(num_classes)[labels[ok]]
    return out


def _ramp(t: np.ndarray) -> np.ndarray:
    """A perceptually ordered blue → green → yellow ramp for t in [0, 1] (viridis-like, piecewise linear)."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)
    x = np.clip(t, 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(np.int64), len(stops) - 2)
    f = (x - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).round().astype(np.uint8)


def colorize_depth(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                   valid: np.ndarray | None = None) -> np.ndarray:
    """Depth (H, W) → RGB with near = yellow, far = blue; invalid pixels black."""
    depth = np.asarray(depth, np.float64)
    valid = np.ones(depth.shape, bool) if valid is None else np.asarray(valid, bool)
    values = depth[valid] if valid.any() else depth.ravel()
    lo = float(values.min()) if vmin is None else vmin
    hi = float(values.max()) if vmax is None else vmax
    out = _ramp(1 - (depth - lo) / max(hi - lo, 1e-9))
    out[~valid] = 0
    return out


def colorize_normals(normals: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Normals (3, H, W) in [-1, 1] → RGB ((n + 1) / 2); invalid pixels black."""
    n = np.asarray(normals, np.float64)
    out = ((np.clip(n, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0).copy()
    if valid is not None:
        out[~np.asarray(valid, bool)] = 0
    return out


def colorize_edges(edges: np.ndarray) -> np.ndarray:
    """Edge probability or 0/1 map (H, W) → greyscale RGB (white = edge)."""
    grey = (np.clip(np.asarray(edges, np.float64), 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)

