"""AdaShare inside a plain, user-written PyTorch loop (no trainer): the embedded synthetic scenes, the
AdaShare network with its Gumbel-softmax policy, alternating weight and policy steps, then hard-policy
inference and the package's metrics.

    python python/adashare_own_loop.py --steps 60 --size 48 64
"""
import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mtl_ops.data import SyntheticScenes
from mtl_ops.metrics import DepthMetric, SegmentationMetric
from mtl_ops.models import AdaShareNet, set_adashare_phase
from mtl_ops.nn import policy_table


def losses(out, batch):
    seg = F.cross_entropy(out["semseg"], batch["semseg"], ignore_index=255)
    valid = batch["valid"]
    depth = (out["depth"] - batch["depth"]).abs()[valid].mean()
    return seg + depth


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
    policy_opt = torch.optim.Adam(policy.parameters(), lr=1e-2)

    loader = DataLoader(train, batch_size=8, shuffle=True, drop_last=True)
    step = 0
    while step < args.steps:
        for batch in loader:
            phase = "policy" if step % 4 == 3 else "weights"  # 3 weight steps per policy step
            set_adashare_phase(model, policy, phase)
            loss = losses(model(batch["image"], policy.sample_soft()), batch)
            if phase == "policy":
                loss = loss + 0.05 * policy.sparsity_loss()
            opt = policy_opt if phase == "policy" else weight_opt
            opt.zero_grad()
            loss.backward()
            opt.step()
            if phase == "policy":
                policy.decay_temperature()
            if step % 20 == 0:
                print(f"step {step:4d} {phase:<7} loss {loss.item():.3f}")
            step += 1
            if step >= args.steps:
                break

    hard = policy.argmax_policy()
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
