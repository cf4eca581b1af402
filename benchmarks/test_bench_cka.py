"""cka: every provider, forward only (the op has no backward), with peak memory (pytest-benchmark).

Target: CPU fp32, T=5 n=800 d=2048, debiased: fused >= 2x the reference. Compare rows of one
run: `pytest benchmarks/test_bench_cka.py --benchmark-group-by=param:mode`.
"""
import pytest
from bench_params import DEVICE_DTYPES, PROVIDER_NAMES, run_op_benchmark

OP = "cka"


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_cka(benchmark, bench_size, device, dtype, provider):
    run_op_benchmark(benchmark, OP, bench_size, device, dtype, "fwd", provider)
