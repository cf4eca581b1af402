"""Checkpoints: written atomically (:func:`~mtl_ops.utils.files.atomic_write`), so a crash never leaves a
truncated checkpoint under the real name, and read back with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain Python values (dicts, lists, tuples, strings, numbers, None): the
run's config as a dict, state dicts, the schedules' reports. ``weights_only`` loading accepts exactly those, so
a file whose pickle would build other objects — and could run arbitrary code while doing so — is refused with
a clear error instead of being executed.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Dict, Union

import torch

from ..utils.files import atomic_write

FORMAT_VERSION = 1


def save_checkpoint(path: Union[str, Path], state: Dict[str, Any]) -> Path:
    """Write ``state`` (plus a format version) to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; errors name the path and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ValueError(f"checkpoint: {path} is not a readable mtl_ops checkpoint (UnpicklingError: {e})") from e
        found = re.search(r"WeightsUnpickler error: (.*?)(?:\. |\n|$)", str(e))
        raise ValueError(f"checkpoint: refused {path}: it holds objects other than tensors and plain Python values "
                         f"({found.group(1).strip() if found else 'see the cause'}), and unpickling them could run "
                         f"arbitrary code; mtl_ops checkpoints never hold such objects") from e
    except Exception as e:  # noqa: BLE001 - any zip/format error means the same thing here
        raise ValueError(f"checkpoint: {path} is not a readable mtl_ops checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint: {path} is not an mtl_ops checkpoint of format {FORMAT_VERSION}")
    return state
