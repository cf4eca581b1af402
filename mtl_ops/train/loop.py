"""The trainer: one method trained on one dataset, put together from parts that each do one job —
:class:`~mtl_ops.train.runtime.Runtime` (device, torchrun's process group, AMP), :mod:`~mtl_ops.train.loading`
(datasets, seeded loaders), :func:`~mtl_ops.train.epoch.run_epoch` (an epoch's optimisation steps, non-finite
losses), :func:`~mtl_ops.train.evaluation.validation_metrics`, :class:`~mtl_ops.train.run_dir.RunDirectory`
(config.json, logs, checkpoints), :mod:`~mtl_ops.train.resume` (what a resumed run may change),
:mod:`~mtl_ops.train.optim` and :mod:`~mtl_ops.train.lr_schedule` (the optimiser and its learning-rate schedule),
:mod:`~mtl_ops.train.best` (``best.pt``), :mod:`~mtl_ops.train.weighting` (loss weightings) and
:mod:`~mtl_ops.train.aggregation` (torchjd aggregators). Every seed
comes from :func:`~mtl_ops.train.seeding.derive_seed`: a run resumed from the checkpoint of epoch ``e`` repeats
epochs ``e+1…`` exactly as the uninterrupted run does.

The trainer works on its own copy of the config (``trainer.config``), completed with what it derives (the image
size a CTAL network is tied to) and saved in every checkpoint; the caller's config is never changed.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..models.pretrained import MissingWeightsWarning
from .aggregation import AGGREGATORS, GradientAggregation, is_stateful
from .best import BEST_FILE, BestTracker
from .checkpoint import load_checkpoint
from .config import TrainConfig, network_options
from .curves import CURVES_FILE, write_curves
from .epoch import NonFiniteLossError, flip_batches, run_epoch, seed_epoch
from .evaluation import validation_metrics
from .loading import build_datasets, make_loader
from .lr_schedule import build_lr_scheduler
from .methods import MethodSpec, build_model, count_learnable_parameters, get_method, pretrained_reports
from .normalize import TargetNormalized, depth_statistics
from .optim import build_optimizer
from .progress import Progress
from .resume import check_resumable, resume_config
from .run_dir import RunDirectory
from .runtime import Runtime
from .scale_crop import training_view
from .seeding import derive_seed
from .tasks import task_channels, task_losses
from .weighting import make_weighting


def run_config(config: TrainConfig, method: MethodSpec, train_set: Dataset) -> TrainConfig:
    """A copy of ``config`` completed with what rebuilding the network from a checkpoint needs: the image size,
    for a method whose network is tied to it."""
    data = config.to_dict()  # a deep copy
    if method.needs_image_size and "image_size" not in data["method_options"]:
        data["method_options"]["image_size"] = list(train_set[0]["image"].shape[-2:])
    return TrainConfig.from_dict(data)


class Trainer:
    """Trains ``config.method`` on ``config.dataset``.

    ``fit()`` runs the method's schedule (the registered one, else plain epochs) and returns the final
    validation metrics ``{task: {metric: value}}``. Building blocks for schedules: :meth:`train_epoch`,
    :meth:`train_phase`, :meth:`evaluate`, :meth:`make_optimizer`, :meth:`save`, :meth:`log`,
    :meth:`restrict_tasks`, :attr:`run_dir`. Training steps read :attr:`train_view` (the training set with the
    scale crop when it is on, see mtl_ops/train/scale_crop.py); :attr:`train_set` stays unaugmented for
    measurements.

    ``resume``: a checkpoint of this run to continue from (``config`` may differ from the run's only in the
    fields of :data:`~mtl_ops.train.resume.RESUME_MAY_CHANGE`; :meth:`from_checkpoint` takes the config from the
    checkpoint). ``overwrite``: allow a new run into an ``out_dir`` that already holds files.
    """

    def __init__(self, config: TrainConfig, train_set: Optional[Dataset] = None,
                 val_set: Optional[Dataset] = None, num_classes: Optional[int] = None, *,
                 resume: Optional[Union[str, Path]] = None, overwrite: bool = False):
        if not isinstance(config, TrainConfig):
            raise ValueError(f"Trainer: config must be a TrainConfig, got {type(config).__name__}")
        self.method = get_method(config.method)
        self.runtime = Runtime.create(config)
        self.run_dir = RunDirectory(config.out_dir, lambda: self.config.to_dict(), enabled=self.runtime.is_main,
                                    overwrite=overwrite, resume_from=resume)
        saved = load_checkpoint(resume) if resume is not None else None
        if train_set is None:
            train_set, val_set, num_classes = build_datasets(config)
        if num_classes is None:
            num_classes = getattr(train_set, "num_classes", None)
            if num_classes is None:
                raise ValueError("Trainer: num_classes is needed when the dataset has no num_classes attribute")
        self.config = run_config(config, self.method, train_set)
        if saved is not None:
            check_resumable(saved["config"], self.config, resume)
            if self.schedule is not None:
                raise ValueError(f"resume: method {self.config.method!r} has a multi-phase schedule; resuming is "
                                 "supported for epoch-based methods only (load the weights with `mtl-ops eval`)")
        if self.config.best_metric is not None and self.schedule is not None:
            raise ValueError(f"config.best_metric: best.pt is kept for runs trained in plain epochs; method "
                             f"{self.config.method!r} trains with its own multi-phase schedule here")
        self.train_set, self.val_set, self.num_classes = train_set, val_set, int(num_classes)
        self.train_view = training_view(train_set, self.config)  # what training steps read (scale crop)
        self.tasks = list(self.config.tasks)
        self.channels = task_channels(self.tasks, self.num_classes)
        torch.manual_seed(derive_seed(self.config.seed, "init"))
        # a resumed run's weights come from its checkpoint, not from the pretrained file
        options = network_options(self.config, pretrained=saved is None)
        with warnings.catch_warnings():  # the trainer prints the whole report below
            warnings.simplefilter("ignore", MissingWeightsWarning)
            core = build_model(self.config.method, self.channels, self.config.backbone, **options)
        if self.runtime.is_main and not self.config.quiet:
            for report in pretrained_reports(core):
                print(f"[{self.config.method}] {report.summary()}", flush=True)
        mean, std = depth_statistics(train_set) if "depth" in self.tasks else (0.0, 1.0)
        self.model = TargetNormalized(core, mean, std).to(self.device)
        self.weighting = make_weighting(self.config.weighting, self.tasks, self.config.loss_weights,
                                        dwa_temperature=self.config.dwa_temperature).to(self.device)
        self.aggregation = None                          # a torchjd aggregator as weighting (see aggregation.py)
        if self.config.weighting in AGGREGATORS:
            self.aggregation = GradientAggregation(self.config.weighting, self.config.aggregator_options, self.tasks,
                                                   self.net, self.runtime, self.config.method)
            if saved is not None and is_stateful(self.aggregation.aggregator):
                raise ValueError(f"resume: the aggregator {self.config.weighting!r} keeps a state between steps "
                                 f"that checkpoints do not hold; a resumed run would not continue this run")
        self.best = BestTracker(self.config.best_metric, self.tasks, self.config.baseline_metrics) \
            if self.config.best_metric is not None else None
        self.optimizer = self.make_optimizer()           # the setter builds the learning-rate schedule with it
        self.epoch = 0                                   # completed epochs
        self.step = 0                                    # training steps taken or skipped
        self.history = []                                # the log rows
        self.skipped_steps = []                          # {"step", "epoch", "terms"} per skipped non-finite step
        self._last_checkpoint = None                     # (path, epoch) of the last checkpoint this run wrote
        if saved is not None:
            self._restore(saved, Path(resume))

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, Path], train_set: Optional[Dataset] = None,
                        val_set: Optional[Dataset] = None, num_classes: Optional[int] = None, *,
                        overwrite: bool = False, **changes) -> "Trainer":
        """Continue the run in ``checkpoint`` with its own configuration; ``changes`` (TrainConfig fields, e.g.
        ``epochs=8``) may set only what a resumed run may change (see :mod:`mtl_ops.train.resume`)."""
        return cls(resume_config(checkpoint, changes), train_set, val_set, num_classes, resume=checkpoint,
                   overwrite=overwrite)

    # ------------------------------------------------------------------ building blocks
    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def dist(self):
        return self.runtime.dist

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.runtime.scaler

    @property
    def out_dir(self) -> Optional[Path]:
        """The configured output folder (it exists once the run has written something)."""
        return Path(self.config.out_dir) if self.config.out_dir else None

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
        """The run's optimiser (``config.optimizer``, see :mod:`mtl_ops.train.optim`) over ``params`` (default:
        the trainable parameters of the model and the loss weighting). Assigned to :attr:`optimizer`, it gets a
        new learning-rate schedule."""
        if params is None:
            params = [p for p in self.model.parameters() if p.requires_grad] + list(self.weighting.parameters())
        return build_optimizer(params, self.config, lr)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimiser of the training steps; :attr:`lr_scheduler` drives its learning rate (assigning a new
        optimiser starts the schedule again, see :mod:`mtl_ops.train.lr_schedule`)."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer
        self.lr_scheduler = build_lr_scheduler(optimizer, self.config, max(1, self.steps_per_epoch()))

    def steps_per_epoch(self, dataset: Optional[Dataset] = None) -> int:
        """Optimisation steps of a training epoch over ``dataset`` (default: the training set) in this process."""
        steps = len(self.loader(dataset or self.train_view))
        cap = self.config.max_steps_per_epoch
        return steps if cap is None else min(steps, cap)

    def wrap_ddp(self) -> None:
        self.model = self.runtime.wrap(self.model)

    def loader(self, dataset: Dataset, epoch: int = 0, shuffle: bool = True, indices=None) -> DataLoader:
        return make_loader(dataset, self.config, self.dist, epoch=epoch, shuffle=shuffle, indices=indices)

    def autocast(self):
        return self.runtime.autocast()

    def to_device(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return self.runtime.to_device(batch)

    def _task_losses(self, batch, forward: Optional[Callable] = None):
        """({task: loss}, [{task: auxiliary loss}, ...]) of one batch: the deep-supervision losses when the
        method has them."""
        with self.autocast():
            if self.method.deep_supervision and forward is None:
                preds, aux = self.model(batch["image"], return_aux=True)
            else:
                preds, aux = (forward or self.model)(batch["image"]), None
        losses = task_losses(preds, batch, self.tasks)
        aux_losses = [task_losses(a, batch, [t for t in self.tasks if t in a]) for a in aux or ()]
        return losses, aux_losses

    def compute_loss(self, batch, forward: Optional[Callable] = None):
        """(total loss, {task: loss}) of one batch, with deep supervision when the method has it."""
        losses, aux_losses = self._task_losses(batch, forward)
        total = self.weighting(losses)
        for aux in aux_losses:
            total = total + self.config.aux_weight * sum(aux.values())
        return total, losses

    def task_objectives(self, batch, forward: Optional[Callable] = None):
        """({task: objective}, {task: loss}) of one batch, what an aggregator balances: the objective of task t
        is ``w_t · L_t`` (the fixed loss weights) plus ``aux_weight`` × its deep-supervision losses."""
        losses, aux_losses = self._task_losses(batch, forward)
        objectives = {t: self.weighting({t: loss}) for t, loss in losses.items()}
        for aux in aux_losses:
            for t, loss in aux.items():
                objectives[t] = objectives[t] + self.config.aux_weight * loss
        return objectives, losses

    def _step_functions(self, forward: Optional[Callable], optimizer: torch.optim.Optimizer):
        """(loss_fn, backward) for :func:`~mtl_ops.train.epoch.run_epoch`: the weighted total and its plain
        backward, or with an aggregator the objectives' sum (for logging and the non-finite check) and the
        aggregated backward of the objectives."""
        if self.aggregation is None:
            return (lambda batch: self.compute_loss(batch, forward)), None
        self.aggregation.attach(self.net)  # again, in case a schedule replaced the network
        params = [p for group in optimizer.param_groups for p in group["params"]]
        last = {}

        def loss_fn(batch):
            with self.aggregation.no_sync(self.model):
                last["objectives"], losses = self.task_objectives(batch, forward)
            return sum(last["objectives"].values()), losses

        return loss_fn, lambda total: self.aggregation.backward(last.pop("objectives"), params)

    def train_epoch(self, epoch: int, *, dataset: Optional[Dataset] = None, indices=None,
                    optimizer: Optional[torch.optim.Optimizer] = None, forward: Optional[Callable] = None,
                    extra_loss: Optional[Callable[[], torch.Tensor]] = None, desc: str = "train") -> Dict[str, float]:
        """One pass over the training data (or ``indices`` of it); returns mean losses per task and total.
        A non-finite loss raises :class:`~mtl_ops.train.epoch.NonFiniteLossError` (see
        :mod:`mtl_ops.train.epoch`), or skips the step with ``config.skip_nonfinite``."""
        cfg = self.config
        flips = seed_epoch(cfg.seed, epoch)
        loader = self.loader(dataset or self.train_view, epoch, True, indices)
        steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
        if steps == 0:
            raise ValueError(f"training set too small: {len(loader.dataset)} samples for batch_size {cfg.batch_size}")
        batches = flip_batches(loader, flips) if cfg.augment else loader
        optimizer = optimizer or self.optimizer
        main = optimizer is self.optimizer  # the learning-rate schedule drives the run's optimiser only
        if extra_loss is not None and self.aggregation is not None:
            raise ValueError(f"config.weighting: the torchjd aggregator {cfg.weighting!r} balances the task "
                             f"losses; this phase adds a loss of its own, which it cannot place")
        loss_fn, backward = self._step_functions(forward, optimizer)
        self.model.train()
        bar = Progress(steps, f"{desc} {epoch}", enabled=False if cfg.quiet or not self.dist.is_main else None)

        def on_step(loss: float) -> None:
            bar.update(loss=loss)
            if main and cfg.lr_interval == "step":
                self.lr_scheduler.step()
        try:
            result = run_epoch((self.to_device(b) for b in batches), steps, loss_fn=loss_fn, backward=backward,
                               optimizer=optimizer, runtime=self.runtime, model=self.model,
                               epoch=epoch, first_step=self.step, skip_nonfinite=cfg.skip_nonfinite,
                               grad_clip=cfg.grad_clip, extra_loss=extra_loss, on_step=on_step,
                               on_skip=lambda step, terms: self._skipped(step, epoch, terms))
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"[{cfg.method}] {e} {self._checkpoint_note()}", step=e.step, epoch=e.epoch,
                                     terms=e.terms) from None
        finally:
            bar.close()
        self.step += result.steps
        self._epoch_skipped = len(result.skipped)
        if main and cfg.lr_interval == "epoch":
            self.lr_scheduler.step()
        if hasattr(self.weighting, "end_epoch"):  # DWA: the same mean losses in every process
            self.weighting.end_epoch(self.runtime.mean_over_processes(result.losses))
        return result.losses

    def _skipped(self, step: int, epoch: int, terms) -> None:
        self.skipped_steps.append({"step": step, "epoch": epoch + 1, "terms": list(terms)})
        if not self.config.quiet and self.dist.is_main:
            print(f"[{self.config.method}] skipped step {step} (epoch {epoch + 1}): non-finite loss: "
                  f"{', '.join(terms)}", file=sys.stderr, flush=True)

    def _checkpoint_note(self) -> str:
        if self._last_checkpoint is not None:
            path, epoch = self._last_checkpoint
            return f"The last checkpoint, {path} (after epoch {epoch}), is left as it was."
        return "No checkpoint of this run was written." if self.run_dir.enabled else ""

    def evaluate(self, dataset: Optional[Dataset] = None, forward: Optional[Callable] = None) -> Dict[str, Dict]:
        """Validation metrics ``{task: {metric: value}}`` over the whole split (``make_metric`` per task)."""
        dataset = dataset or self.val_set
        if dataset is None:
            raise ValueError("evaluate: no validation set")
        self.wrapper.eval()
        return validation_metrics(forward or self.wrapper, self.loader(dataset, shuffle=False), self.tasks,
                                  self.num_classes, self.runtime)

    def log(self, row: Dict) -> None:
        self.history.append(row)
        self.run_dir.log(row)
        if not self.config.quiet and self.dist.is_main and "train_loss" in row:  # a report row prints itself
            losses = row["train_loss"]
            text = " ".join(f"{k}={v:.4f}" for k, v in losses.items())
            skipped = f" ({row['skipped_steps']} non-finite step(s) skipped)" if row.get("skipped_steps") else ""
            print(f"[{self.config.method}] {row.get('phase', 'train')} epoch {row.get('epoch')}: {text}{skipped}",
                  flush=True)

    def _epoch_row(self, phase: str, losses: Dict[str, float]) -> Dict:
        row = {"phase": phase, "epoch": self.epoch, "step": self.step, "train_loss": losses,
               "lr": self.optimizer.param_groups[0]["lr"]}  # the learning rate of the next step
        if self.config.skip_nonfinite:
            row["skipped_steps"] = self._epoch_skipped
        return row

    # ------------------------------------------------------------------ checkpoints
    def state(self, extra: Optional[Dict] = None) -> Dict:
        return {"config": self.config.to_dict(), "model": self.wrapper.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict(),
                "best": self.best.state_dict() if self.best is not None else None,
                "weighting": self.weighting.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
                "channels": self.channels, "num_classes": self.num_classes, "extra": extra or {}}

    def save(self, name: str = "last.pt", extra: Optional[Dict] = None) -> Optional[Path]:
        """Write checkpoint ``name`` into the run folder (main process only). Refuses a model with non-finite
        values, so that a good checkpoint is never replaced by a broken one."""
        if not self.run_dir.enabled:
            return None
        state = self.state(extra)
        broken = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:
            raise FloatingPointError(f"[{self.config.method}] non-finite values in the model after step {self.step} "
                                     f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}): {name} was "
                                     f"not written. {self._checkpoint_note()}")
        path = self.run_dir.save(name, state)
        self._last_checkpoint = (path, self.epoch)
        return path

    def _restore(self, state: Dict, path: Path) -> None:
        self.wrapper.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "lr_scheduler" in state:  # checkpoints before learning-rate schedules ran at a constant rate
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.best is not None and state.get("best") is not None:
            self.best.load_state_dict(state["best"])
        self.weighting.load_state_dict(state["weighting"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.run_dir.resumed(self.epoch)
        self._last_checkpoint = (path, self.epoch)

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
        """Train with the method's schedule (or plain epochs) and return the final validation metrics (logged as a
        row of phase ``evaluation`` unless the last row holds them), then draw ``curves.png``. A run
        that fails before writing anything leaves no output folder behind."""
        try:
            if self.schedule is not None:
                if self.dist.enabled:
                    raise ValueError(f"method {self.config.method!r}: its multi-phase schedule runs in one process; "
                                     "run it without torchrun")
                self.schedule(self)
            else:
                self.wrap_ddp()
                self.train_epochs(self.config.epochs)
            result = self._final_metrics() if self.dist.is_main else {}
        except BaseException:
            self.run_dir.discard_if_empty()
            raise
        if self.dist.is_main:
            if self.history and self.history[-1].get("val") is not result:  # the final metrics, unless logged
                self.log({"phase": "evaluation", "epoch": self.epoch, "step": self.step, "val": result})
            self._write_curves()
        self.runtime.barrier()
        return result

    def _final_metrics(self) -> Dict[str, Dict]:
        """The trained model's validation metrics: those of the last log row when it evaluated this model after the
        last epoch on every task (plain epochs and AdaShare's re-training do; evaluating again would give the same
        numbers), else a new evaluation."""
        last = self.history[-1] if self.history else {}
        if last.get("epoch") == self.epoch and set(last.get("val", {})) == set(self.tasks):
            return last["val"]
        return self.evaluate()

    def _write_curves(self) -> None:
        """``curves.png`` of the finished run (see :mod:`mtl_ops.train.curves`). Without matplotlib the run still
        succeeds, with a note that names the missing package."""
        if not self.run_dir.enabled or not (self.run_dir.path / "metrics.jsonl").is_file():
            return
        try:
            write_curves(self.run_dir.path, self.config.method)
        except ImportError as e:
            print(f"[{self.config.method}] {CURVES_FILE} not written: {e}", file=sys.stderr, flush=True)

    def train_epochs(self, epochs: int, phase: str = "train") -> None:
        """Plain epochs up to ``epochs`` completed ones: evaluation every ``eval_every`` epochs and after the last,
        a log row and ``last.pt`` after each."""
        cfg = self.config
        while self.epoch < epochs:
            losses = self.train_epoch(self.epoch, desc=phase)
            self.epoch += 1
            row = self._epoch_row(phase, losses)
            if self.val_set is not None and self.dist.is_main and \
                    (self.epoch % cfg.eval_every == 0 or self.epoch == epochs):
                row["val"] = self.evaluate()
            improved = self.best is not None and "val" in row and self.best.update(row["val"], self.epoch)
            if self.best is not None and "val" in row:
                row["best_metric"] = {"value": self.best.score(row["val"]), "best": self.best.value,
                                      "best_epoch": self.best.epoch}
            if self.dist.is_main:
                self.log(row)
                self.save("last.pt")
                if improved:
                    self.save(BEST_FILE)
            self.runtime.barrier()

    def train_phase(self, phase: str, epochs: int, *, evaluate: bool = True, forward: Optional[Callable] = None,
                    **kwargs) -> Dict:
        """``epochs`` epochs of a schedule's phase (``kwargs`` go to :meth:`train_epoch`), logged with the
        phase name; evaluates after the last one when ``evaluate``. Returns the last log row."""
        row = {}
        for i in range(epochs):
            losses = self.train_epoch(self.epoch, desc=phase, forward=forward, **kwargs)
            self.epoch += 1
            row = self._epoch_row(phase, losses)
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
