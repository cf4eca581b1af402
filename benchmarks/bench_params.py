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


def provider_names(op: str) -> list[str]:
    """Every provider that can appear on some device; absent ones skip at run time."""
    return ["reference", "compile(reference)", "cpp", "cuda", "triton"]


def find_provider(op: str, device: torch.device, name: str):
    for p in providers_for(CASES[op], device):
        if p.name == name:
            return p
    pytest.skip(f"{name} does not run {op} on {device.type} here")


__all__ = ["DEVICE_DTYPES", "MODES", "provider_names", "find_provider"]
