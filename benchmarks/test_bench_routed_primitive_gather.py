"""routed_primitive_gather: every provider, forward and forward+backward, with peak memory (pytest-benchmark).

Target: CPU, T=3 B=8 C_in=C_out=64 72x96, 5 primitives, fp32, fwd+bwd: fused >= 2x the reference, at least as fast
as torch.compile(reference), peak memory <= 1/3 of the reference.  Compare rows of one run: `pytest benchmarks --benchmark-group-by=param:mode`.
"""
import pytest
from bench_params import DEVICE_DTYPES, MODES, PROVIDER_NAMES, run_op_benchmark

OP = "routed_primitive_gather"


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDER_NAMES)
def test_routed_primitive_gather(benchmark, bench_size, device, dtype, mode, provider):
    run_op_benchmark(benchmark, OP, bench_size, device, dtype, mode, provider)
