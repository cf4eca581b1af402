"""AdaShare's training procedure (Sun et al., NeurIPS 2020) on an :class:`~mtl_ops.models.AdaShareNet`,
driven through the :class:`~mtl_ops.train.Trainer`:

1. **Warm-up** (``warmup_epochs``): hard parameter sharing — every block executed by every task — on the
   whole training set.
2. **Policy learning** (``search_cycles`` cycles, default L × ``curriculum_speed``): the training set is split into two fixed disjoint halves
   (a seeded permutation). Each cycle runs ``weight_steps`` *weight* steps on the first half (policy frozen,
   Gumbel-softmax gates sampled at every step, the model's optimiser) and ``policy_steps`` *policy* steps on
   the second half (weights frozen; Adam(``policy_lr``, default 0.01, weight decay 5e-4) on the logits; task
   losses plus ``sparsity_weight`` (0.001) × the sparsity loss plus ``sharing_weight`` (0.005) × the sharing
   loss), then decays the
   temperature (τ ← 0.965 τ) and advances the curriculum (``p_epoch``). Both step counts default to one pass
   over their half (the reference's alternation); smaller counts give more, shorter cycles — the reference's
   ``weight_iter_alternate`` / ``alpha_iter_alternate`` — so that the curriculum, which unlocks one block
   every ``curriculum_speed`` cycles from the last one, reaches the first blocks within a short budget. Each
   half is read in successive seeded passes, a cycle continuing where the previous one stopped.
3. **Re-training** (``retrain_epochs``, default ``config.epochs``): sample one hard policy per task
   (``sampling="bernoulli"``: execute block l with probability softmax(α)[execute], as the reference;
   ``"argmax"`` for the most likely policy) from a generator seeded ``sample_seed``, re-initialise every
   weight to its post-construction values, and train with the fixed policy on the whole training set.

The learned logits and the hard policy are saved in the checkpoint (``adashare.pt``: the model state holds
``policy.logits`` and ``hard_policy``; ``extra["adashare"]`` repeats them with the printed tables); the
task × block tables of the learned execute probabilities and of the sampled policy are printed, the
policy's is written to ``policy.txt``, and the trainer keeps both (``adashare_policy_table``,
``adashare_execute_probabilities``) for the demo report.
"""
from __future__ import annotations

import torch

from ..models.adashare_net import set_adashare_phase
from ..nn.adashare_policy import probability_table
from .seeding import derive_seed

OPTIONS = ("warmup_epochs", "search_cycles", "weight_steps", "policy_steps", "retrain_epochs", "policy_lr",
           "sparsity_weight", "sharing_weight", "sampling", "sample_seed")


def adashare_schedule(trainer) -> None:
    trainer.check_schedule_options(OPTIONS)
    cfg = trainer.config
    net = trainer.net
    warmup = trainer.schedule_option("warmup_epochs", 1)
    # by default, enough cycles for the curriculum to make every block's gates trainable
    cycles = trainer.schedule_option("search_cycles", net.num_blocks * net.policy.curriculum_speed)
    retrain = trainer.schedule_option("retrain_epochs", cfg.epochs)
    policy_lr = trainer.schedule_option("policy_lr", 0.01)
    # the reference's Taskonomy weights (its 5-task dense setting, curriculum speed 1 as the trainer's network);
    # at 0.05 each the regularisers' gradient on the logits outweighs the task losses' 5-100 times
    sparsity_w = trainer.schedule_option("sparsity_weight", 0.001)
    sharing_w = trainer.schedule_option("sharing_weight", 0.005)
    sampling = trainer.schedule_option("sampling", "bernoulli")
    sample_seed = trainer.schedule_option("sample_seed", cfg.seed)
    if sampling not in ("bernoulli", "argmax"):
        raise ValueError(f"config.schedule_options['sampling']: expected 'bernoulli' or 'argmax', got {sampling!r}")
    n = len(trainer.train_set)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "adashare_split"))).tolist()
    half1, half2 = order[: n // 2], order[n // 2:]
    if cycles and len(half1) < cfg.batch_size:
        raise ValueError(f"AdaShare policy learning: each half of the {n} training images must hold a batch of "
                         f"{cfg.batch_size}; use more images or a smaller batch_size")
    weight_steps = trainer.schedule_option("weight_steps", len(half1) // cfg.batch_size)
    policy_steps = trainer.schedule_option("policy_steps", len(half2) // cfg.batch_size)
    for name, value in (("warmup_epochs", warmup), ("search_cycles", cycles), ("retrain_epochs", retrain),
                        ("weight_steps", weight_steps), ("policy_steps", policy_steps)):
        positive = name in ("retrain_epochs", "weight_steps", "policy_steps")
        if value < 0 or (positive and value < 1):
            raise ValueError(f"config.schedule_options[{name!r}]: expected a {'positive' if positive else 'non-negative'} "
                             f"int, got {value!r}")

    # 1. warm-up: full sharing
    net.set_mode("shared")
    set_adashare_phase(net, net.policy, "weights")
    trainer.optimizer = trainer.make_optimizer()
    if warmup:
        trainer.train_phase("adashare-warmup", warmup, evaluate=False)

    # 2. policy learning on two halves of the training data
    weight_chunks = _chunks(half1, weight_steps * cfg.batch_size, derive_seed(cfg.seed, "adashare_weight_steps"))
    policy_chunks = _chunks(half2, policy_steps * cfg.batch_size, derive_seed(cfg.seed, "adashare_policy_steps"))
    policy_opt = torch.optim.Adam(net.policy.parameters(), lr=policy_lr, weight_decay=5e-4)
    for cycle in range(cycles):
        p_epoch = cycle
        net.set_mode("soft", p_epoch)
        set_adashare_phase(net, net.policy, "weights")
        trainer.train_phase("adashare-weights", 1, evaluate=False, indices=next(weight_chunks))
        set_adashare_phase(net, net.policy, "policy")
        reg = lambda: (sparsity_w * net.policy.sparsity_loss(p_epoch)  # noqa: E731
                       + sharing_w * net.policy.sharing_loss())
        trainer.train_phase("adashare-policy", 1, evaluate=False, indices=next(policy_chunks), optimizer=policy_opt,
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
    execute_probabilities = net.policy.probabilities()[..., 0].detach().cpu()
    probabilities = probability_table(execute_probabilities, net.task_names)
    if not cfg.quiet:
        print(f"AdaShare learned execute probabilities:\n{probabilities}\n"
              f"AdaShare policy sampled from them (1 = execute, 0 = skip):\n{table}", flush=True)
    extra = {"adashare": {"logits": net.policy.logits.detach().cpu(), "hard_policy": net.hard_policy.cpu(),
                          "table": table, "probabilities": net.policy.probabilities().detach().cpu(),
                          "probability_table": probabilities}}
    trainer.save("adashare.pt", extra)
    trainer.save("last.pt", extra)
    trainer.run_dir.write_text("policy.txt", table + "\n")
    trainer.adashare_policy_table = table
    trainer.adashare_execute_probabilities = execute_probabilities.tolist()


def _chunks(indices, size: int, seed: int):
    """Successive chunks of ``size`` indices read from seeded passes over ``indices`` (a new order per pass; a
    chunk may straddle two passes)."""
    generator = torch.Generator().manual_seed(seed)
    stream = []
    while True:
        while len(stream) < size:
            stream += [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        chunk, stream = stream[:size], stream[size:]
        yield chunk
