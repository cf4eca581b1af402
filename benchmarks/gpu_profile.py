"""Where the time of each fused op goes on a GPU: per op and backend (benchmark size, fp32), the wall time of a
forward+backward (CUDA events) against the time its kernels ran (torch.profiler), and the kernels that took
the most. Wall much above kernel time means the host (Python, dispatch, launches) is the bottleneck; kernel
time near wall means the kernels themselves are. Usage: python benchmarks/gpu_profile.py --out profile.json"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from mtl_ops.bench import CASES
from mtl_ops.bench.runner import make_call


def kernel_table(prof, iters: int, top: int = 5) -> tuple[float, list]:
    """(device microseconds per iteration in kernels, [(kernel name, microseconds per iteration)])."""
    kernels: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:  # a kernel (or memcpy/memset) on the device
            kernels[e.name] = kernels.get(e.name, 0.0) + e.time_range.elapsed_us() / iters
    total = sum(kernels.values())
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1])[:top]
    return total, [(name[:90], round(us, 1)) for name, us in ranked]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ops", nargs="*", default=list(CASES))
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    rows = []
    for op in args.ops:
        case = CASES[op]
        inputs = case.make_inputs(case.sizes["full"], device, torch.float32)
        mode = "fwd+bwd" if "fwd+bwd" in case.modes else "fwd"
        for name, fn in [("reference", case.reference_fn)] + [(b, case.fused_fn(b)) for b in ("cuda", "triton")]:
            try:
                call = make_call(fn, inputs, mode)
                for _ in range(3):
                    call()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(args.iters):
                    call()
                end.record()
                end.synchronize()
                wall = start.elapsed_time(end) * 1e3 / args.iters
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(args.iters):
                        call()
                    torch.cuda.synchronize()
                kernel_us, top = kernel_table(prof, args.iters)
                row = dict(op=op, provider=name, mode=mode, wall_us=round(wall, 1), kernel_us=round(kernel_us, 1),
                           top_kernels=top)
            except Exception as e:  # noqa: BLE001 - recorded; the other providers still run
                row = dict(op=op, provider=name, mode=mode, error=f"{type(e).__name__}: {e}"[:300])
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
