"""ctal_affinity: every provider, forward and forward+backward, with peak memory (pytest-benchmark).

Target: CPU, NYUv2 setting B=2 T=3 C=128 72x96 fp32, fwd+bwd: cpp >= 5x the reference, faster than
torch.compile(reference) and than the exact reassociation in plain PyTorch ("reassoc(plain torch)"), with
peak memory <= 1/10 of the reference's. Plus the half-resolution case (144x192, N = 27,648) that the
reference cannot run: cpp under 4 GB peak. Compare rows of one run: `--benchmark-group-by=group`.
"""
import pytest
import torch
from bench_params import DEVICE_DTYPES, MODES, find_provider

from mtl_ops.backends import unavailable_reason
from mtl_ops.bench import CASES, peak_memory_bytes
from mtl_ops.bench.runner import make_call

OP = "ctal_affinity"
PROVIDERS = ["reference", "compile(reference)", "reassoc(plain torch)", "cpp", "cuda", "triton"]


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_ctal_affinity(benchmark, bench_size, device, dtype, mode, provider):
    device = torch.device(device)
    case = CASES[OP]
    call = make_call(find_provider(OP, device, provider).fn, case.make_inputs(case.sizes[bench_size], device, dtype),
                     mode)
    if provider != "reference":
        call()  # warm-up (compiles the compile(reference) provider); the reference takes ~1 min per call here
    benchmark.group = f"{OP} {mode} {device.type} {dtype}"
    benchmark.extra_info.update(shape=case.label(bench_size))
    peaks = []  # the timed call also measures the peak (one call of the reference at full size is enough)
    benchmark.pedantic(lambda: peaks.append(peak_memory_bytes(call, device)), rounds=1 if bench_size == "full" else 3,
                       iterations=1)
    benchmark.extra_info.update(peak_mem_bytes=max((p for p in peaks if p is not None), default=None))


@pytest.mark.parametrize("backend", ["cpp", "cuda"])
def test_ctal_affinity_half_resolution(benchmark, bench_size, backend):
    """144x192 (N = 27,648): one N x N fp32 matrix per sample is 3 GB, the reference needs tens of GB."""
    device = torch.device("cpu" if backend == "cpp" else "cuda")
    reason = unavailable_reason(backend, device.type, OP)
    if reason:
        pytest.skip(reason)
    case = CASES[OP]
    size = dict(B=1, T=3, C=128, H=144, W=192, k=3) if bench_size == "full" else dict(B=1, T=2, C=4, H=18, W=24, k=3)
    call = make_call(case.fused_fn(backend), case.make_inputs(size, device, torch.float32), "fwd+bwd")
    benchmark.group = f"{OP} half resolution fwd+bwd {device.type}"
    benchmark.extra_info.update(shape=" ".join(f"{k}={v}" for k, v in size.items()),
                                peak_mem_bytes=peak_memory_bytes(call, device))
    benchmark.pedantic(call, rounds=1, iterations=1)
