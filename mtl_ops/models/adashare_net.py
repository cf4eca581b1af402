"""AdaShare (Sun et al., NeurIPS 2020) as one complete network: a DeepLab-ResNet backbone whose residual blocks
each task executes or skips, per-task ASPP-v2 heads, the learned select-or-skip policy and a fixed hard
policy.

Entry points:

* ``forward(images, gates)``, explicit gates: soft (or 0/1) gates (T, L, 2), e.g. from the network's own
  :attr:`~AdaShareNet.policy` or any :class:`~mtl_ops.nn.AdaSharePolicy` a user drives. The T tasks run in
  one batched pass (the input stacked T times, (T·B, ...)); every block's conv path runs on T·B rows and is
  mixed per task by the fused ``mtl_ops.ops.gated_residual``.
* :meth:`AdaShareNet.forward_hard` ``(images, policy)``, a hard policy (re-training, inference): a trie over
  the task policies (:class:`~mtl_ops.nn.TriePlan`) computes each distinct prefix of executed blocks once,
  never computes a skipped block, and batches the trie nodes that execute the same block into one call.
* ``forward(images)``: what :attr:`~AdaShareNet.mode` says, the three stages of AdaShare's training (the
  trainer's phases in ``mtl_ops.train.adashare_phases`` switch it with :meth:`~AdaShareNet.set_mode`):

  - ``"shared"``: every block executed by every task, one backbone pass (warm-up, hard parameter sharing);
  - ``"soft"``: Gumbel-softmax gates sampled from :attr:`~AdaShareNet.policy` at every call (policy
    learning; ``p_epoch`` sets the curriculum);
  - ``"hard"``: the fixed hard policy (buffer ``hard_policy``) through the trie (re-training, inference).

Backbones: AdaShare gates the residual blocks of its own DeepLab ResNet (blocks that take the per-task
BatchNorm and the fused gated residual, skipped blocks never computed), so it cannot run another library's
modules as they are. ResNet-18 and ResNet-34 from torchvision or timm (``torchvision:resnet18``,
``timm:resnet34``, ...) have exactly its parameter shapes at width 64 (its strides and dilations have no
parameters), so for those names the library builds its model — random, or its published weights with
``pretrained=True`` — and that model's weights are copied into the gated ResNet. Every other backbone
(bottleneck ResNets, other families, a module) is refused with a message naming it. A ``pretrained`` file is
read with torchvision's key names (``conv1``, ``layer1.0.bn1``, ...), which timm's ResNets share.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..backends import BACKENDS
from ..nn.adashare import Stem, TriePlan
from ..nn.adashare_policy import AdaSharePolicy, execute_mask, one_hot_gates, policy_table
from ..nn.aspp import ASPPv2Head
from ..nn.blocks import BasicBlock
from ..nn.task_batchnorm import TaskBatchNorm2d
from ..nn.task_names import check_task_channels
from .backbones import backbone_label, build_backbone, check_pretrained
from .pretrained import LoadReport, load_matching

_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
_STRIDES = (1, 2, 1, 1)
_DILATIONS = (1, 1, 2, 4)
_UPSAMPLE = ("bilinear", "nearest", None)
_BN_STATS = ("per_task", "shared")
MODES = ("shared", "soft", "hard")
#: library ResNets whose weights fit AdaShare's gated ResNet (the part after the colon is its depth)
LIBRARY_RESNETS = tuple(f"{lib}:{name}" for lib in ("torchvision", "timm") for name in _LAYERS)
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class AdaShareNet(nn.Module):
    """AdaShare multi-task network: DeepLab-ResNet-18/34 backbone with per-task gated blocks, one ASPP-v2 head
    per task, its policy and a hard policy.

    Args:
        tasks: task name → output channels (e.g. ``{"semseg": 40, "normals": 3}``); the order fixes the task
            index t of the gates.
        backbone: ``"resnet18"`` (blocks [2, 2, 2, 2], L = 8) or ``"resnet34"`` ([3, 4, 6, 3], L = 16), or the
            same depths from torchvision or timm (``"torchvision:resnet18"``, ``"timm:resnet34"``, ...: their
            weights copied into the gated ResNet, see the module docstring); other backbones are refused.
        width: base width; stage planes are width·(1, 2, 4, 8) (None: 64, the paper's; small for tests).
            Library ResNets have width 64, and a width given with them is refused.
        backbone_kwargs: options of the library model (``build_backbone``'s, e.g. torchvision's ``weights``).
        pretrained: a weights file with torchvision's ResNet keys, or True for the library's published
            weights (a download); re-training (:meth:`reset_parameters`) restores them.
        in_channels: input image channels.
        task_bn: one BatchNorm (affine parameters and running statistics) per task in every backbone BN
            (AdaShare's ``task_bn``); False shares them across tasks (the authors' default).
        bn_stats: ``"per_task"`` (default): in training mode each task's chunk of the stacked batch is
            normalised with its own batch statistics, as the authors' code does with its T separate passes.
            ``"shared"``: one BatchNorm over all T·B rows (mixes the tasks' statistics; only with
            task_bn=False).
        head_hidden: hidden channels of the ASPP heads (default 16·width, i.e. 1024 at width 64).
        head_rates, head_dropout: ASPP dilation rates (6, 12, 18, 24) and dropout (0.5).
        upsample: how predictions are resized to the input size: ``"bilinear"`` (default, align_corners=False),
            ``"nearest"`` (the authors' test-time resize) or None (return the stride-8 maps, at which the
            authors compute their training losses).
        backend: backend of ``mtl_ops.ops.gated_residual`` (None picks the fastest available).
        seed: seed of the weight initialisation (conv weights N(0, 0.01), biases 0, BN γ = 1, β = 0);
            None draws from the global RNG. AdaShare's re-training restores this initialisation
            (``reset_parameters(seed)``).
        policy_seed, curriculum_speed: the :attr:`policy`'s generator seed and curriculum (cycles per newly
            trainable block, see :class:`~mtl_ops.nn.AdaSharePolicy`).

    The stride is 8 (stage strides 1, 2, 1, 1; dilations 1, 1, 2, 4). Parameters: :meth:`backbone_parameters`,
    :meth:`head_parameters`, :meth:`weight_parameters` (both: every weight, without the policy logits),
    :meth:`param_groups`; the policy's logits are ``policy.parameters()``.
    """

    output_stride = 8

    def __init__(self, tasks: Mapping[str, int], backbone: str = "resnet18", *, width: int | None = None,
                 backbone_kwargs: dict | None = None, pretrained=None, in_channels: int = 3, task_bn: bool = False,
                 bn_stats: str = "per_task", head_hidden: int | None = None,
                 head_rates: Sequence[int] = (6, 12, 18, 24),
                 head_dropout: float = 0.5, upsample: str | None = "bilinear", backend: str | None = None,
                 seed: int | None = None, policy_seed: int = 0, curriculum_speed: int = 3):
        super().__init__()
        tasks = check_task_channels(tasks, "AdaShareNet")
        if backbone not in _LAYERS and backbone not in LIBRARY_RESNETS:
            raise ValueError(f"AdaShareNet: backbone must be one of {tuple(_LAYERS) + LIBRARY_RESNETS}: AdaShare "
                             f"gates the residual blocks of its own DeepLab ResNet (per-task BatchNorm, dilated last "
                             f"stages) and takes the weights of the library ResNets of the same shapes; other "
                             f"backbones are not supported; got {backbone_label(backbone)}")
        check_pretrained(pretrained, "AdaShareNet")
        library = backbone in LIBRARY_RESNETS
        if library and width is not None:  # build_backbone's message
            build_backbone(backbone, width=width, owner="AdaShareNet")
        if not library and (backbone_kwargs or pretrained is True):
            raise ValueError(f"AdaShareNet: backbone_kwargs and pretrained=True are for the library ResNets "
                             f"({', '.join(LIBRARY_RESNETS)}); the built-in {backbone} takes neither (got "
                             f"backbone_kwargs={backbone_kwargs!r}, pretrained={pretrained!r})")
        width = 64 if width is None else width
        for name, v in (("in_channels", in_channels), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"AdaShareNet: {name} must be a positive int, got {v!r}")
        if bn_stats not in _BN_STATS:
            raise ValueError(f"AdaShareNet: bn_stats must be one of {_BN_STATS}, got {bn_stats!r}")
        if task_bn and bn_stats == "shared":
            raise ValueError("AdaShareNet: task_bn=True needs bn_stats='per_task' (each task has its own BN)")
        if upsample not in _UPSAMPLE:
            raise ValueError(f"AdaShareNet: upsample must be one of {_UPSAMPLE}, got {upsample!r}")
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"AdaShareNet: backend must be one of {BACKENDS} or None, got {backend!r}")

        self.tasks = tasks
        self.task_names = list(tasks)
        self.num_tasks = len(self.task_names)
        self.backbone_name, self.in_channels, self.width = backbone, in_channels, width
        depth = backbone.split(":")[-1]
        self.task_bn, self.bn_stats = bool(task_bn), bn_stats
        self.upsample, self.backend = upsample, backend
        self.seed = seed
        bn = dict(num_tasks=self.num_tasks, task_specific=self.task_bn, per_task_stats=bn_stats == "per_task")
        norm = functools.partial(TaskBatchNorm2d, **bn)

        self.stem = Stem(in_channels, width, bn)
        blocks, inplanes = [], width
        for stage, n_blocks in enumerate(_LAYERS[depth]):
            planes = width * 2 ** stage
            for i in range(n_blocks):
                stride = _STRIDES[stage] if i == 0 else 1
                # DeepLab's rule: a stage's first block has the 1x1 projection shortcut iff it strides,
                # changes the channels or is dilated (2 or 4); every other block has the identity.
                projection = i == 0 and (stride != 1 or inplanes != planes or _DILATIONS[stage] in (2, 4))
                blocks.append(BasicBlock(inplanes, planes, stride, _DILATIONS[stage], norm=norm,
                                         projection=projection))
                inplanes = planes
        self.blocks = nn.ModuleList(blocks)
        self.blocks_per_stage = _LAYERS[depth]
        hidden = 16 * width if head_hidden is None else head_hidden
        self.heads = nn.ModuleDict({name: ASPPv2Head(inplanes, k, hidden, head_rates, head_dropout)
                                    for name, k in tasks.items()})
        self._backbone_init = None  # the backbone weights re-training restores (None: a fresh random draw)
        self.pretrained_report = None
        self.reset_parameters(seed)
        if library:
            model = build_backbone(backbone, owner="AdaShareNet", pretrained=True if pretrained is True else None,
                                   **dict(backbone_kwargs or {})).weights_module
            self._copy_resnet_weights(model.state_dict(), f"{backbone} ({type(model).__name__})")
        if isinstance(pretrained, (str, Path)):
            self.load_resnet_weights(pretrained)
        elif library:
            self._record_backbone_init()

        self.policy = self.make_policy(seed=policy_seed, curriculum_speed=curriculum_speed)
        execute_all = torch.ones(self.num_tasks, self.num_blocks, dtype=torch.bool)
        self.register_buffer("hard_policy", one_hot_gates(execute_all))
        self.mode = "shared"
        self.p_epoch = None

    @property
    def num_blocks(self) -> int:
        """L, the number of gated blocks (8 for ResNet-18, 16 for ResNet-34)."""
        return len(self.blocks)

    def make_policy(self, **kwargs) -> AdaSharePolicy:
        """A new :class:`AdaSharePolicy` of this network's (T, L), for users who drive a policy of their own;
        ``kwargs`` go to its constructor. (The network's own policy is :attr:`policy`.)"""
        return AdaSharePolicy(self.num_tasks, self.num_blocks, **kwargs)

    def extra_repr(self) -> str:
        return (f"tasks={self.task_names}, backbone={self.backbone_name!r}, width={self.width}, "
                f"task_bn={self.task_bn}, bn_stats={self.bn_stats!r}, upsample={self.upsample!r}, "
                f"backend={self.backend!r}, mode={self.mode!r}")

    # ---- mode and hard policy ----------------------------------------------------------------------------
    def set_mode(self, mode: str, p_epoch: int | None = None) -> None:
        """What ``forward(images)`` runs: ``"shared"``, ``"soft"`` (with the curriculum position ``p_epoch``)
        or ``"hard"`` (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f"AdaShareNet.set_mode: mode must be one of {MODES}, got {mode!r}")
        self.mode, self.p_epoch = mode, p_epoch

    def set_hard_policy(self, policy) -> None:
        """Store a hard policy (any form :func:`~mtl_ops.nn.execute_mask` takes) as ``hard_policy``."""
        mask = execute_mask(policy)
        if mask.shape != (self.num_tasks, self.num_blocks):
            raise ValueError(f"AdaShareNet.set_hard_policy: policy must be for (T, L) = "
                             f"({self.num_tasks}, {self.num_blocks}), got {tuple(mask.shape)}")
        self.hard_policy.copy_(one_hot_gates(mask))

    def policy_table(self) -> str:
        """The task × block table of ``hard_policy`` (1 = execute, 0 = skip)."""
        return policy_table(self.hard_policy, self.task_names, symbols=("1", "0"))

    # ---- backbone weights in torchvision's names ----------------------------------------------------------
    def _resnet_tensors(self) -> dict[str, list[torch.Tensor]]:
        """torchvision ResNet key -> the tensors of this network it initialises (a BatchNorm tensor goes to every
        task's BatchNorm when ``task_bn``)."""
        out = {}

        def bn(key, norm):
            for name in _BN_TENSORS:
                out[f"{key}.{name}"] = [getattr(b, name) for b in norm.bns]
        out["conv1.weight"] = [self.stem.conv.weight]
        bn("bn1", self.stem.bn)
        blocks = iter(self.blocks)
        for stage, n_blocks in enumerate(self.blocks_per_stage, start=1):
            for j in range(n_blocks):
                block, key = next(blocks), f"layer{stage}.{j}"
                out[f"{key}.conv1.weight"], out[f"{key}.conv2.weight"] = [block.conv1.weight], [block.conv2.weight]
                bn(f"{key}.bn1", block.bn1)
                bn(f"{key}.bn2", block.bn2)
                if block.shortcut is not None:
                    out[f"{key}.downsample.0.weight"] = [block.shortcut[0].weight]
                    bn(f"{key}.downsample.1", block.shortcut[1])
        return out

    def resnet_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's weights under torchvision's ResNet keys (the first task's BatchNorm when ``task_bn``):
        what :meth:`load_resnet_weights` reads."""
        return {k: v[0].detach().clone() for k, v in self._resnet_tensors().items()}

    def _load_resnet(self, matched: Mapping[str, torch.Tensor]) -> None:
        targets = self._resnet_tensors()
        with torch.no_grad():
            for key, value in matched.items():
                for t in targets[key]:
                    t.copy_(value)

    def _copy_resnet_weights(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        own = self.resnet_state_dict()
        wrong = sorted(set(own) ^ {k for k in state if k in own or not k.startswith("fc.")})
        bad = [k for k in own if k in state and state[k].shape != own[k].shape]
        if wrong or bad:
            raise ValueError(f"AdaShareNet: the weights of {source} do not fit its gated ResNet (keys only on one "
                             f"side: {wrong[:4]}, other shapes: {bad[:4]})")
        self._load_resnet({k: state[k] for k in own})

    def load_resnet_weights(self, source) -> LoadReport:
        """Load a weights file (or state dict) with torchvision's ResNet keys into the backbone, report what
        loaded, and make re-training restore these weights."""
        self.pretrained_report = load_matching(self.resnet_state_dict(), self._load_resnet, source,
                                               f"AdaShareNet's {self.backbone_name}")
        self._record_backbone_init()
        return self.pretrained_report

    def _record_backbone_init(self) -> None:
        self._backbone_init = {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
                               for name, m in (("stem", self.stem), ("blocks", self.blocks))}

    # ---- parameters ------------------------------------------------------------------------------------
    def reset_parameters(self, seed: int | None = None) -> None:
        """Re-initialise every weight (AdaShare re-trains from the post-construction initialisation):
        conv weights N(0, 0.01), conv biases 0, BN γ = 1, β = 0 and fresh running statistics; a backbone from a
        library or a pretrained file gets those weights back. The policy is left alone."""
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
            if self._backbone_init is not None:
                self.stem.load_state_dict(self._backbone_init["stem"])
                self.blocks.load_state_dict(self._backbone_init["blocks"])

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Stem and residual blocks (the authors' ``backbone_lr`` group)."""
        yield from self.stem.parameters()
        yield from self.blocks.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """The task heads (the authors' ``lr`` group)."""
        yield from self.heads.parameters()

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every network weight (backbone and heads), without the policy logits."""
        yield from self.backbone_parameters()
        yield from self.head_parameters()

    def param_groups(self, lr: float, backbone_lr: float | None = None) -> list[dict]:
        """Optimiser parameter groups: heads at ``lr``, backbone at ``backbone_lr`` (default ``lr``)."""
        return [{"params": list(self.head_parameters()), "lr": lr, "name": "heads"},
                {"params": list(self.backbone_parameters()), "lr": lr if backbone_lr is None else backbone_lr,
                 "name": "backbone"}]

    def learnable_parameters(self) -> int:
        """Weights the network keeps for inference in its mode: in ``hard`` mode, the conv paths of residual
        blocks that no task executes are pruned; the policy logits are never counted."""
        count = sum(p.numel() for p in self.weight_parameters())
        if self.mode == "hard":
            used = execute_mask(self.hard_policy).any(0).tolist()
            for block, keep in zip(self.blocks, used):
                if not keep:
                    count -= sum(p.numel() for p in block.branch_parameters())
        return count

    # ---- argument checks -------------------------------------------------------------------------------
    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"AdaShareNet: images must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"AdaShareNet: images must have shape (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"AdaShareNet: images must be a floating-point tensor, got {x.dtype}")

    def _check_gates(self, gates, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(gates, torch.Tensor):
            raise TypeError(f"AdaShareNet: gates must be a torch.Tensor (T, L, 2), got {type(gates).__name__}")
        T, L = self.num_tasks, self.num_blocks
        if gates.shape != (T, L, 2):
            raise ValueError(f"AdaShareNet: gates must have shape (T, L, 2) = ({T}, {L}, 2), "
                             f"got {tuple(gates.shape)}")
        if not gates.is_floating_point():
            raise TypeError(f"AdaShareNet: gates must be a floating-point tensor, got {gates.dtype}")
        if gates.device != x.device:
            raise ValueError(f"AdaShareNet: gates must be on the images' device ({x.device}), got {gates.device}")
        return gates if gates.dtype in (torch.float32, x.dtype) else gates.float()

    # ---- forward paths ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, gates: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{task: prediction}`` (B, K_t, H, W), resized to the input size by ``upsample`` (or the stride-8
        map when ``upsample=None``).

        With ``gates`` (T, L, 2), the batched gated forward :meth:`forward_gated`; without, what
        :attr:`mode` says: ``"shared"`` every block for every task, ``"soft"`` gates sampled from
        :attr:`policy`, ``"hard"`` the trie forward with ``hard_policy``.
        """
        if gates is not None:
            return self.forward_gated(images, gates)
        if self.mode == "shared":
            return self.forward_hard(images, None)
        if self.mode == "soft":
            return self.forward_gated(images, self.policy.sample_soft(self.p_epoch).to(images.device))
        return self.forward_hard(images, self.hard_policy)

    def _shareable_prefix(self, gates: torch.Tensor) -> int:
        """Leading blocks that every task executes with constant [1, 0] gates (the curriculum's forced
        blocks): their T stacked copies would be identical, so they run once on the B images. Only with
        shared BN and gates that need no gradient (a gate's gradient would be lost otherwise). Not under
        torch.compile: the prefix depends on the gates' values, which a compiled graph cannot branch on
        (the T copies then run, with the same outputs)."""
        if self.task_bn or (torch.is_grad_enabled() and gates.requires_grad) or torch.compiler.is_compiling():
            return 0
        forced = ((gates[..., 0] == 1) & (gates[..., 1] == 0)).all(dim=0).tolist()
        return forced.index(False) if False in forced else len(forced)

    def forward_gated(self, images: torch.Tensor, gates: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gated forward of all tasks in one batched pass (policy learning; any gates, soft or 0/1).

        Args:
            images: (B, in_channels, H, W), shared by the tasks.
            gates: (T, L, 2) per-task, per-block gates (column 0 execute, column 1 skip), e.g. from
                :meth:`AdaSharePolicy.sample_soft`. Block l of task t computes
                ``gates[t,l,0]·relu(res + f(x)) + gates[t,l,1]·res`` (res = shortcut(x) or x); its conv path
                is always computed.

        Returns what :meth:`forward` returns. Differentiable in the weights, the images and the gates.

        The stem (with shared BN) and a leading run of blocks that every task executes with constant gates
        (the curriculum's forced blocks; only when the gates need no gradient) run once on the B images
        instead of T times: the outputs are identical, only the shared BN running statistics receive one
        update per step there instead of T.
        """
        x = images
        self._check_input(x)
        gates = self._check_gates(gates, x)
        T, B = self.num_tasks, x.shape[0]
        tasks = list(range(T))
        if self.task_bn:
            h, start, stacked = self.stem(x.repeat(T, 1, 1, 1), tasks), 0, True
        else:
            h, start, stacked = self.stem(x, [0]), self._shareable_prefix(gates), False
            for block in self.blocks[:start]:
                h = block(h, [0])
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

    def forward_hard(self, images: torch.Tensor, policy=None) -> dict[str, torch.Tensor]:
        """Forward with a hard policy (re-training and inference) through the trie plan.

        Args:
            images: (B, in_channels, H, W).
            policy: one-hot 0/1 gates (T, L, 2) (e.g. :meth:`AdaSharePolicy.sample_hard`), a (T, L) bool or 0/1
                execute mask, an :class:`AdaSharePolicy` (its argmax policy), or None (every block executed
                by every task: hard parameter sharing, the warm-up phase; one backbone pass).

        Each distinct prefix of executed blocks is computed once and shared by the tasks that took it; a
        skipped block is never computed (a skipped first-of-stage block applies only its 1×1 shortcut); trie
        nodes executing the same block are batched into one call. Returns what :meth:`forward_gated` returns
        with the same 0/1 gates.

        BatchNorm and sharing: with shared BN (``task_bn=False``) the sharing is exact: tasks with the same
        prefix have identical activations (eval: same running statistics; training with
        ``bn_stats="per_task"``: identical chunks have identical batch statistics), so outputs and gradients
        equal those of :meth:`forward_gated` with the same 0/1 gates. (In training mode the running
        statistics then get one update per trie node rather than one per task, and skipped blocks do not
        update theirs. With ``bn_stats="shared"`` in training mode each trie node is normalised with its own
        batch statistics, which differs from :meth:`forward_gated`'s statistics over all T·B rows.) With
        ``task_bn=True`` every task normalises with its own BN, so two tasks' activations differ even after
        identical decisions: the trie then shares nothing between tasks (each task is its own chain, still
        skipping its skipped blocks), and only the batching of same-block nodes into one call remains.
        """
        x = images
        self._check_input(x)
        T, L, B = self.num_tasks, self.num_blocks, x.shape[0]
        if policy is None:  # every block for every task: a plan from plain lists (compiles with fullgraph=True)
            mask = [[True] * L for _ in range(T)]
        else:
            mask = execute_mask(policy)
            if mask.shape != (T, L):
                raise ValueError(f"AdaShareNet.forward_hard: policy must be for (T, L) = ({T}, {L}), "
                                 f"got {tuple(mask.shape)}")
        plan = TriePlan.build(mask if policy is None else mask.cpu(), list(range(T)) if self.task_bn else [0] * T)

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


def set_adashare_phase(model: AdaShareNet, policy: AdaSharePolicy, phase: str) -> None:
    """Freeze one side of AdaShare's alternating optimisation.

    ``"weights"`` (warm-up, weight steps, re-training): every network weight trainable, the policy logits
    frozen (gates sampled from it carry no gradient). ``"policy"``: only the logits trainable; the weights get
    ``requires_grad=False``, so backward skips their weight-gradient kernels. BatchNorm layers keep their
    train/eval mode (the authors keep them in train mode during policy steps). ``policy`` is the network's own
    :attr:`AdaShareNet.policy` or one the caller drives.
    """
    if phase not in _PHASES:
        raise ValueError(f"set_adashare_phase: phase must be one of {_PHASES}, got {phase!r}")
    for p in model.weight_parameters():
        p.requires_grad_(phase == "weights")
    for p in policy.parameters():
        p.requires_grad_(phase == "policy")
