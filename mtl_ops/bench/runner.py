"""Times providers side by side in one process and reports ratios to the reference."""
from __future__ import annotations

import datetime
import os
import statistics
import subprocess
import time
from typing import Callable

import torch

from .. import __version__
from ..info import cpu_model, source_commit
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


class _Clock:
    """Seconds of one call: CUDA events on a GPU (the device time between the launches, without the host's
    synchronisation latency), the host's perf_counter around a synchronised call elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self, call: Callable) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0


def time_call(call: Callable, device: torch.device, warmup: int = 2, min_repeats: int = 5,
              min_seconds: float = 0.5, slow_call_seconds: float = 2.0) -> float:
    """Median seconds of ``call`` over at least ``min_repeats`` runs and ``min_seconds`` in all. A call that
    takes longer than ``slow_call_seconds`` (a reference materialising N x N matrices, say) gets one warm-up
    and two timed runs: its run-to-run noise is small next to its length."""
    timing_malloc_mode()
    clock = _Clock(device)
    _sync(device)
    t0 = time.perf_counter()
    call()
    _sync(device)
    if time.perf_counter() - t0 > slow_call_seconds:
        warmup, min_repeats = 0, min(min_repeats, 2)
    for _ in range(warmup - 1):
        call()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        times.append(clock(call))
    return statistics.median(times)


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


def min_bytes_moved(fn: Callable, inputs: tuple, mode: str) -> int:
    """The fewest bytes a call must move through memory: every input read and every output written once;
    with the backward, also the output gradient read, the inputs read again and their gradients written.
    Achieved bandwidth = this / time (a lower bound on what the kernel really moves)."""
    with torch.no_grad():
        out_bytes = _tensor_bytes(fn(*inputs))
    in_bytes = _tensor_bytes(inputs)
    if mode == "fwd":
        return in_bytes + out_bytes
    grad_bytes = sum(_tensor_bytes(t) for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point())
    return in_bytes + out_bytes + out_bytes + in_bytes + grad_bytes


_PEAK_BANDWIDTH: dict = {}


def device_copy_bandwidth(device: torch.device, nbytes: int = 2 * 2**30) -> float | None:
    """Bytes per second of a large device-to-device copy (bytes read + bytes written), measured once per
    process: the memory-bandwidth ceiling the achieved bandwidth of the ops is compared with. None on CPU."""
    if device.type != "cuda":
        return None
    key = str(device)
    if key not in _PEAK_BANDWIDTH:
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
        dst = torch.empty_like(src)
        seconds = time_call(lambda: dst.copy_(src), device, warmup=3, min_repeats=20, min_seconds=0.2)
        _PEAK_BANDWIDTH[key] = 2 * nbytes / seconds
        del src, dst
        torch.cuda.empty_cache()
    return _PEAK_BANDWIDTH[key]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def run_case(case: BenchCase, device: torch.device, dtype: torch.dtype, size: str = "full",
             modes=MODES, on_row: Callable[[dict], None] | None = None, only: tuple | None = None,
             measure_memory: bool = True, **timing) -> list[dict]:
    """Rows of every provider in every mode of ``case`` at ``size``; ``on_row(row)`` is called as each row is
    measured (a long run keeps what it measured if it is stopped). A provider that fails (e.g. a backend
    that cannot run these inputs) gives a row with its error instead of stopping the case. ``only``: the
    provider names to run (default all); ``measure_memory=False`` skips the peak-memory call."""
    inputs = case.make_inputs(case.sizes[size], device, dtype)
    common = dict(op=case.op, size=size, shape=case.label(size), dtype=str(dtype).replace("torch.", ""),
                  device=device_name(device), torch=str(torch.__version__), mtl_ops=__version__, commit=source_commit(),
                  timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    peak_bw = device_copy_bandwidth(device)
    rows = []
    providers = [p for p in providers_for(case, device) if only is None or p.name in only]
    for mode in (m for m in modes if m in case.modes):
        ref_time = compile_time = None
        nbytes = min_bytes_moved(case.reference_fn, inputs, mode)
        for p in providers:
            row = dict(common, provider=p.name, mode=mode, min_bytes=nbytes)
            try:
                call = make_call(p.fn, inputs, mode)
                seconds = time_call(call, device, **timing)
                peak = peak_memory_bytes(call, device) if measure_memory else None
            except Exception as e:  # noqa: BLE001 - recorded in the row, the other providers still run
                row.update(error=f"{type(e).__name__}: {e}"[:500], time_ms=None, speedup_vs_reference=None,
                           speedup_vs_compile=None, peak_mem_bytes=None)
            else:
                if p.name == "reference":
                    ref_time = seconds
                elif p.name == "compile(reference)":
                    compile_time = seconds
                gbps = nbytes / seconds / 1e9
                row.update(time_ms=seconds * 1e3, speedup_vs_reference=ref_time / seconds if ref_time else None,
                           speedup_vs_compile=compile_time / seconds if compile_time else None,
                           peak_mem_bytes=peak, achieved_gbps=gbps,
                           bandwidth_fraction=gbps * 1e9 / peak_bw if peak_bw else None)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def run_benchmarks(op_names=None, device: torch.device | None = None, dtypes=(torch.float32,), size="full",
                   on_row: Callable[[dict], None] | None = None, only: tuple | None = None,
                   measure_memory: bool = True, **timing) -> list[dict]:
    """Rows of every op in ``op_names`` (default: all) for every dtype. ``size``: a size name every case has
    ("full", "quick"), or "gpu" (the case's GPU size where it has one, else "full")."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = op_names or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; benchmarked ops: {', '.join(CASES)}")
    rows = []
    for n in names:
        case_size = size if size in CASES[n].sizes else "full"
        for dtype in dtypes:
            rows += run_case(CASES[n], device, dtype, case_size, on_row=on_row, only=only,
                             measure_memory=measure_memory, **timing)
    return rows


def format_table(rows: list[dict]) -> str:
    """One line per row: time, ratios to the reference and to torch.compile(reference), peak memory, and
    on a GPU the achieved bandwidth as a fraction of the device's copy bandwidth."""
    header = (f"{'op':<16} {'shape':<28} {'dtype':<9} {'mode':<8} {'provider':<20} {'time ms':>10} {'vs ref':>8} "
              f"{'vs comp':>8} {'peak MiB':>9} {'BW':>5}")
    lines = [f"device: {rows[0]['device'] if rows else '-'}", header, "-" * len(header)]
    ratio = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
    for r in rows:
        head = f"{r['op']:<16} {r['shape'][:28]:<28} {r['dtype']:<9} {r['mode']:<8} {r['provider']:<20} "
        if r.get("error"):
            lines.append(head + f"error: {r['error'][:80]}")
            continue
        mem = "-" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**20:.1f}"
        bw = "-" if r.get("bandwidth_fraction") is None else f"{r['bandwidth_fraction']:.0%}"
        lines.append(head + f"{r['time_ms']:>10.3f} {ratio(r['speedup_vs_reference']):>8} "
                     f"{ratio(r.get('speedup_vs_compile')):>8} {mem:>9} {bw:>5}")
    return "\n".join(lines)
