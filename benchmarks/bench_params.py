"""Parametrisation shared by the benchmark suites: (device, dtype) pairs and provider names per case."""
import pytest
import torch

from mtl_ops.bench import CASES, providers_for
from mtl_ops.bench.runner import MODES

DEVICE_DTYPES = [pytest.param("cpu", torch.float32, id="cpu-fp32")] + [
    pytest.param("cuda", dt, id=f"cuda-{name}", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU")])
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
]


#: every provider that can appear on some device (the same for every op); absent ones skip at run time
PROVIDER_NAMES = ["reference", "compile(reference)", "cpp", "cuda", "triton"]


def find_provider(op: str, device: torch.device, name: str):
    for p in providers_for(CASES[op], device):
        if p.name == name:
            return p
    pytest.skip(f"{name} does not run {op} on {device.type} here")


def run_op_benchmark(benchmark, op: str, bench_size: str, device: str, dtype: torch.dtype, mode: str,
                     provider: str) -> None:
    """The body every per-op suite shares: one provider of ``op`` in ``mode``, warmed up (which compiles
    the compile(reference) provider), with its peak memory in ``extra_info``."""
    from mtl_ops.bench import peak_memory_bytes
    from mtl_ops.bench.runner import make_call

    device = torch.device(device)
    case = CASES[op]
    call = make_call(find_provider(op, device, provider).fn, case.make_inputs(case.sizes[bench_size], device, dtype),
                     mode)
    call()
    benchmark.group = f"{op} {mode} {device.type} {dtype}"
    benchmark.extra_info.update(shape=case.label(bench_size), peak_mem_bytes=peak_memory_bytes(call, device))
    benchmark(call)


__all__ = ["DEVICE_DTYPES", "MODES", "PROVIDER_NAMES", "find_provider", "run_op_benchmark"]
