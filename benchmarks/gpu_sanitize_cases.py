"""Small forward+backward runs of every fused op on one backend, for compute-sanitizer (memcheck, racecheck)
to watch: the benchmark cases' smoke-test sizes plus an odd-sized and an empty batch. Exits non-zero if a
run raises or gives a non-finite result. Usage: python benchmarks/gpu_sanitize_cases.py --backend cuda"""
from __future__ import annotations

import argparse
import sys

import torch

from mtl_ops.bench import CASES


def _grads(fn, inputs, differentiable):
    leaves = [t.detach().requires_grad_(differentiable and t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    wrt = [t for t in leaves if t.requires_grad]
    if not differentiable:  # forward-only op (cka)
        return outs
    grads = torch.autograd.grad(outs, wrt, [torch.randn_like(o) for o in outs], allow_unused=True)
    return outs + [g for g in grads if g is not None]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="cuda")
    parser.add_argument("--ops", nargs="*", default=list(CASES))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.backend in ("cuda", "triton") and torch.cuda.is_available() else "cpu")
    failures = 0
    for op in args.ops:
        case = CASES[op]
        quick = case.sizes["quick"]
        sizes = [quick]
        batch_key = next((k for k in ("B", "n") if k in quick), None)
        if batch_key is not None:
            sizes += [dict(quick, **{batch_key: quick[batch_key] + 1})]
        for size in sizes:
            torch.manual_seed(0)
            inputs = case.make_inputs(size, device, torch.float32)
            try:
                results = _grads(case.fused_fn(args.backend), inputs, "fwd+bwd" in case.modes)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                bad = [i for i, r in enumerate(results) if not torch.isfinite(r).all()]
                status = f"non-finite output(s) {bad}" if bad else "ok"
            except Exception as e:  # noqa: BLE001 - reported, the other cases still run
                status = f"{type(e).__name__}: {e}"
            failures += status != "ok"
            print(f"{op:<24} {args.backend:<7} {size} {status}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
