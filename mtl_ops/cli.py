"""The `mtl-ops` command: `info` (build and backends), `bench` (speed and memory ratio table)."""
from __future__ import annotations

import argparse
import json
import sys

import torch

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}


def _cmd_info(args) -> int:
    from .info import collect, format_report

    report = collect()
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0


def _cmd_bench(args) -> int:
    from .bench import CASES, format_table, run_benchmarks

    unknown = [op for op in args.ops if op not in CASES]
    if unknown:
        print(f"mtl-ops bench: unknown op(s) {unknown}; benchmarked ops: {', '.join(CASES)}", file=sys.stderr)
        return 2
    dtypes = []
    for name in args.dtype:
        if name not in _DTYPES:
            print(f"mtl-ops bench: --dtype must be one of {sorted(_DTYPES)}, got {name!r}", file=sys.stderr)
            return 2
        dtypes.append(_DTYPES[name])
    device = torch.device(args.device) if args.device else None
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        print("mtl-ops bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    timing = dict(min_repeats=2, min_seconds=0.0, warmup=1) if args.quick else {}
    rows = run_benchmarks(args.ops or None, device, dtypes, "quick" if args.quick else "full", **timing)
    print(format_table(rows))
    for op in dict.fromkeys(r["op"] for r in rows):
        if CASES[op].target and not args.quick:
            print(f"target ({op}): {CASES[op].target}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
        print(f"wrote {len(rows)} rows to {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtl-ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, device, and per op and backend: available or why not")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("bench", help="time every backend against the reference and torch.compile(reference)")
    p.add_argument("ops", nargs="*", help="ops to benchmark (default: all)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", nargs="+", default=["float32"], help="dtypes (default float32)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: a smoke test, not a measurement")
    p.add_argument("--json", metavar="PATH", help="also write the rows (op, provider, shape, dtype, device, "
                                                   "versions, commit, time, peak memory) as JSON")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
