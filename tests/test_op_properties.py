"""Property-based tests of every fused op against its reference: hypothesis draws the inputs (shapes with
empty dimensions, batch 1, 1 x 1 and odd maps, every dtype the op takes, a memory layout per tensor:
contiguous, channels-last, permuted, strided, at a storage offset; tests/op_strategies.py) and each CPU
backend must either match the reference in float64 on the CPU within the tolerance table (output and every
input gradient, tests/op_suite.py's check) or, where the argument checks refuse the input, raise their error.

The default run is bounded and derandomised (the same examples every run; no example database is written).
``MTL_OPS_HYPOTHESIS_EXAMPLES=<n>`` runs n random examples per op on the compiled backend and n/10 on the
Triton interpreter, keeping failures in ``.hypothesis/`` (run once for 30 minutes: its findings are the
regression tests at the end of this file).
"""
from __future__ import annotations

import os
import re

import pytest
import torch
from harness import backend_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from op_strategies import CASES, PROPERTY_LAYOUTS, SUITES, examples
from op_suite import Sample

from mtl_ops import ops

LONG_RUN = bool(os.environ.get("MTL_OPS_HYPOTHESIS_EXAMPLES"))
BASE = settings(deadline=None, derandomize=not LONG_RUN, database=settings.default.database if LONG_RUN else None,
                print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def spec(op: str):
    return getattr(ops, op).SPEC


def params(backend: str) -> list:
    out = []
    for op, suite in SUITES.items():
        if backend in suite.CPU_BACKENDS:
            out += [pytest.param(op, *p.values, marks=p.marks, id=f"{op}-{p.id}")
                    for p in backend_params(op, "cpu", (backend,))]
    return out


def with_layouts(sample: Sample, data) -> Sample:
    """The sample with every tensor in a layout drawn for it alone."""
    def draw(t):
        return PROPERTY_LAYOUTS[data.draw(st.sampled_from(list(PROPERTY_LAYOUTS)), label="layout")](t)

    args = [draw(a) if isinstance(a, torch.Tensor) else
            [draw(t) for t in a] if isinstance(a, list) and a and isinstance(a[0], torch.Tensor) else a
            for a in sample.args]
    return Sample(args, dict(sample.kwargs), list(sample.diff))


def check_op(op: str, backend: str, data, tiny: bool) -> None:
    suite = SUITES[op]()
    dtype = data.draw(st.sampled_from(suite.DTYPES), label="dtype")
    case, kwargs = data.draw(CASES[op](tiny, dtype), label="case")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    sample = with_layouts(suite.make(case, dtype, seed=seed, **kwargs), data)
    check_sample(suite, backend, sample, dtype)


def check_sample(suite, backend: str, sample: Sample, dtype) -> None:
    """The property for one input: the backend raises what the argument checks raise, or matches the reference."""
    op = spec(suite.OP)
    try:
        op.check(*op.parse(*suite.operator_args(sample)))
    except (ValueError, TypeError) as refused:
        with pytest.raises(type(refused), match=re.escape(str(refused))):
            suite.fn(*sample.args, backend=backend, **sample.kwargs)
        return
    suite.check_against_reference(backend, sample, dtype)


@pytest.mark.parametrize("op, backend", params("cpp"))
@settings(BASE, max_examples=examples(25))
@given(data=st.data())
def test_compiled_backend_matches_reference(op, backend, data):
    check_op(op, backend, data, tiny=False)


@pytest.mark.triton
@pytest.mark.parametrize("op, backend", params("triton"))
@settings(BASE, max_examples=examples(4, interpreted=True))
@given(data=st.data())
def test_triton_interpreter_matches_reference(op, backend, data):
    check_op(op, backend, data, tiny=True)
