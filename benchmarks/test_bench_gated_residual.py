"""gated_residual: every provider, forward and forward+backward, with peak memory (pytest-benchmark).

Target: CPU, T=3 B=8 C=64 72x96 fp32, fwd+bwd: cpp >= 1.5x the reference and at least as fast
as torch.compile(reference). Compare rows of one run: `pytest benchmarks --benchmark-group-by=param:mode`.
"""
import pytest
from bench_params import DEVICE_DTYPES, MODES, PROVIDER_NAMES, run_op_benchmark

OP = "gated_residual"


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_gated_residual(benchmark, bench_size, device, dtype, mode, provider):
    run_op_benchmark(benchmark, OP, bench_size, device, dtype, mode, provider)
