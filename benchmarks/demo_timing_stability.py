"""How stable the demo's fused/reference step ratio is for a given number of alternated timing steps: for each
method, ``repeats`` timings of the same (untrained) demo-sized model with each step count, and the range of
their median ratios. The demo's ``TIMING_STEPS`` was chosen with it.

    python benchmarks/demo_timing_stability.py --methods ctal etr_nlp medusa --steps 3 6 10 --repeats 4
"""
from __future__ import annotations

import argparse
import json
import os

from mtl_ops.train import Trainer, TrainConfig
from mtl_ops.train.demo import DEMO_DEFAULTS
from mtl_ops.train.step_timing import time_training_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["ctal", "etr_nlp", "medusa"])
    parser.add_argument("--steps", type=int, nargs="+", default=[3, 6, 10])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--json", help="also write every timing here")
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        trainer = Trainer(TrainConfig(**{**DEMO_DEFAULTS, "method": method, "quiet": True}))
        for steps in args.steps:
            ratios, loads = [], []
            for _ in range(args.repeats):
                timing = time_training_step(trainer, steps)
                ratios.append(timing["ratio"])
                loads.append(os.getloadavg()[0])
                rows.append({"method": method, "steps": steps, **timing, "load": loads[-1]})
            print(f"{method:<10} steps {steps:>3}: median ratios {' '.join(f'{r:.2f}' for r in ratios)}  range "
                  f"{max(ratios) - min(ratios):.2f}  (1-min load {min(loads):.1f}-{max(loads):.1f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
