"""Pretrained backbone weights from a local file: a safetensors file or a torch state dict (a plain
``{name: tensor}`` dict, or a checkpoint holding one under ``state_dict`` or ``model``, as mtl_ops's own
checkpoints do). Nothing is downloaded; torch files are read with ``weights_only=True``, so a file that would
run code is refused.

Keys are matched after removing the prefix that makes most of them fit (``module.`` of DDP, ``backbone.`` of a
network's state dict, ``net.backbone.`` of an mtl_ops checkpoint, ...), so a timm or torchvision checkpoint
loads into ``timm:`` / ``torchvision:`` backbones by its own keys, and a backbone saved from an mtl_ops network
loads back. The :class:`LoadReport` lists the loaded, missing (left at their initialisation) and unexpected
(unused) keys; tensors whose shapes differ, or a file of which no key fits, are refused.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Union

import torch
from torch import nn

from ..common.optional import require


class MissingWeightsWarning(UserWarning):
    """A weights file left some of the backbone's tensors at their initialisation."""


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
        try:
            return dict(safetensors.load_file(str(path)))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a bad file
            raise ValueError(f"pretrained: {path} is not a readable safetensors file ({type(e).__name__}: {e})") \
                from e
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


def _best_prefix(keys, wanted) -> str:
    """The prefix whose removal makes the most ``keys`` fit ``wanted`` (the shortest on a tie)."""
    candidates = {""}
    for k in keys:
        parts = k.split(".")
        candidates.update(".".join(parts[:i]) + "." for i in range(1, min(len(parts), 5)))
    return max(sorted(candidates), key=lambda p: (sum(k[len(p):] in wanted for k in keys if k.startswith(p)),
                                                  -len(p)))


def load_matching(own: Mapping[str, torch.Tensor], load: Callable[[Dict[str, torch.Tensor]], None],
                  source: Union[str, Path, Mapping[str, torch.Tensor]], target: str) -> LoadReport:
    """Match ``source``'s keys to ``own`` (the target's tensors by key), check shapes, hand the matched tensors
    to ``load`` and report. ``target`` names the target in errors."""
    path = "<state dict>" if isinstance(source, Mapping) else str(source)
    state = dict(source) if isinstance(source, Mapping) else read_state_dict(source)
    prefix = _best_prefix(list(state), own)
    matched = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in own}
    if not matched:
        raise ValueError(f"pretrained: no key of {path} matches the backbone ({target}); the file's first keys: "
                         f"{list(state)[:4]}, the backbone's: {list(own)[:4]}")
    wrong = [f"{k} {tuple(v.shape)} (backbone: {tuple(own[k].shape)})" for k, v in matched.items()
             if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"pretrained: {len(wrong)} tensor(s) of {path} have other shapes than the backbone's "
                         f"(another architecture or width?): {', '.join(wrong[:4])}")
    load(matched)
    # BatchNorm's num_batches_tracked counts steps; checkpoints often leave it out, and it is not a weight
    missing = sorted(k for k in own if k not in matched and not k.endswith("num_batches_tracked"))
    report = LoadReport(path, loaded=sorted(matched), missing=missing, prefix=prefix,
                        unexpected=sorted(k for k in state if not (k.startswith(prefix) and k[len(prefix):] in own)))
    if missing:
        warnings.warn(report.summary(), MissingWeightsWarning, stacklevel=3)
    return report


def load_backbone_weights(backbone: nn.Module, source: Union[str, Path, Mapping[str, torch.Tensor]]) -> LoadReport:
    """Load ``source`` (a path, or a state dict) into ``backbone``: into its ``weights_module`` when it has one
    (timm's / torchvision's own model inside the adapters, whose keys their checkpoints use), else into the
    backbone itself. Missing keys also raise a warning (their tensors keep their initialisation)."""
    target = getattr(backbone, "weights_module", backbone)
    return load_matching(target.state_dict(), lambda matched: target.load_state_dict(matched, strict=False),
                         source, type(target).__name__)
