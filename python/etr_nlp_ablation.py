"""ETR-NLP's ablations at the demo's data and budget: trains named variants (the baselines, ETR-NLP's decoder,
sharing ratio, primitive set, learning rate, budget) for the seeds given, one run after another, appends each
finished run to a JSON-lines file (a run already there is not trained again, so a stopped ablation resumes) and
prints the key metrics per variant — the mean over the seeds and each seed — with Δm against the baselines'
means over the seeds (``--baselines``, default the single-task and the shared variants) where they are listed.

    python python/etr_nlp_ablation.py --variants shared etr etr_decoder_none --seeds 0 1 --results etr.jsonl
    python python/etr_nlp_ablation.py --list                       # the variants and what each changes
    python python/etr_nlp_ablation.py --variants shared_epochs9 etr_epochs9 --baselines shared_epochs9
    python python/etr_nlp_ablation.py --variants etr_k3 \
        --extra 'etr_k3={"method": "etr_nlp", "method_options": {"primitives": ["dw_conv", "noise", "max_pool"]}}'

The findings and the commands behind them are in docs/methods/etr_nlp.md.
"""
import argparse
import json
import time
from pathlib import Path

from mtl_ops.info import source_commit
from mtl_ops.metrics import DEFAULT_KEY_SPEC, delta_m
from mtl_ops.train import TrainConfig, Trainer
from mtl_ops.train.demo import DEMO_DEFAULTS

ETR = {"method": "etr_nlp"}
#: name -> what the variant changes: ``method``, ``method_options`` (the network's) and other TrainConfig fields
VARIANTS = {
    "single_task": {"method": "single_task"},
    "shared": {"method": "shared"},
    "etr": ETR,
    "etr_decoder_none": {**ETR, "method_options": {"decoder": "none"}},
    "etr_gamma0.5": {**ETR, "method_options": {"sharing_ratio": 0.5}},
    "etr_gamma1.0": {**ETR, "method_options": {"sharing_ratio": 1.0}},
    # the random 3x3 convs dense (C_in -> C_in) instead of depthwise, the rest as the default set
    "etr_dense_prims": {**ETR, "method_options": {"primitives": ["dense_conv", "dilated_dense_conv", "noise",
                                                                 "avg_pool", "max_pool"]}},
    # the three parameter-free primitives only: no random filter
    "etr_pool_prims": {**ETR, "method_options": {"primitives": ["noise", "avg_pool", "max_pool"]}},
    # every block's learnable 1x1 recombines all k*C_in primitive responses (default: groups = gcd(C_in, C_sh),
    # 1 to C_in depending on the widths and the sharing ratio)
    "etr_groups1": {**ETR, "method_options": {"groups": 1}},
    "etr_gamma0.5_groups1": {**ETR, "method_options": {"sharing_ratio": 0.5, "groups": 1}},
    "etr_gamma1.0_groups1": {**ETR, "method_options": {"sharing_ratio": 1.0, "groups": 1}},
    "etr_lr5e-4": {**ETR, "lr": 5e-4},
    "etr_lr5e-3": {**ETR, "lr": 5e-3},
    "shared_epochs9": {"method": "shared", "epochs": 9},
    "etr_epochs9": {**ETR, "epochs": 9},
}
KEYS = [(task, metric) for task, spec in DEFAULT_KEY_SPEC.items() for metric in spec]


def parse_extra(items):
    out = {}
    for item in items or []:
        name, sep, spec = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--extra: expected NAME=JSON, got {item!r}")
        variant = json.loads(spec)
        if not isinstance(variant, dict) or "method" not in variant:
            raise ValueError(f"--extra {name}: expected a JSON object with a 'method', got {spec!r}")
        out[name] = variant
    return out


#: configuration fields that change how a run runs, not its result: a run in the file that differs only in
#: these is the same run
RUN_ONLY_FIELDS = ("quiet", "num_threads", "num_workers", "cache_dir", "out_dir", "device")


def make_config(variant: dict, seed: int, overrides: dict) -> TrainConfig:
    fields = {k: v for k, v in variant.items() if k != "method_options"}
    return TrainConfig(**{**DEMO_DEFAULTS, "quiet": True, **overrides, **fields,
                          "method_options": dict(variant.get("method_options", {})), "seed": seed})


def same_run(row: dict, name: str, config: TrainConfig) -> bool:
    wanted = {k: v for k, v in config.to_dict().items() if k not in RUN_ONLY_FIELDS}
    return row["variant"] == name and {k: row["config"].get(k) for k in wanted} == wanted


def run_variant(name: str, variant: dict, seed: int, overrides: dict) -> dict:
    config = make_config(variant, seed, overrides)
    started = time.perf_counter()
    trainer = Trainer(config)
    metrics = trainer.fit()
    return {"variant": name, "seed": seed, "variant_spec": variant, "config": config.to_dict(),
            "metrics": metrics, "parameters": trainer.learnable_parameters(),
            "seconds": round(time.perf_counter() - started, 1), "commit": source_commit()}


def load(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def mean_metrics(runs: list) -> dict:
    return {task: {metric: sum(r["metrics"][task][metric] for r in runs) / len(runs)}
            for task, metric in KEYS if task in runs[0]["metrics"]}


def table(rows: list, names: list, baseline_names=("single_task", "shared")) -> str:
    by_name = {n: [r for r in rows if r["variant"] == n] for n in names}
    by_name = {n: sorted(rs, key=lambda r: r["seed"]) for n, rs in by_name.items() if rs}
    tasks = [(t, m) for t, m in KEYS if any(t in rs[0]["metrics"] for rs in by_name.values())]
    baselines = {b: mean_metrics(by_name[b]) for b in baseline_names if b in by_name}
    head = ["variant", "seeds"] + [f"{t} {m}" for t, m in tasks] + [f"Δm vs {b}" for b in baselines] + \
        ["learnable params", "s/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, runs in by_name.items():
        mean = mean_metrics(runs)
        cells = [name, ",".join(str(r["seed"]) for r in runs)]
        for t, m in tasks:
            values = [r["metrics"][t][m] for r in runs]
            each = " / ".join(f"{v:.3g}" for v in values)
            cells.append(f"{mean[t][m]:.3g}" + (f" ({each})" if len(values) > 1 else ""))
        spec = {t: {m: DEFAULT_KEY_SPEC[t][m]} for t, m in tasks}
        for base in baselines.values():  # Δm of the mean metrics, then of each seed's (its spread)
            each = " / ".join(f"{delta_m(mean_metrics([r]), base, spec):+.1f}" for r in runs)
            cells.append(f"{delta_m(mean, base, spec):+.1f}%" + (f" ({each})" if len(runs) > 1 else ""))
        cells += [f"{runs[0]['parameters']:,}", f"{sum(r['seconds'] for r in runs) / len(runs):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["shared", "etr"], help="names from --list or --extra")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--results", default="etr_nlp_ablation.jsonl", help="JSON lines: one finished run per line")
    p.add_argument("--config", default="{}", help="JSON of TrainConfig fields over the demo's (e.g. num_threads)")
    p.add_argument("--extra", nargs="*", help="more variants as NAME=JSON, JSON like the entries of VARIANTS")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    p.add_argument("--baselines", nargs="+", default=["single_task", "shared"],
                   help="variants to give Δm against, where they are among --variants")
    p.add_argument("--table-only", action="store_true", help="print the table of the runs in --results, train none")
    args = p.parse_args(argv)
    variants = {**VARIANTS, **parse_extra(args.extra)}
    if args.list:
        for name, spec in variants.items():
            print(f"{name}: {json.dumps(spec)}")
        return
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {sorted(variants)}")
    overrides = json.loads(args.config)
    path = Path(args.results)
    for seed in [] if args.table_only else args.seeds:
        for name in args.variants:
            if any(same_run(r, name, make_config(variants[name], seed, overrides)) for r in load(path)):
                continue  # trained before with this configuration
            row = run_variant(name, variants[name], seed, overrides)
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[ablation] {name} seed {seed}: {row['seconds']:.0f} s", flush=True)
    configs = [(name, make_config(variants[name], seed, overrides)) for seed in args.seeds for name in args.variants]
    print(table([r for r in load(path) if any(same_run(r, n, c) for n, c in configs)], args.variants, args.baselines))


if __name__ == "__main__":
    main()
