"""Training configuration: one dataclass, validated up front with errors that name the field."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from ..data.augment import valid_zoom_scales
from ..models.backbones import RESNETS, is_builtin
from .best import check_best_metric
from .methods import available_methods
from .tasks import KNOWN_TASKS
from .lr_schedule import LR_INTERVALS, LR_SCHEDULES
from .optim import OPTIMIZERS
from .aggregation import AGGREGATORS
from .weighting import WEIGHTINGS

DATASETS = ("synthetic", "nyuv2", "cityscapes")
TRAIN_WIDTH = 16  # the trainer's base width of the built-in ResNets (small images, short budgets)
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    method: str = "shared"
    tasks: Tuple[str, ...] = ("semseg", "depth", "normals", "edges")
    dataset: str = "synthetic"
    data_root: Optional[str] = None          # nyuv2 / cityscapes: the .npy layout's root folder
    size: Optional[Tuple[int, int]] = None   # image size (H, W): synthetic default 64x84 (divisible by 4, as CTAL needs); nyuv2/cityscapes:
                                             # the stored size (default: the dataset's standard size)
    n_train: int = 512                       # synthetic: training images
    n_val: int = 128                         # synthetic: validation images
    data_seed: int = 0
    cache_dir: Optional[str] = None
    backbone: str = "resnet18"               # resnet10|18|34 (built in), timm:<model name>, torchvision:<resnet name>
    width: Optional[int] = None              # the built-in ResNets' base width; None: TRAIN_WIDTH (refused with
                                             # a timm or torchvision backbone, which have their own widths)
    pretrained: Union[None, bool, str] = None  # backbone weights: a local file (safetensors or a torch state
                                             # dict), or true for timm's / torchvision's published ones (a download)
    method_options: Dict = field(default_factory=dict)     # passed to the network builder
    schedule_options: Dict = field(default_factory=dict)   # AdaShare phases / PDF schedule / Medusa UFL (see their modules)
    epochs: int = 4
    batch_size: int = 16                     # per process under torchrun
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"                 # adamw | adam | radam | sgd (see optim.py)
    momentum: float = 0.9                    # sgd
    nesterov: bool = False                   # sgd: Nesterov momentum
    betas: Tuple[float, float] = (0.9, 0.999)  # adam / adamw / radam
    eps: float = 1e-8                        # adam / adamw / radam
    grad_clip: Optional[float] = None        # clip the gradients' global L2 norm to this; None: no clipping
    lr_schedule: str = "constant"            # constant | poly | cosine | step | multistep (see lr_schedule.py)
    lr_interval: str = "epoch"               # the schedule advances per "epoch" or per optimisation "step"
    lr_power: float = 0.9                    # poly: lr · (1 − t/T)^power
    lr_min: float = 0.0                      # cosine: the final learning rate
    lr_step_size: Optional[int] = None       # step: decay every lr_step_size epochs/steps
    lr_milestones: Tuple[int, ...] = ()      # multistep: decay at these epochs/steps
    lr_gamma: float = 0.1                    # step / multistep: the decay factor
    warmup: int = 0                          # linear warm-up length (epochs or steps, as lr_interval)
    warmup_start_factor: float = 0.001       # the warm-up starts at this fraction of lr
    best_metric: Optional[str] = None        # keep best.pt by "delta_m" (needs baseline_metrics) or "task.metric"
    baseline_metrics: Optional[Dict] = None  # {task: {metric: value}}: the baseline of best_metric="delta_m"
    weighting: str = "fixed"                 # fixed | uncertainty | dwa | a torchjd aggregator (see weighting.py)
    dwa_temperature: float = 2.0             # dwa: the softmax temperature T
    aggregator_options: Dict = field(default_factory=dict)  # keyword arguments of the torchjd aggregator
    loss_weights: Dict[str, float] = field(default_factory=dict)
    aux_weight: float = 0.5                  # deep supervision: weight of the auxiliary losses
    augment: bool = True                     # random horizontal flip (normals' x negated)
    scale_crop: Optional[bool] = None        # the .npy loaders' random scale crop of training samples; None: on
                                             # with augment for nyuv2/cityscapes (synthetic has none); never in eval
    crop_scales: Tuple[float, ...] = (1.0, 1.2, 1.5)  # zoom factors the scale crop draws from (MTAN's)
    amp: bool = False                        # autocast: bf16 on CPU, fp16 (with loss scaling) on CUDA
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    num_threads: Optional[int] = None        # torch intra-op threads; None: auto (cpu_threads.choose_num_threads)
    max_steps_per_epoch: Optional[int] = None
    eval_every: int = 1                      # epochs between evaluations (the last epoch always evaluates)
    skip_nonfinite: bool = False             # skip steps whose loss is NaN/inf (counted, logged) instead of stopping
    out_dir: Optional[str] = None            # checkpoints and logs; None: nothing written
    quiet: bool = False

    def __post_init__(self):
        self.tasks = tuple(self.tasks)
        self.size = tuple(self.size) if self.size is not None else None
        for name in ("crop_scales", "betas", "lr_milestones"):
            if isinstance(getattr(self, name), list):  # from JSON
                setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        if self.method not in available_methods():
            raise ValueError(f"config.method: unknown method {self.method!r}; available: {available_methods()}")
        if not self.tasks or isinstance(self.tasks, str) or any(t not in KNOWN_TASKS for t in self.tasks) \
                or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"config.tasks: expected distinct task names from {list(KNOWN_TASKS)}, got {self.tasks!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"config.dataset: expected one of {DATASETS}, got {self.dataset!r}")
        if self.dataset != "synthetic" and not self.data_root:
            raise ValueError(f"config.data_root: dataset {self.dataset!r} needs data_root (the .npy folder)")
        if self.size is not None and len(self.size) != 2 or self.size is not None and any(not isinstance(s, int) or s < 16 for s in self.size):
            raise ValueError(f"config.size: expected (H, W) ints >= 16, got {self.size!r}")
        for name in ("n_train", "n_val", "epochs", "batch_size", "width", "eval_every"):
            v = getattr(self, name)
            if (v is not None or name != "width") and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"config.{name}: expected a positive int, got {v!r}")
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"config.backbone: expected a backbone name, got {self.backbone!r}")
        if self.width is not None and not is_builtin(self.backbone):
            raise ValueError(f"config.width: the base width of the built-in ResNets ({', '.join(RESNETS)}) only; "
                             f"backbone {self.backbone} has its own widths, so leave width out (got {self.width})")
        if not (self.pretrained is None or isinstance(self.pretrained, bool)
                or isinstance(self.pretrained, str) and self.pretrained):
            raise ValueError(f"config.pretrained: expected the path of a weights file, true (the library's published "
                             f"weights) or null, got {self.pretrained!r}")
        for name in ("data_seed", "seed", "num_workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"config.{name}: expected a non-negative int, got {v!r}")
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int)
                                             or self.num_threads < 1):
            raise ValueError(f"config.num_threads: expected a positive int or None, got {self.num_threads!r}")
        if self.max_steps_per_epoch is not None and (not isinstance(self.max_steps_per_epoch, int)
                                                     or self.max_steps_per_epoch < 1):
            raise ValueError(f"config.max_steps_per_epoch: expected a positive int or None, got "
                             f"{self.max_steps_per_epoch!r}")
        for name in ("lr", "weight_decay", "aux_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (name == "lr" and v == 0):
                raise ValueError(f"config.{name}: expected a {'positive' if name == 'lr' else 'non-negative'} "
                                 f"number, got {v!r}")
        if self.weighting not in WEIGHTINGS and self.weighting not in AGGREGATORS:
            raise ValueError(f"config.weighting: expected a loss weighting ({', '.join(WEIGHTINGS)}) or a torchjd "
                             f"aggregator ({', '.join(AGGREGATORS)}), got {self.weighting!r}")
        if not isinstance(self.aggregator_options, dict):
            raise ValueError(f"config.aggregator_options: expected a dict, got {self.aggregator_options!r}")
        if self.aggregator_options and self.weighting not in AGGREGATORS:
            raise ValueError(f"config.aggregator_options: only for a torchjd aggregator as weighting, got "
                             f"{self.aggregator_options!r} with weighting={self.weighting!r}")
        self._validate_optimisation()
        if not isinstance(self.loss_weights, dict):
            raise ValueError(f"config.loss_weights: expected a dict task -> weight, got {self.loss_weights!r}")
        if not isinstance(self.schedule_options, dict):
            raise ValueError(f"config.schedule_options: expected a dict, got {self.schedule_options!r}")
        if not isinstance(self.method_options, dict):
            raise ValueError(f"config.method_options: expected a dict, got {self.method_options!r}")
        for name in ("augment", "amp", "quiet", "skip_nonfinite"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"config.{name}: expected true or false, got {getattr(self, name)!r}")
        if self.scale_crop is not None and not isinstance(self.scale_crop, bool):
            raise ValueError(f"config.scale_crop: expected true, false or null (auto), got {self.scale_crop!r}")
        if self.scale_crop and self.dataset == "synthetic":
            raise ValueError("config.scale_crop: expected false or null (auto) for dataset 'synthetic' (the synthetic "
                             "scenes have no scale-crop augmentation; nyuv2 and cityscapes have), got True")
        if not isinstance(self.crop_scales, tuple) or not valid_zoom_scales(self.crop_scales):
            raise ValueError(f"config.crop_scales: expected a non-empty list of zoom factors >= 1, "
                             f"got {self.crop_scales!r}")
        if self.device not in DEVICES:
            raise ValueError(f"config.device: expected one of {DEVICES}, got {self.device!r}")

    def _validate_optimisation(self) -> None:
        def number(name, low, *, strict=False, high=None, strict_high=False):
            v = getattr(self, name)
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and \
                (v > low if strict else v >= low) and (high is None or (v < high if strict_high else v <= high))
            if not ok:
                bounds = f"{'>' if strict else '>='} {low}" + \
                    (f" and {'<' if strict_high else '<='} {high}" if high is not None else "")
                raise ValueError(f"config.{name}: expected a number {bounds}, got {v!r}")

        for name, allowed in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES), ("lr_interval", LR_INTERVALS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"config.{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        number("momentum", 0.0)
        number("eps", 0.0, strict=True)
        number("lr_power", 0.0, strict=True)
        number("lr_min", 0.0)
        number("lr_gamma", 0.0, strict=True)
        number("warmup_start_factor", 0.0, strict=True, high=1.0)
        number("dwa_temperature", 0.0, strict=True)
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"config.nesterov: expected true or false, got {self.nesterov!r}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError(f"config.nesterov: Nesterov momentum needs optimizer='sgd' with momentum > 0, got "
                             f"optimizer={self.optimizer!r}, momentum={self.momentum!r}")
        if not isinstance(self.betas, tuple) or len(self.betas) != 2 or any(
                isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1 for b in self.betas):
            raise ValueError(f"config.betas: expected two numbers in [0, 1), got {self.betas!r}")
        if self.grad_clip is not None:
            number("grad_clip", 0.0, strict=True)
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"config.warmup: expected a non-negative int, got {self.warmup!r}")
        if self.lr_schedule == "step" and (isinstance(self.lr_step_size, bool) or
                                           not isinstance(self.lr_step_size, int) or self.lr_step_size < 1):
            raise ValueError(f"config.lr_step_size: lr_schedule='step' needs a positive int (epochs or steps "
                             f"between decays), got {self.lr_step_size!r}")
        if self.lr_schedule == "multistep" and (not self.lr_milestones or any(
                isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.lr_milestones)
                or list(self.lr_milestones) != sorted(set(self.lr_milestones))):
            raise ValueError(f"config.lr_milestones: lr_schedule='multistep' needs increasing positive ints, got "
                             f"{self.lr_milestones!r}")
        if self.best_metric is not None:
            check_best_metric(self.best_metric, self.tasks, self.baseline_metrics)
        elif self.baseline_metrics is not None:
            raise ValueError("config.baseline_metrics: only used with best_metric='delta_m'; set best_metric too")

    def to_dict(self) -> Dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["size"] = list(self.size) if self.size is not None else None
        for name in ("crop_scales", "betas", "lr_milestones"):
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, data: Dict) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ValueError(f"config: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config: no file at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"config: {path} is not valid JSON: {e}") from e
        return cls.from_dict(data)


def builtin_width(width: Optional[int]) -> int:
    """The built-in ResNets' base width a configuration's ``width`` means (None: ``TRAIN_WIDTH``)."""
    return TRAIN_WIDTH if width is None else width


def network_options(config, *, pretrained: bool = True) -> dict:
    """The options the trainer builds ``config``'s network with: ``width`` for the built-in ResNets (the config's,
    else ``TRAIN_WIDTH``), ``pretrained`` (unless ``pretrained=False``: a network whose weights come from a
    checkpoint), then the config's ``method_options``."""
    options = {}
    if is_builtin(config.backbone):
        options["width"] = builtin_width(config.width)
    if pretrained and config.pretrained not in (None, False):
        options["pretrained"] = config.pretrained
    return {**options, **config.method_options}


def backbone_description(config: Dict) -> str:
    """The backbone of a configuration (as ``TrainConfig.to_dict()`` gives it) as a report names it: a built-in
    ResNet with its width, any other backbone by its name."""
    backbone = config["backbone"]
    if is_builtin(backbone):
        return f"{backbone} at width {builtin_width(config.get('width'))}"
    return str(backbone)
