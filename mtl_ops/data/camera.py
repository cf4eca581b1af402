"""Pinhole camera model shared by the synthetic renderer and its users.

Camera frame: OpenCV axes, x to the right, y down, z forward (along the optical axis). Pixel ``(v, u)``
(row, column) has its centre at integer coordinates, so a camera-frame point ``(X, Y, Z)`` projects to
``u = fx * X / Z + cx`` and ``v = fy * Y / Z + cy``. Depth is z-depth (``Z``), not distance along the ray.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import torch

DEFAULT_FOV_X_DEG = 60.0


class Intrinsics(NamedTuple):
    """Focal lengths and principal point in pixels."""

    fx: float
    fy: float
    cx: float
    cy: float


def pinhole_intrinsics(size: Tuple[int, int], fov_x_deg: float = DEFAULT_FOV_X_DEG) -> Intrinsics:
    """Square-pixel intrinsics for an image of ``size = (H, W)`` with horizontal field of view ``fov_x_deg``."""
    height, width = size
    focal = (width / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    return Intrinsics(focal, focal, (width - 1) / 2.0, (height - 1) / 2.0)


def pixel_rays(size: Tuple[int, int], intrinsics: Intrinsics) -> torch.Tensor:
    """Camera-frame ray directions with unit z, one per pixel in row-major order: shape ``(H*W, 3)``.

    Because every ray has ``z = 1``, the ray parameter of a hit is its z-depth.
    """
    height, width = size
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                          torch.arange(width, dtype=torch.float64), indexing="ij")
    x = (u - intrinsics.cx) / intrinsics.fx
    y = (v - intrinsics.cy) / intrinsics.fy
    return torch.stack([x, y, torch.ones_like(x)], dim=-1).reshape(-1, 3).float()


def backproject(depth: torch.Tensor, intrinsics: Intrinsics) -> torch.Tensor:
    """Camera-frame 3D points from z-depth of shape ``(..., 1, H, W)``; returns ``(..., 3, H, W)``."""
    if depth.dim() < 3 or depth.shape[-3] != 1:
        raise ValueError(f"depth: expected shape (..., 1, H, W), got {tuple(depth.shape)}")
    height, width = depth.shape[-2:]
    v, u = torch.meshgrid(torch.arange(height, dtype=depth.dtype, device=depth.device),
                          torch.arange(width, dtype=depth.dtype, device=depth.device), indexing="ij")
    z = depth[..., 0, :, :]
    x = (u - intrinsics.cx) / intrinsics.fx * z
    y = (v - intrinsics.cy) / intrinsics.fy * z
    return torch.stack([x, y, z], dim=-3)
