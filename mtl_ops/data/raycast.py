"""Vectorised nearest-hit ray casting against a :class:`~mtl_ops.data.scenes.SceneBatch`.

All rays of a scene share one origin: ``origins (B, 1, 3)``, ``dirs (B, P, 3)`` in the world frame, and
a hit at parameter ``t`` lies at ``origin + t * dir`` (``dir`` need not be unit length). Each object
kind is handled in two vectorised passes, with no Python loop over pixels: a cheap bounding test of
every (scene, object slot, ray) triple (one batched matrix product), then the exact intersection of
the surviving triples only, gathered into flat tensors.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence, Tuple

import torch

from .scenes import BOX_BASE, CYLINDER_BASE, SPHERE_BASE, SceneBatch

EPS = 1e-4


class Hits(NamedTuple):
    t: torch.Tensor  # (B, P) ray parameter of the nearest hit
    instance: torch.Tensor  # (B, P) long, instance id of the nearest hit (see scenes.py)
    normal: torch.Tensor  # (B, P, 3) unit world-frame normal on the side the ray came from


def _nonzero(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)


def _gather(params: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``params`` (B, N, ...) picked per ray by ``index`` (B, P) -> (B, P, ...)."""
    if params.dim() == 2:
        return torch.gather(params, 1, index)
    return torch.gather(params, 1, index[..., None].expand(*index.shape, params.shape[-1]))


def _rotate_to_box(x, z, cos, sin):
    return cos * x - sin * z, sin * x + cos * z


def _rotate_from_box(x, z, cos, sin):
    return cos * x + sin * z, -sin * x + cos * z


# ---- exact intersections of flat (K,) ray/object pairs; inf where missed --------------------------

def _box_exact(o, d, center, half, yaw):
    """Slab test for a box turned by ``yaw`` about the vertical."""
    cos, sin = torch.cos(yaw), torch.sin(yaw)
    rel = o - center
    ox, oz = _rotate_to_box(rel[:, 0], rel[:, 2], cos, sin)
    dx, dz = _rotate_to_box(d[:, 0], d[:, 2], cos, sin)
    near = far = None
    for o_a, d_a, h_a in ((ox, dx, half[:, 0]), (rel[:, 1], d[:, 1], half[:, 1]), (oz, dz, half[:, 2])):
        inv = 1.0 / _nonzero(d_a)
        t1, t2 = (-h_a - o_a) * inv, (h_a - o_a) * inv
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        near = lo if near is None else torch.maximum(near, lo)
        far = hi if far is None else torch.minimum(far, hi)
    return torch.where((near <= far) & (near > EPS), near, torch.inf)


def _sphere_exact(o, d, center, radius):
    oc = o - center
    a = (d * d).sum(-1)
    b = (oc * d).sum(-1)
    disc = b * b - a * ((oc * oc).sum(-1) - radius * radius)
    t = (-b - disc.clamp_min(0).sqrt()) / a
    return torch.where((disc > 0) & (t > EPS), t, torch.inf)


def _cylinder_exact(o, d, center, radius, height):
    """Vertical cylinder standing on the floor: side and top cap."""
    ocx, ocz, oy = o[:, 0] - center[:, 0], o[:, 2] - center[:, 2], o[:, 1]
    dx, dy, dz = d.unbind(-1)
    radius2 = radius * radius
    a = _nonzero(dx * dx + dz * dz)
    b = dx * ocx + dz * ocz
    disc = b * b - a * (ocx * ocx + ocz * ocz - radius2)
    t_side = (-b - disc.clamp_min(0).sqrt()) / a
    y_side = oy + t_side * dy
    side = (disc > 0) & (t_side > EPS) & (y_side >= 0) & (y_side <= height)
    t_cap = (height - oy) / _nonzero(dy)
    cx, cz = ocx + t_cap * dx, ocz + t_cap * dz
    cap = (t_cap > EPS) & (cx * cx + cz * cz <= radius2)
    return torch.minimum(torch.where(side, t_side, torch.inf), torch.where(cap, t_cap, torch.inf))


# ---- normals at the nearest hit, from the winning slot per ray (B, P) ------------------------------

def _box_normal(batch: SceneBatch, idx: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    center, half = _gather(batch.box_center, idx), _gather(batch.box_half, idx)
    yaw = _gather(batch.box_yaw, idx)
    cos, sin = torch.cos(yaw), torch.sin(yaw)
    rel = p - center
    lx, lz = _rotate_to_box(rel[..., 0], rel[..., 2], cos, sin)
    local = torch.stack([lx, rel[..., 1], lz], dim=-1)
    axis = (local.abs() / half).argmax(dim=-1, keepdim=True)
    n_local = torch.zeros_like(local).scatter_(-1, axis, torch.gather(local, -1, axis).sign())
    nx, nz = _rotate_from_box(n_local[..., 0], n_local[..., 2], cos, sin)
    return torch.stack([nx, n_local[..., 1], nz], dim=-1)


def _sphere_normal(batch: SceneBatch, idx: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return (p - _gather(batch.sphere_center, idx)) / _gather(batch.sphere_radius, idx)[..., None]


def _cylinder_normal(batch: SceneBatch, idx: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    rel = p - _gather(batch.cyl_center, idx)
    on_cap = (_gather(batch.cyl_height, idx) - rel[..., 1]).abs() < 1e-3
    side = torch.stack([rel[..., 0], torch.zeros_like(rel[..., 0]), rel[..., 2]], dim=-1)
    side = side / side.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    up = torch.zeros_like(side)
    up[..., 1] = 1.0
    return torch.where(on_cap[..., None], up, side)


# ---- object kinds: bounding volume, exact test, parameters, normal, first instance id -------------

class _Kind(NamedTuple):
    bounds: Callable  # batch -> (center (B, N, 3), radius (B, N), ignore_y)
    exact: Callable
    params: Callable  # batch -> sequence of (B, N, ...) tensors passed to ``exact`` after (o, d)
    normal: Callable
    active: Callable
    base: int


def _box_bounds(batch):
    return batch.box_center, batch.box_half.norm(dim=-1), False


def _cylinder_bounds(batch):  # the infinite vertical cylinder: exact for the side, contains the cap
    return batch.cyl_center, batch.cyl_radius, True


_KINDS = (
    _Kind(_box_bounds, _box_exact, lambda b: (b.box_center, b.box_half, b.box_yaw), _box_normal,
          lambda b: b.box_active, BOX_BASE),
    _Kind(lambda b: (b.sphere_center, b.sphere_radius, False), _sphere_exact,
          lambda b: (b.sphere_center, b.sphere_radius), _sphere_normal, lambda b: b.sphere_active, SPHERE_BASE),
    _Kind(_cylinder_bounds, _cylinder_exact, lambda b: (b.cyl_center, b.cyl_radius, b.cyl_height),
          _cylinder_normal, lambda b: b.cyl_active, CYLINDER_BASE),
)


def _candidates(kind: _Kind, batch: SceneBatch, o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Bool ``(B, N, P)``: the ray meets the kind's bounding volume ahead of its origin."""
    center, radius, ignore_y = kind.bounds(batch)
    keep = torch.tensor([1.0, 0.0 if ignore_y else 1.0, 1.0])
    oc = (o - center) * keep
    d = d * keep
    b = torch.bmm(oc, d.transpose(1, 2))
    c = (oc * oc).sum(-1, keepdim=True) - (radius * radius)[..., None]
    a = (d * d).sum(-1)[:, None]
    return (b * b > a * c) & ((b < 0) | (c < 0)) & kind.active(batch)[..., None]


def _exact_pairs(kind: _Kind, batch: SceneBatch, o: torch.Tensor, d: torch.Tensor):
    """Exact hits of the candidate pairs: ``(t (K,), scene (K,), slot (K,), ray (K,))``."""
    scene, slot, ray = _candidates(kind, batch, o, d).nonzero(as_tuple=True)
    params: Sequence[torch.Tensor] = [p[scene, slot] for p in kind.params(batch)]
    t = kind.exact(o[scene, 0], d[scene, ray], *params)
    return t, scene, slot, ray


def _nearest(kind: _Kind, batch: SceneBatch, o, d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest hit of this kind per ray: ``t (B, P)`` (inf where none) and its slot ``(B, P)``."""
    count, rays = d.shape[:2]
    t, scene, slot, ray = _exact_pairs(kind, batch, o, d)
    flat = scene * rays + ray
    best = torch.full((count * rays,), torch.inf).scatter_reduce_(0, flat, t, "amin")
    won = torch.isfinite(t) & (t == best[flat])
    best_slot = torch.zeros(count * rays, dtype=torch.long)
    best_slot[flat[won]] = slot[won]
    return best.view(count, rays), best_slot.view(count, rays)


# Room faces indexed by (axis, direction > 0): x -> left/right wall, y -> floor/ceiling, z -> near/far wall.
_ROOM_FACE = torch.tensor([[1, 2], [0, 5], [3, 4]])


def _room_hit(batch: SceneBatch, o: torch.Tensor, d: torch.Tensor):
    """Exit point of rays starting inside the room: ``(t, face id, inward normal)``."""
    half_w, height, length = batch.room.unbind(-1)
    zero = torch.zeros_like(half_w)
    lo = torch.stack([-half_w, zero, zero], dim=-1)[:, None]
    hi = torch.stack([half_w, height, length], dim=-1)[:, None]
    positive = d > 0
    t_axis = (torch.where(positive, hi, lo) - o) / _nonzero(d)
    t, axis = t_axis.min(dim=-1)
    toward = torch.gather(positive, -1, axis[..., None])
    face = _ROOM_FACE[axis, toward[..., 0].long()]
    normal = torch.zeros_like(d).scatter_(-1, axis[..., None], torch.where(toward, -1.0, 1.0))
    return t, face, normal


def cast_rays(batch: SceneBatch, origins: torch.Tensor, dirs: torch.Tensor) -> Hits:
    """Nearest hit of rays that start inside the room (every such ray hits at least the room's shell)."""
    t, instance, normal = _room_hit(batch, origins, dirs)
    for kind in _KINDS:
        t_obj, slot = _nearest(kind, batch, origins, dirs)
        closer = t_obj < t
        if not bool(closer.any()):
            continue
        point = origins + torch.where(closer, t_obj, 0.0)[..., None] * dirs
        t = torch.where(closer, t_obj, t)
        instance = torch.where(closer, slot + kind.base, instance)
        normal = torch.where(closer[..., None], kind.normal(batch, slot, point), normal)
    return Hits(t, instance, normal)


def occluded(batch: SceneBatch, origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Whether an object blocks the segment from ``origins`` to ``origins + dirs``: bool ``(B, P)``."""
    count, rays = dirs.shape[:2]
    blocked = torch.zeros(count * rays, dtype=torch.bool)
    for kind in _KINDS:
        t, scene, _, ray = _exact_pairs(kind, batch, origins, dirs)
        blocked[(scene * rays + ray)[t < 1.0]] = True
    return blocked.view(count, rays)
