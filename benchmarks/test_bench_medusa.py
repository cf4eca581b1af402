"""Medusa ops: every provider, forward and forward+backward, with peak memory (pytest-benchmark).

Targets (issue #4), CPU fp32 forward+backward:
* ms_attention_mix, S=4 scales (strides 4..32 of a 288x384 image -> 72x96), B=8, K=40: cpp >= 3x the
  reference and >= 1.5x torch.compile(reference); peak memory <= 1/3 of the reference's.
* sfa_apply, T=4 over the four resnet18 scales: cpp >= 1.5x the reference.
Compare rows of one run: `pytest benchmarks/test_bench_medusa.py --benchmark-group-by=group`.
"""
import pytest
import torch
from bench_params import DEVICE_DTYPES, MODES, find_provider, provider_names

from mtl_ops.bench import CASES, peak_memory_bytes
from mtl_ops.bench.runner import make_call


@pytest.mark.parametrize("op", ["ms_attention_mix", "sfa_apply"])
@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", provider_names("ms_attention_mix"))
def test_medusa_op(benchmark, bench_size, op, device, dtype, mode, provider):
    device = torch.device(device)
    case = CASES[op]
    call = make_call(find_provider(op, device, provider).fn, case.make_inputs(case.sizes[bench_size], device, dtype),
                     mode)
    call()  # warm-up (compiles the compile(reference) provider)
    benchmark.group = f"{op} {mode} {device.type} {dtype}"
    benchmark.extra_info.update(shape=case.label(bench_size), peak_mem_bytes=peak_memory_bytes(call, device))
    benchmark(call)
