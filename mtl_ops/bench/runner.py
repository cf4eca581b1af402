"""Times providers side by side in one process and reports ratios to the reference."""
from __future__ import annotations

import datetime
import statistics
import subprocess
import time
from typing import Callable

import torch

from .. import __version__
from .cases import CASES, BenchCase, providers_for
from .memory import peak_memory_bytes, timing_malloc_mode

MODES = ("fwd", "fwd+bwd")


def make_call(fn: Callable, inputs: tuple, mode: str) -> Callable[[], object]:
    """A no-argument callable running ``fn`` in ``mode``: forward without autograd, or forward and the
    backward to every floating input."""
    if mode == "fwd":
        def call():
            with torch.no_grad():
                return fn(*inputs)
        return call
    leaves = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in inputs)
    wrt = tuple(t for t in leaves if t.requires_grad)
    grad_out = None

    def call():
        nonlocal grad_out
        y = fn(*leaves)
        if isinstance(y, (tuple, list)):  # several outputs (e.g. one per scale): one gradient each
            if grad_out is None:
                gen = torch.Generator().manual_seed(1)
                grad_out = tuple(torch.randn(t.shape, generator=gen).to(t.device, t.dtype) for t in y)
            return torch.autograd.grad(tuple(y), wrt, grad_out)
        if grad_out is None:
            grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device, y.dtype)
        return torch.autograd.grad(y, wrt, grad_out)
    return call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(call: Callable, device: torch.device, warmup: int = 2, min_repeats: int = 5,
              min_seconds: float = 0.5, slow_call_seconds: float = 2.0) -> float:
    """Median seconds of ``call`` over at least ``min_repeats`` runs and ``min_seconds`` in all. A call that
    takes longer than ``slow_call_seconds`` (a reference materialising N x N matrices, say) gets one warm-up
    and two timed runs: its run-to-run noise is small next to its length."""
    timing_malloc_mode()
    t0 = time.perf_counter()
    call()
    if time.perf_counter() - t0 > slow_call_seconds:
        warmup, min_repeats = 0, min(min_repeats, 2)
    for _ in range(warmup - 1):
        call()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        _sync(device)
        t0 = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=__file__.rsplit("/", 3)[0])
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    import os

    return f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def run_case(case: BenchCase, device: torch.device, dtype: torch.dtype, size: str = "full",
             modes=MODES, **timing) -> list[dict]:
    inputs = case.make_inputs(case.sizes[size], device, dtype)
    common = dict(op=case.op, shape=case.label(size), dtype=str(dtype).replace("torch.", ""),
                  device=device_name(device), torch=str(torch.__version__), mtl_ops=__version__, commit=_commit(),
                  timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    rows = []
    providers = providers_for(case, device)
    for mode in (m for m in modes if m in case.modes):
        ref_time = None
        for p in providers:
            call = make_call(p.fn, inputs, mode)
            seconds = time_call(call, device, **timing)
            peak = peak_memory_bytes(call, device)
            if p.name == "reference":
                ref_time = seconds
            rows.append(dict(common, provider=p.name, mode=mode, time_ms=seconds * 1e3,
                             speedup_vs_reference=ref_time / seconds if ref_time else None, peak_mem_bytes=peak))
    return rows


def run_benchmarks(op_names=None, device: torch.device | None = None, dtypes=(torch.float32,), size="full",
                   **timing) -> list[dict]:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = op_names or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; benchmarked ops: {', '.join(CASES)}")
    return [row for n in names for dtype in dtypes for row in run_case(CASES[n], device, dtype, size, **timing)]


def format_table(rows: list[dict]) -> str:
    header = f"{'op':<16} {'shape':<28} {'dtype':<9} {'mode':<8} {'provider':<20} {'time ms':>10} {'vs ref':>8} {'peak MiB':>9}"
    lines = [f"device: {rows[0]['device'] if rows else '-'}", header, "-" * len(header)]
    for r in rows:
        mem = "-" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**20:.1f}"
        ratio = "-" if r["speedup_vs_reference"] is None else f"{r['speedup_vs_reference']:.2f}x"
        lines.append(f"{r['op']:<16} {r['shape']:<28} {r['dtype']:<9} {r['mode']:<8} {r['provider']:<20} "
                     f"{r['time_ms']:>10.3f} {ratio:>8} {mem:>9}")
    return "\n".join(lines)
