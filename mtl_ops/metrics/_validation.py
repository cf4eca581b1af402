"""Argument checks shared by the metrics: every error names the argument, the expectation and what came."""
from __future__ import annotations

from typing import Optional

import torch


def check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x.detach()


def check_same_device(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}; put them on one device")


def as_map(x: torch.Tensor, name: str) -> torch.Tensor:
    """A per-pixel map given as (B, H, W) or (B, 1, H, W), returned as (B, H, W)."""
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 3:
        return x
    raise ValueError(f"{name} must have shape (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")


def check_same_shape(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} has shape {tuple(a.shape)} but {b_name} has shape {tuple(b.shape)}; they must match"
        )


def as_mask(mask: Optional[object], like: torch.Tensor, like_name: str) -> Optional[torch.Tensor]:
    """An optional boolean validity mask, (B, H, W) or (B, 1, H, W), matching `like` (a (B, H, W) map)."""
    if mask is None:
        return None
    mask = check_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = valid pixel), got dtype {mask.dtype}")
    mask = as_map(mask, "mask")
    if mask.shape != like.shape:
        raise ValueError(
            f"mask has spatial shape {tuple(mask.shape)} but {like_name} has {tuple(like.shape)}; they must match"
        )
    check_same_device(mask, "mask", like, like_name)
    return mask


def check_floating(x: torch.Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_integer(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer label tensor, got dtype {x.dtype}")
