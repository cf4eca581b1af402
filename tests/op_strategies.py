"""Hypothesis strategies for the fused ops' inputs, in the form each op's suite class (tests/op_suite.py) takes:
a strategy draws a case and the keyword arguments of ``<Suite>.make``, so inputs are made in one place, the
suite's ``make``. Sizes come in two scales: the compiled kernels get larger and odder shapes, the Triton
interpreter (about 1 ms per program step) tiny ones.

What the shapes include, per op: size-0 dimensions where the op accepts them (and where it refuses them, the
refusal is the property: every backend raises the error of the argument checks), batch 1, 1 x 1 and odd
maps; extreme scale ratios for ms_attention_mix (a 1 x 1 scale beside a large output, scales larger than the
output); C_sp = 0 (C_sh = C_out), C_sh = 0 and random primitive mixtures for routed_primitive_gather.
"""
from __future__ import annotations

import math
import os

import test_cka
import test_ctal_affinity
import test_gated_residual
import test_ms_attention_mix
import test_routed_primitive_gather
import test_sfa_apply
import torch
from harness import LAYOUTS, layout_offset
from hypothesis import strategies as st

from mtl_ops.common.primitive_kinds import AVG_POOL, DENSE_CONV, DW_CONV, IDENTITY, MAX_POOL, NOISE, SHIFT
from mtl_ops.ops import routed_primitive_gather_linear

SUITES = {
    "gated_residual": test_gated_residual.TestGatedResidual,
    "sfa_apply": test_sfa_apply.TestSfaApply,
    "ms_attention_mix": test_ms_attention_mix.TestMsAttentionMix,
    "ctal_affinity": test_ctal_affinity.TestCtalAffinity,
    "cka": test_cka.TestCka,
    "routed_primitive_gather": test_routed_primitive_gather.TestRoutedPrimitiveGather,
}

# every tensor of a sample gets one of these, drawn on its own (the op's inputs then mix layouts)
PROPERTY_LAYOUTS = {"contiguous": lambda t: t, **LAYOUTS, "offset": layout_offset}


def _dims(lo: int, hi: int) -> st.SearchStrategy[int]:
    """A size in [lo, hi], shrinking towards lo (0 where lo is 0: an empty dimension is the simplest case)."""
    return st.integers(lo, hi)


@st.composite
def gated_residual(draw, tiny: bool, dtype):
    # any rank: (T,) up to (T, B, C, H, W, extra); the elements stay below a budget
    budget = 60 if tiny else 1500
    T = draw(_dims(0, 3))
    shape = [T]
    for _ in range(draw(st.integers(0, 5))):
        left = budget // max(1, math.prod(shape))
        shape.append(draw(_dims(0, max(1, min(9, left)))))
    return tuple(shape), {"gates_dtype": draw(st.sampled_from([torch.float32, dtype]))}


@st.composite
def sfa_apply(draw, tiny: bool, dtype):
    hi = 3 if tiny else 9
    T, B, C = draw(_dims(0, 3)), draw(_dims(0, 2 if tiny else 3)), draw(_dims(0, 2 if tiny else 6))
    h, w = draw(_dims(0, hi)), draw(_dims(0, hi))
    return (T, B, C, h, w, draw(st.sampled_from([1, "C"]))), {}


@st.composite
def ms_attention_mix(draw, tiny: bool, dtype):
    out_hi, scale_hi, S_hi = (5, 6, 3) if tiny else (24, 48, 8)
    H, W = draw(_dims(1, out_hi)), draw(_dims(1, out_hi))
    # a scale is small (1 x 1 up: the extreme up-sampling ratios), near the output, or larger than it
    side = st.one_of(_dims(1, 3), _dims(1, scale_hi))
    scales = draw(st.lists(st.tuples(side, side), min_size=1, max_size=S_hi))
    if not tiny and draw(st.integers(0, 9)) == 0:  # a size-0 scale: refused by the checks on every backend
        s = draw(st.integers(0, len(scales) - 1))
        scales[s] = (0, scales[s][1])
    B, K = draw(_dims(0, 1 if tiny else 2)), draw(_dims(0, 2 if tiny else 5))
    return (B, K, (H, W), scales), {}


@st.composite
def ctal_affinity(draw, tiny: bool, dtype):
    B = draw(_dims(0, 1 if tiny else 2))
    T = draw(_dims(1, 2 if tiny else 4))
    # C = 1 has no direction to normalise: the gradient of x / |x| is 0 in exact arithmetic and rounding noise
    # over |x| in any other (the long run found 1.9e-4 against the fp32 table), so no backend can match it
    C = draw(st.one_of(st.just(0), _dims(2, 2 if tiny else 5)))
    H, W = draw(_dims(1, 3) if tiny else _dims(0, 7)), draw(_dims(1, 3 if tiny else 7))
    k = draw(st.sampled_from([1, 3] if tiny else [1, 3, 5, 7]))
    per_task = draw(st.booleans())
    kwargs = {"param_dtype": draw(st.sampled_from([torch.float32, dtype])),
              "gamma": draw(st.floats(0.0, 1.0, allow_nan=False))}
    return (B, T, C, H, W, k, per_task), kwargs


@st.composite
def cka(draw, tiny: bool, dtype):
    debiased = draw(st.booleans())
    T, d = draw(_dims(1, 4)), draw(_dims(1, 9))
    # the debiased estimator at n = 4, its least n, divides nearly cancelling moments by n(n - 3) = 4: its
    # float32 result is 2e-4 off (the long run; 2.5e-6 at n = 5), beyond any float32 kernel's reach
    n = draw(st.integers(5 if debiased else 2, 80))
    return ((T, n, d), debiased), {}


@st.composite
def primitive(draw):
    kind = draw(st.sampled_from([IDENTITY, AVG_POOL, MAX_POOL, SHIFT, NOISE, DW_CONV, DENSE_CONV]))
    if kind == SHIFT:
        return kind, draw(st.integers(-2, 2)), draw(st.integers(-2, 2))
    if kind in (DW_CONV, DENSE_CONV):
        return kind, draw(st.integers(1, 3)), 0
    return kind, 0, 0


@st.composite
def routed_primitive_gather(draw, tiny: bool, dtype):
    T = draw(_dims(1, 2 if tiny else 3))
    # up to 10 samples: the cpp kernel packs up to 8 small images of a route into one tile (8 + 2: ragged)
    B = draw(_dims(0, 1 if tiny else 10))
    # C = 0 or H = 0 (compiled kernels only): refused by the checks on every backend
    C = draw(_dims(1, 2) if tiny else _dims(0, 6))
    H, W = draw(_dims(1, 4) if tiny else _dims(0, 9)), draw(_dims(1, 4 if tiny else 9))
    C_sh, C_sp = draw(_dims(0, 2 if tiny else 6)), draw(_dims(0, 1 if tiny else 3))
    groups = draw(st.sampled_from([g for g in range(1, C + 1) if C % g == 0 and C_sh % g == 0] or [1]))
    prims = draw(st.lists(primitive(), min_size=1, max_size=2 if tiny else 4))
    noise_shape = (draw(_dims(1, 5)), draw(_dims(1, 5)))
    case = dict(prims=prims, T=T, B=B, C=C, H=H, W=W, C_sh=C_sh, C_sp=C_sp, groups=groups,
                stride=draw(st.integers(1, 3)), noise_shape=noise_shape)
    return case, {}


class LinearFastPath(test_routed_primitive_gather.TestRoutedPrimitiveGather):
    """routed_primitive_gather_linear (the effective-kernel fast path, plain PyTorch: one implementation, no
    backend argument) as an op suite over routed_primitive_gather's inputs; it refuses a max_pool primitive."""
    fn = staticmethod(lambda *args, backend, **kwargs: routed_primitive_gather_linear(*args, **kwargs))
    CPU_BACKENDS = ("effective_kernel",)

    @classmethod
    def refusal(cls, sample):
        """The error the fast path raises beyond routed_primitive_gather's checks (None: it runs)."""
        kinds = sample.args[1]
        if MAX_POOL in kinds:
            return ValueError(f"routed_primitive_gather_linear: every primitive must be linear; primitive "
                              f"{kinds.index(MAX_POOL)} is max_pool (use routed_primitive_gather)")
        return None


SUITES["routed_primitive_gather_linear"] = LinearFastPath

CASES = {"gated_residual": gated_residual, "sfa_apply": sfa_apply, "ms_attention_mix": ms_attention_mix,
         "ctal_affinity": ctal_affinity, "cka": cka, "routed_primitive_gather": routed_primitive_gather,
         "routed_primitive_gather_linear": routed_primitive_gather}


def examples(default: int, interpreted: bool = False) -> int:
    """Examples per test: ``default`` (the suite's bounded count), or ``MTL_OPS_HYPOTHESIS_EXAMPLES`` for a long
    run (a tenth of it, at least 1, for the Triton interpreter, whose examples cost about ten times more)."""
    env = os.environ.get("MTL_OPS_HYPOTHESIS_EXAMPLES")
    if not env:
        return default
    try:
        n = int(env)
    except ValueError:
        raise ValueError(f"MTL_OPS_HYPOTHESIS_EXAMPLES must be a positive int, got {env!r}") from None
    if n < 1:
        raise ValueError(f"MTL_OPS_HYPOTHESIS_EXAMPLES must be a positive int, got {env!r}")
    return max(1, n // 10) if interpreted else n
