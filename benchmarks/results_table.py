"""Markdown tables from recorded benchmark rows (``mtl-ops bench --jsonl`` / ``--json``, and the GPU check's
profile.json), so that the numbers in the docs are the recorded ones, not copies typed by hand.

  python benchmarks/results_table.py ops benchmarks/results/nvidia-h200/run*/bench_ops.jsonl
  python benchmarks/results_table.py networks benchmarks/results/nvidia-h200/run*/bench_networks.jsonl
  python benchmarks/results_table.py profile benchmarks/results/nvidia-h200/run2/profile.json

Rows measured again later replace earlier ones (same op, size, dtype, mode, provider).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_rows(paths) -> list[dict]:
    rows = []
    for path in paths:
        text = Path(path).read_text()
        if text.lstrip().startswith("["):
            rows += json.loads(text)
        else:
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def _ratio(x) -> str:
    return "–" if x is None else f"{x:.2f}×"


def ops_table(rows: list[dict]) -> str:
    latest: dict = {}
    for r in rows:
        latest[(r["op"], r.get("size", "full"), r["dtype"], r["mode"], r["provider"])] = r
    lines = ["| op | size | dtype | mode | provider | time (ms) | vs reference | vs compile(reference) | "
             "bandwidth / copy bandwidth | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (op, size, dtype, mode, provider), r in latest.items():
        if r.get("error"):
            lines.append(f"| {op} | {size} | {dtype} | {mode} | {provider} | error: {r['error'][:60]} | | | | |")
            continue
        bw = r.get("bandwidth_fraction")
        bw = f"{bw:.0%}" if bw is not None and provider not in ("reference", "compile(reference)") else "–"
        mem = "–" if r.get("peak_mem_bytes") is None else f"{r['peak_mem_bytes'] / 2**20:.0f}"
        lines.append(f"| {op} | {size} | {dtype} | {mode} | {provider} | {r['time_ms']:.3f} | "
                     f"{_ratio(r.get('speedup_vs_reference'))} | {_ratio(r.get('speedup_vs_compile'))} | {bw} | {mem} |")
    return "\n".join(lines)


def networks_table(rows: list[dict]) -> str:
    latest: dict = {}
    for r in rows:
        latest[(r["method"], r["dtype"], r["provider"])] = r
    by_method: dict = {}
    for (method, dtype, provider), r in latest.items():
        by_method.setdefault((method, dtype), {})[provider] = r
    lines = ["| method | dtype | reference (ms) | fused (ms) | fused vs reference | compile(reference) (ms) |",
             "|---|---|---|---|---|---|"]
    cell = lambda r: "–" if r is None or r.get("step_ms") is None else f"{r['step_ms']:.1f}"  # noqa: E731
    for (method, dtype), p in by_method.items():
        ref, fused, comp = p.get("reference"), p.get("fused"), p.get("compile(reference)")
        ratio = _ratio(ref["step_ms"] / fused["step_ms"]) if ref and fused and fused.get("step_ms") else "–"
        lines.append(f"| {method} | {dtype} | {cell(ref)} | {cell(fused)} | {ratio} | {cell(comp)} |")
    return "\n".join(lines)


def profile_table(rows: list[dict]) -> str:
    lines = ["| op | provider | mode | wall (µs) | in kernels (µs) | costliest kernel (µs) |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            continue
        name, us = r["top_kernels"][0]
        lines.append(f"| {r['op']} | {r['provider']} | {r['mode']} | {r['wall_us']:.0f} | {r['kernel_us']:.0f} | "
                     f"`{name[:48]}` {us:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("ops", "networks", "profile"))
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    rows = read_rows(args.paths)
    print({"ops": ops_table, "networks": networks_table, "profile": profile_table}[args.kind](rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
