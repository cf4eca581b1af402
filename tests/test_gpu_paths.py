"""What a first GPU run must check for every fused op and backend, from one set of inputs per op (the
benchmark cases' smoke-test sizes, ``mtl_ops.bench.CASES``): empty batches, channels-last and strided
layouts, a non-default stream, a non-current device, torch.compile(fullgraph=True), run-to-run determinism
of the backward, fp16/bf16 against the float64 reference, fp32 with TF32 switched on globally, and grid
axes past 65,535. The tests that can run on the CPU (cpp, and Triton under the interpreter) do so."""
from __future__ import annotations

import pytest
import torch
from harness import LAYOUTS, backend_params, tf32_everywhere

from mtl_ops.bench import CASES

OPS = list(CASES)
# Normwise relative error ||fused - reference|| / ||reference|| allowed per dtype (reference in float64).
NORM_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}
# The size that makes each op's input empty; None: the op has no empty input (cka needs T >= 1, n > 3).
EMPTY = {"gated_residual": {"B": 0}, "ctal_affinity": {"B": 0}, "ms_attention_mix": {"B": 0},
         "sfa_apply": {"B": 0}, "routed_primitive_gather": {"B": 0}, "cka": None}
CPU_BACKENDS = ("cpp", "triton")
CUDA_BACKENDS = ("cuda", "triton")


def op_backend_params(device: str, backends, ops=OPS):
    """(op, backend) pairs for ``device``, each skipped with the reason where the backend cannot run."""
    out = []
    for op in ops:
        for p in backend_params(op, device, backends):
            if p.values[0] in _implemented(op):
                out.append(pytest.param(op, p.values[0], marks=p.marks, id=f"{op}-{p.id}"))
    return out


def _implemented(op):
    from mtl_ops.backends import OPS as IMPLEMENTED

    return IMPLEMENTED[op]


def make_inputs(op, device, dtype=torch.float32, **size):
    case = CASES[op]
    torch.manual_seed(0)
    return case.make_inputs(dict(case.sizes["quick"], **size), torch.device(device), dtype)


def fused(op, backend):
    return CASES[op].fused_fn(backend)


def differentiable(op):
    return "fwd+bwd" in CASES[op].modes


def outputs_and_grads(fn, inputs, seed=1, differentiable=True):
    """Outputs and the gradients of every floating input for a fixed random output gradient (only the
    outputs for a forward-only op)."""
    leaves = [t.detach().requires_grad_(differentiable and t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if not differentiable:
        return [o.detach() for o in outs], []
    gen = torch.Generator().manual_seed(seed)
    grad_outs = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outs]
    wrt = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(outs, wrt, grad_outs, allow_unused=True)
    return [o.detach() for o in outs], [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]


def normwise_error(actual, expected):
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    if e.numel() == 0:
        return 0.0
    scale = e.norm().item()
    return (a - e).norm().item() / (scale if scale > 0 else 1.0)


def reference_outputs_and_grads(op, inputs):
    """The oracle: the reference in float64 on the CPU (on a GPU its convolutions and matmuls could run in
    TF32, and the CPU is where the reference itself is tested)."""
    return outputs_and_grads(CASES[op].reference_fn, [t.detach().cpu().double() for t in inputs],
                             differentiable=differentiable(op))


def assert_matches_reference(op, backend, inputs, dtype, tol=None):
    outs, grads = outputs_and_grads(fused(op, backend), inputs, differentiable=differentiable(op))
    ref_outs, ref_grads = reference_outputs_and_grads(op, inputs)
    with torch.no_grad():  # the dtypes the reference gives for these inputs (e.g. fp32 similarities from cka)
        ref_dtypes = [o.dtype for o in _as_list(CASES[op].reference_fn(*inputs))]
    floating = [t for t in inputs if t.is_floating_point()]
    tol = NORM_TOL[dtype] if tol is None else tol
    for what, got, want, want_dtype in (
            [("output", o, r, d) for o, r, d in zip(outs, ref_outs, ref_dtypes)] +
            [("gradient", g, r, t.dtype) for g, r, t in zip(grads, ref_grads, floating)]):
        assert got.shape == want.shape, f"{op}/{backend} {what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        assert got.dtype == want_dtype, f"{op}/{backend} {what}: dtype {got.dtype}, expected {want_dtype}"
        err = normwise_error(got, want)
        assert err <= tol, f"{op}/{backend} {what} ({dtype}): normwise error {err:.3g} > {tol}"


def _as_list(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` with the same values in another memory layout (harness.LAYOUTS)."""
    return LAYOUTS[layout](t)


# ---- empty batches (CPU and CUDA) ------------------------------------------------------------------------
def _check_empty(op, backend, device):
    if EMPTY[op] is None:
        with pytest.raises(ValueError, match=op):
            fused(op, backend)(*make_inputs(op, device, n=0))
        return
    inputs = make_inputs(op, device, **EMPTY[op])
    outs, grads = outputs_and_grads(fused(op, backend), inputs, differentiable=differentiable(op))
    ref_outs, ref_grads = outputs_and_grads(CASES[op].reference_fn, inputs, differentiable=differentiable(op))
    assert [o.shape for o in outs] == [o.shape for o in ref_outs]
    assert [g.shape for g in grads] == [g.shape for g in ref_grads]
    for got, want in zip(outs + grads, ref_outs + ref_grads):
        torch.testing.assert_close(got, want, equal_nan=True)  # empty, or reductions over nothing (zeros)


@pytest.mark.parametrize("op,backend", op_backend_params("cpu", CPU_BACKENDS))
def test_empty_batch_cpu(op, backend):
    _check_empty(op, backend, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("op,backend", op_backend_params("cuda", CUDA_BACKENDS))
def test_empty_batch_cuda(op, backend):
    _check_empty(op, backend, "cuda")


# ---- layouts (CUDA; the CPU's are in each op's own tests) ----------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("op,backend", op_backend_params("cuda", CUDA_BACKENDS))
def test_layouts_cuda(op, backend, layout):
    inputs = [to_layout(t, layout) for t in make_inputs(op, "cuda")]
    assert_matches_reference(op, backend, inputs, torch.float32)


# ---- low precision and TF32 ------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op,backend", op_backend_params("cuda", CUDA_BACKENDS))
def test_low_precision_cuda(op, backend, dtype):
    assert_matches_reference(op, backend, make_inputs(op, "cuda", dtype), dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("op,backend", op_backend_params("cuda", CUDA_BACKENDS))
def test_fp32_exact_with_tf32_on_cuda(op, backend):
    # the reference runs in float64 (no TF32); the fused op must stay at fp32 accuracy whatever the flags
    with tf32_everywhere():
        assert_matches_reference(op, backend, make_inputs(op, "cuda"), torch.float32)


# ---- streams, devices, compile, determinism --------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("op,backend", op_backend_params("cuda", CUDA_BACKENDS))
def test_non_default_stream_cuda(op, backend):
    inputs = make_inputs(op, "cuda")
    expected = outputs_and_grads(fused(op, backend), inputs, differentiable=differentiable(op))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = outputs_and_grads(fused(op, backend), inputs, differentiable=differentiable(op))
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    for a, b in zip(got[0] + got[1], expected[0] + expected[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("op,backend", op_backend_params("cuda", CUDA_BACKENDS))
def test_non_current_device_cuda(op, backend):
    inputs = make_inputs(op, "cuda:1")
    with torch.cuda.device(0):
        outs, grads = outputs_and_grads(fused(op, backend), inputs, differentiable=differentiable(op))
    assert all(t.device == torch.device("cuda:1") for t in outs + grads)
    assert_matches_reference(op, backend, inputs, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("op,backend", op_backend_params("cuda", CUDA_BACKENDS))
def test_compile_fullgraph_cuda(op, backend):
    inputs = make_inputs(op, "cuda")
    torch._dynamo.reset()
    compiled = torch.compile(fused(op, backend), fullgraph=True)
    got = outputs_and_grads(compiled, inputs, differentiable=differentiable(op))
    expected = outputs_and_grads(fused(op, backend), inputs, differentiable=differentiable(op))
    for a, b in zip(got[0] + got[1], expected[0] + expected[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _check_deterministic(op, backend, device):
    inputs = make_inputs(op, device, **({"B": 3} if "B" in CASES[op].sizes["quick"] else {}))
    first = outputs_and_grads(fused(op, backend), inputs, differentiable=differentiable(op))
    second = outputs_and_grads(fused(op, backend), inputs, differentiable=differentiable(op))
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        assert torch.equal(a, b), f"{op}/{backend}: two runs on the same inputs differ (max {(a - b).abs().max()})"


@pytest.mark.parametrize("op,backend", op_backend_params("cpu", CPU_BACKENDS))
def test_backward_deterministic_cpu(op, backend):
    _check_deterministic(op, backend, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("op,backend", op_backend_params("cuda", CUDA_BACKENDS))
def test_backward_deterministic_cuda(op, backend):
    _check_deterministic(op, backend, "cuda")


# ---- grid axes past 65,535 (CUDA only: the interpreter would take minutes; Triton's chunking is also
#      tested on the CPU with a lowered limit in the ops' own tests) ------------------------------------
LARGE_GRID = {  # a size whose launch needs more than 65,535 blocks on what used to be a y/z grid axis
    "gated_residual": dict(T=70_000, B=1, C=1, H=2, W=2),
    "sfa_apply": dict(T=2, B=33_000, C=(2, 2, 2, 2), M=1, H=8, W=8, strides=(4, 8, 16, 32)),
    "ms_attention_mix": dict(B=70_000, K=1, H=8, W=8, strides=(4, 8)),
    "ctal_affinity": dict(B=7_300, T=3, C=8, H=3, W=3, k=3),
    "routed_primitive_gather": dict(T=1, B=1, C=2, H=2_100, W=2_100),
}


@pytest.mark.cuda
@pytest.mark.parametrize("op,backend", op_backend_params("cuda", CUDA_BACKENDS, list(LARGE_GRID)))
def test_large_grid_cuda(op, backend):
    free, _ = torch.cuda.mem_get_info()
    if free < 8 * 2**30:
        pytest.skip(f"needs 8 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    torch.manual_seed(0)
    inputs = CASES[op].make_inputs(LARGE_GRID[op], torch.device("cuda"), torch.float32)
    assert_matches_reference(op, backend, inputs, torch.float32)
