"""AdaShare's select-or-skip policy: per-task, per-block logits, Gumbel-softmax sampling, curriculum,
temperature schedule and the policy regularisers (the AdaShare paper's and its reference code's forms).

Gates are (T, L, 2) tensors everywhere: ``gates[t, l, 0]`` is the weight of "execute block l for task t",
``gates[t, l, 1]`` the weight of "skip it". Soft samples (training) sum to 1 over the last axis; hard
samples and argmax policies are one-hot 0/1.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

_INITS = ("equal", "random", "all_chosen")
_LOSS_FORMS = ("code", "paper")


class AdaSharePolicy(nn.Module):
    """Learned AdaShare policy: logits α of shape (T, L, 2), column 0 execute, column 1 skip.

    Args:
        num_tasks: T.
        num_blocks: L, the number of gated residual blocks of the backbone (8 for ResNet-18, 16 for ResNet-34).
        init: ``"equal"`` (every logit 0.5, so p = 0.5 / 0.5; the reference default), ``"random"``
            (1e-3·N(0, 1), drawn from the policy's generator) or ``"all_chosen"`` (execute logit 0, skip
            logit ``init_neg_logits``, i.e. start from "execute everything").
        init_temperature: τ₀ of the Gumbel-softmax (5.0 in every reference config).
        temperature_decay: factor applied by :meth:`decay_temperature`, once per policy phase (0.965).
        curriculum_speed: cycles per newly trainable block (3 on NYU/Cityscapes, 1 on Taskonomy); see
            :meth:`num_trainable_blocks`.
        init_neg_logits: the skip logit of ``init="all_chosen"`` (the reference reads it from its config;
            -10 here is an assumption, pass the value you want).
        seed, generator: the source of every random number the policy draws (Gumbel noise, Bernoulli
            samples, the ``"random"`` init). Give a ``torch.Generator`` or a seed (default 0); eager code
            never uses the global RNG. A CPU generator works for logits on any device (noise is drawn on the
            generator's device and moved); a CUDA generator avoids that copy. The generator state is not part
            of ``state_dict``. Under ``torch.compile`` (which cannot trace a ``torch.Generator``) the samples
            come from torch's global RNG instead (seed it with ``torch.manual_seed``), so the sampling compiles
            with ``fullgraph=True``; to keep the policy's own stream, sample outside the compiled function and
            pass the gates (``model(images, gates=policy.sample_soft(p_epoch))``). A ``generator`` argument to
            the sampling methods under torch.compile raises ValueError.

    The temperature is a buffer (saved in ``state_dict``). The curriculum position ``p_epoch`` (completed
    weight/policy cycles) is owned by the trainer and passed to the methods that need it.
    """

    def __init__(self, num_tasks: int, num_blocks: int, init: str = "equal", *, init_temperature: float = 5.0,
                 temperature_decay: float = 0.965, curriculum_speed: int = 3, init_neg_logits: float = -10.0,
                 seed: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        for name, value in (("num_tasks", num_tasks), ("num_blocks", num_blocks),
                            ("curriculum_speed", curriculum_speed)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AdaSharePolicy: {name} must be a positive int, got {value!r}")
        if init not in _INITS:
            raise ValueError(f"AdaSharePolicy: init must be one of {_INITS}, got {init!r}")
        if not init_temperature > 0:
            raise ValueError(f"AdaSharePolicy: init_temperature must be > 0, got {init_temperature!r}")
        if not 0 < temperature_decay <= 1:
            raise ValueError(f"AdaSharePolicy: temperature_decay must be in (0, 1], got {temperature_decay!r}")
        if generator is not None and seed is not None:
            raise ValueError("AdaSharePolicy: give seed or generator, not both")
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        self.generator = generator
        self.num_tasks, self.num_blocks = num_tasks, num_blocks
        self.init, self.init_neg_logits = init, float(init_neg_logits)
        self.temperature_decay = float(temperature_decay)
        self.curriculum_speed = curriculum_speed
        self.logits = nn.Parameter(torch.empty(num_tasks, num_blocks, 2))
        self.register_buffer("temperature", torch.tensor(float(init_temperature), dtype=torch.float64))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the logits by ``init`` (``"random"`` draws from the policy's generator)."""
        with torch.no_grad():
            if self.init == "equal":
                self.logits.fill_(0.5)
            elif self.init == "random":
                noise = torch.randn(self.logits.shape, generator=self.generator, device=self.generator.device)
                self.logits.copy_(1e-3 * noise)
            else:
                self.logits[..., 0] = 0.0
                self.logits[..., 1] = self.init_neg_logits

    def extra_repr(self) -> str:
        return (f"num_tasks={self.num_tasks}, num_blocks={self.num_blocks}, init={self.init!r}, "
                f"temperature={float(self.temperature):.4g}, curriculum_speed={self.curriculum_speed}")

    # ---- schedules -------------------------------------------------------------------------------------
    def decay_temperature(self) -> float:
        """One step of the temperature schedule, τ ← τ · temperature_decay (call once per policy phase);
        returns the new τ."""
        self.temperature.mul_(self.temperature_decay)
        return float(self.temperature)

    def num_trainable_blocks(self, p_epoch: int) -> int:
        """Curriculum: k = min(L, p_epoch // curriculum_speed + 1) blocks, the *last* k, use sampled gates;
        ``p_epoch`` counts completed (weight phase, policy phase) cycles."""
        if not isinstance(p_epoch, int) or isinstance(p_epoch, bool) or p_epoch < 0:
            raise ValueError(f"AdaSharePolicy: p_epoch must be an int >= 0, got {p_epoch!r}")
        return min(self.num_blocks, p_epoch // self.curriculum_speed + 1)

    def trainable_mask(self, p_epoch: int | None = None) -> torch.Tensor:
        """(L,) bool, True for blocks whose gates are sampled (the last k); all True when p_epoch is None."""
        mask = torch.ones(self.num_blocks, dtype=torch.bool, device=self.logits.device)
        if p_epoch is not None:
            mask[: self.num_blocks - self.num_trainable_blocks(p_epoch)] = False
        return mask

    def _force_execute(self, gates: torch.Tensor, p_epoch: int | None) -> torch.Tensor:
        if p_epoch is None or self.num_trainable_blocks(p_epoch) == self.num_blocks:
            return gates
        forced = ~self.trainable_mask(p_epoch)
        execute = torch.tensor([1.0, 0.0], dtype=gates.dtype, device=gates.device)
        return torch.where(forced[None, :, None], execute, gates)

    # ---- sampling --------------------------------------------------------------------------------------
    def probabilities(self) -> torch.Tensor:
        """softmax(α) over the last axis, (T, L, 2), fp32."""
        return torch.softmax(self.logits.float(), dim=-1)

    def _uniform(self, shape, generator: torch.Generator | None) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # torch.compile cannot trace a torch.Generator object; its own RNG ops draw from the global one
            if generator is not None:
                raise ValueError("AdaSharePolicy: generator= cannot be used under torch.compile (it cannot trace a "
                                 "torch.Generator); compiled code draws from torch's global RNG (torch.manual_seed), "
                                 "or sample outside and pass the gates: model(images, gates=policy.sample_soft())")
            return torch.rand(shape, device=self.logits.device, dtype=torch.float32)
        g = self.generator if generator is None else generator
        u = torch.rand(shape, generator=g, device=g.device, dtype=torch.float32)
        return u.to(self.logits.device)

    def sample_soft(self, p_epoch: int | None = None, *, temperature: float | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Relaxed Gumbel-softmax sample: ``v = softmax((α + G) / τ)``, G ~ Gumbel(0, 1) i.i.d.

        Differentiable in the logits (no straight-through). With ``p_epoch``, the first L−k blocks
        (curriculum) are overwritten with the constant [1, 0]. ``temperature`` defaults to the current τ.
        Returns (T, L, 2) fp32; every row sums to 1.
        """
        tau = float(self.temperature) if temperature is None else float(temperature)
        if not tau > 0:
            raise ValueError(f"AdaSharePolicy.sample_soft: temperature must be > 0, got {temperature!r}")
        # G = -log(E), E ~ Exp(1) = -log(U): draw U in [0, 1) and map it so that log never sees 0.
        u = self._uniform(self.logits.shape, generator)
        exponential = torch.log1p(-u).neg_().clamp_min_(torch.finfo(torch.float32).tiny)
        gumbel = exponential.log_().neg_()
        gates = torch.softmax((self.logits.float() + gumbel) / tau, dim=-1)
        return self._force_execute(gates, p_epoch)

    def sample_hard(self, p_epoch: int | None = None, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Hard sample: block l of task t executes with probability softmax(α[t, l])[0] (a Bernoulli draw
        per block, as the reference re-training samples its architectures). With ``p_epoch``, the first
        L−k blocks always execute. Returns one-hot (T, L, 2) fp32 0/1 gates, no gradient."""
        with torch.no_grad():
            u = self._uniform(self.logits.shape[:2], generator)
            execute = u < self.probabilities()[..., 0]
            return self._force_execute(one_hot_gates(execute), p_epoch)

    def argmax_policy(self, p_epoch: int | None = None) -> torch.Tensor:
        """Deterministic policy: execute iff α[t, l, 0] >= α[t, l, 1] (ties, e.g. the ``"equal"`` init,
        execute). One-hot (T, L, 2) fp32, no gradient."""
        with torch.no_grad():
            return self._force_execute(one_hot_gates(self.logits[..., 0] >= self.logits[..., 1]), p_epoch)

    # ---- regularisers ----------------------------------------------------------------------------------
    def sparsity_loss(self, p_epoch: int | None = None, *, form: str = "code") -> torch.Tensor:
        """Sparsity regulariser; pushes blocks towards "skip". Used in policy steps only.

        ``form="code"`` (the reference implementation, default): cross-entropy of each block's logits with
        target "skip", averaged over the sampled blocks W and summed over tasks::

            L_sp = Σ_t (1/|W|) Σ_{l∈W} −log softmax(α[t, l])[1]

        ``form="paper"`` (the paper's form, recalled, unverified): the summed log execute probability::

            L_sp = Σ_t Σ_{l∈W} log softmax(α[t, l])[0]

        (≤ 0 and unbounded below; its gradient differs from the code's form.) W is the last k blocks of the
        curriculum when ``p_epoch`` is given, else all L blocks. Returns a 0-d fp32 tensor.
        """
        _check_form(form)
        log_p = torch.log_softmax(self.logits.float(), dim=-1)[:, self.trainable_mask(p_epoch), :]
        if form == "code":
            return (-log_p[..., 1]).mean(dim=1).sum()
        return log_p[..., 0].sum()

    def sharing_loss(self, *, form: str = "code") -> torch.Tensor:
        """Sharing regulariser; pulls the tasks' execute decisions together. Used in policy steps only.
        Always over all L blocks (not only the curriculum window), over task pairs i < j (the reference's
        i ≤ j adds only zero terms); blocks are numbered l = 1..L.

        ``form="code"`` (the reference implementation, default): raw *logits* of the execute column, deeper
        blocks weighted more::

            L_sh = Σ_{i<j} Σ_l (l / L) · |α[i, l, 0] − α[j, l, 0]|

        ``form="paper"`` (recalled, unverified): execute *probabilities* p = softmax(α)[..., 0], shallower
        blocks weighted more (weight 1 when L = 1)::

            L_sh = Σ_{i<j} Σ_l ((L − l) / (L − 1)) · |p[i, l] − p[j, l]|

        Returns a 0-d fp32 tensor (0 for a single task).
        """
        _check_form(form)
        L = self.num_blocks
        l = torch.arange(1, L + 1, dtype=torch.float32, device=self.logits.device)
        if form == "code":
            values, weights = self.logits.float()[..., 0], l / L
        else:
            values = self.probabilities()[..., 0]
            weights = (L - l) / (L - 1) if L > 1 else torch.ones_like(l)
        i, j = torch.triu_indices(self.num_tasks, self.num_tasks, offset=1, device=self.logits.device)
        return ((values[i] - values[j]).abs() * weights).sum()


def _check_form(form: str) -> None:
    if form not in _LOSS_FORMS:
        raise ValueError(f"AdaSharePolicy: form must be one of {_LOSS_FORMS}, got {form!r}")


def one_hot_gates(execute: torch.Tensor) -> torch.Tensor:
    """(T, L) bool "execute" mask → one-hot (T, L, 2) fp32 gates ([1, 0] execute, [0, 1] skip)."""
    execute = execute.float()
    return torch.stack((execute, 1.0 - execute), dim=-1)


def execute_mask(policy) -> torch.Tensor:
    """The (T, L) bool "execute" mask of a hard policy.

    ``policy``: one-hot 0/1 gates (T, L, 2), a (T, L) bool or 0/1 mask, or an :class:`AdaSharePolicy`
    (its :meth:`~AdaSharePolicy.argmax_policy`). Soft (non 0/1) gates raise ValueError.
    """
    if isinstance(policy, AdaSharePolicy):
        policy = policy.argmax_policy()
    if not isinstance(policy, torch.Tensor):
        raise TypeError(f"policy must be a torch.Tensor or an AdaSharePolicy, got {type(policy).__name__}")
    policy = policy.detach()
    if policy.dim() == 3 and policy.shape[-1] == 2:
        binary = ((policy == 0) | (policy == 1)).all() and (policy.sum(-1) == 1).all()
        if not binary:
            raise ValueError("policy must be hard: one-hot 0/1 gates of shape (T, L, 2), got soft values "
                             "(sample with AdaSharePolicy.sample_hard or argmax_policy)")
        return policy[..., 0] == 1
    if policy.dim() == 2:
        if policy.dtype == torch.bool:
            return policy
        if not ((policy == 0) | (policy == 1)).all():
            raise ValueError("policy of shape (T, L) must be a bool or 0/1 execute mask, got other values")
        return policy == 1
    raise ValueError(f"policy must have shape (T, L, 2) or (T, L), got {tuple(policy.shape)}")


def num_executed_blocks(policy) -> torch.Tensor:
    """Blocks executed per task, (T,) int64, for a hard policy (see :func:`execute_mask` for the forms)."""
    return execute_mask(policy).sum(dim=1).cpu()


def policy_table(policy, task_names: Sequence[str] | None = None, *, symbols: tuple[str, str] = ("✓", "·")) -> str:
    """A printable task × block table of a hard policy: ``symbols[0]`` where the block executes,
    ``symbols[1]`` where it is skipped (pass ``("1", "0")`` for plain ASCII), and the count per task."""
    mask = execute_mask(policy).cpu()
    T, L = mask.shape
    names = [f"task{t}" for t in range(T)] if task_names is None else [str(n) for n in task_names]
    if len(names) != T:
        raise ValueError(f"policy_table: got {len(names)} task names for a policy of {T} tasks")
    name_w = max([len("task")] + [len(n) for n in names])
    col_w = max(len(str(L)), max(len(s) for s in symbols))
    header = f"{'task':<{name_w}} | " + " ".join(f"{l + 1:>{col_w}}" for l in range(L)) + " | executed"
    lines = [header, "-" * len(header)]
    for name, row in zip(names, mask.tolist()):
        cells = " ".join(f"{symbols[0] if e else symbols[1]:>{col_w}}" for e in row)
        lines.append(f"{name:<{name_w}} | {cells} | {sum(row)}/{L}")
    return "\n".join(lines)


def probability_table(execute_probabilities, task_names: Sequence[str] | None = None) -> str:
    """A printable task × block table of learned execute probabilities (T, L), e.g.
    ``policy.probabilities()[..., 0]``, two decimals, laid out as :func:`policy_table`."""
    probs = torch.as_tensor(execute_probabilities, dtype=torch.float32).detach().cpu()
    if probs.dim() != 2:
        raise ValueError(f"probability_table: execute_probabilities must have shape (T, L), got {tuple(probs.shape)}")
    T, L = probs.shape
    names = [f"task{t}" for t in range(T)] if task_names is None else [str(n) for n in task_names]
    if len(names) != T:
        raise ValueError(f"probability_table: got {len(names)} task names for probabilities of {T} tasks")
    name_w = max([len("task")] + [len(n) for n in names])
    header = f"{'task':<{name_w}} | " + " ".join(f"{l + 1:>4}" for l in range(L))
    lines = [header, "-" * len(header)]
    for name, row in zip(names, probs.tolist()):
        lines.append(f"{name:<{name_w}} | " + " ".join(f"{v:4.2f}" for v in row))
    return "\n".join(lines)
