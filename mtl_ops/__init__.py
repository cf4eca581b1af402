"""mtl_ops: fused kernels and drop-in modules for multi-task dense prediction.

Subpackages: ``ops`` (fused functional ops), ``reference`` (their plain PyTorch definitions), ``backends``
(which backend runs what), ``nn`` (the methods as modules). ``mtl_ops.info()`` reports the build and
which backend each op can use here.
"""
__version__ = "0.1.0"

from . import backends, ops, reference  # noqa: E402  (loads the compiled libraries, registers the ops)
from .info import info  # noqa: E402

__all__ = ["backends", "ops", "reference", "info", "__version__"]
