"""Loads the compiled libraries that were built, and remembers why the others are not there.

`import mtl_ops` never fails because a compiled backend is missing or broken: the reason is kept in
``LIBRARIES`` and reported by ``mtl_ops.info()`` and by the error of an op asked to use that backend.
"""
from __future__ import annotations

import importlib.util
import json
import os
import warnings
from dataclasses import dataclass

import torch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_REBUILD = "rebuild with `pip install --no-build-isolation -e .` (or without -e) against this torch"


@dataclass
class LibraryStatus:
    loaded: bool
    reason: str  # why not loaded, or where it was loaded from


def _read_build_info() -> dict | None:
    path = os.path.join(_PACKAGE_DIR, "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load(module: str) -> LibraryStatus:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return LibraryStatus(False, f"{module} was not built; {_REBUILD}")
    try:
        torch.ops.load_library(spec.origin)
    except (OSError, RuntimeError) as e:
        return LibraryStatus(False, f"{spec.origin} failed to load ({e}); {_REBUILD}")
    return LibraryStatus(True, spec.origin)


def _load_all() -> tuple[dict | None, dict[str, LibraryStatus]]:
    info = _read_build_info()
    if info is None:
        missing = LibraryStatus(False, f"mtl_ops was installed without its compiled libraries; {_REBUILD}")
        return None, {"cpp": missing, "cuda": missing}
    if info.get("torch_version") != str(torch.__version__):
        msg = (f"mtl_ops was built against torch {info.get('torch_version')} but torch {torch.__version__} is "
               f"running; {_REBUILD}")
        warnings.warn(f"mtl_ops: compiled backends disabled: {msg}", RuntimeWarning, stacklevel=3)
        return info, {"cpp": LibraryStatus(False, msg), "cuda": LibraryStatus(False, msg)}
    libs = {"cpp": _load("mtl_ops._C")}
    if not info.get("cuda_built"):
        libs["cuda"] = LibraryStatus(False, f"CUDA kernels not built: {info.get('cuda_reason')}")
    elif not libs["cpp"].loaded:
        libs["cuda"] = LibraryStatus(False, "needs mtl_ops._C (the op schemas), which did not load")
    else:
        libs["cuda"] = _load("mtl_ops._C_cuda")
    return info, libs


BUILD_INFO, LIBRARIES = _load_all()
