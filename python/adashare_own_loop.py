"""AdaShare inside a plain, user-written PyTorch loop (no trainer): the embedded synthetic scenes, the
AdaShare network with its Gumbel-softmax policy, a warm-up with every block shared, then alternating weight
and policy steps on two halves of the data, then the learned execute probabilities, a hard policy sampled
from them, and hard-policy inference with the package's metrics.

    python python/adashare_own_loop.py --steps 60 --size 48 64

The policy settings are the ones the demo uses at its short budget (docs/methods/adashare.md has the
measurements): Adam at lr 0.1 on the logits, sparsity weight 0.001 and sharing weight 0.005 (the upstream
Taskonomy weights). With lr 0.01 and a sparsity weight of 0.05 the regulariser's gradient is larger than the
task losses' and a few dozen policy steps move every probability by a few hundredths, towards "skip".
"""
import argparse
import itertools

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from mtl_ops.data import SyntheticScenes
from mtl_ops.metrics import DepthMetric, SegmentationMetric
from mtl_ops.models import AdaShareNet, set_adashare_phase
from mtl_ops.nn import policy_table, probability_table

POLICY_LR, SPARSITY_WEIGHT, SHARING_WEIGHT = 0.1, 0.001, 0.005


def losses(out, batch):
    seg = F.cross_entropy(out["semseg"], batch["semseg"], ignore_index=255)
    valid = batch["valid"]
    depth = (out["depth"] - batch["depth"]).abs()[valid].mean()
    return seg + depth


def endless(dataset, batch_size, seed):
    """Batches from shuffled passes over ``dataset``, forever."""
    for epoch in itertools.count():
        g = torch.Generator().manual_seed(seed + epoch)
        yield from DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=g)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--size", type=int, nargs=2, default=(48, 64))
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)

    train = SyntheticScenes("train", n=args.images, size=tuple(args.size), tasks=("semseg", "depth"),
                            cache_dir=args.cache_dir)
    val = SyntheticScenes("val", n=16, size=tuple(args.size), tasks=("semseg", "depth"), cache_dir=args.cache_dir)
    model = AdaShareNet({"semseg": train.num_classes, "depth": 1}, "resnet18", width=args.width, head_hidden=32,
                        head_dropout=0.0, seed=0)
    policy = model.policy
    weight_opt = torch.optim.Adam(model.weight_parameters(), lr=1e-3)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=POLICY_LR, weight_decay=5e-4)

    # AdaShare's two halves: weight steps read one, policy steps the other
    half = len(train) // 2
    weight_batches = endless(Subset(train, range(half)), 8, seed=1)
    policy_batches = endless(Subset(train, range(half, len(train))), 8, seed=2)
    warmup = args.steps // 4
    for step in range(args.steps):
        if step < warmup:  # warm-up: every block executed by every task (hard parameter sharing)
            phase, batch = "weights", next(weight_batches)
            set_adashare_phase(model, policy, phase)
            loss = losses(model.forward_hard(batch["image"]), batch)
        else:              # then one weight step and one policy step per cycle, soft gates sampled each time
            phase = "policy" if (step - warmup) % 2 else "weights"
            batch = next(policy_batches if phase == "policy" else weight_batches)
            set_adashare_phase(model, policy, phase)
            loss = losses(model(batch["image"], policy.sample_soft()), batch)
            if phase == "policy":
                loss = loss + SPARSITY_WEIGHT * policy.sparsity_loss() + SHARING_WEIGHT * policy.sharing_loss()
        opt = policy_opt if phase == "policy" else weight_opt
        opt.zero_grad()
        loss.backward()
        opt.step()
        if phase == "policy":
            policy.decay_temperature()  # once per cycle
        if step % 20 == 0:
            print(f"step {step:4d} {phase:<7} loss {loss.item():.3f}")

    print("learned execute probabilities:")
    print(probability_table(policy.probabilities()[..., 0], model.task_names))
    hard = policy.sample_hard(generator=torch.Generator().manual_seed(0))  # the reference samples its policy
    print("hard policy sampled from them:")
    print(policy_table(hard, model.task_names))
    model.eval()
    seg, depth = SegmentationMetric(train.num_classes), DepthMetric()
    with torch.no_grad():
        for batch in DataLoader(val, batch_size=8):
            out = model.forward_hard(batch["image"], hard)
            seg.update(out["semseg"], batch["semseg"])
            depth.update(out["depth"], batch["depth"], batch["valid"])
    results = {"semseg": seg.compute(), "depth": depth.compute()}
    print(results)
    return results


if __name__ == "__main__":
    main()
