"""Where AdaShare's policy gradient comes from: trains AdaShare with the trainer at the demo's data and budget
(or the options given) and, at every policy step, splits the gradient on each block's logit difference
(execute − skip) into the part from the task losses and the part from the regularisers; then prints, per
task, their mean sizes over the steps and the learned execute probabilities.

    python python/adashare_policy_trace.py                                   # the demo's schedule
    python python/adashare_policy_trace.py --schedule-options '{"search_cycles": 2, "policy_lr": 0.01}'

The findings and the commands behind them are in docs/methods/adashare.md.
"""
import argparse
import json

import torch

from mtl_ops.nn import probability_table
from mtl_ops.train import TrainConfig, Trainer
from mtl_ops.train.demo import DEMO_DEFAULTS, DEMO_SCHEDULES


def traced_trainer(config: TrainConfig):
    """A trainer whose policy records (task-loss part, regulariser part) of the gradient on α[..., 0] − α[..., 1]
    at every policy step, in ``trainer.policy_gradients``."""
    trainer = Trainer(config)
    policy = trainer.net.policy
    regularisers = {}
    inside = [False]

    def keep_gradient(name, loss_fn):
        def loss(*args, **kwargs):
            value = loss_fn(*args, **kwargs)
            if policy.logits.requires_grad:
                inside[0] = True  # this autograd.grad call also fires the hook below: ignore it there
                regularisers[name] = torch.autograd.grad(value, policy.logits, retain_graph=True)[0]
                inside[0] = False
            return value
        return loss

    policy.sparsity_loss = keep_gradient("sparsity", policy.sparsity_loss)
    policy.sharing_loss = keep_gradient("sharing", policy.sharing_loss)
    options = config.schedule_options
    sparsity_w, sharing_w = options.get("sparsity_weight", 0.001), options.get("sharing_weight", 0.005)
    trainer.policy_gradients = []

    def on_gradient(total):
        if inside[0] or not policy.logits.requires_grad:
            return
        zero = torch.zeros_like(total)
        reg = sparsity_w * regularisers.pop("sparsity", zero) + sharing_w * regularisers.pop("sharing", zero)
        diff = lambda g: g[..., 0] - g[..., 1]  # noqa: E731
        trainer.policy_gradients.append((diff(total - reg), diff(reg)))

    policy.logits.register_hook(on_gradient)
    return trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schedule-options", default="{}", help="JSON over the demo's AdaShare schedule options")
    p.add_argument("--config", default="{}", help="JSON of TrainConfig fields over the demo's (e.g. seed, n_train)")
    p.add_argument("--json", help="also write the probabilities and the gradient summary to this file")
    args = p.parse_args(argv)
    schedule = {**DEMO_SCHEDULES["adashare"], **json.loads(args.schedule_options)}
    config = TrainConfig(**{**DEMO_DEFAULTS, "quiet": True, **json.loads(args.config)}, method="adashare",
                         schedule_options=schedule)
    trainer = traced_trainer(config)
    metrics = trainer.fit()
    names = trainer.net.task_names
    task_part = torch.stack([t for t, _ in trainer.policy_gradients])  # (steps, T, L)
    reg_part = torch.stack([r for _, r in trainer.policy_gradients])
    trained = task_part.abs().sum(0) > 0  # blocks whose gates the curriculum ever unlocked
    print(f"{len(trainer.policy_gradients)} policy steps; gradient on the execute − skip logit difference, "
          "mean over the steps, its size averaged over the blocks that were trained:")
    summary = {}
    for t, name in enumerate(names):
        m = trained[t]
        task_mean = task_part[:, t, m].mean(0).abs().mean().item() if m.any() else 0.0
        task_std = task_part[:, t, m].std(0).mean().item() if m.any() and len(task_part) > 1 else 0.0
        reg_mean = reg_part[:, t, m].mean(0).abs().mean().item() if m.any() else 0.0
        summary[name] = {"task_losses": task_mean, "task_losses_std": task_std, "regularisers": reg_mean,
                         "blocks_trained": int(m.sum())}
        print(f"  {name:<8} task losses {task_mean:.1e} (step-to-step std {task_std:.1e}), "
              f"regularisers {reg_mean:.1e}, blocks trained {int(m.sum())}/{m.numel()}")
    probabilities = trainer.net.policy.probabilities()[..., 0]
    print("learned execute probabilities:\n" + probability_table(probabilities, names))
    print("sampled policy:\n" + trainer.net.policy_table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schedule_options": schedule, "config": json.loads(args.config), "gradients": summary,
                       "execute_probabilities": probabilities.tolist(), "metrics": metrics}, f, indent=1)
    return probabilities


if __name__ == "__main__":
    main()
