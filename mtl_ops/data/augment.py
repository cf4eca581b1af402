"""Geometric augmentations of a sample dict, keeping every dense label consistent with the image.

Spatial entries: ``image`` (3, H, W), ``semseg`` (H, W), ``depth`` (1, H, W), ``normals`` (3, H, W);
any of them may be absent. Randomness comes from torch's global generator (``generator`` overrides),
which ``DataLoader`` seeds differently in every worker.
"""
from __future__ import annotations

import numbers
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

SPATIAL_KEYS = ("image", "semseg", "depth", "normals")


def valid_zoom_scales(scales) -> bool:
    """Whether ``scales`` is a non-empty sequence of real zoom factors >= 1 (what :func:`scale_crop` accepts);
    the loaders and the trainer's config check their scale lists with it."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        return False
    return all(isinstance(s, numbers.Real) and not isinstance(s, bool) and s >= 1.0 for s in scales)


def hflip(sample: Dict[str, torch.Tensor], flip: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Mirror left-right every dense entry; the normals' x component (camera x points right) changes sign.

    ``sample`` is one sample, or with ``flip`` a batch: ``flip`` (B,) bool chooses the samples to mirror (the
    others are kept). Dense entries are those whose last two axes are the image's height and width and that
    have at least two axes beyond the batch's (``semseg`` (H, W) and ``depth`` (1, H, W) are, image-level
    ``attributes`` (K,) are not); everything else is returned as it is.
    """
    if "image" not in sample:
        raise ValueError(f"hflip: sample must have an 'image' entry (its size tells the dense entries), "
                         f"got entries {sorted(sample)}")
    size = sample["image"].shape[-2:]
    min_dim = 2 if flip is None else 3
    if flip is not None:
        if not isinstance(flip, torch.Tensor) or flip.dtype != torch.bool or flip.shape != sample["image"].shape[:1]:
            got = f"{flip.dtype} {tuple(flip.shape)}" if isinstance(flip, torch.Tensor) else type(flip).__name__
            raise ValueError(f"hflip: flip must be a bool tensor of shape (B,) = {tuple(sample['image'].shape[:1])}, "
                             f"got {got}")
        if not bool(flip.any()):
            return sample
    out = dict(sample)
    for key, value in sample.items():
        if value.dim() < min_dim or value.shape[-2:] != size:
            continue
        mirrored = value.flip(-1)
        if key == "normals":
            mirrored = mirrored * torch.tensor([-1.0, 1.0, 1.0], dtype=value.dtype).view(3, 1, 1)
        if flip is not None:
            mirrored = torch.where(flip.view(-1, *([1] * (value.dim() - 1))), mirrored, value)
        out[key] = mirrored
    return out


def scale_crop(sample: Dict[str, torch.Tensor], scale: float, top: int, left: int) -> Dict[str, torch.Tensor]:
    """Crop a window ``1/scale`` of the size at ``(top, left)`` and resize it back (a zoom by ``scale``).

    The image is resized bilinearly, labels, depth and normals by nearest neighbour; depth is divided by
    ``scale`` (the zoomed view looks ``scale`` times closer), as in MTAN's RandomScaleCrop.
    """
    height, width = sample["image"].shape[-2:]
    crop_h, crop_w = int(height / scale), int(width / scale)
    out = dict(sample)
    for key in SPATIAL_KEYS:
        if key not in out:
            continue
        value = out[key]
        window = value[..., top:top + crop_h, left:left + crop_w]
        batched = window.reshape(1, -1, crop_h, crop_w).float()
        if key == "image":
            resized = F.interpolate(batched, size=(height, width), mode="bilinear", align_corners=False)
        else:
            resized = F.interpolate(batched, size=(height, width), mode="nearest")
        resized = resized.reshape(*value.shape[:-2], height, width).to(value.dtype)
        out[key] = resized / scale if key == "depth" else resized
    return out


def random_flip_scale_crop(sample: Dict[str, torch.Tensor], scales: Sequence[float] = (1.0, 1.2, 1.5),
                           flip_prob: float = 0.5,
                           generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """MTAN-style training augmentation: a random scale crop (scale drawn from ``scales``; none when it is
    1) followed by a horizontal flip with probability ``flip_prob``."""
    height, width = sample["image"].shape[-2:]
    scale = float(scales[int(torch.randint(len(scales), (), generator=generator))])
    if scale != 1.0:
        crop_h, crop_w = int(height / scale), int(width / scale)
        top = int(torch.randint(height - crop_h + 1, (), generator=generator))
        left = int(torch.randint(width - crop_w + 1, (), generator=generator))
        sample = scale_crop(sample, scale, top, left)
    if float(torch.rand((), generator=generator)) < flip_prob:
        sample = hflip(sample)
    return sample
