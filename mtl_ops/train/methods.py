"""Methods by name: a registry of network builders (and, for methods with their own training procedure,
schedules).

Contract for a method's network (what ``register_method`` expects from ``build_fn``; every network in
``mtl_ops.models`` follows it, so the built-in methods register their classes as they are):

* it is built as ``build_fn(tasks: dict[name -> out_channels], backbone="resnet18", **options)`` — a class
  ``Net(tasks, backbone="resnet18", *, width=..., **options)`` qualifies; ``options`` are the method's
  registered ``defaults`` updated with the config's ``method_options``, plus ``width`` (the built-in ResNets'
  base width; passed with built-in backbones only) and ``pretrained`` (when the config sets it), which every
  builder must accept (see :func:`mtl_ops.train.config.network_options`);
* ``forward(images) -> dict[task -> prediction]``: dense predictions (B, C, H, W) at the input resolution,
  image-level tasks (``attributes``) as (B, C) (a dense map is average-pooled by the trainer);
* deep supervision: if the method has it, ``forward(images, return_aux=True) -> (preds, aux)`` where ``aux``
  is a list of ``{task: prediction}`` dicts of auxiliary predictions at input resolution (a dict may leave
  tasks out); register with ``deep_supervision=True`` and the trainer adds ``aux_weight`` × their losses;
* parameter accounting: if the network has ``learnable_parameters() -> int`` the trainer reports it
  (e.g. ETR-NLP, whose primitives are not learnable), else it counts parameters with ``requires_grad``.
* a method with its own procedure (AdaShare's phases, PDF's schedule, Medusa's UFL protocol) registers a
  ``schedule(trainer) -> model`` that drives training through the :class:`~mtl_ops.train.Trainer` API
  (``train_epoch``, ``train_phase``, ``evaluate``, ``save``; other output files through ``trainer.run_dir``,
  which creates the run folder when it first writes). A schedule that is optional for its method also registers
  ``schedule_when(config) -> bool``: when it returns False the method trains in plain epochs (resumable,
  DDP-capable) — Medusa trains jointly unless ``schedule_options`` ask for UFL.

Built in: ``single_task`` (one network per task), ``shared`` (hard parameter sharing), ``adashare``,
``pdf``, ``ctal``, ``medusa``, ``etr_nlp``. ``defaults`` hold the trainer's settings where they differ from
a network's own defaults (which follow the papers): the trainer's small images and budgets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional

from torch import nn

from ..models import AdaShareNet, CTALNet, ETRNLPNet, Medusa, PDFNet, SharedNet, SingleTaskNets
from .adashare_phases import adashare_schedule
from .medusa_ufl import ufl_requested, ufl_schedule
from .pdf_schedule import pdf_schedule


@dataclass(frozen=True)
class MethodSpec:
    name: str
    build: Callable[..., nn.Module]
    schedule: Optional[Callable] = None
    deep_supervision: bool = False
    description: str = ""
    needs_image_size: bool = False  # the builder takes image_size=(H, W) (CTAL's fusion is tied to it)
    schedule_when: Optional[Callable] = None  # config -> bool: whether ``schedule`` runs; None: always
    defaults: Mapping = field(default_factory=dict)  # options the trainer passes unless method_options set them


_METHODS: Dict[str, MethodSpec] = {}


def register_method(name: str, build_fn: Callable[..., nn.Module], *, schedule: Optional[Callable] = None,
                    deep_supervision: bool = False, description: str = "", overwrite: bool = False,
                    needs_image_size: bool = False, schedule_when: Optional[Callable] = None,
                    defaults: Optional[Mapping] = None) -> MethodSpec:
    """Register ``build_fn`` under ``name`` (see the module docstring for the contract)."""
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"register_method: name must be a word (letters, digits, '_', '-'), got {name!r}")
    if not callable(build_fn):
        raise ValueError(f"register_method: build_fn must be callable, got {build_fn!r}")
    if schedule_when is not None and (schedule is None or not callable(schedule_when)):
        raise ValueError(f"register_method: schedule_when must be a callable and needs a schedule, got "
                         f"schedule_when={schedule_when!r}, schedule={schedule!r}")
    if defaults is not None and not isinstance(defaults, Mapping):
        raise ValueError(f"register_method: defaults must be a dict of option -> value, got {defaults!r}")
    if name in _METHODS and not overwrite:
        raise ValueError(f"register_method: method {name!r} is already registered (pass overwrite=True)")
    spec = MethodSpec(name, build_fn, schedule, deep_supervision, description, needs_image_size, schedule_when,
                      dict(defaults or {}))
    _METHODS[name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise ValueError(f"method: unknown method {name!r}; registered methods: {available_methods()}")
    return _METHODS[name]


def available_methods() -> list:
    return sorted(_METHODS)


def build_model(method: str, tasks: Dict[str, int], backbone: str = "resnet18", **options) -> nn.Module:
    """Build the network of ``method`` for ``tasks`` with the method's ``defaults`` updated by ``options``;
    errors name the method and the bad option."""
    spec = get_method(method)
    options = {**spec.defaults, **options}
    try:
        return spec.build(tasks, backbone, **options)
    except TypeError as e:
        raise ValueError(f"method {method!r}: bad method_options {sorted(options)}: {e}") from e


def pretrained_reports(model: nn.Module) -> list:
    """The :class:`~mtl_ops.models.LoadReport` of every backbone in ``model`` that loaded a weights file."""
    return [m.pretrained_report for m in model.modules() if getattr(m, "pretrained_report", None) is not None]


def count_learnable_parameters(model: nn.Module) -> int:
    """``model.learnable_parameters()`` if the network defines it, else its parameters with requires_grad."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    if hasattr(inner, "learnable_parameters"):
        return int(inner.learnable_parameters())
    return sum(p.numel() for p in inner.parameters() if p.requires_grad)


register_method("single_task", SingleTaskNets, description="one independent network per task")
register_method("shared", SharedNet, description="hard parameter sharing: shared backbone and decoder")
# The trainer's defaults are for its small images and few epochs: light ASPP heads without dropout, a seeded
# initialisation (re-training restores it), one search cycle per newly learnable block; a CTAL of width 32.
register_method("adashare", AdaShareNet, schedule=adashare_schedule,
                defaults={"head_hidden": 64, "head_dropout": 0.0, "seed": 0, "curriculum_speed": 1},
                description="AdaShare: warm-up, policy learning, re-training of a sampled policy")
register_method("pdf", PDFNet, schedule=pdf_schedule,
                description="Progressive Decoder Fusion: CKA-guided decoder fusion, stage by stage")
register_method("ctal", CTALNet, deep_supervision=True, needs_image_size=True,
                defaults={"itp_channels": 64, "ctal_channels": 32},
                description="EMA-Net CTAL: cross-task affinity on fused ctal_affinity, deep supervision")
register_method("medusa", Medusa, deep_supervision=True, schedule=ufl_schedule, schedule_when=ufl_requested,
                description="Medusa: shared feature attention + multi-scale attention heads per task "
                            "(UFL protocol with schedule_options)")
register_method("etr_nlp", ETRNLPNet,
                description="ETR-NLP: frozen primitives, shared and per-task routed branches")
