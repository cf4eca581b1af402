"""Labels derived from dense maps: boundary edges and image-level class presence (attributes)."""
from __future__ import annotations

from typing import Optional

import torch

IGNORE_INDEX = 255


def _mark_pairs(differs_h: torch.Tensor, differs_v: torch.Tensor) -> torch.Tensor:
    """Mark both pixels of every differing horizontal ``(..., H, W-1)`` / vertical ``(..., H-1, W)`` pair."""
    height, width = differs_v.shape[-2] + 1, differs_h.shape[-1] + 1
    edges = torch.zeros(*differs_h.shape[:-2], height, width, dtype=torch.bool, device=differs_h.device)
    edges[..., :, :-1] |= differs_h
    edges[..., :, 1:] |= differs_h
    edges[..., :-1, :] |= differs_v
    edges[..., 1:, :] |= differs_v
    return edges


def depth_jumps(depth: torch.Tensor, rel_jump: float, surface: Optional[torch.Tensor] = None):
    """Neighbour pairs (horizontal, vertical) whose depths, both valid (> 0), differ by more than
    ``rel_jump`` times the smaller one; with ``surface`` ids given, only pairs on different surfaces count.
    ``depth`` and ``surface`` are ``(..., H, W)``."""
    def jump(a, b, sa, sb):
        out = (a > 0) & (b > 0) & ((a - b).abs() > rel_jump * torch.minimum(a, b))
        return out if sa is None else out & (sa != sb)

    s = surface
    return (jump(depth[..., :, 1:], depth[..., :, :-1],
                 None if s is None else s[..., :, 1:], None if s is None else s[..., :, :-1]),
            jump(depth[..., 1:, :], depth[..., :-1, :],
                 None if s is None else s[..., 1:, :], None if s is None else s[..., :-1, :]))


def boundary_edges(semseg: torch.Tensor, depth: Optional[torch.Tensor] = None, *,
                   rel_jump: Optional[float] = None, surface: Optional[torch.Tensor] = None,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Binary boundary map, bool ``(..., H, W)``, two pixels thick (both sides of a boundary).

    A pixel is an edge when a 4-neighbour has a different semantic label (neither being
    ``ignore_index``), or, when ``depth`` and ``rel_jump`` are given, when a 4-neighbour's depth jumps
    by more than ``rel_jump`` relative to the nearer of the two (see :func:`depth_jumps`).
    """
    def sem(a, b):
        return (a != b) & (a != ignore_index) & (b != ignore_index)

    h = sem(semseg[..., :, 1:], semseg[..., :, :-1])
    v = sem(semseg[..., 1:, :], semseg[..., :-1, :])
    if depth is not None and rel_jump is not None:
        jh, jv = depth_jumps(depth, rel_jump, surface)
        h, v = h | jh, v | jv
    return _mark_pairs(h, v)


def class_presence(semseg: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Multi-hot float vector ``(..., num_classes)`` of the classes present in ``semseg (..., H, W)``."""
    flat = semseg.reshape(*semseg.shape[:-2], -1).long()
    labelled = flat != ignore_index
    onehot = torch.zeros(*flat.shape[:-1], num_classes + 1, dtype=torch.float32, device=semseg.device)
    onehot.scatter_(-1, torch.where(labelled, flat, num_classes), 1.0)
    return onehot[..., :num_classes]
