"""Importing an optional dependency with an error that says which extra brings it."""
from __future__ import annotations

import importlib


def require(module: str, package: str, extra: str, purpose: str):
    """``import module``, or an ImportError naming ``purpose``, the pip ``package`` and the mtl_ops ``extra``
    that installs it (``import mtl_ops``, ``mtl_ops.ops`` and ``mtl_ops.nn`` need only torch and numpy)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{purpose} needs {package}: pip install 'mtl_ops[{extra}]' (or pip install {package}); "
                          f"importing {module} failed: {e}") from e
