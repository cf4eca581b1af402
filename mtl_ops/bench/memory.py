"""Peak memory of one call: CUDA from the caching allocator's statistics; CPU from the process's peak
resident set (VmHWM after resetting it through /proc/self/clear_refs), with glibc told to serve every
allocation of 64 KiB or more by mmap so that freed tensors leave the resident set at once, and its heap
trimmed before each measurement: free heap chunks left by earlier calls (e.g. allocated before the mmap
threshold was fixed) would otherwise be reused without raising the resident set, reading as 0 bytes.

The 64 KiB threshold holds only while a peak is measured: with it every large tensor costs fresh page
faults, which would slow whatever is timed afterwards. Timing runs with the thresholds where glibc's own
dynamic adjustment ends up in a warmed-up process (mmap 32 MiB, trim 64 MiB; :func:`timing_malloc_mode`),
fixed so that every provider is timed under the same allocator behaviour whatever ran before it."""
from __future__ import annotations

import ctypes
import os
import re
from typing import Callable

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_libc = None


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def cpu_peak_supported() -> bool:
    return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)


def _glibc():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
        except OSError:
            _libc = False
    return _libc


def _mmap_threshold(nbytes: int) -> None:
    if _glibc():
        _glibc().mallopt(_M_MMAP_THRESHOLD, nbytes)


def timing_malloc_mode() -> None:
    """glibc's mmap and trim thresholds at the maxima of its dynamic adjustment (64-bit: 32 MiB, twice that
    for trimming), the same for every timed call (see the module docstring)."""
    _mmap_threshold(32 * 2**20)
    if _glibc():
        _glibc().mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)


def _trim_heap() -> None:
    """Give free heap pages back to the OS, so that reusing them shows in the resident set again."""
    if _glibc():
        _glibc().malloc_trim(0)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes allocated at the peak of ``fn()`` above what was live before it; None where not measurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu" or not cpu_peak_supported():
        return None
    _mmap_threshold(64 * 1024)
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        before = _status_bytes("VmRSS")
        fn()
        return max(0, _status_bytes("VmHWM") - before)
    finally:
        timing_malloc_mode()
