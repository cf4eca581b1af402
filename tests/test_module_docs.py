"""Every public module's forward says what it takes and returns, with shapes, in its own docstring (not
nn.Module's generic one)."""
from __future__ import annotations

import inspect
import re

import pytest
import torch

import mtl_ops.models
import mtl_ops.nn

# public modules that are not layers: no forward of their own
NO_FORWARD = {"AdaSharePolicy": "a parameter holder sampled through its methods (sample_soft, sample_hard, ...)"}
PUBLIC = [(package.__name__, name, getattr(package, name)) for package in (mtl_ops.nn, mtl_ops.models)
          for name in package.__all__
          if inspect.isclass(getattr(package, name)) and issubclass(getattr(package, name), torch.nn.Module)]
# a shape such as (B, C, H, W) or (n·B, C_in, H', W'): comma-separated sizes, one of them named in capitals
SHAPE = re.compile(r"\([\w·*'/ ]*[A-Z][\w·*'/ ]*(, [\w·*'/ ]+)+\)")


@pytest.mark.parametrize("cls", [pytest.param(c, id=f"{p}.{n}") for p, n, c in PUBLIC])
def test_forward_has_its_own_docstring_with_shapes(cls):
    if cls.__name__ in NO_FORWARD:
        assert "forward" not in cls.__dict__, f"{cls.__name__} now has a forward: document it and drop the exemption"
        return
    doc = cls.__dict__["forward"].__doc__ if "forward" in cls.__dict__ else None
    assert doc, f"{cls.__name__}.forward has no docstring of its own"
    assert SHAPE.search(doc), f"{cls.__name__}.forward's docstring names no shape: {doc!r}"
