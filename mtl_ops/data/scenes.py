"""Random indoor scene layouts: a room with objects on its floor and flat decals on its surfaces.

World frame: y up, the floor is ``y = 0``; the room spans ``x in [-half_width, half_width]``,
``y in [0, height]``, ``z in [0, length]``. The camera stands near the ``z = 0`` wall looking roughly
along ``+z``. A layout is sampled per scene with a ``numpy.random.Generator`` (small Python loops over
a handful of objects); :class:`SceneBatch` pads a list of layouts into tensors for vectorised ray casting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

SYNTHETIC_CLASSES = (
    "floor", "wall", "ceiling", "rug", "door", "window", "painting",
    "cabinet", "sofa", "crate", "ball", "barrel", "pillar",
)
(FLOOR, WALL, CEILING, RUG, DOOR, WINDOW, PAINTING,
 CABINET, SOFA, CRATE, BALL, BARREL, PILLAR) = range(len(SYNTHETIC_CLASSES))
IGNORE_INDEX = 255

# Room faces are instances 0..5; objects follow: boxes, spheres, cylinders (padded to these maxima).
FACE_FLOOR, FACE_LEFT, FACE_RIGHT, FACE_NEAR, FACE_FAR, FACE_CEILING = range(6)
NUM_ROOM_FACES = 6
ROOM_FACE_CLASSES = (FLOOR, WALL, WALL, WALL, WALL, CEILING)
MAX_BOXES, MAX_SPHERES, MAX_CYLINDERS, MAX_DECALS = 6, 3, 3, 4
BOX_BASE = NUM_ROOM_FACES
SPHERE_BASE = BOX_BASE + MAX_BOXES
CYLINDER_BASE = SPHERE_BASE + MAX_SPHERES
NUM_INSTANCES = CYLINDER_BASE + MAX_CYLINDERS

_CAMERA_CLEARANCE = 0.6  # metres kept free around the camera in the floor plane
_GAP = 0.05  # minimum gap between object footprints


@dataclass
class Scene:
    """One layout. Rows of the object arrays:

    boxes ``(x, z, half_x, half_y, half_z, yaw, class, tint_rgb)``, resting on the floor;
    spheres ``(x, z, radius, class, tint_rgb)``, resting on the floor;
    cylinders ``(x, z, radius, height, class, tint_rgb)``, vertical, standing on the floor;
    decals ``(face, a0, a1, b0, b1, class, tint_rgb)``: a rectangle on a room face, in that face's
    in-plane coordinates ``(a, b)``: floor ``(x, z)``, left/right walls ``(z, y)``, far wall ``(x, y)``.
    """

    room: np.ndarray  # (3,) half_width, height, length
    cam_pos: np.ndarray  # (3,)
    cam_rot: np.ndarray  # (3, 3) camera-to-world rotation; columns are the camera x, y, z axes
    light: np.ndarray  # (3,) point light position
    exposure: float
    room_tint: np.ndarray  # (6, 3) per room face
    boxes: np.ndarray
    spheres: np.ndarray
    cylinders: np.ndarray
    decals: np.ndarray


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation for a camera turned by ``yaw`` about world up, tilted down by ``pitch``."""
    forward = np.array([math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


def _tint(rng: np.random.Generator) -> np.ndarray:
    return np.clip(1.0 + 0.12 * rng.standard_normal(3), 0.7, 1.3)


class _Floorplan:
    """Footprint circles already used on the floor, for rejection sampling of object positions."""

    def __init__(self, cam_x: float, cam_z: float):
        self.circles = [(cam_x, cam_z, _CAMERA_CLEARANCE)]

    def free(self, x: float, z: float, r: float) -> bool:
        return all((x - cx) ** 2 + (z - cz) ** 2 >= (r + cr + _GAP) ** 2 for cx, cz, cr in self.circles)

    def add(self, x: float, z: float, r: float) -> None:
        self.circles.append((x, z, r))


def _place_box(rng, plan, cls, room, z_min):
    half_w, _, length = room
    if cls == CABINET:
        half = np.array([rng.uniform(0.3, 0.6), rng.uniform(0.7, 1.1), rng.uniform(0.2, 0.3)])
    elif cls == SOFA:
        half = np.array([rng.uniform(0.7, 1.1), rng.uniform(0.2, 0.45), rng.uniform(0.35, 0.5)])
    else:
        half = rng.uniform(0.15, 0.4) * rng.uniform(0.8, 1.2, size=3)
    radius = float(np.hypot(half[0], half[2]))
    against_wall = cls != CRATE and rng.random() < 0.7
    if min(half_w, (length - z_min) / 2) <= max(half[0], radius):
        return None
    for _ in range(20):
        if against_wall:
            wall = rng.integers(3)
            if wall == 0:  # far wall, front facing -z
                x, z, yaw = rng.uniform(-half_w + half[0], half_w - half[0]), length - half[2] - 0.01, 0.0
            else:  # side wall, the box's local x runs along z
                sign = -1.0 if wall == 1 else 1.0
                x = sign * (half_w - half[2] - 0.01)
                z, yaw = rng.uniform(z_min + half[0], length - half[0]), math.pi / 2
        else:
            x = rng.uniform(-half_w + radius, half_w - radius)
            z, yaw = rng.uniform(z_min + radius, length - radius), rng.uniform(0.0, math.pi)
        if plan.free(x, z, radius):
            plan.add(x, z, radius)
            return [x, z, half[0], half[1], half[2], yaw, cls, *_tint(rng)]
    return None


def _place_round(rng, plan, radius, room, z_min):
    half_w, _, length = room
    if half_w - radius <= -half_w + radius or z_min + radius >= length - radius:
        return None
    for _ in range(20):
        x = rng.uniform(-half_w + radius, half_w - radius)
        z = rng.uniform(z_min + radius, length - radius)
        if plan.free(x, z, radius):
            plan.add(x, z, radius)
            return x, z
    return None


def _sample_decals(rng, room, cam_z):
    half_w, height, length = room
    decals = []
    if rng.random() < 0.6:
        hx, hz = rng.uniform(0.6, 1.4), rng.uniform(0.5, 1.2)
        x = rng.uniform(-half_w + hx, half_w - hx) if half_w > hx else 0.0
        z = rng.uniform(cam_z + 0.8, length - 0.3)
        decals.append([FACE_FLOOR, x - hx, x + hx, z - hz, z + hz, RUG, *_tint(rng)])
    used = {FACE_LEFT: [], FACE_RIGHT: [], FACE_FAR: []}
    for _ in range(rng.integers(1, MAX_DECALS)):
        cls = (DOOR, WINDOW, PAINTING)[rng.choice(3, p=[0.3, 0.35, 0.35])]
        face = (FACE_LEFT, FACE_RIGHT, FACE_FAR)[rng.choice(3, p=[0.25, 0.25, 0.5])]
        if cls == DOOR:
            width, b0, b1 = rng.uniform(0.8, 1.0), 0.0, min(rng.uniform(2.0, 2.2), height - 0.1)
        elif cls == WINDOW:
            width, b0 = rng.uniform(0.8, 1.8), rng.uniform(0.8, 1.0)
            b1 = min(b0 + rng.uniform(1.0, 1.4), height - 0.2)
        else:
            width, centre, half_h = rng.uniform(0.4, 1.2), rng.uniform(1.4, 1.8), rng.uniform(0.15, 0.45)
            b0, b1 = centre - half_h, min(centre + half_h, height - 0.1)
        lo, hi = (-half_w, half_w) if face == FACE_FAR else (cam_z + 0.5, length)
        if hi - lo <= width:
            continue
        a0 = rng.uniform(lo, hi - width)
        a1 = a0 + width
        if any(a0 < u1 and u0 < a1 and b0 < v1 and v0 < b1 for u0, u1, v0, v1 in used[face]):
            continue
        used[face].append((a0, a1, b0, b1))
        decals.append([face, a0, a1, b0, b1, cls, *_tint(rng)])
    return decals


def sample_scene(rng: np.random.Generator) -> Scene:
    """Sample one room layout, camera and light."""
    room = np.array([rng.uniform(2.0, 4.0), rng.uniform(2.5, 3.5), rng.uniform(4.5, 10.0)])
    half_w, height, length = room
    cam_pos = np.array([rng.uniform(-0.4, 0.4) * half_w, rng.uniform(1.0, 1.8), rng.uniform(0.3, 0.8)])
    cam_rot = camera_rotation(rng.uniform(-0.45, 0.45), rng.uniform(0.05, 0.35), rng.uniform(-0.04, 0.04))
    light = np.array([rng.uniform(-0.7, 0.7) * half_w, height - 0.15, rng.uniform(0.3, 0.8) * length])
    plan = _Floorplan(cam_pos[0], cam_pos[2])
    z_min = cam_pos[2] + 0.6

    boxes = []
    for _ in range(rng.integers(2, MAX_BOXES + 1)):
        cls = (CABINET, SOFA, CRATE)[rng.choice(3, p=[0.3, 0.25, 0.45])]
        box = _place_box(rng, plan, cls, room, z_min)
        if box is not None:
            boxes.append(box)
    spheres = []
    for _ in range(rng.integers(0, MAX_SPHERES + 1)):
        radius = rng.uniform(0.12, 0.4)
        spot = _place_round(rng, plan, radius, room, z_min)
        if spot is not None:
            spheres.append([spot[0], spot[1], radius, BALL, *_tint(rng)])
    cylinders = []
    for _ in range(rng.integers(0, MAX_CYLINDERS + 1)):
        if rng.random() < 0.65:
            cls, radius, cyl_h = BARREL, rng.uniform(0.18, 0.35), rng.uniform(0.4, 1.1)
        else:
            cls, radius, cyl_h = PILLAR, rng.uniform(0.12, 0.3), height
        spot = _place_round(rng, plan, radius, room, z_min)
        if spot is not None and cls == PILLAR and np.hypot(spot[0] - light[0], spot[1] - light[2]) < radius + 0.1:
            spot = None  # the light would sit inside the pillar (its footprint stays reserved)
        if spot is not None:
            cylinders.append([spot[0], spot[1], radius, cyl_h, cls, *_tint(rng)])

    def rows(items, width):
        return np.asarray(items, dtype=np.float64).reshape(len(items), width)

    return Scene(room=room, cam_pos=cam_pos, cam_rot=cam_rot, light=light,
                 exposure=float(rng.uniform(0.85, 1.15)),
                 room_tint=np.stack([_tint(rng) for _ in range(NUM_ROOM_FACES)]),
                 boxes=rows(boxes, 10), spheres=rows(spheres, 7), cylinders=rows(cylinders, 8),
                 decals=rows(_sample_decals(rng, room, cam_pos[2]), 9))


def _pad(rows: np.ndarray, count: int) -> tuple:
    out = np.zeros((count, rows.shape[1]))
    out[: len(rows)] = rows
    active = np.zeros(count, dtype=bool)
    active[: len(rows)] = True
    return out, active


@dataclass
class SceneBatch:
    """Layouts padded to fixed object counts, as float32 tensors (inactive slots are masked out)."""

    room: torch.Tensor  # (B, 3)
    cam_pos: torch.Tensor  # (B, 3)
    cam_rot: torch.Tensor  # (B, 3, 3)
    light: torch.Tensor  # (B, 3)
    exposure: torch.Tensor  # (B,)
    box_center: torch.Tensor  # (B, MAX_BOXES, 3)
    box_half: torch.Tensor  # (B, MAX_BOXES, 3)
    box_yaw: torch.Tensor  # (B, MAX_BOXES)
    box_active: torch.Tensor  # (B, MAX_BOXES) bool
    sphere_center: torch.Tensor  # (B, MAX_SPHERES, 3)
    sphere_radius: torch.Tensor  # (B, MAX_SPHERES)
    sphere_active: torch.Tensor
    cyl_center: torch.Tensor  # (B, MAX_CYLINDERS, 3), y = 0
    cyl_radius: torch.Tensor
    cyl_height: torch.Tensor
    cyl_active: torch.Tensor
    decal_face: torch.Tensor  # (B, MAX_DECALS) long
    decal_rect: torch.Tensor  # (B, MAX_DECALS, 4): a0, a1, b0, b1
    decal_class: torch.Tensor  # (B, MAX_DECALS) long
    decal_tint: torch.Tensor  # (B, MAX_DECALS, 3)
    decal_active: torch.Tensor
    instance_class: torch.Tensor  # (B, NUM_INSTANCES) long
    instance_tint: torch.Tensor  # (B, NUM_INSTANCES, 3)

    @staticmethod
    def from_scenes(scenes: Sequence[Scene]) -> "SceneBatch":
        boxes, box_on = zip(*(_pad(s.boxes, MAX_BOXES) for s in scenes))
        spheres, sph_on = zip(*(_pad(s.spheres, MAX_SPHERES) for s in scenes))
        cyls, cyl_on = zip(*(_pad(s.cylinders, MAX_CYLINDERS) for s in scenes))
        decals, dec_on = zip(*(_pad(s.decals, MAX_DECALS) for s in scenes))
        boxes, spheres, cyls, decals = (np.stack(a) for a in (boxes, spheres, cyls, decals))
        inst_class = np.concatenate([np.broadcast_to(ROOM_FACE_CLASSES, (len(scenes), NUM_ROOM_FACES)),
                                     boxes[..., 6], spheres[..., 3], cyls[..., 4]], axis=1)
        inst_tint = np.concatenate([np.stack([s.room_tint for s in scenes]),
                                    boxes[..., 7:], spheres[..., 4:], cyls[..., 5:]], axis=1)

        def f(a):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)

        def b(a):
            return torch.as_tensor(np.stack(a))

        def i(a):
            return torch.as_tensor(np.rint(a).astype(np.int64))

        return SceneBatch(
            room=f(np.stack([s.room for s in scenes])),
            cam_pos=f(np.stack([s.cam_pos for s in scenes])),
            cam_rot=f(np.stack([s.cam_rot for s in scenes])),
            light=f(np.stack([s.light for s in scenes])),
            exposure=f([s.exposure for s in scenes]),
            box_center=f(np.stack([boxes[..., 0], boxes[..., 3], boxes[..., 1]], axis=-1)),
            box_half=f(boxes[..., 2:5]), box_yaw=f(boxes[..., 5]), box_active=b(box_on),
            sphere_center=f(np.stack([spheres[..., 0], spheres[..., 2], spheres[..., 1]], axis=-1)),
            sphere_radius=f(spheres[..., 2]), sphere_active=b(sph_on),
            cyl_center=f(np.stack([cyls[..., 0], np.zeros(cyls.shape[:2]), cyls[..., 1]], axis=-1)),
            cyl_radius=f(cyls[..., 2]), cyl_height=f(cyls[..., 3]), cyl_active=b(cyl_on),
            decal_face=i(decals[..., 0]), decal_rect=f(decals[..., 1:5]), decal_class=i(decals[..., 5]),
            decal_tint=f(decals[..., 6:]), decal_active=b(dec_on),
            instance_class=i(inst_class), instance_tint=f(inst_tint),
        )
