"""Which backends exist, which can run here (and why not), and how one is chosen.

Backends: ``reference`` (plain PyTorch, always), ``cpp`` (compiled CPU kernels), ``cuda`` (compiled CUDA
kernels), ``triton`` (Triton kernels: GPU tensors, or CPU tensors under ``TRITON_INTERPRET=1``).
``backend=None`` picks the fastest backend that can run the tensors: the first of the device's preference
order that is available here and whose op accepts these particular inputs (a forward-only kernel refuses
inputs that require grad, Triton refuses sizes past its indexing limits); the environment variable
``MTL_OPS_BACKEND`` overrides that choice globally (an explicit ``backend=`` argument still wins). A backend
named explicitly (argument or variable) that cannot run raises ``BackendUnavailableError`` saying why.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch

from . import triton as triton_kernels
from ._loader import LIBRARIES

BACKENDS = ("reference", "cpp", "cuda", "triton")
# Preference order of backend=None, per device type. Triton on CPU is an interpreter: never chosen by default.
_PREFERENCE = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}
_REFERENCE_ONLY = ("reference",)

# op name -> the backends that implement it (filled by each mtl_ops.ops module).
OPS: dict[str, tuple[str, ...]] = {}

# Whether Triton is installed, looked up once: the backend choice runs inside torch.compile'd code, and
# Dynamo (torch 2.11) refuses to trace importlib's find_spec.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None

# (backend, device type, op) -> unavailable_reason, for the answers that cannot change while the process runs
# (the libraries load once, CUDA is there or not); filled on first use, so the choice costs a dict look-up.
_AVAILABILITY: dict[tuple[str, str, str], str | None] = {}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run these tensors here; the message says why."""


def register_op(name: str, backends: tuple[str, ...]) -> None:
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"register_op({name!r}): unknown backends {sorted(unknown)}")
    OPS[name] = tuple(b for b in BACKENDS if b in backends)


def _triton_reason(device_type: str) -> str | None:
    if not _TRITON_INSTALLED:
        return "triton is not installed (pip install triton)"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device is available"
    if device_type == "cpu":
        if not triton_kernels.interpret_enabled():
            return "Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 (before importing mtl_ops)"
        return triton_kernels.jit_mode_mismatch()
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


def _cached_reason(backend: str, device_type: str, op: str) -> str | None:
    if backend == "triton" and device_type == "cpu":  # TRITON_INTERPRET may be set later: asked every time
        return unavailable_reason(backend, device_type, op)
    key = (backend, device_type, op)
    if key not in _AVAILABILITY:
        _AVAILABILITY[key] = unavailable_reason(backend, device_type, op)
    return _AVAILABILITY[key]


def select_backend(op: str, device: torch.device, backend: str | None = None,
                   can_run: Callable[..., str | None] | None = None, inputs: tuple = ()) -> str:
    """The backend that will run ``op`` on ``device``; raises BackendUnavailableError saying why not.

    ``can_run(backend, *inputs)`` (the op's predicate, optional) says why a backend that is available here
    cannot run these particular inputs, or None: ``backend=None`` then moves on to the next backend."""
    source = "backend argument"
    if backend is None:
        env = os.environ.get("MTL_OPS_BACKEND")
        if env:
            backend, source = env.strip(), "MTL_OPS_BACKEND"
    device_type = device.type
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"{op}: {source} must be one of {BACKENDS}, got {backend!r}")
        reason = _cached_reason(backend, device_type, op)
        if reason is None and can_run is not None:
            reason = can_run(backend, *inputs)
        if reason is not None:
            raise BackendUnavailableError(f"{op}: backend {backend!r} ({source}) is unavailable: {reason}")
        return backend
    for candidate in _PREFERENCE.get(device_type, _REFERENCE_ONLY):
        if _cached_reason(candidate, device_type, op) is None and (
                can_run is None or can_run(candidate, *inputs) is None):
            return candidate
    return "reference"


def backend_table(device_type: str) -> dict[str, dict[str, str | None]]:
    """{op: {backend: None if available on device_type else the reason}}."""
    return {op: {b: unavailable_reason(b, device_type, op) for b in BACKENDS if b in impls}
            for op, impls in OPS.items()}
