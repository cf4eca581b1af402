"""Peak memory of one call: CUDA from the caching allocator's statistics; CPU from the process's peak
resident set (VmHWM after resetting it through /proc/self/clear_refs), with glibc told to serve every
allocation of 64 KiB or more by mmap so that freed tensors leave the resident set at once."""
from __future__ import annotations

import ctypes
import os
import re
from typing import Callable

import torch

_M_MMAP_THRESHOLD = -3
_mallopt_done = False


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def cpu_peak_supported() -> bool:
    return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)


def _fixed_mmap_threshold() -> None:
    global _mallopt_done
    if not _mallopt_done:
        try:
            ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        except OSError:
            pass
        _mallopt_done = True


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
    _fixed_mmap_threshold()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _status_bytes("VmRSS")
    fn()
    return max(0, _status_bytes("VmHWM") - before)
