"""Pretrained backbone weights from a local file: a safetensors file or a torch state dict (a plain
``{name: tensor}`` dict, or a checkpoint holding one under ``state_dict`` or ``model``, as mtl_ops's own
checkpoints do). Nothing is downloaded.

Keys are matched after removing the longest prefix that makes them fit (``module.`` of DDP, ``backbone.`` of a
network's state dict, ...), so a timm or torchvision checkpoint loads into ``timm:`` / ``torchvision:``
backbones by its own keys, and a backbone saved from an mtl_ops network loads back. The result lists the
loaded, missing (left at their initialisation) and unexpected (unused) keys; tensors whose shapes differ, or a
file of which no key fits, are refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Union

import torch
from torch import nn

from ..common.optional import require
from .backbones import SelectMaps, TimmBackbone, TorchvisionBackbone


@dataclass
class LoadReport:
    path: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)      # in the backbone, not in the file
    unexpected: List[str] = field(default_factory=list)   # in the file, not used
    prefix: str = ""                                      # removed from the file's keys

    def summary(self) -> str:
        def listed(keys):
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
        text = f"pretrained: loaded {len(self.loaded)} tensors from {self.path}"
        if self.prefix:
            text += f" (key prefix {self.prefix!r} removed)"
        if self.missing:
            text += f"; missing, left at their initialisation: {listed(self.missing)}"
        if self.unexpected:
            text += f"; unexpected, not used: {listed(self.unexpected)}"
        return text


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file (``.safetensors``) or of a torch file (read with
    ``weights_only=True``: a file that would run code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained: no file at {path}")
    if path.suffix == ".safetensors":
        safetensors = require("safetensors.torch", "safetensors", "train", "reading .safetensors weights")
        return dict(safetensors.load_file(str(path)))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling or format error means the same here
        raise ValueError(f"pretrained: {path} is not a safetensors file or a torch state dict readable with "
                         f"weights_only=True ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                         for k, v in data.items()):
        raise ValueError(f"pretrained: {path} holds no state dict (a dict of name -> tensor, possibly under "
                         f"'state_dict' or 'model')")
    return data


def weights_target(backbone: nn.Module) -> nn.Module:
    """The module whose keys a backbone checkpoint uses: timm's / torchvision's own model inside the adapters."""
    if isinstance(backbone, SelectMaps):
        backbone = backbone.backbone
    if isinstance(backbone, (TimmBackbone, TorchvisionBackbone)):
        return backbone.model
    return backbone


def _best_prefix(keys, wanted) -> str:
    candidates = {""}
    for k in keys:
        parts = k.split(".")
        candidates.update(".".join(parts[:i]) + "." for i in range(1, min(len(parts), 5)))
    return max(sorted(candidates), key=lambda p: (sum(k[len(p):] in wanted for k in keys if k.startswith(p)),
                                                  -len(p)))


def load_backbone_weights(backbone: nn.Module, source: Union[str, Path, Dict[str, torch.Tensor]]) -> LoadReport:
    """Load ``source`` (a path, or a state dict) into ``backbone`` (see the module docstring)."""
    path = str(source) if not isinstance(source, dict) else "<state dict>"
    state = read_state_dict(source) if not isinstance(source, dict) else source
    target = weights_target(backbone)
    own = target.state_dict()
    prefix = _best_prefix(list(state), own)
    matched = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in own}
    if not matched:
        raise ValueError(f"pretrained: no key of {path} matches the backbone ({type(target).__name__}); the file's "
                         f"first keys: {list(state)[:4]}, the backbone's: {list(own)[:4]}")
    wrong = [f"{k} {tuple(v.shape)} (backbone: {tuple(own[k].shape)})" for k, v in matched.items()
             if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"pretrained: {len(wrong)} tensor(s) of {path} have other shapes than the backbone's "
                         f"(another architecture or width?): {', '.join(wrong[:4])}")
    target.load_state_dict(matched, strict=False)
    # BatchNorm's num_batches_tracked counts steps; checkpoints often leave it out, and it is not a weight
    missing = sorted(k for k in own if k not in matched and not k.endswith("num_batches_tracked"))
    return LoadReport(path, loaded=sorted(matched), missing=missing,
                      unexpected=sorted(k for k in state if not (k.startswith(prefix) and k[len(prefix):] in own)),
                      prefix=prefix)
