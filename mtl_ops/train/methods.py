"""Methods by name: a registry of network builders (and, for methods with their own training procedure,
schedules).

Contract for a method's network (what ``register_method`` expects from ``build_fn``):

* it is built as ``build_fn(tasks: dict[name -> out_channels], backbone="resnet18", **options)`` — a class
  such as ``Net(tasks, backbone="resnet18", **options)`` qualifies; ``options`` come from the config's
  ``method_options`` plus ``width`` (the backbone's base width), which every builder must accept;
* ``forward(images) -> dict[task -> prediction]``: dense predictions (B, C, H, W) at the input resolution,
  image-level tasks (``attributes``) as (B, C) (a dense map is average-pooled by the trainer);
* deep supervision: if the method has it, ``forward(images, return_aux=True) -> (preds, aux_preds)`` where
  ``aux_preds`` is ``{name: {task: prediction}}`` (or a list of such dicts) of auxiliary predictions at input
  resolution; register with ``deep_supervision=True`` and the trainer adds ``aux_weight`` × their losses;
* parameter accounting: if the network has ``learnable_parameters() -> int`` the trainer reports it
  (e.g. ETR-NLP, whose primitives are not learnable), else it counts parameters with ``requires_grad``.
* a method with its own procedure (AdaShare's phases, PDF's schedule, Medusa's UFL protocol) registers a
  ``schedule(trainer) -> model`` that drives training through the :class:`~mtl_ops.train.Trainer` API
  (``train_epoch``, ``evaluate``, ``save``). A schedule that is optional for its method also registers
  ``schedule_when(config) -> bool``: when it returns False the method trains in plain epochs (resumable,
  DDP-capable) — Medusa trains jointly unless ``schedule_options`` ask for UFL.

Built in: ``single_task`` (one network per task), ``shared`` (hard parameter sharing), ``adashare``,
``pdf``, ``ctal``, ``medusa``, ``etr_nlp`` (the last three through mtl_ops/train/method_adapters.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

from torch import nn

from ..models.adashare_net import AdaShareNet
from ..models.pdf import PDFNet
from ..models.shared import SharedNet, SingleTaskNets


@dataclass(frozen=True)
class MethodSpec:
    name: str
    build: Callable[..., nn.Module]
    schedule: Optional[Callable] = None
    deep_supervision: bool = False
    description: str = ""
    needs_image_size: bool = False  # the builder takes image_size=(H, W) (CTAL's fusion is tied to it)
    schedule_when: Optional[Callable] = None  # config -> bool: whether ``schedule`` runs; None: always


_METHODS: Dict[str, MethodSpec] = {}


def register_method(name: str, build_fn: Callable[..., nn.Module], *, schedule: Optional[Callable] = None,
                    deep_supervision: bool = False, description: str = "", overwrite: bool = False,
                    needs_image_size: bool = False, schedule_when: Optional[Callable] = None) -> MethodSpec:
    """Register ``build_fn`` under ``name`` (see the module docstring for the contract)."""
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"register_method: name must be a word (letters, digits, '_', '-'), got {name!r}")
    if not callable(build_fn):
        raise ValueError(f"register_method: build_fn must be callable, got {build_fn!r}")
    if schedule_when is not None and (schedule is None or not callable(schedule_when)):
        raise ValueError(f"register_method: schedule_when must be a callable and needs a schedule, got "
                         f"schedule_when={schedule_when!r}, schedule={schedule!r}")
    if name in _METHODS and not overwrite:
        raise ValueError(f"register_method: method {name!r} is already registered (pass overwrite=True)")
    spec = MethodSpec(name, build_fn, schedule, deep_supervision, description, needs_image_size, schedule_when)
    _METHODS[name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise ValueError(f"method: unknown method {name!r}; registered methods: {available_methods()}")
    return _METHODS[name]


def available_methods() -> list:
    return sorted(_METHODS)


def build_model(method: str, tasks: Dict[str, int], backbone: str = "resnet18", **options) -> nn.Module:
    """Build the network of ``method`` for ``tasks``; errors name the method and the bad option."""
    spec = get_method(method)
    try:
        return spec.build(tasks, backbone, **options)
    except TypeError as e:
        raise ValueError(f"method {method!r}: bad method_options {sorted(options)}: {e}") from e


def count_learnable_parameters(model: nn.Module) -> int:
    """``model.learnable_parameters()`` if the network defines it, else its parameters with requires_grad."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    if hasattr(inner, "learnable_parameters"):
        return int(inner.learnable_parameters())
    return sum(p.numel() for p in inner.parameters() if p.requires_grad)


def _register_builtins() -> None:
    from .adashare_phases import adashare_schedule
    from .medusa_ufl import ufl_requested, ufl_schedule
    from .pdf_schedule import pdf_schedule

    register_method("single_task", SingleTaskNets, description="one independent network per task")
    register_method("shared", SharedNet, description="hard parameter sharing: shared backbone and decoder")
    register_method("adashare", AdaShareNet, schedule=adashare_schedule,
                    description="AdaShare: warm-up, policy learning, re-training of a sampled policy")
    register_method("pdf", PDFNet, schedule=pdf_schedule,
                    description="Progressive Decoder Fusion: CKA-guided decoder fusion, stage by stage")
    from .method_adapters import build_ctal, build_etr_nlp, build_medusa

    register_method("ctal", build_ctal, deep_supervision=True, needs_image_size=True,
                    description="EMA-Net CTAL: cross-task affinity on fused ctal_affinity, deep supervision")
    register_method("medusa", build_medusa, deep_supervision=True, schedule=ufl_schedule, schedule_when=ufl_requested,
                    description="Medusa: shared feature attention + multi-scale attention heads per task "
                                "(UFL protocol with schedule_options)")
    register_method("etr_nlp", build_etr_nlp,
                    description="ETR-NLP: frozen primitives, shared and per-task routed branches")
