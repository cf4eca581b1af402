"""The benchmark harness's CPU peak-memory measurement: it must see allocations that reuse freed heap
memory, and must leave glibc in the same (timing) mode for every provider afterwards."""
import pytest
import torch

from mtl_ops.bench.memory import cpu_peak_supported, peak_memory_bytes, timing_malloc_mode

pytestmark = pytest.mark.skipif(not cpu_peak_supported(), reason="needs /proc/self/clear_refs")
MIB = 2**20


def _allocate(nbytes):
    t = torch.empty(nbytes // 4, dtype=torch.float32)
    t.fill_(1.0)  # touch every page
    return t


def test_sees_an_allocation_that_reuses_freed_heap_memory():
    timing_malloc_mode()               # 16 MiB tensors now come from the heap, as while timing
    for _ in range(3):
        del_me = _allocate(16 * MIB)
        del del_me                      # leaves a free 16 MiB chunk in the heap for the next allocation
    peak = peak_memory_bytes(lambda: _allocate(16 * MIB), torch.device("cpu"))
    assert 15 * MIB <= peak < 40 * MIB, f"peak {peak / MIB:.1f} MiB for a 16 MiB tensor"


def test_peak_of_two_live_tensors_is_their_sum():
    def two():
        a = _allocate(8 * MIB)
        b = _allocate(8 * MIB)
        return a, b

    peak = peak_memory_bytes(two, torch.device("cpu"))
    assert 15 * MIB <= peak < 40 * MIB, f"peak {peak / MIB:.1f} MiB for two 8 MiB tensors"
