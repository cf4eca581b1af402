"""The trainer: data, model, optimiser, epochs, evaluation, checkpoints and logs for one method.

Determinism: epoch ``e`` shuffles with a generator seeded ``(seed, e)``, flips with another, and reseeds
torch's global RNG (dropout, Gumbel noise drawn from it) with ``seed·1000 + e`` at its start, so a run resumed
from the checkpoint of epoch ``e`` repeats epochs ``e+1…`` exactly as the uninterrupted run does.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..data import Cityscapes, NYUv2, SyntheticScenes
from ..data.augment import hflip
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, choose_num_threads
from .distributed import DistInfo, barrier, init_distributed
from .log import MetricsLog
from .methods import build_model, count_learnable_parameters, get_method
from .normalize import TargetNormalized, depth_statistics
from .progress import Progress
from .scale_crop import training_view
from .tasks import make_task_metrics, task_channels, task_losses, update_metric
from .weighting import make_weighting


def build_datasets(config: TrainConfig):
    """(train, val, num_classes) for ``config.dataset``."""
    if config.dataset == "synthetic":
        kw = dict(size=config.size or SYNTHETIC_SIZE, seed=config.data_seed, tasks=config.tasks, cache_dir=config.cache_dir)
        train = SyntheticScenes("train", n=config.n_train, **kw)
        val = SyntheticScenes("val", n=config.n_val, **kw)
        return train, val, SyntheticScenes.num_classes
    cls = {"nyuv2": NYUv2, "cityscapes": Cityscapes}[config.dataset]
    train = cls(config.data_root, "train", tasks=config.tasks, size=config.size)
    val = cls(config.data_root, "val", tasks=config.tasks, size=config.size)
    return train, val, train.num_classes


SYNTHETIC_SIZE = (64, 84)


def default_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("config.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


class Trainer:
    """Trains ``config.method`` on ``config.dataset``.

    ``fit()`` runs the method's schedule (the registered one, else plain epochs) and returns the final
    validation metrics ``{task: {metric: value}}``. Building blocks for schedules: :meth:`train_epoch`,
    :meth:`evaluate`, :meth:`make_optimizer`, :meth:`save`, :meth:`log`, :meth:`restrict_tasks`.
    Training steps read :attr:`train_view` (the training set with the scale crop when it is on, see
    mtl_ops/train/scale_crop.py); :attr:`train_set` stays unaugmented for measurements.
    """

    def __init__(self, config: TrainConfig, train_set: Optional[Dataset] = None,
                 val_set: Optional[Dataset] = None, num_classes: Optional[int] = None):
        if not isinstance(config, TrainConfig):
            raise ValueError(f"Trainer: config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.device = default_device(config.device)
        if self.device.type == "cpu":
            torch.set_num_threads(choose_num_threads(config.num_threads))
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if train_set is None:
            train_set, val_set, num_classes = build_datasets(config)
        if num_classes is None:
            num_classes = getattr(train_set, "num_classes", None)
            if num_classes is None:
                raise ValueError("Trainer: num_classes is needed when the dataset has no num_classes attribute")
        self.train_set, self.val_set, self.num_classes = train_set, val_set, int(num_classes)
        self.train_view = training_view(train_set, config)  # what training steps read (scale crop)
        self.tasks = list(config.tasks)
        self.channels = task_channels(self.tasks, self.num_classes)
        self.method = get_method(config.method)
        torch.manual_seed(config.seed)
        if self.method.needs_image_size and "image_size" not in config.method_options:
            # kept in the config (and so in checkpoints): the network is tied to this size
            config.method_options["image_size"] = list(train_set[0]["image"].shape[-2:])
        options = {"width": config.width, **config.method_options}
        core = build_model(config.method, self.channels, config.backbone, **options)
        mean, std = depth_statistics(train_set) if "depth" in self.tasks else (0.0, 1.0)
        self.model = TargetNormalized(core, mean, std).to(self.device)
        self.weighting = make_weighting(config.weighting, self.tasks, config.loss_weights).to(self.device)
        self.optimizer = self.make_optimizer()
        self.epoch = 0                                   # completed epochs
        self.step = 0
        self.history = []
        self.out_dir = Path(config.out_dir) if config.out_dir else None
        self.logger = MetricsLog(self.out_dir) if self.out_dir and self.dist.is_main else None
        self.amp_dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.amp and self.device.type == "cuda")
        self.step_times = []

    # ------------------------------------------------------------------ building blocks
    @property
    def wrapper(self) -> TargetNormalized:
        """The model without a DDP wrapper (method network + depth de-normalisation)."""
        return getattr(self.model, "module", self.model)

    @property
    def net(self) -> torch.nn.Module:
        """The method's network itself."""
        return self.wrapper.net

    def set_net(self, net: torch.nn.Module) -> None:
        """Replace the method network (e.g. after a PDF fusion), keeping the depth normalisation."""
        self.wrapper.net = net.to(self.device)

    def make_optimizer(self, params=None, lr: Optional[float] = None) -> torch.optim.Optimizer:
        if params is None:
            params = [p for p in self.model.parameters() if p.requires_grad] + list(self.weighting.parameters())
        return torch.optim.AdamW(params, lr=lr or self.config.lr, weight_decay=self.config.weight_decay)

    def wrap_ddp(self) -> None:
        if self.dist.enabled and not isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def loader(self, dataset: Dataset, epoch: int = 0, shuffle: bool = True, indices=None) -> DataLoader:
        if indices is not None:
            dataset = Subset(dataset, list(indices))
        cfg = self.config
        if shuffle and self.dist.enabled:
            sampler = DistributedSampler(dataset, self.dist.world_size, self.dist.rank, shuffle=True,
                                         seed=cfg.seed, drop_last=True)
            sampler.set_epoch(epoch)
            return DataLoader(dataset, cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, drop_last=True)
        generator = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        drop_last = shuffle and len(dataset) >= cfg.batch_size
        return DataLoader(dataset, cfg.batch_size, shuffle=shuffle, generator=generator if shuffle else None,
                          num_workers=cfg.num_workers, drop_last=drop_last)

    def autocast(self):
        if not self.config.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def compute_loss(self, batch, forward: Optional[Callable] = None):
        """(total loss, {task: loss}) of one batch, with deep supervision when the method has it."""
        with self.autocast():
            if self.method.deep_supervision and forward is None:
                preds, aux = self.model(batch["image"], return_aux=True)
            else:
                preds, aux = (forward or self.model)(batch["image"]), None
        losses = task_losses(preds, batch, self.tasks)
        total = self.weighting(losses)
        for aux_preds in aux or ():
            aux_losses = task_losses(aux_preds, batch, [t for t in self.tasks if t in aux_preds])
            total = total + self.config.aux_weight * sum(aux_losses.values())
        return total, losses

    def train_epoch(self, epoch: int, *, dataset: Optional[Dataset] = None, indices=None,
                    optimizer: Optional[torch.optim.Optimizer] = None, forward: Optional[Callable] = None,
                    extra_loss: Optional[Callable[[], torch.Tensor]] = None, desc: str = "train") -> Dict[str, float]:
        """One pass over the training data (or ``indices`` of it); returns mean losses per task and total."""
        cfg = self.config
        optimizer = optimizer or self.optimizer
        torch.manual_seed(cfg.seed * 1000 + epoch)
        flip_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch + 1)
        loader = self.loader(dataset or self.train_view, epoch, True, indices)
        steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
        if steps == 0:
            raise ValueError(f"training set too small: {len(loader.dataset)} samples for batch_size {cfg.batch_size}")
        self.model.train()
        sums: Dict[str, float] = {}
        bar = Progress(steps, f"{desc} {epoch}", enabled=False if cfg.quiet or not self.dist.is_main else None)
        for i, batch in enumerate(loader):
            if i >= steps:
                break
            start = time.perf_counter()
            if cfg.augment:
                batch = hflip(batch, flip=torch.rand(batch["image"].shape[0], generator=flip_gen) < 0.5)
            batch = self.to_device(batch)
            total, losses = self.compute_loss(batch, forward)
            if extra_loss is not None:
                total = total + extra_loss()
            if not torch.isfinite(total):
                raise FloatingPointError(f"non-finite loss at epoch {epoch} step {i}: "
                                         f"{ {k: float(v) for k, v in losses.items()} }")
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
            self.step += 1
            self.step_times.append(time.perf_counter() - start)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["total"] = sums.get("total", 0.0) + float(total.detach())
            bar.update(loss=float(total.detach()))
        bar.close()
        return {k: v / steps for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self, dataset: Optional[Dataset] = None, forward: Optional[Callable] = None) -> Dict[str, Dict]:
        """Validation metrics ``{task: {metric: value}}`` over the whole split (``make_metric`` per task)."""
        dataset = dataset or self.val_set
        if dataset is None:
            raise ValueError("evaluate: no validation set")
        forward = forward or self.wrapper
        self.wrapper.eval()
        metrics = make_task_metrics(self.tasks, self.num_classes)
        for batch in self.loader(dataset, shuffle=False):
            batch = self.to_device(batch)
            with self.autocast():
                preds = forward(batch["image"])
            for t in self.tasks:
                update_metric(t, metrics[t], preds[t], batch)
        return {t: m.compute() for t, m in metrics.items()}

    def log(self, row: Dict) -> None:
        self.history.append(row)
        if self.logger is not None:
            self.logger.append(row)
        if not self.config.quiet and self.dist.is_main and "train_loss" in row:  # a report row prints itself
            losses = row["train_loss"]
            text = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
            print(f"[{self.config.method}] {row.get('phase', 'train')} epoch {row.get('epoch')}: {text}", flush=True)

    # ------------------------------------------------------------------ checkpoints
    def state(self, extra: Optional[Dict] = None) -> Dict:
        return {"config": self.config.to_dict(), "model": self.wrapper.state_dict(),
                "optimizer": self.optimizer.state_dict(), "weighting": self.weighting.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
                "channels": self.channels, "num_classes": self.num_classes, "extra": extra or {}}

    def save(self, name: str = "last.pt", extra: Optional[Dict] = None) -> Optional[Path]:
        if self.out_dir is None or not self.dist.is_main:
            return None
        return save_checkpoint(self.out_dir / name, self.state(extra))

    def resume(self, path) -> Dict:
        state = load_checkpoint(path, map_location=self.device)
        if state["config"]["method"] != self.config.method:
            raise ValueError(f"resume: checkpoint {path} is for method {state['config']['method']!r}, "
                             f"not {self.config.method!r}")
        if self.schedule is not None:
            raise ValueError(f"resume: method {self.config.method!r} has a multi-phase schedule; resuming is "
                             "supported for epoch-based methods only (load the weights with `mtl-ops eval`)")
        self.wrapper.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.weighting.load_state_dict(state["weighting"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        if self.logger is not None:
            self.logger.truncate_after(self.epoch)
        return state

    # ------------------------------------------------------------------ training
    @property
    def schedule(self) -> Optional[Callable]:
        """The method's schedule if it runs for this config (see ``MethodSpec.schedule_when``), else None."""
        spec = self.method
        if spec.schedule is None or (spec.schedule_when is not None and not spec.schedule_when(self.config)):
            return None
        return spec.schedule

    @contextlib.contextmanager
    def restrict_tasks(self, tasks):
        """Inside the block, losses and evaluation cover only ``tasks`` (a subset of the configured ones), e.g.
        while a schedule trains a network that lacks some heads."""
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in self.config.tasks]
        if not tasks or unknown:
            raise ValueError(f"restrict_tasks: expected a non-empty subset of {list(self.config.tasks)}, got {tasks}")
        saved, self.tasks = self.tasks, tasks
        try:
            yield
        finally:
            self.tasks = saved

    def fit(self) -> Dict[str, Dict]:
        """Train with the method's schedule (or plain epochs) and return the final validation metrics."""
        if self.schedule is not None:
            if self.dist.enabled:
                raise ValueError(f"method {self.config.method!r}: its multi-phase schedule runs in one process; "
                                 "run it without torchrun")
            self.schedule(self)
        else:
            self.wrap_ddp()
            self.train_epochs(self.config.epochs)
        result = self.evaluate() if self.dist.is_main else {}
        barrier(self.dist)
        return result

    def train_epochs(self, epochs: int, phase: str = "train") -> None:
        cfg = self.config
        while self.epoch < epochs:
            losses = self.train_epoch(self.epoch, desc=phase)
            self.epoch += 1
            row = {"phase": phase, "epoch": self.epoch, "step": self.step, "train_loss": losses}
            if self.val_set is not None and self.dist.is_main and \
                    (self.epoch % cfg.eval_every == 0 or self.epoch == epochs):
                row["val"] = self.evaluate()
            if self.dist.is_main:
                self.log(row)
                self.save("last.pt")
            barrier(self.dist)

    def train_phase(self, phase: str, epochs: int, *, evaluate: bool = True, forward: Optional[Callable] = None,
                    **kwargs) -> Dict:
        """``epochs`` epochs of a schedule's phase (``kwargs`` go to :meth:`train_epoch`), logged with the
        phase name; evaluates after the last one when ``evaluate``. Returns the last log row."""
        row = {}
        for i in range(epochs):
            losses = self.train_epoch(self.epoch, desc=phase, forward=forward, **kwargs)
            self.epoch += 1
            row = {"phase": phase, "epoch": self.epoch, "step": self.step, "train_loss": losses}
            if evaluate and i == epochs - 1 and self.val_set is not None:
                row["val"] = self.evaluate(forward=forward)
            self.log(row)
        return row

    def schedule_option(self, name: str, default):
        """``config.schedule_options[name]`` (type-checked against ``default``), else ``default``."""
        value = self.config.schedule_options.get(name, default)
        expected = (int, float) if isinstance(default, float) else type(default)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
            raise ValueError(f"config.schedule_options[{name!r}]: expected {type(default).__name__}, got {value!r}")
        return value

    def check_schedule_options(self, known) -> None:
        unknown = sorted(set(self.config.schedule_options) - set(known))
        if unknown:
            raise ValueError(f"config.schedule_options: unknown option(s) {unknown} for method "
                             f"{self.config.method!r}; known: {sorted(known)}")

    def learnable_parameters(self) -> int:
        return count_learnable_parameters(self.net)
