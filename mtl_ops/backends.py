"""Which backends exist, which can run here (and why not), and how one is chosen.

Backends: ``reference`` (plain PyTorch, always), ``cpp`` (compiled CPU kernels), ``cuda`` (compiled CUDA
kernels), ``triton`` (Triton kernels: GPU tensors, or CPU tensors under ``TRITON_INTERPRET=1``).
``backend=None`` picks the fastest available one for the tensors' device; the environment variable
``MTL_OPS_BACKEND`` overrides that choice globally (an explicit ``backend=`` argument still wins).
"""
from __future__ import annotations

import importlib.util
import os

import torch

from ._loader import LIBRARIES

BACKENDS = ("reference", "cpp", "cuda", "triton")
# Preference order of backend=None, per device type. Triton on CPU is an interpreter: never chosen by default.
_PREFERENCE = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}

# op name -> the backends that implement it (filled by each mtl_ops.ops module).
OPS: dict[str, tuple[str, ...]] = {}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run these tensors here; the message says why."""


def register_op(name: str, backends: tuple[str, ...]) -> None:
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"register_op({name!r}): unknown backends {sorted(unknown)}")
    OPS[name] = tuple(b for b in BACKENDS if b in backends)


# Whether Triton is installed, looked up once: the backend choice runs inside torch.compile'd code, and
# Dynamo (torch 2.11) refuses to trace importlib's find_spec.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_interpret_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


def _triton_reason(device_type: str) -> str | None:
    if not _TRITON_INSTALLED:
        return "triton is not installed (pip install triton)"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device is available"
    if device_type == "cpu":
        if not triton_interpret_enabled():
            return "Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 (before importing mtl_ops)"
        from .triton import jit_mode_mismatch

        return jit_mode_mismatch()
    return f"Triton does not run on {device_type} tensors"


def unavailable_reason(backend: str, device_type: str, op: str | None = None) -> str | None:
    """None when ``backend`` can run ``op`` on tensors of ``device_type`` here, else why not."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if op is not None and backend not in OPS.get(op, ()):
        return f"{op} has no {backend} implementation (it has: {', '.join(OPS.get(op, ())) or 'none'})"
    if backend == "reference":
        return None
    if backend == "cpp":
        if not LIBRARIES["cpp"].loaded:
            return LIBRARIES["cpp"].reason
        return None if device_type == "cpu" else f"the cpp backend runs CPU tensors, got {device_type} tensors"
    if backend == "cuda":
        if not LIBRARIES["cuda"].loaded:
            return LIBRARIES["cuda"].reason
        if device_type != "cuda":
            return f"the cuda backend runs CUDA tensors, got {device_type} tensors"
        return None if torch.cuda.is_available() else "no CUDA device is available"
    return _triton_reason(device_type)


def select_backend(op: str, device: torch.device, backend: str | None = None) -> str:
    """The backend that will run ``op`` on ``device``; raises BackendUnavailableError saying why not."""
    source = "backend argument"
    if backend is None and os.environ.get("MTL_OPS_BACKEND"):
        backend, source = os.environ["MTL_OPS_BACKEND"].strip(), "MTL_OPS_BACKEND"
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"{op}: {source} must be one of {BACKENDS}, got {backend!r}")
        reason = unavailable_reason(backend, device.type, op)
        if reason is not None:
            raise BackendUnavailableError(f"{op}: backend {backend!r} ({source}) is unavailable: {reason}")
        return backend
    for candidate in _PREFERENCE.get(device.type, ("reference",)):
        if unavailable_reason(candidate, device.type, op) is None:
            return candidate
    return "reference"


def backend_table(device_type: str) -> dict[str, dict[str, str | None]]:
    """{op: {backend: None if available on device_type else the reason}}."""
    return {op: {b: unavailable_reason(b, device_type, op) for b in BACKENDS if b in impls}
            for op, impls in OPS.items()}
