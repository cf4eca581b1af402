"""Render a batch of scene layouts: every label and the RGB image come from one ray cast.

Outputs per pixel: semantic class (decals painted over the surface they lie on), z-depth in metres,
unit normal in the camera frame (OpenCV axes: x right, y down, z forward; pointing towards the camera),
boundary edges and the RGB image (per-class albedo x per-instance tint x procedural texture, Lambertian
shading from a point light with hard shadows, ambient light, gamma, Gaussian noise). Pixels farther than
``FAR_PLANE`` have no labels: semseg ``IGNORE_INDEX``, depth 0, normal 0 (the image still shows them).
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from .camera import Intrinsics, pixel_rays
from .labels import boundary_edges, class_presence
from .raycast import cast_rays, occluded
from .scenes import (FACE_FAR, FACE_FLOOR, FACE_LEFT, IGNORE_INDEX, MAX_DECALS, PAINTING,
                     SYNTHETIC_CLASSES, WINDOW, Scene, SceneBatch)

FAR_PLANE = 10.0  # metres of z-depth beyond which pixels are unlabelled
EDGE_REL_JUMP = 0.05  # relative depth jump between different surfaces that makes an occlusion edge
NOISE_STD = 0.015

_BASE_ALBEDO = torch.tensor([
    [0.55, 0.40, 0.28],  # floor
    [0.80, 0.78, 0.72],  # wall
    [0.92, 0.92, 0.90],  # ceiling
    [0.60, 0.15, 0.18],  # rug
    [0.45, 0.30, 0.20],  # door
    [0.70, 0.85, 0.95],  # window
    [0.60, 0.60, 0.60],  # painting (coloured by its own pattern)
    [0.30, 0.32, 0.40],  # cabinet
    [0.25, 0.45, 0.30],  # sofa
    [0.70, 0.55, 0.30],  # crate
    [0.85, 0.25, 0.15],  # ball
    [0.20, 0.30, 0.65],  # barrel
    [0.75, 0.75, 0.78],  # pillar
])
# Texture = 1 + sum_k weight[class, k] * (pattern_k - 0.5), patterns:
# checker, stripes along u, stripes along v, panel grid lines, fine grain, value noise, horizontal bands.
_TEXTURE_WEIGHTS = torch.tensor([
    [0.25, 0.00, 0.00, 0.00, 0.00, 0.15, 0.00],  # floor
    [0.00, 0.06, 0.00, 0.00, 0.00, 0.10, 0.00],  # wall
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.08, 0.00],  # ceiling
    [0.00, 0.30, 0.30, 0.00, 0.00, 0.10, 0.00],  # rug
    [0.00, 0.00, 0.00, -0.35, 0.10, 0.05, 0.00],  # door
    [0.00, 0.00, 0.00, -0.80, 0.00, 0.05, 0.00],  # window
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.30, 0.00],  # painting
    [0.00, 0.00, 0.00, -0.30, 0.10, 0.05, 0.00],  # cabinet
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.35, 0.00],  # sofa
    [0.00, 0.00, 0.00, 0.00, 0.35, 0.10, 0.00],  # crate
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.05, 0.50],  # ball
    [0.00, 0.00, 0.00, 0.00, 0.00, 0.10, 0.35],  # barrel
    [0.00, 0.20, 0.00, 0.00, 0.00, 0.05, 0.00],  # pillar
])
assert _BASE_ALBEDO.shape[0] == _TEXTURE_WEIGHTS.shape[0] == len(SYNTHETIC_CLASSES)


def _lattice_hash(ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point (integer mixing only)."""
    h = (ix * 374761393 + iy * 668265263) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    return ((h ^ (h >> 16)) & 0xFFFF).float() / 65536.0


def _value_noise(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    fu, fv = torch.floor(u), torch.floor(v)
    su, sv = u - fu, v - fv
    su, sv = su * su * (3 - 2 * su), sv * sv * (3 - 2 * sv)
    iu, iv = fu.long(), fv.long()
    n00, n10 = _lattice_hash(iu, iv), _lattice_hash(iu + 1, iv)
    n01, n11 = _lattice_hash(iu, iv + 1), _lattice_hash(iu + 1, iv + 1)
    return (n00 * (1 - su) + n10 * su) * (1 - sv) + (n01 * (1 - su) + n11 * su) * sv


def _surface_coords(point: torch.Tensor, normal: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """In-plane texture coordinates chosen by the dominant axis of the world normal."""
    x, y, z = point.unbind(-1)
    axis = normal.abs().argmax(dim=-1)
    u = torch.where(axis == 2, x, torch.where(axis == 0, z, x))
    v = torch.where(axis == 1, z, y)
    return u, v


def _texture(semseg: torch.Tensor, point: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    u, v = _surface_coords(point, normal)
    two_pi = 2 * math.pi
    patterns = torch.stack([
        torch.remainder(torch.floor(u / 0.6) + torch.floor(v / 0.6), 2.0),
        0.5 + 0.5 * torch.sin(two_pi * u / 0.15),
        0.5 + 0.5 * torch.sin(two_pi * v / 0.35),
        ((torch.remainder(u / 0.5, 1.0) < 0.08) | (torch.remainder(v / 0.5, 1.0) < 0.08)).float(),
        0.5 + 0.5 * torch.sin(two_pi * (u + 0.3 * v) / 0.09),
        _value_noise(u / 0.25, v / 0.25),
        0.5 + 0.5 * torch.sin(two_pi * point[..., 1] / 0.12),
    ], dim=-1)
    weights = _TEXTURE_WEIGHTS[semseg]
    return 1.0 + (weights * (patterns - 0.5)).sum(-1)


def _painting_colour(point: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    u, v = _surface_coords(point, normal)
    freq = torch.tensor([[3.1, 1.7], [1.3, 4.2], [2.6, 2.9]])
    phase = u[..., None] * freq[:, 0] + v[..., None] * freq[:, 1]
    return 0.5 + 0.4 * torch.sin(2 * math.pi * phase)


def _apply_decals(batch: SceneBatch, instance, point, semseg, tint):
    """Paint decals over the room face they lie on (last one wins): updates class and tint."""
    x, y, z = point.unbind(-1)
    for k in range(MAX_DECALS):
        face = batch.decal_face[:, k, None]
        a = torch.where((face == FACE_FLOOR) | (face == FACE_FAR), x, z)
        b = torch.where(face == FACE_FLOOR, z, y)
        a0, a1, b0, b1 = batch.decal_rect[:, k, :, None].unbind(1)
        on = (batch.decal_active[:, k, None] & (instance == face)
              & (a >= a0) & (a <= a1) & (b >= b0) & (b <= b1))
        semseg = torch.where(on, batch.decal_class[:, k, None], semseg)
        tint = torch.where(on[..., None], batch.decal_tint[:, k, None, :], tint)
    return semseg, tint


def _shade(batch: SceneBatch, semseg, tint, point, normal):
    albedo = _BASE_ALBEDO[semseg] * tint
    albedo = torch.where((semseg == PAINTING)[..., None], _painting_colour(point, normal) * tint, albedo)
    albedo = albedo * _texture(semseg, point, normal)[..., None]
    to_light = batch.light[:, None] - point
    dist2 = (to_light * to_light).sum(-1)
    lambert = ((normal * to_light).sum(-1) / dist2.sqrt()).clamp_min(0)
    light = batch.light[:, None]
    lit = ~occluded(batch, light, point + 1e-3 * normal - light)  # segments from the light to the surface
    radiance = 0.35 + 1.1 * lambert * lit / (1.0 + 0.05 * dist2)
    colour = albedo * radiance[..., None] * batch.exposure[:, None, None]
    colour = colour + 0.35 * (semseg == WINDOW)[..., None]
    return colour.clamp(0, 1) ** (1 / 2.2)


@torch.inference_mode()
def render_scenes(scenes: Sequence[Scene], size: Tuple[int, int], intrinsics: Intrinsics,
                  noise: np.ndarray) -> Dict[str, torch.Tensor]:
    """Render layouts at ``size = (H, W)``; ``noise`` is standard normal ``(B, 3, H, W)``.

    Returns ``image`` uint8 (B, 3, H, W), ``semseg`` uint8 (B, H, W), ``depth`` float32 (B, H, W),
    ``normals`` float32 (B, 3, H, W), ``edges`` bool (B, H, W), ``attributes`` float32 (B, C).
    """
    height, width = size
    count = len(scenes)
    batch = SceneBatch.from_scenes(scenes)
    dirs = torch.einsum("bij,pj->bpi", batch.cam_rot, pixel_rays(size, intrinsics))
    origins = batch.cam_pos[:, None, :]
    hits = cast_rays(batch, origins, dirs)
    point = origins + hits.t[..., None] * dirs

    semseg = torch.gather(batch.instance_class, 1, hits.instance)
    tint = torch.gather(batch.instance_tint, 1, hits.instance[..., None].expand(-1, -1, 3))
    semseg, tint = _apply_decals(batch, hits.instance, point, semseg, tint)
    colour = _shade(batch, semseg, tint, point, hits.normal)
    colour = colour + NOISE_STD * torch.from_numpy(noise).reshape(count, 3, -1).transpose(1, 2)
    image = (colour.clamp(0, 1) * 255).round().to(torch.uint8)

    valid = hits.t <= FAR_PLANE
    normal_cam = torch.einsum("bji,bpj->bpi", batch.cam_rot, hits.normal)
    normal_cam = normal_cam / normal_cam.norm(dim=-1, keepdim=True)
    semseg = torch.where(valid, semseg, IGNORE_INDEX)
    depth = torch.where(valid, hits.t, 0.0)
    normal_cam = torch.where(valid[..., None], normal_cam, 0.0)
    is_wall = (hits.instance >= FACE_LEFT) & (hits.instance <= FACE_FAR)
    surface = torch.where(is_wall, FACE_LEFT, hits.instance)

    def grid(t):
        return t.reshape(count, height, width)

    edges = boundary_edges(grid(semseg), grid(depth), rel_jump=EDGE_REL_JUMP, surface=grid(surface))
    return {
        "image": image.transpose(1, 2).reshape(count, 3, height, width),
        "semseg": grid(semseg).to(torch.uint8),
        "depth": grid(depth),
        "normals": normal_cam.transpose(1, 2).reshape(count, 3, height, width),
        "edges": edges,
        "attributes": class_presence(grid(semseg), len(SYNTHETIC_CLASSES)),
    }
