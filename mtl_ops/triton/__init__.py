"""Triton kernels, one module per op. Imported lazily: Triton decides at decoration time whether a kernel
is compiled or interpreted (TRITON_INTERPRET), so the mode in force at first use is the mode for the run.
This package's own import does not import Triton; ``limits`` (what the kernels can index) neither."""
from __future__ import annotations

import os
import sys

_JIT_INTERPRETED = None  # the interpreter mode the kernel modules were decorated in, once imported


def interpret_enabled() -> bool:
    """Whether TRITON_INTERPRET asks for the interpreter (Triton runs CPU tensors only there)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on")


def load(module: str):
    """``mtl_ops.triton.<module>``, imported on first use; records the interpreter mode it was decorated in."""
    full = f"{__name__}.{module}"
    loaded = sys.modules.get(full)
    if loaded is not None:
        return loaded
    global _JIT_INTERPRETED
    if _JIT_INTERPRETED is None:
        _JIT_INTERPRETED = interpret_enabled()
    __import__(full)
    return sys.modules[full]


def jit_mode_mismatch() -> str | None:
    """Why interpreted (CPU) launches cannot run if the kernels were decorated for the GPU, else None."""
    if _JIT_INTERPRETED is False:
        return ("the Triton kernels were loaded before TRITON_INTERPRET=1 was set; set it before the first "
                "Triton call")
    return None
