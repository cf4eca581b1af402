"""Triton kernels, one module per op. Imported lazily: Triton decides at decoration time whether a kernel
is compiled or interpreted (TRITON_INTERPRET), so the mode in force at first use is the mode for the run."""
import sys

from ..backends import triton_interpret_enabled

_JIT_INTERPRETED = None  # the interpreter mode the kernel modules were decorated in, once imported


def load(module: str):
    """Imports ``mtl_ops.triton.<module>`` and records the interpreter mode it was decorated in."""
    global _JIT_INTERPRETED
    full = f"{__name__}.{module}"
    if full not in sys.modules and _JIT_INTERPRETED is None:
        _JIT_INTERPRETED = triton_interpret_enabled()
    __import__(full)
    return sys.modules[full]


def jit_mode_mismatch():
    """Why interpreted (CPU) launches cannot run if the kernels were decorated for the GPU, else None."""
    if _JIT_INTERPRETED is False:
        return ("the Triton kernels were loaded before TRITON_INTERPRET=1 was set; set it before the first "
                "Triton call")
    return None
