"""The verification harness every op's tests use: backends to run, tolerance tables, input layouts, a
comparison that reports the worst element, PyTorch's global matmul settings and a recorder of Triton kernel
launches. The op suite itself is tests/op_suite.py."""
from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch

from mtl_ops.backends import unavailable_reason

# (rtol, atol) per dtype, for element-wise results ("elementwise") and for reductions over many elements
# ("reduction"), both against the reference evaluated in float64 on the same inputs.
TOLERANCES = {
    "elementwise": {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5),
                    torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)},
    "reduction": {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-4),
                  torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)},
}

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# for tests that look into the Triton kernels' modules rather than run an op through backend_params
requires_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                     reason="triton is not installed (pip install 'mtl_ops[triton]')")


def backend_params(op: str, device: str, backends=("cpp", "cuda", "triton")):
    """pytest params for the fused backends of ``op`` that apply to ``device``, skipped with the reason
    when unavailable here (so a CPU machine shows why the CUDA and Triton runs did not happen)."""
    params = []
    for b in backends:
        if device == "cpu" and b == "cuda" or device == "cuda" and b == "cpp":
            continue
        marks = [pytest.mark.triton] if b == "triton" else []
        if device == "cuda":
            marks.append(pytest.mark.cuda)
            reason = "needs a CUDA GPU" if not torch.cuda.is_available() else unavailable_reason(b, device, op)
        else:
            reason = unavailable_reason(b, device, op)
        if reason is not None:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(b, marks=marks, id=f"{b}-{device}"))
    return params


def layout_channels_last(t: torch.Tensor) -> torch.Tensor:
    """Channels-last for 4-d tensors, and for 5-d ones (T, B, C, H, W) per task (memory T, B, H, W, C:
    task-major, which the element-wise kernels run as is)."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return t


def layout_strided(t: torch.Tensor) -> torch.Tensor:
    """A non-dense view with the same values."""
    if t.dim() == 0 or t.shape[-1] == 0:
        return t
    return torch.cat([t, t], dim=-1)[..., ::2]


def layout_permuted(t: torch.Tensor) -> torch.Tensor:
    """Dense, with the two leading dimensions swapped in memory (not task-major: the kernels copy it)."""
    return t.transpose(0, 1).contiguous().transpose(0, 1) if t.dim() >= 2 else t


def layout_offset(t: torch.Tensor) -> torch.Tensor:
    """Contiguous, but a view that starts past the beginning of its storage (a slice of a larger tensor)."""
    return torch.cat([t.reshape(-1)[:1], t.reshape(-1)])[1:].view(t.shape) if t.numel() else t


LAYOUTS = {"channels_last": layout_channels_last, "strided": layout_strided, "permuted": layout_permuted}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, kind: str = "elementwise",
                 what: str = "") -> None:
    """assert_close with the table's tolerance for ``dtype``; expected may be float64 (cast to actual's dtype
    for the comparison of values, but the error is measured in float64)."""
    rtol, atol = TOLERANCES[kind][dtype]
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{what} ({dtype}, {kind}): {m}")


# ---- PyTorch's global fp32 matmul settings (TF32 / bf16 GEMMs) ---------------------------------------------------

def _fp32_precision_settings() -> list:
    """The per-backend ``fp32_precision`` settings this torch has (torch >= 2.9)."""
    return [o for o in (torch.backends.cuda.matmul, getattr(torch.backends.mkldnn, "matmul", None))
            if o is not None and hasattr(o, "fp32_precision")]


def matmul_precision_snapshot() -> dict:
    """Every global fp32 matmul setting, read through its own getter (a getter that rejects the state, as PyTorch's
    legacy ones do where the legacy and the fp32_precision API were mixed, reads as the error's type name)."""
    getters = {
        "cuda.matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
        "cuda.matmul.fp32_precision": lambda: torch.backends.cuda.matmul.fp32_precision,
        "mkldnn.matmul.fp32_precision": lambda: torch.backends.mkldnn.matmul.fp32_precision,
        "preferred_blas_library": lambda: str(torch.backends.cuda.preferred_blas_library()),
    }
    snapshot = {}
    for name, get in getters.items():
        try:
            snapshot[name] = get()
        except Exception as e:  # noqa: BLE001 - recorded, compared as a value
            snapshot[name] = type(e).__name__
    return snapshot


@contextlib.contextmanager
def global_matmul_precision(precision: str | None = None, *, allow_tf32: bool | None = None,
                            blas: str | None = None):
    """Sets PyTorch's global fp32 matmul settings for the block (``torch.set_float32_matmul_precision(precision)``,
    ``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cuda.preferred_blas_library(blas)``) and restores
    all of them afterwards, also when the block raises. With no argument it only restores."""
    saved_precision = torch.get_float32_matmul_precision()
    saved_settings = [(o, o.fp32_precision) for o in _fp32_precision_settings()]
    saved_blas = torch.backends.cuda.preferred_blas_library()
    try:
        if precision is not None:
            torch.set_float32_matmul_precision(precision)
        if allow_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        if blas is not None:
            torch.backends.cuda.preferred_blas_library(blas)
        yield
    finally:
        torch.set_float32_matmul_precision(saved_precision)
        for setting, value in saved_settings:
            setting.fp32_precision = value
        if torch.backends.cuda.preferred_blas_library() != saved_blas:
            torch.backends.cuda.preferred_blas_library(saved_blas)


@contextlib.contextmanager
def exact_fp32():
    """fp32 convolutions and matmuls without TF32 for the block (cuDNN's TF32 is on by default): a reference
    computed in fp32 on the GPU is then exact enough to compare a fused op with; restored afterwards."""
    saved_cudnn = torch.backends.cudnn.allow_tf32
    with global_matmul_precision("highest", allow_tf32=False):
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = saved_cudnn


@contextlib.contextmanager
def tf32_everywhere():
    """TF32 switched on globally the way training scripts do (cuBLAS, cuDNN, matmul precision "high");
    every setting restored afterwards."""
    saved_cudnn = torch.backends.cudnn.allow_tf32
    with global_matmul_precision("high", allow_tf32=True):
        torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = saved_cudnn


class LaunchLog:
    """Records every Triton kernel launch (name, grid) and whether it ran inside ``_launch.device_guard``,
    and on which device the guard was entered."""

    def __init__(self, monkeypatch):
        from mtl_ops.triton import _launch, load

        self.launches, self.guard_devices, self.depth = [], [], 0
        real_guard = _launch.device_guard

        @contextlib.contextmanager
        def guard(tensor):
            with real_guard(tensor):
                self.guard_devices.append(tensor.device)
                self.depth += 1
                try:
                    yield
                finally:
                    self.depth -= 1

        monkeypatch.setattr(_launch, "device_guard", guard)
        kernel_type = type(load("gated_residual")._forward_kernel)  # JITFunction, or the interpreter's
        real_run = kernel_type.run

        def run(kernel, *args, grid, warmup, **kwargs):
            if not warmup:
                self.launches.append((kernel.fn.__name__, tuple(grid), self.depth > 0))
            return real_run(kernel, *args, grid=grid, warmup=warmup, **kwargs)

        monkeypatch.setattr(kernel_type, "run", run)
