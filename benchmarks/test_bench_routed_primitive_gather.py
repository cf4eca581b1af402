"""routed_primitive_gather: every provider, forward and forward+backward, with peak memory (pytest-benchmark).

Target (issue #5): CPU, T=3 B=8 C_in=C_out=64 72x96, 5 primitives, fp32, fwd+bwd: fused >= 2x the reference, at least as fast
as torch.compile(reference), peak memory <= 1/3 of the reference.  Compare rows of one run: `pytest benchmarks --benchmark-group-by=param:mode`.
"""
import pytest
import torch
from bench_params import DEVICE_DTYPES, MODES, find_provider, provider_names

from mtl_ops.bench import CASES, peak_memory_bytes
from mtl_ops.bench.runner import make_call

OP = "routed_primitive_gather"


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", provider_names(OP))
def test_routed_primitive_gather(benchmark, bench_size, device, dtype, mode, provider):
    device = torch.device(device)
    case = CASES[OP]
    call = make_call(find_provider(OP, device, provider).fn, case.make_inputs(case.sizes[bench_size], device, dtype),
                     mode)
    call()  # warm-up (compiles the compile(reference) provider)
    benchmark.group = f"{OP} {mode} {device.type} {dtype}"
    benchmark.extra_info.update(shape=case.label(bench_size), peak_mem_bytes=peak_memory_bytes(call, device))
    benchmark(call)
