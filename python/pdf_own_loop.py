"""Progressive Decoder Fusion and the package's metrics inside a plain, user-written PyTorch loop (no
trainer): train a Sep-De PDF network on the embedded synthetic scenes, measure the CKA similarity of the
tasks' deepest decoder stage, fuse the tasks that group together, train again, and compare both networks
with Δm against single-task numbers you pass in (here: the Sep-De network's own, as an illustration).

    python python/pdf_own_loop.py --steps 60 --size 48 64
"""
import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mtl_ops.data import SyntheticScenes
from mtl_ops.metrics import DepthMetric, NormalsMetric, SegmentationMetric, default_spec, delta_m
from mtl_ops.models import PDFNet
from mtl_ops.nn import group_tasks
from mtl_ops.reference import cka

TASKS = ("semseg", "depth", "normals")


def loss_fn(out, batch):
    valid = batch["valid"][:, 0]
    seg = F.cross_entropy(out["semseg"], batch["semseg"], ignore_index=255)
    depth = (out["depth"] - batch["depth"]).abs()[:, 0][valid].mean()
    normals = (F.normalize(out["normals"], dim=1) - batch["normals"]).abs().sum(1)[valid].mean()
    return seg + depth + normals


def train(model, loader, steps, lr=2e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    step = 0
    while step < steps:
        for batch in loader:
            loss = loss_fn(model(batch["image"]), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 20 == 0:
                print(f"step {step:4d} loss {loss.item():.3f}")
            if step >= steps:
                break


@torch.no_grad()
def evaluate(model, dataset, num_classes):
    model.eval()
    seg, depth, normals = SegmentationMetric(num_classes), DepthMetric(), NormalsMetric()
    for batch in DataLoader(dataset, batch_size=8):
        out = model(batch["image"])
        seg.update(out["semseg"], batch["semseg"])
        depth.update(out["depth"], batch["depth"], batch["valid"])
        normals.update(out["normals"], batch["normals"], batch["valid"])
    return {"semseg": seg.compute(), "depth": depth.compute(), "normals": normals.compute()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--size", type=int, nargs=2, default=(48, 64))
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    data = dict(size=tuple(args.size), tasks=TASKS, cache_dir=args.cache_dir)
    train_set, val_set = SyntheticScenes("train", n=args.images, **data), SyntheticScenes("val", n=16, **data)
    channels = {"semseg": train_set.num_classes, "depth": 1, "normals": 3}
    loader = DataLoader(train_set, batch_size=8, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))

    sep_de = PDFNet(channels, "resnet10", width=args.width)
    train(sep_de, loader, args.steps)
    sep_results = evaluate(sep_de, val_set, train_set.num_classes)

    images = torch.stack([train_set[i]["image"] for i in range(min(32, len(train_set)))])
    similarity = cka(sep_de.eval().stage_features(images, stage=0))
    groups = group_tasks(similarity, args.threshold, tasks=TASKS)
    print("CKA at decoder stage 0:\n", similarity.numpy().round(3), "\ngroups:", groups)

    fused = sep_de.with_groupings(0, groups, reset=True)
    train(fused, loader, args.steps)
    fused_results = evaluate(fused, val_set, train_set.num_classes)
    spec = default_spec(TASKS, key=True)
    print({"sep_de": sep_results, "fused": fused_results})
    print(f"delta_m of the fused network vs the Sep-De network (key metrics): "
          f"{delta_m(fused_results, sep_results, spec, convention='key'):+.2f}%")
    return fused_results


if __name__ == "__main__":
    main()
