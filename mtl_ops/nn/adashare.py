"""AdaShare (Sun et al., NeurIPS 2020): a DeepLab-ResNet backbone whose residual blocks each task executes or
skips, with per-task ASPP-v2 heads (spec §3.2–3.12).

Two forward paths:

* :meth:`AdaShareResNet.forward` ``(x, gates)``, the training path: soft (or 0/1) gates (T, L, 2) from an
  :class:`~mtl_ops.nn.AdaSharePolicy`; the T tasks run in one batched pass (the input stacked T times,
  (T·B, ...)), every block's conv path runs on T·B rows and is mixed per task by the fused
  ``mtl_ops.ops.gated_residual``.
* :meth:`AdaShareResNet.forward_hard` ``(x, policy)``, the re-training / inference path for a hard policy:
  a trie over the task policies computes each distinct prefix of executed blocks once, never computes a
  skipped block, and batches the trie nodes that execute the same block into one call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..backends import BACKENDS
from .adashare_policy import AdaSharePolicy, execute_mask
from .aspp import ASPPv2Head
from .task_batchnorm import TaskBatchNorm2d

_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
_STRIDES = (1, 2, 1, 1)
_DILATIONS = (1, 1, 2, 4)
_UPSAMPLE = ("bilinear", "nearest", None)
_BN_STATS = ("per_task", "shared")


class Stem(nn.Module):
    """Conv7x7(stride 2, pad 3, no bias) → BN → ReLU → MaxPool(3, stride 2, pad 1, ceil_mode=True)."""

    def __init__(self, in_channels: int, out_channels: int, bn: dict):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False)
        self.bn = TaskBatchNorm2d(out_channels, **bn)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def forward(self, x: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x), tasks)))


class ResidualBranch(nn.Module):
    """f(x) of a BasicBlock: conv3x3 → BN → ReLU → conv3x3 → BN (no final ReLU; the gate applies it)."""

    def __init__(self, in_channels: int, planes: int, stride: int, dilation: int, bn: dict):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn1 = TaskBatchNorm2d(planes, **bn)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = TaskBatchNorm2d(planes, **bn)

    def forward(self, x: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x), tasks))), tasks)


class Shortcut(nn.Module):
    """The "ds" path of a stage's first block: Conv1x1(stride, no bias) → BN."""

    def __init__(self, in_channels: int, planes: int, stride: int, bn: dict):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, planes, 1, stride=stride, bias=False)
        self.bn = TaskBatchNorm2d(planes, **bn)

    def forward(self, x: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        return self.bn(self.conv(x), tasks)


class GatedBasicBlock(nn.Module):
    """A BasicBlock split into its residual path (``shortcut`` or identity) and its ``branch`` f, so that the
    gate can mix ``relu(residual + f(x))`` (execute) with ``residual`` (skip). A skipped block with a
    shortcut still applies it (the shapes change)."""

    def __init__(self, in_channels: int, planes: int, stride: int, dilation: int, bn: dict, *,
                 first_in_stage: bool):
        super().__init__()
        self.stride, self.dilation = stride, dilation
        self.branch = ResidualBranch(in_channels, planes, stride, dilation, bn)
        # Spec §3.2: a stage's first block has the "ds" shortcut iff stride != 1, the channels change or the
        # stage is dilated (2 or 4); every other block has the identity.
        needs_ds = first_in_stage and (stride != 1 or in_channels != planes or dilation in (2, 4))
        self.shortcut = Shortcut(in_channels, planes, stride, bn) if needs_ds else None

    def residual(self, x: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        return x if self.shortcut is None else self.shortcut(x, tasks)

    def execute(self, x: torch.Tensor, tasks: Sequence[int]) -> torch.Tensor:
        """The block with gates [1, 0]: ``relu(residual(x) + f(x))``."""
        return torch.relu(self.residual(x, tasks) + self.branch(x, tasks))


@dataclass
class TriePlan:
    """Execution plan of a hard policy (spec §3.8): tasks share the activation after block l iff they use the
    same BatchNorm group and took the same decisions for blocks 1..l.

    Node ids are ints. ``roots[i]`` is the BN group of root node i (the stem output, nodes 0..len(roots)-1);
    ``group[n]`` the BN group of node n; ``execute_edges[l]`` / ``skip_edges[l]`` the (parent, child) pairs
    that execute / skip block l; ``leaf_of_task[t]`` the node holding task t's backbone output.
    """

    roots: list[int]
    group: list[int]
    execute_edges: list[list[tuple[int, int]]]
    skip_edges: list[list[tuple[int, int]]]
    leaf_of_task: list[int]

    @classmethod
    def build(cls, execute: torch.Tensor, groups: Sequence[int]) -> "TriePlan":
        """``execute``: (T, L) bool mask; ``groups``: the BN group of each task (all equal when BN is shared)."""
        mask = execute.tolist()
        roots: list[int] = list(dict.fromkeys(groups))
        group = list(roots)
        node_of_task = [roots.index(g) for g in groups]
        execute_edges, skip_edges = [], []
        for l in range(len(mask[0]) if mask else 0):
            children: dict[tuple[int, bool], int] = {}
            level_exec, level_skip = [], []
            for t, parent in enumerate(node_of_task):
                key = (parent, bool(mask[t][l]))
                if key not in children:
                    children[key] = len(group)
                    group.append(group[parent])
                    (level_exec if key[1] else level_skip).append((parent, children[key]))
                node_of_task[t] = children[key]
            execute_edges.append(level_exec)
            skip_edges.append(level_skip)
        return cls(roots, group, execute_edges, skip_edges, node_of_task)

    def block_executions(self) -> list[int]:
        """How many times the plan computes each block's conv path (in units of B images)."""
        return [len(edges) for edges in self.execute_edges]


def shared_block_executions(policy, *, task_bn: bool = False) -> list[int]:
    """Per block, how many times :meth:`AdaShareResNet.forward_hard` computes its conv path for this hard
    policy (in units of the B images): the number of distinct executed prefixes through it. With
    ``task_bn=True`` no two tasks share a node (their BatchNorms differ)."""
    mask = execute_mask(policy)
    groups = list(range(mask.shape[0])) if task_bn else [0] * mask.shape[0]
    return TriePlan.build(mask, groups).block_executions()


class AdaShareResNet(nn.Module):
    """AdaShare multi-task network: DeepLab-ResNet-18/34 backbone with per-task gated blocks, one ASPP-v2 head
    per task (spec §3.2–3.4).

    Args:
        tasks: task name → output channels (e.g. ``{"semseg": 40, "normals": 3}``); the order fixes the task
            index t of the gates.
        depth: 18 (blocks [2, 2, 2, 2], L = 8) or 34 ([3, 4, 6, 3], L = 16).
        in_channels: input image channels.
        width: base width; stage planes are width·(1, 2, 4, 8) (64 in the paper; small for tests).
        task_bn: one BatchNorm (affine parameters and running statistics) per task in every backbone BN
            (AdaShare's ``task_bn``); False shares them across tasks (reference master).
        bn_stats: ``"per_task"`` (default): in training mode each task's chunk of the stacked batch is
            normalised with its own batch statistics, as the reference's T separate passes do (spec K7).
            ``"shared"``: one BatchNorm over all T·B rows (mixes the tasks' statistics; only with task_bn=False).
        head_hidden: hidden channels of the ASPP heads (default 16·width, i.e. 1024 at width 64).
        head_rates, head_dropout: ASPP dilation rates (6, 12, 18, 24) and dropout (0.5).
        upsample: how predictions are resized to the input size: ``"bilinear"`` (default, align_corners=False),
            ``"nearest"`` (the reference's test-time resize) or None (return the stride-8 maps, at which the
            reference computes its training losses).
        backend: backend of ``mtl_ops.ops.gated_residual`` (None picks the fastest available).
        seed: seed of the weight initialisation (conv weights N(0, 0.01), biases 0, BN γ = 1, β = 0);
            None draws from the global RNG.

    The stride is 8 (stage strides 1, 2, 1, 1; dilations 1, 1, 2, 4). Parameters: :meth:`backbone_parameters`,
    :meth:`head_parameters`, :meth:`weight_parameters` (all of them; the policy logits live in
    :class:`AdaSharePolicy`), :meth:`param_groups`.
    """

    output_stride = 8

    def __init__(self, tasks: Mapping[str, int], depth: int = 18, *, in_channels: int = 3, width: int = 64,
                 task_bn: bool = False, bn_stats: str = "per_task", head_hidden: int | None = None,
                 head_rates: Sequence[int] = (6, 12, 18, 24), head_dropout: float = 0.5,
                 upsample: str | None = "bilinear", backend: str | None = None, seed: int | None = None):
        super().__init__()
        if not isinstance(tasks, Mapping) or not tasks:
            raise ValueError(f"AdaShareResNet: tasks must be a non-empty dict of task name -> output channels, "
                             f"got {tasks!r}")
        for name, k in tasks.items():
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"AdaShareResNet: task names must be non-empty strings without '.', got {name!r}")
            if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                raise ValueError(f"AdaShareResNet: output channels of task {name!r} must be a positive int, got {k!r}")
        if depth not in _LAYERS:
            raise ValueError(f"AdaShareResNet: depth must be one of {sorted(_LAYERS)}, got {depth!r}")
        for name, v in (("in_channels", in_channels), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"AdaShareResNet: {name} must be a positive int, got {v!r}")
        if bn_stats not in _BN_STATS:
            raise ValueError(f"AdaShareResNet: bn_stats must be one of {_BN_STATS}, got {bn_stats!r}")
        if task_bn and bn_stats == "shared":
            raise ValueError("AdaShareResNet: task_bn=True needs bn_stats='per_task' (each task has its own BN)")
        if upsample not in _UPSAMPLE:
            raise ValueError(f"AdaShareResNet: upsample must be one of {_UPSAMPLE}, got {upsample!r}")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"AdaShareResNet: backend must be one of {BACKENDS} or None, got {backend!r}")

        self.task_names = list(tasks)
        self.num_tasks = len(self.task_names)
        self.depth, self.in_channels, self.width = depth, in_channels, width
        self.task_bn, self.bn_stats = bool(task_bn), bn_stats
        self.upsample, self.backend = upsample, backend
        bn = dict(num_tasks=self.num_tasks, task_specific=self.task_bn, per_task_stats=bn_stats == "per_task")

        self.stem = Stem(in_channels, width, bn)
        blocks, inplanes = [], width
        for stage, n_blocks in enumerate(_LAYERS[depth]):
            planes = width * 2 ** stage
            for i in range(n_blocks):
                stride = _STRIDES[stage] if i == 0 else 1
                blocks.append(GatedBasicBlock(inplanes, planes, stride, _DILATIONS[stage], bn, first_in_stage=i == 0))
                inplanes = planes
        self.blocks = nn.ModuleList(blocks)
        self.blocks_per_stage = _LAYERS[depth]
        hidden = 16 * width if head_hidden is None else head_hidden
        self.heads = nn.ModuleDict({name: ASPPv2Head(inplanes, k, hidden, head_rates, head_dropout)
                                    for name, k in tasks.items()})
        self.reset_parameters(seed)

    @property
    def num_blocks(self) -> int:
        """L, the number of gated blocks (8 for ResNet-18, 16 for ResNet-34)."""
        return len(self.blocks)

    def make_policy(self, **kwargs) -> AdaSharePolicy:
        """An :class:`AdaSharePolicy` of this model's (T, L); ``kwargs`` go to its constructor."""
        return AdaSharePolicy(self.num_tasks, self.num_blocks, **kwargs)

    def extra_repr(self) -> str:
        return (f"tasks={self.task_names}, depth={self.depth}, width={self.width}, task_bn={self.task_bn}, "
                f"bn_stats={self.bn_stats!r}, upsample={self.upsample!r}, backend={self.backend!r}")

    # ---- parameters ------------------------------------------------------------------------------------
    def reset_parameters(self, seed: int | None = None) -> None:
        """Re-initialise every weight (the reference re-trains from the post-construction initialisation):
        conv weights N(0, 0.01), conv biases 0, BN γ = 1, β = 0 and fresh running statistics."""
        g = None if seed is None else torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    if g is None:
                        m.weight.normal_(0.0, 0.01)
                    else:
                        m.weight.copy_(0.01 * torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
                    if m.bias is not None:
                        m.bias.zero_()
                elif isinstance(m, nn.BatchNorm2d):
                    m.reset_parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Stem and residual blocks (the reference's ``backbone_lr`` group)."""
        yield from self.stem.parameters()
        yield from self.blocks.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """The task heads (the reference's ``lr`` group)."""
        yield from self.heads.parameters()

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every network weight (backbone and heads); the policy logits are not part of the model."""
        yield from self.parameters()

    def param_groups(self, lr: float, backbone_lr: float | None = None) -> list[dict]:
        """Optimiser parameter groups: heads at ``lr``, backbone at ``backbone_lr`` (default ``lr``)."""
        return [{"params": list(self.head_parameters()), "lr": lr, "name": "heads"},
                {"params": list(self.backbone_parameters()), "lr": lr if backbone_lr is None else backbone_lr,
                 "name": "backbone"}]

    # ---- argument checks -------------------------------------------------------------------------------
    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"AdaShareResNet: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"AdaShareResNet: x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"AdaShareResNet: x must be a floating-point tensor, got {x.dtype}")

    def _check_gates(self, gates, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(gates, torch.Tensor):
            raise TypeError(f"AdaShareResNet: gates must be a torch.Tensor (T, L, 2), got {type(gates).__name__}")
        T, L = self.num_tasks, self.num_blocks
        if gates.shape != (T, L, 2):
            raise ValueError(f"AdaShareResNet: gates must have shape (T, L, 2) = ({T}, {L}, 2), "
                             f"got {tuple(gates.shape)}")
        if not gates.is_floating_point():
            raise TypeError(f"AdaShareResNet: gates must be a floating-point tensor, got {gates.dtype}")
        if gates.device != x.device:
            raise ValueError(f"AdaShareResNet: gates must be on x's device ({x.device}), got {gates.device}")
        return gates if gates.dtype in (torch.float32, x.dtype) else gates.float()

    # ---- forward paths ---------------------------------------------------------------------------------
    def _shareable_prefix(self, gates: torch.Tensor) -> int:
        """Leading blocks that every task executes with constant [1, 0] gates (the curriculum's forced
        blocks): their T stacked copies would be identical, so they run once on the B images. Only with
        shared BN and gates that need no gradient (a gate's gradient would be lost otherwise)."""
        if self.task_bn or (torch.is_grad_enabled() and gates.requires_grad):
            return 0
        forced = ((gates[..., 0] == 1) & (gates[..., 1] == 0)).all(dim=0).tolist()
        return forced.index(False) if False in forced else len(forced)

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gated forward of all tasks in one batched pass (policy learning; any gates, soft or 0/1).

        Args:
            x: (B, in_channels, H, W) images, shared by the tasks.
            gates: (T, L, 2) per-task, per-block gates (column 0 execute, column 1 skip), e.g. from
                :meth:`AdaSharePolicy.sample_soft`. Block l of task t computes
                ``gates[t,l,0]·relu(res + f(x)) + gates[t,l,1]·res`` (res = shortcut(x) or x); its conv path
                is always computed.

        Returns ``{task: prediction}``, (B, K_t, H, W) resized to the input size by ``upsample`` (or the
        stride-8 map when ``upsample=None``). Differentiable in the weights, x and the gates.

        The stem (with shared BN) and a leading run of blocks that every task executes with constant gates
        (the curriculum's forced blocks; only when the gates need no gradient) run once on the B images
        instead of T times: the outputs are identical, only the shared BN running statistics receive one
        update per step there instead of T.
        """
        self._check_input(x)
        gates = self._check_gates(gates, x)
        T, B = self.num_tasks, x.shape[0]
        tasks = list(range(T))
        if self.task_bn:
            h, start, stacked = self.stem(x.repeat(T, 1, 1, 1), tasks), 0, True
        else:
            h, start, stacked = self.stem(x, [0]), self._shareable_prefix(gates), False
            for block in self.blocks[:start]:
                h = block.execute(h, [0])
            if start < self.num_blocks:
                h, stacked = h.repeat(T, 1, 1, 1), True
        for l in range(start, self.num_blocks):
            block = self.blocks[l]
            residual, branch = block.residual(h, tasks), block.branch(h, tasks)
            y = ops.gated_residual(residual.unflatten(0, (T, B)), branch.unflatten(0, (T, B)),
                                   gates[:, l].contiguous(), backend=self.backend)
            h = y.flatten(0, 1)
        features = list(h.split(B)) if stacked else [h] * T
        return self._predict(features, x.shape[-2:])

    def forward_hard(self, x: torch.Tensor, policy=None) -> dict[str, torch.Tensor]:
        """Forward with a hard policy (re-training and inference): the trie plan of spec §3.8.

        Args:
            x: (B, in_channels, H, W).
            policy: one-hot 0/1 gates (T, L, 2) (e.g. :meth:`AdaSharePolicy.sample_hard`), a (T, L) bool or 0/1
                execute mask, an :class:`AdaSharePolicy` (its argmax policy), or None (every block executed
                by every task: hard parameter sharing, the warm-up phase; one backbone pass).

        Each distinct prefix of executed blocks is computed once and shared by the tasks that took it; a
        skipped block is never computed (a skipped first-of-stage block applies only its 1×1 shortcut); trie
        nodes executing the same block are batched into one call. Returns what :meth:`forward` returns with
        the same 0/1 gates.

        BatchNorm and sharing: with shared BN (``task_bn=False``) the sharing is exact: tasks with the same
        prefix have identical activations (eval: same running statistics; training with
        ``bn_stats="per_task"``: identical chunks have identical batch statistics), so outputs and gradients
        equal those of :meth:`forward` with the same 0/1 gates. (In training mode the running statistics
        then get one update per trie node rather than one per task, and skipped blocks do not update theirs.
        With ``bn_stats="shared"`` in training mode each trie node is normalised with its own batch
        statistics, which differs from :meth:`forward`'s statistics over all T·B rows.) With
        ``task_bn=True`` every task normalises with its own BN, so two tasks' activations differ even after
        identical decisions: the trie then shares nothing between tasks (each task is its own chain, still
        skipping its skipped blocks), and only the batching of same-block nodes into one call remains.
        """
        self._check_input(x)
        T, L, B = self.num_tasks, self.num_blocks, x.shape[0]
        if policy is None:
            mask = torch.ones(T, L, dtype=torch.bool)
        else:
            mask = execute_mask(policy)
            if mask.shape != (T, L):
                raise ValueError(f"AdaShareResNet.forward_hard: policy must be for (T, L) = ({T}, {L}), "
                                 f"got {tuple(mask.shape)}")
        plan = TriePlan.build(mask.cpu(), list(range(T)) if self.task_bn else [0] * T)

        xs = x if len(plan.roots) == 1 else x.repeat(len(plan.roots), 1, 1, 1)
        acts = dict(enumerate(self.stem(xs, plan.roots).split(B)))
        for l, block in enumerate(self.blocks):
            exec_edges, skip_edges = plan.execute_edges[l], plan.skip_edges[l]
            exec_parents = [p for p, _ in exec_edges]
            if block.shortcut is None:  # identity residual: skipping children take the parent's activation
                new = {c: acts[p] for p, c in skip_edges}
                h = residual = _stack([acts[p] for p in exec_parents]) if exec_parents else None
            else:
                # The shortcut runs once per parent, executing parents first so that their inputs and
                # residuals are the leading rows; a parent with a skipping child takes only the shortcut.
                parents = exec_parents + [p for p, _ in skip_edges if p not in exec_parents]
                h = _stack([acts[p] for p in parents])
                residual = block.shortcut(h, [plan.group[p] for p in parents])
                rows = dict(zip(parents, residual.split(B)))
                new = {c: rows[p] for p, c in skip_edges}
            if exec_parents:
                n = len(exec_parents) * B
                h, residual = (h, residual) if h.shape[0] == n else (h[:n], residual[:n])
                out = torch.relu(residual + block.branch(h, [plan.group[p] for p in exec_parents]))
                new.update(zip((c for _, c in exec_edges), out.split(B)))
            acts = new
        return self._predict([acts[n] for n in plan.leaf_of_task], x.shape[-2:])

    def _predict(self, features: list[torch.Tensor], size) -> dict[str, torch.Tensor]:
        out = {}
        for name, feat in zip(self.task_names, features):
            y = self.heads[name](feat)
            if self.upsample == "bilinear":
                y = F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)
            elif self.upsample == "nearest":
                y = F.interpolate(y, size=tuple(size), mode="nearest")
            out[name] = y
        return out


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


_PHASES = ("weights", "policy")


def set_adashare_phase(model: AdaShareResNet, policy: AdaSharePolicy, phase: str) -> None:
    """Freeze one side of AdaShare's alternating optimisation (spec §3.7, §3.12).

    ``"weights"`` (warm-up, weight steps, re-training): every model weight trainable, the policy logits
    frozen (gates sampled from it carry no gradient). ``"policy"``: only the logits trainable; the weights get
    ``requires_grad=False``, so backward skips their weight-gradient kernels. BatchNorm layers keep their
    train/eval mode (the reference keeps them in train mode during policy steps).
    """
    if phase not in _PHASES:
        raise ValueError(f"set_adashare_phase: phase must be one of {_PHASES}, got {phase!r}")
    for p in model.weight_parameters():
        p.requires_grad_(phase == "weights")
    for p in policy.parameters():
        p.requires_grad_(phase == "policy")
