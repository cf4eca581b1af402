"""Medusa ops: every provider, forward and forward+backward, with peak memory (pytest-benchmark).

Targets, CPU fp32 forward+backward:
* ms_attention_mix, S=4 scales (strides 4..32 of a 288x384 image -> 72x96), B=8, K=40: cpp >= 3x the
  reference and >= 1.5x torch.compile(reference); peak memory <= 1/3 of the reference's.
* sfa_apply, T=4 over the four resnet18 scales: cpp >= 1.5x the reference.
Compare rows of one run: `pytest benchmarks/test_bench_medusa.py --benchmark-group-by=group`.
"""
import pytest
from bench_params import DEVICE_DTYPES, MODES, PROVIDER_NAMES, run_op_benchmark


@pytest.mark.parametrize("op", ["ms_attention_mix", "sfa_apply"])
@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_medusa_op(benchmark, bench_size, op, device, dtype, mode, provider):
    run_op_benchmark(benchmark, op, bench_size, device, dtype, mode, provider)
