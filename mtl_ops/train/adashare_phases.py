"""AdaShare's training procedure (Sun et al., NeurIPS 2020) on an :class:`~mtl_ops.models.AdaShareNet`,
driven through the :class:`~mtl_ops.train.Trainer`:

1. **Warm-up** (``warmup_epochs``): hard parameter sharing — every block executed by every task — on the
   whole training set.
2. **Policy learning** (``search_cycles`` cycles): the training set is split into two fixed disjoint halves
   (a seeded permutation). Each cycle runs one epoch of *weight* steps on the first half (policy frozen,
   Gumbel-softmax gates sampled at every step, the model's optimiser) and one epoch of *policy* steps on the
   second half (weights frozen; Adam(``policy_lr``, weight decay 5e-4) on the logits; task losses plus
   ``sparsity_weight`` × the sparsity loss plus ``sharing_weight`` × the sharing loss), then decays the
   temperature (τ ← 0.965 τ) and advances the curriculum (``p_epoch``).
3. **Re-training** (``retrain_epochs``, default ``config.epochs``): sample one hard policy per task
   (``sampling="bernoulli"``: execute block l with probability softmax(α)[execute], as the reference;
   ``"argmax"`` for the most likely policy) from a generator seeded ``sample_seed``, re-initialise every
   weight to its post-construction values, and train with the fixed policy on the whole training set.

The learned logits and the hard policy are saved in the checkpoint (``adashare.pt``: the model state holds
``policy.logits`` and ``hard_policy``; ``extra["adashare"]`` repeats them with the printed table) and the
task × block table is printed and written to ``policy.txt``.
"""
from __future__ import annotations

import torch

from ..models.adashare_net import set_adashare_phase
from .seeding import derive_seed

OPTIONS = ("warmup_epochs", "search_cycles", "retrain_epochs", "policy_lr", "sparsity_weight", "sharing_weight",
           "sampling", "sample_seed")


def adashare_schedule(trainer) -> None:
    trainer.check_schedule_options(OPTIONS)
    cfg = trainer.config
    net = trainer.net
    warmup = trainer.schedule_option("warmup_epochs", 1)
    cycles = trainer.schedule_option("search_cycles", 2)
    retrain = trainer.schedule_option("retrain_epochs", cfg.epochs)
    policy_lr = trainer.schedule_option("policy_lr", 0.01)
    sparsity_w = trainer.schedule_option("sparsity_weight", 0.05)
    sharing_w = trainer.schedule_option("sharing_weight", 0.05)
    sampling = trainer.schedule_option("sampling", "bernoulli")
    sample_seed = trainer.schedule_option("sample_seed", cfg.seed)
    if sampling not in ("bernoulli", "argmax"):
        raise ValueError(f"config.schedule_options['sampling']: expected 'bernoulli' or 'argmax', got {sampling!r}")
    for name, value in (("warmup_epochs", warmup), ("search_cycles", cycles), ("retrain_epochs", retrain)):
        if value < 0 or (name == "retrain_epochs" and value < 1):
            raise ValueError(f"config.schedule_options[{name!r}]: expected a {'positive' if name == 'retrain_epochs' else 'non-negative'} int, got {value!r}")

    # 1. warm-up: full sharing
    net.set_mode("shared")
    set_adashare_phase(net, net.policy, "weights")
    trainer.optimizer = trainer.make_optimizer()
    if warmup:
        trainer.train_phase("adashare-warmup", warmup, evaluate=False)

    # 2. policy learning on two halves of the training data
    n = len(trainer.train_set)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "adashare_split"))).tolist()
    half1, half2 = order[: n // 2], order[n // 2:]
    policy_opt = torch.optim.Adam(net.policy.parameters(), lr=policy_lr, weight_decay=5e-4)
    for cycle in range(cycles):
        p_epoch = cycle
        net.set_mode("soft", p_epoch)
        set_adashare_phase(net, net.policy, "weights")
        trainer.train_phase("adashare-weights", 1, evaluate=False, indices=half1)
        set_adashare_phase(net, net.policy, "policy")
        reg = lambda: (sparsity_w * net.policy.sparsity_loss(p_epoch)  # noqa: E731
                       + sharing_w * net.policy.sharing_loss())
        trainer.train_phase("adashare-policy", 1, evaluate=False, indices=half2, optimizer=policy_opt,
                            extra_loss=reg)
        net.policy.decay_temperature()
    set_adashare_phase(net, net.policy, "weights")
    for p in net.policy.parameters():
        p.requires_grad_(False)

    # 3. sample a hard policy, re-initialise, re-train
    generator = torch.Generator().manual_seed(int(sample_seed))
    hard = net.policy.argmax_policy() if sampling == "argmax" else net.policy.sample_hard(generator=generator)
    net.set_hard_policy(hard)
    net.set_mode("hard")
    net.reset_parameters(net.seed)
    trainer.optimizer = trainer.make_optimizer(list(net.weight_parameters()) + list(trainer.weighting.parameters()))
    trainer.train_phase("adashare-retrain", retrain)
    table = net.policy_table()
    if not cfg.quiet:
        print(f"AdaShare policy (1 = execute, 0 = skip):\n{table}", flush=True)
    extra = {"adashare": {"logits": net.policy.logits.detach().cpu(), "hard_policy": net.hard_policy.cpu(),
                          "table": table, "probabilities": net.policy.probabilities().detach().cpu()}}
    trainer.save("adashare.pt", extra)
    trainer.save("last.pt", extra)
    trainer.run_dir.write_text("policy.txt", table + "\n")
    trainer.adashare_policy_table = table
