"""Multi-scale backbones shared by the complete multi-task networks: a small ResNet family (basic blocks,
trained from scratch: nothing is downloaded), any timm ``features_only`` model, torchvision's ResNets, or a
module of the user's own.

Every backbone maps images (B, 3, H, W) to a list of feature maps (B, C, h, w), shallow to deep, and exposes
``channels`` (per map) and ``strides`` (per map, relative to the input).

Every network names its backbone the same way — ``resnet10|resnet18|resnet34`` (built in),
``timm:<model name>``, ``torchvision:<resnet name>`` or a module — and :func:`build_backbone` is the one place
that reads these names and their options. ``width`` (the base width) exists only for the built-in ResNets: the
others have their published widths, so a ``width`` given with them is refused rather than silently ignored.
``pretrained`` is a local weights file (see :mod:`mtl_ops.models.pretrained`) or True for the library's own
published weights (timm and torchvision download them; the built-in ResNets have none).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from ..nn.blocks import BasicBlock
from ..nn.inputs import check_map
from ..common.optional import require
from .pretrained import load_backbone_weights

_DEPTHS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def stage_outputs(stem: Callable, stages, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every stage of a ResNet-style backbone: ``stem`` (a module or any callable), then each of
    ``stages`` in turn."""
    x = stem(x)
    features = []
    for stage in stages:
        x = stage(x)
        features.append(x)
    return features


#: the built-in ResNets
RESNETS = tuple(f"resnet{depth}" for depth in _DEPTHS)
#: torchvision's ResNet family (``torchvision:<name>``); ResNeXt and wide ResNets are ResNets with other blocks
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                       "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
BACKBONE_NAMES = "resnet10, resnet18, resnet34, timm:<model name> or torchvision:<resnet name>"


class ResNetBackbone(nn.Module):
    """ResNet-10/18/34 with a configurable base ``width``; returns the four stage outputs (strides 4, 8,
    16, 32). ``output_stride=8`` dilates the last two stages instead of striding (DeepLab style), and
    ``output_stride=16`` the last one."""

    stem_names = ("stem",)  # the modules that are the stem (ETR-NLP leaves them unconverted)

    def __init__(self, depth: int = 18, *, width: int = 64, in_channels: int = 3, output_stride: int = 32):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNetBackbone: depth must be one of {sorted(_DEPTHS)}, got {depth!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"ResNetBackbone: output_stride must be 8, 16 or 32, got {output_stride!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"ResNetBackbone: width must be a positive int, got {width!r}")
        self.in_channels = in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        strides = [1, 2, 2, 2]
        dilations = [1, 1, 1, 1]
        if output_stride <= 16:
            strides[3], dilations[3] = 1, 2
        if output_stride == 8:
            strides[2], dilations[2], dilations[3] = 1, 2, 4
        stages, inplanes = [], width
        for i, n_blocks in enumerate(_DEPTHS[depth]):
            planes = width * 2 ** i
            blocks = [BasicBlock(inplanes, planes, strides[i], dilations[i])]
            blocks += [BasicBlock(planes, planes, 1, dilations[i]) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            inplanes = planes
        self.stages = nn.ModuleList(stages)
        self.channels = [width * 2 ** i for i in range(4)]
        total, self.strides = 4, []
        for s in strides:
            total *= s
            self.strides.append(total)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """images (B, in_channels, H, W) -> the four stage outputs [(B, C_i, H / s_i, W / s_i)], ``channels[i]``
        channels at ``strides[i]`` (4, 8, 16, 32 unless dilated)."""
        check_map(x, "ResNetBackbone", "images", self.in_channels)
        return stage_outputs(self.stem, self.stages, x)


class TimmBackbone(nn.Module):
    """Any timm model created with ``features_only=True``: random initialisation unless ``pretrained=True``
    (timm then downloads the weights, where the machine can) — or a local file through
    :func:`build_backbone`'s ``pretrained``. ``kwargs`` go to ``timm.create_model`` (``out_indices``,
    ``output_stride``, ...). Maps in channels-last layout (some transformers' features) are returned as
    (B, C, h, w) like every backbone's. The timm model is ``self.model``: its state-dict keys are timm's own."""

    def __init__(self, name: str, *, pretrained: bool = False, **kwargs):
        super().__init__()
        timm = require("timm", "timm", "timm", "TimmBackbone")
        self.name = name
        try:
            self.model = timm.create_model(name, features_only=True, pretrained=pretrained, **kwargs)
        except RuntimeError as e:  # timm's message for an unknown name: "Unknown model (x)"
            raise ValueError(f"backbone: timm:{name}: {e}") from e
        self.channels = list(self.model.feature_info.channels())
        self.strides = list(self.model.feature_info.reduction())
        # timm marks features returned as (B, h, w, C) with output_fmt "NHWC"
        self.channels_last = str(getattr(self.model, "output_fmt", "NCHW")).upper().endswith("NHWC")
        self.stem_names = _timm_stem(self.model)

    @property
    def weights_module(self) -> nn.Module:
        """The module whose state-dict keys a checkpoint of this model uses (timm's own)."""
        return self.model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """images (B, C, H, W) -> timm's feature maps [(B, channels[i], H / strides[i], W / strides[i])]."""
        features = list(self.model(x))
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return features


def _timm_stem(model: nn.Module) -> tuple:
    """The names of a timm feature model's stem: its top-level modules before the one that holds the first
    stride-4 (or deeper) feature of the full model (timm flattens top-level sequences: ``stages.0`` becomes
    ``stages_0``; whole ``blocks`` stay one module); none when no top-level module holds that feature."""
    info = model.feature_info.info  # every feature of the model, whatever out_indices selects
    first = next((f["module"] for f in info if f["reduction"] >= 4), None)
    names = []
    for child, _ in model.named_children():
        if first is not None and (first.replace(".", "_") == child or first.startswith(child + ".")
                                  or first.replace(".", "_").startswith(child + "_")):
            return tuple(names)
        names.append(f"model.{child}")
    return ()  # no top-level module holds the features (a wrapped model): no stem known


def check_images(images, where: str, backbone: nn.Module) -> None:
    """A network's input: floating-point (B, C, H, W) images with the backbone's C (when it says it)."""
    check_map(images, where, "images", getattr(backbone, "in_channels", None))


class TorchvisionBackbone(nn.Module):
    """A torchvision ResNet (``torchvision.models.<name>``) as a feature extractor: the outputs of ``layer1`` …
    ``layer4`` (strides 4, 8, 16, 32). Random initialisation unless ``weights`` names torchvision weights
    (``"DEFAULT"``, ...; torchvision then downloads them, where the machine can). ``output_stride`` 16 or 8
    dilates the last stage(s) (``replace_stride_with_dilation``; torchvision allows it for bottleneck ResNets
    only). The ResNet itself is ``self.model`` without its classifier, so torchvision's own checkpoints load by
    their keys (``fc.*`` is reported unused); ``stem`` (a method) and ``stages`` run its layers for networks
    that run them one by one."""

    stem_names = ("model.conv1", "model.bn1")

    def __init__(self, name: str, *, weights=None, output_stride: int = 32, **kwargs):
        super().__init__()
        models = require("torchvision.models", "torchvision", "torchvision", "TorchvisionBackbone")
        if name not in TORCHVISION_RESNETS:
            raise ValueError(f"backbone: torchvision:<name> must be one of torchvision's ResNets "
                             f"{', '.join(TORCHVISION_RESNETS)}, got {name!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"backbone: output_stride must be 8, 16 or 32, got {output_stride!r}")
        if output_stride != 32:
            kwargs["replace_stride_with_dilation"] = [False, output_stride == 8, True]
        try:
            model = getattr(models, name)(weights=weights, **kwargs)
        except NotImplementedError as e:  # BasicBlock refuses dilation
            raise ValueError(f"backbone: torchvision:{name} cannot run at output_stride {output_stride} ({e}); "
                             f"use a bottleneck ResNet (resnet50, ...) or output_stride 32") from e
        model.fc = nn.Identity()  # the classifier is not part of the feature extractor
        self.name = name
        self.model = model
        self.channels = [_out_channels(getattr(model, f"layer{i}")) for i in range(1, 5)]
        self.strides = [4, 8, min(16, output_stride), output_stride]

    @property
    def weights_module(self) -> nn.Module:
        """The module whose state-dict keys a torchvision checkpoint uses."""
        return self.model

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The ResNet's stem, conv1 → bn1 → relu → maxpool (run through its own layers: no module is built per
        call)."""
        m = self.model
        return m.maxpool(m.relu(m.bn1(m.conv1(x))))

    @property
    def stages(self) -> list:
        return [self.model.layer1, self.model.layer2, self.model.layer3, self.model.layer4]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """images (B, 3, H, W) -> the outputs of layer1 ... layer4, [(B, channels[i], H / strides[i],
        W / strides[i])]."""
        check_map(x, "TorchvisionBackbone", "images", self.model.conv1.in_channels)
        return stage_outputs(self.stem, self.stages, x)


def _out_channels(stage: nn.Sequential) -> int:
    block = stage[-1]
    last = block.conv3 if hasattr(block, "conv3") else block.conv2
    return last.out_channels


class SelectMaps(nn.Module):
    """A backbone that returns the maps ``indices`` of ``backbone`` (a network that needs a fixed number of
    maps takes the deepest ones)."""

    def __init__(self, backbone: nn.Module, indices: Sequence[int]):
        super().__init__()
        self.backbone = backbone
        self.indices = list(indices)
        self.channels = [backbone.channels[i] for i in self.indices]
        self.strides = [backbone.strides[i] for i in self.indices]
        self.stem_names = tuple(f"backbone.{n}" for n in getattr(backbone, "stem_names", ()))

    @property
    def weights_module(self) -> nn.Module:
        return getattr(self.backbone, "weights_module", self.backbone)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.backbone(x)
        return [features[i] for i in self.indices]


def is_builtin(name) -> bool:
    """Whether ``name`` is one of the built-in ResNets (the only backbones with a ``width``)."""
    return isinstance(name, str) and name in RESNETS


def backbone_label(backbone) -> str:
    """How errors name ``backbone`` (a name, or a module's class)."""
    return repr(backbone) if isinstance(backbone, str) else f"{type(backbone).__name__} (a module)"


def check_pretrained(pretrained, owner: str = "backbone") -> None:
    """``pretrained`` must be None, a bool or a path."""
    if pretrained is not None and not isinstance(pretrained, (bool, str, Path)):
        raise ValueError(f"{owner}: pretrained must be None, True (the library's published weights) or the path "
                         f"of a weights file, got {pretrained!r}")


def _check_module(backbone: nn.Module, owner: str) -> None:
    channels, strides = getattr(backbone, "channels", None), getattr(backbone, "strides", None)
    ok = isinstance(channels, (list, tuple)) and isinstance(strides, (list, tuple)) and len(channels) > 0 \
        and len(channels) == len(strides) and all(isinstance(c, int) and c > 0 for c in channels)
    if not ok:
        raise ValueError(f"{owner}: a backbone module must map images to a list of feature maps and say their "
                         f"`channels` and `strides` (lists of ints, one per map, shallow to deep); "
                         f"{type(backbone).__name__} has channels={channels!r}, strides={strides!r}")


def build_backbone(name: Union[str, nn.Module] = "resnet18", *, width: Optional[int] = None,
                   default_width: int = 64, num_maps: Optional[int] = None, owner: str = "backbone",
                   pretrained: Union[None, bool, str, Path] = None, **kwargs) -> nn.Module:
    """The backbone ``name``:

    * ``resnet10|resnet18|resnet34``: :class:`ResNetBackbone` at base ``width`` (None: ``default_width``,
      each network's own default); ``kwargs``: output_stride, in_channels.
    * ``timm:<model name>``: :class:`TimmBackbone`; ``kwargs`` go to ``timm.create_model`` (``out_indices``,
      ``output_stride``, ...).
    * ``torchvision:<resnet name>``: :class:`TorchvisionBackbone`; ``kwargs``: ``weights``, ``output_stride``
      and the ResNet constructor's own.
    * an ``nn.Module`` of the user's: used as it is; it must return a list of maps and have ``channels`` and
      ``strides`` (``kwargs`` are refused).

    ``width`` with anything but a built-in ResNet is refused (the others have their own widths).
    ``pretrained``: a path loads that file's weights (:func:`~mtl_ops.models.load_backbone_weights`; the report
    is the backbone's ``pretrained_report``); True asks timm / torchvision for their published weights (a
    download). ``num_maps``: the number of maps the caller (``owner``, named in errors) needs; a backbone with
    more returns its deepest ``num_maps`` ones, one with fewer is refused."""
    check_pretrained(pretrained, owner)
    if isinstance(name, nn.Module):
        if width is not None or kwargs:
            given = {"width": width} if width is not None else {}
            raise ValueError(f"{owner}: a backbone module is used as it is, so width and backbone options do not "
                             f"apply; got {dict(given, **kwargs)!r}")
        if pretrained is True:
            raise ValueError(f"{owner}: pretrained=True asks timm or torchvision for their weights; for a backbone "
                             f"module, pass the path of a weights file")
        _check_module(name, owner)
        backbone = name
    elif not isinstance(name, str):
        raise ValueError(f"{owner}: backbone must be a name ({BACKBONE_NAMES}) or an nn.Module, got {name!r}")
    elif name.startswith(("timm:", "torchvision:")):
        if width is not None:
            raise ValueError(f"{owner}: width sets the base width of the built-in ResNets ({', '.join(RESNETS)}) "
                             f"only; {name} has its own widths, so leave width out (got width={width!r})")
        if name.startswith("timm:"):
            if kwargs.get("output_stride") == 32:
                kwargs.pop("output_stride")  # timm's default; not every timm model takes the argument
            backbone = TimmBackbone(name[5:], pretrained=pretrained is True, **kwargs)
        else:
            if pretrained is True:
                if kwargs.get("weights") is not None:
                    raise ValueError(f"{owner}: pretrained=True and weights={kwargs['weights']!r} both choose "
                                     f"torchvision's weights; give one")
                kwargs["weights"] = "DEFAULT"
            backbone = TorchvisionBackbone(name[12:], **kwargs)
    elif name in RESNETS:
        if pretrained is True:
            raise ValueError(f"{owner}: the built-in {name} has no published weights to fetch; pass the path of a "
                             f"weights file as pretrained, or use timm:<name> / torchvision:<name>")
        backbone = ResNetBackbone(int(name[6:]), width=default_width if width is None else width, **kwargs)
    else:
        raise ValueError(f"{owner}: backbone name must be {BACKBONE_NAMES}, got {name!r}")
    report = load_backbone_weights(backbone, pretrained) if isinstance(pretrained, (str, Path)) else None
    if num_maps is not None:
        n = len(backbone.channels)
        if n < num_maps:
            raise ValueError(f"{owner}: needs {num_maps} feature maps, but backbone {backbone_label(name)} gives {n} "
                             f"(channels {list(backbone.channels)}, strides {list(backbone.strides)}); choose a "
                             f"backbone with at least {num_maps} stages, or for timm pass out_indices selecting "
                             f"{num_maps} of them")
        if n > num_maps:
            backbone = SelectMaps(backbone, range(n - num_maps, n))
    if report is not None:
        backbone.pretrained_report = report
    return backbone
