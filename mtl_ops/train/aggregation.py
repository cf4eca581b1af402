"""Gradient balancing through torchjd: a torchjd aggregator as ``config.weighting`` combines the tasks' gradients
on the shared parameters instead of summing weighted losses.

Each training step runs ``torchjd.autojac.mtl_backward`` on the per-task objectives ``w_t · L_t`` (the fixed
``loss_weights``; plus ``aux_weight`` × the task's deep-supervision losses): it puts each task's gradient into the
``.grad`` of the parameters after the shared features (a parameter several tasks use gets their sum) and the
Jacobian — one row per task — into the ``.jac`` of the shared parameters; ``torchjd.autojac.jac_to_grad`` then
turns that Jacobian into one gradient with the aggregator. The shared features are the output of the network's
``backbone`` module (captured by a forward hook), the shared parameters the backbone's trainable ones: the
methods whose every task reads one backbone (shared, pdf, ctal, medusa). ``single_task`` (nothing shared),
``adashare`` (a task-specific path through the blocks) and ``etr_nlp`` (task-specific routes inside the
backbone) are refused with a clear error. A step with one task, or with no trainable shared parameter, has
nothing to aggregate and takes the plain gradient.

**AMP.** On CPU, autocast is bfloat16 and needs no loss scaling: every aggregator combines with it. On CUDA,
float16 losses are scaled by the ``GradScaler``; the Jacobian is divided by the scale before the aggregator sees
it, and the aggregated gradient multiplied by it again, so that the scaler's unscaling and inf/NaN check work as
for a plain backward, and aggregators whose result does not scale linearly with the Jacobian (Nash-MTL) see the
true Jacobian. A Jacobian with inf/NaN (an overflowing float16 step) is not aggregated: its rows are summed so
that the scaler skips the step and lowers the scale.

**DDP.** Under torchrun the forward runs in ``no_sync`` (DDP's gradient all-reduce hooks do not apply to
torchjd's backward); each process computes the Jacobian of its shard, the Jacobians and the other gradients are
averaged over the processes (the Jacobian of the whole batch's mean loss), every process aggregates it, and the
aggregated gradient of process 0 is broadcast so that the replicas stay identical also for random aggregators
(GradDrop, Random).

**Resume.** The stateful aggregators (Nash-MTL, GradVac, PCD, ExcessMTL keep running estimates between steps)
keep their state in Python attributes that a checkpoint does not hold: resuming such a run is refused.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Mapping, Optional

import torch
from torch import nn

from ..common.optional import require

#: ``config.weighting`` name -> torchjd 0.18 aggregator class (torchjd.aggregation)
AGGREGATORS: Dict[str, str] = {
    "upgrad": "UPGrad", "mgda": "MGDA", "cagrad": "CAGrad", "pcgrad": "PCGrad", "imtlg": "IMTLG",
    "alignedmtl": "AlignedMTL", "nashmtl": "NashMTL", "dualproj": "DualProj", "graddrop": "GradDrop",
    "gradvac": "GradVac", "config": "ConFIG", "fairgrad": "FairGrad", "pcd": "PCD", "excessmtl": "ExcessMTL",
    "mean": "Mean", "sum": "Sum", "random": "Random",
}
#: options an aggregator cannot do without (torchjd gives them no default)
REQUIRED_OPTIONS = {"cagrad": ("c",), "fairgrad": ("alpha",)}
#: options that are tensors in torchjd (given as lists in JSON)
TENSOR_OPTIONS = ("pref_vector", "leak")


def _aggregation(name: str):
    return require("torchjd.aggregation", "torchjd", "torchjd", f"weighting={name!r} (a torchjd aggregator)")


def _autojac(name: str):
    return require("torchjd.autojac", "torchjd", "torchjd", f"weighting={name!r} (a torchjd aggregator)")


def make_aggregator(name: str, options: Mapping, num_tasks: int):
    """The torchjd aggregator ``name`` (a key of :data:`AGGREGATORS`) with ``options`` (its keyword arguments;
    Nash-MTL's ``n_tasks`` is filled in)."""
    if name not in AGGREGATORS:
        raise ValueError(f"weighting: expected a torchjd aggregator, one of {sorted(AGGREGATORS)}, got {name!r}")
    cls = getattr(_aggregation(name), AGGREGATORS[name])
    kwargs = {k: torch.tensor(v, dtype=torch.float32) if k in TENSOR_OPTIONS and isinstance(v, list) else v
              for k, v in options.items()}
    if name == "nashmtl":
        kwargs.setdefault("n_tasks", num_tasks)
    missing = [k for k in REQUIRED_OPTIONS.get(name, ()) if k not in kwargs]
    if missing:
        raise ValueError(f"config.aggregator_options: {AGGREGATORS[name]} needs {missing} (a number each, e.g. "
                         f"--aggregator-options '{{\"{missing[0]}\": ...}}'), got {dict(options)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.aggregator_options: {AGGREGATORS[name]} does not take {dict(options)}: {e}") from e


def is_stateful(aggregator) -> bool:
    """Whether ``aggregator`` keeps a state between steps (torchjd's ``Stateful``)."""
    return isinstance(aggregator, require("torchjd", "torchjd", "torchjd", "torchjd aggregators").Stateful)


class GradientAggregation:
    """The backward of a training step with a torchjd aggregator on the shared parameters of ``net`` (see the
    module docs). :meth:`attach` hooks the network's backbone (again after the network changed);
    :meth:`backward` fills the ``.grad`` of the parameters from the per-task objectives of the last forward."""

    def __init__(self, name: str, options: Mapping, tasks, net: nn.Module, runtime, method: str):
        self.name, self.method, self.runtime = name, method, runtime
        self.tasks = list(tasks)
        self.aggregator = make_aggregator(name, options, len(self.tasks))
        self._autojac = _autojac(name)
        self._backbone: Optional[nn.Module] = None
        self._hook = None
        self._features: Optional[List[torch.Tensor]] = None
        # torchjd differentiates the tasks' rows in parallel with torch.vmap, whose batching of the backbone's
        # backward fails on autocast's mixed dtypes ("expected scalar type BFloat16 but found Float"); under AMP
        # the rows go one at a time (torchjd's documented remedy)
        self.chunk_size = 1 if runtime.amp else None
        self.attach(net)

    def attach(self, net: nn.Module) -> None:
        backbone = getattr(net, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"config.weighting: the torchjd aggregator {self.name!r} combines the tasks' gradients "
                             f"on a backbone that every task reads; method {self.method!r} has none (supported: "
                             f"shared, pdf, ctal, medusa; use a loss weighting: fixed, uncertainty or dwa)")
        if backbone is self._backbone:
            return
        if self._hook is not None:
            self._hook.remove()
        self._backbone, self._hook = backbone, backbone.register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        if not torch.is_grad_enabled():
            return None
        if isinstance(output, torch.Tensor):
            self._features = [output]
            return None
        # a backbone's maps depend on each other (stage 2 reads stage 1's map): the layers after it read copies,
        # so that the gradient reaching a map holds only what the layers after the backbone send it, as torchjd's
        # features must (the gradient reaching the map itself would also hold the path through the later maps,
        # which the Jacobian over the backbone counts again)
        self._features = [f.clone() for f in output]
        return type(output)(self._features)

    @staticmethod
    def no_sync(model: nn.Module):
        """The context of a training forward: DDP's ``no_sync`` (its all-reduce hooks do not run under torchjd)."""
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()

    def backward(self, objectives: Mapping[str, torch.Tensor], params: List[torch.Tensor]) -> None:
        """Fill the ``.grad`` of ``params`` (the optimiser's) from ``objectives`` ({task: scalar}) of the last
        forward; under the CUDA GradScaler the gradients come out scaled, as a scaled backward leaves them."""
        features, self._features = self._features, None
        if features is None:
            raise ValueError(f"config.weighting: the torchjd aggregator {self.name!r} needs the output of the "
                             f"network's backbone module, but method {self.method!r} did not call it in the forward "
                             f"pass (its tasks take task-specific paths; use fixed, uncertainty or dwa)")
        scaler = self.runtime.scaler
        scale = float(scaler.get_scale()) if scaler.is_enabled() else 1.0
        losses = [objectives[t] * scale for t in self.tasks if t in objectives]
        shared = [p for p in self._backbone.parameters() if p.requires_grad]
        if len(losses) == 1 or not shared:  # nothing to aggregate
            sum(losses).backward()
            self._sync_grads(params, set())
            return
        # retain_graph: tasks may share layers after the backbone (a shared decoder), which each task's backward
        # passes through
        self._autojac.mtl_backward(losses, features=[f for f in features if f.requires_grad], shared_params=shared,
                                   retain_graph=True, parallel_chunk_size=self.chunk_size)
        for p in shared:
            p.jac.div_(scale)
        shared_ids = {id(p) for p in shared}
        self._sync_grads(params, shared_ids, jacobians=[p.jac for p in shared])
        if all(bool(torch.isfinite(p.jac).all()) for p in shared):
            self._autojac.jac_to_grad(shared, self.aggregator)
        else:  # an overflowing float16 step: the scaler sees the inf/NaN and skips it
            for p in shared:
                p.grad = p.jac.sum(0)
                del p.jac
        if scale != 1.0:
            for p in shared:
                p.grad.mul_(scale)
        if self.runtime.dist.enabled:
            for p in shared:
                torch.distributed.broadcast(p.grad, src=0)

    def _sync_grads(self, params, shared_ids, jacobians=()) -> None:
        """Under torchrun: average the Jacobians and the gradients of the other parameters over the processes."""
        if not self.runtime.dist.enabled:
            return
        world = torch.distributed.get_world_size()
        tensors = list(jacobians) + [p.grad for p in params if id(p) not in shared_ids and p.grad is not None]
        for t in tensors:
            torch.distributed.all_reduce(t)
            t.div_(world)

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
