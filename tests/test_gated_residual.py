"""gated_residual: every backend against the reference, gradcheck, opcheck, compile, bad input."""
import pytest
import torch
from harness import LAYOUTS, assert_close, backend_params, make_layout, requires_cuda

import mtl_ops
from mtl_ops.backends import BackendUnavailableError
from mtl_ops.ops import gated_residual
from mtl_ops.reference import gated_residual as reference

OP = "gated_residual"
SHAPES = [(3, 2, 5, 7, 9), (1, 1, 1, 1, 1), (2, 1, 3, 1, 17), (4, 3, 8, 6, 10), (3, 1, 4, 5, 6)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def make_inputs(shape, dtype, device="cpu", gates_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    gates = torch.softmax(torch.randn(shape[0], 2, generator=g), dim=1).to(device=device, dtype=gates_dtype)
    return r, b, gates


def run_with_grads(fn, r, b, gates, grad_out):
    r, b, gates = (t.detach().requires_grad_() for t in (r, b, gates))
    y = fn(r, b, gates)
    grads = torch.autograd.grad(y, (r, b, gates), grad_out)
    return y, grads


def check_against_reference(backend, shape, dtype, device, layout="contiguous", gates_dtype=torch.float32):
    r, b, gates = make_inputs(shape, dtype, device, gates_dtype)
    r, b = make_layout(r, layout), make_layout(b, layout)
    grad_out = make_layout(torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device, dtype), layout)
    y, (dr, db, dg) = run_with_grads(lambda *a: gated_residual(*a, backend=backend), r, b, gates, grad_out)
    # The oracle: the reference in float64 on the same (rounded) inputs.
    y64, (dr64, db64, dg64) = run_with_grads(reference, r.double(), b.double(), gates.double(), grad_out.double())
    assert y.dtype == dtype and dr.dtype == dtype and db.dtype == dtype and dg.dtype == gates_dtype
    assert_close(y, y64, dtype, what="y")
    assert_close(dr, dr64, dtype, what="d_residual")
    assert_close(db, db64, dtype, what="d_branch")
    coarser = max(dtype, gates_dtype, key=lambda d: torch.finfo(d).eps)  # d_gates is rounded to gates_dtype
    assert_close(dg, dg64, coarser, "reduction", what="d_gates")
    return y


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_parity_cpu(backend, dtype, shape):
    check_against_reference(backend, shape, dtype, "cpu")


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_cpu(backend, layout):
    y = check_against_reference(backend, (3, 2, 5, 4, 6), torch.float32, "cpu", layout)
    if layout == "channels_last":  # task-major layouts run in place and keep their strides
        r = make_layout(torch.empty(3, 2, 5, 4, 6), layout)
        assert y.stride() == r.stride()


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gates_in_activation_dtype(backend, dtype):
    check_against_reference(backend, (3, 2, 5, 7, 9), dtype, "cpu", gates_dtype=dtype)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
def test_large_enough_for_several_work_items(backend):
    # The CPU kernel splits each task into 32768-element items and the Triton one into 1024-element
    # programs: cross those boundaries (and leave a ragged tail) so the per-item partial sums are exercised.
    shape = (2, 1, 1, 1, 40000) if backend == "cpp" else (2, 1, 1, 1, 2500)
    check_against_reference(backend, shape, torch.float32, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpp_large_output(dtype):
    # An output above 8 MiB (hundreds of work items per task), with a ragged last item.
    if mtl_ops.backends.unavailable_reason("cpp", "cpu", OP):
        pytest.skip("cpp backend unavailable")
    check_against_reference("cpp", (2, 1, 1, 1, (9 << 20) // torch.finfo(dtype).bits * 8 // 2 + 77), dtype, "cpu")


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
def test_empty_tensors(backend):
    r, b, gates = make_inputs((2, 0, 3, 4, 5), torch.float32)
    y, (dr, db, dg) = run_with_grads(lambda *a: gated_residual(*a, backend=backend), r, b, gates,
                                     torch.empty(2, 0, 3, 4, 5))
    assert y.shape == (2, 0, 3, 4, 5) and dr.shape == y.shape and torch.equal(dg, torch.zeros(2, 2))


def test_cpp_gate_gradients_do_not_depend_on_thread_count():
    r, b, gates = make_inputs((2, 2, 8, 64, 64), torch.float32)
    grad_out = torch.randn_like(r)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run_with_grads(lambda *a: gated_residual(*a, backend="cpp"), r, b, gates, grad_out)[1][2])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu"))
def test_gradcheck_fp64(backend):
    r, b, gates = make_inputs((2, 2, 3, 2, 3), torch.float64, gates_dtype=torch.float64)
    r, b, gates = (t.requires_grad_() for t in (r, b, gates))
    assert torch.autograd.gradcheck(lambda *a: gated_residual(*a, backend=backend), (r, b, gates))


def _op_pairs(backend):
    if backend == "triton":
        return (torch.ops.mtl_ops.gated_residual_forward_triton.default,
                torch.ops.mtl_ops.gated_residual_backward_triton.default)
    return torch.ops.mtl_ops.gated_residual_forward.default, torch.ops.mtl_ops.gated_residual_backward.default


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "permuted"])
def test_opcheck(backend, layout):
    forward, backward = _op_pairs(backend)
    r, b, gates = make_inputs((3, 2, 4, 3, 5), torch.float32)
    r, b = make_layout(r, layout), make_layout(b, layout)
    torch.library.opcheck(forward, (r.requires_grad_(), b.requires_grad_(), gates.requires_grad_()))
    torch.library.opcheck(backward, (torch.randn_like(r), r.detach(), b.detach(), gates.detach()))


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    r, b, gates = make_inputs((3, 2, 4, 3, 5), torch.float32)

    def step(r, b, gates):
        return gated_residual(r, b, gates, backend=backend).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    grad_out = torch.tensor(1.0)
    _, eager_grads = run_with_grads(step, r, b, gates, grad_out)
    y, compiled_grads = run_with_grads(compiled, r, b, gates, grad_out)
    assert_close(y, step(r, b, gates).detach().double(), torch.float32)
    for got, want in zip(compiled_grads, eager_grads):
        assert_close(got, want, torch.float32, "reduction")


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu", ("cpp",)))
def test_autocast_promotes_mixed_activations(backend):
    r, b, gates = make_inputs((2, 2, 3, 4, 5), torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gated_residual(r, b.bfloat16(), gates, backend=backend)
    assert y.dtype == torch.float32
    assert_close(y, reference(r.double(), b.bfloat16().double(), gates.double()), torch.float32)


# ---- bad input ---------------------------------------------------------------------------------------

def _inputs():
    return make_inputs((3, 2, 4, 5, 6), torch.float32)


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu"))
@pytest.mark.parametrize("mutate, error, match", [
    (lambda r, b, g: (r, b[:, :1], g), ValueError, r"branch must have the shape of residual \(3, 2, 4, 5, 6\), got \(3, 1"),
    (lambda r, b, g: (r, b, g[:2]), ValueError, r"gates must have shape \(T, 2\) = \(3, 2\), got \(2, 2\)"),
    (lambda r, b, g: (r, b, g.reshape(6)), ValueError, r"gates must have shape \(T, 2\)"),
    (lambda r, b, g: (r, b.double(), g), TypeError, r"branch must have the dtype of residual \(torch.float32\), got torch.float64"),
    (lambda r, b, g: (r.int(), b.int(), g), TypeError, r"residual must be float32, float64, float16 or bfloat16, got torch.int32"),
    (lambda r, b, g: (r.half(), b.half(), g.double()), TypeError, r"gates must be float32 or the dtype of residual"),
    (lambda r, b, g: (r, b, g.to("meta")), ValueError, r"must be on one device, got cpu, cpu and meta"),
    (lambda r, b, g: (r[0, 0, 0, 0, 0], b[0, 0, 0, 0, 0], g), ValueError, r"leading task dimension"),
    (lambda r, b, g: (r, b.numpy(), g), TypeError, r"branch must be a torch.Tensor, got ndarray"),
])
def test_bad_input(backend, mutate, error, match):
    with pytest.raises(error, match=match):
        gated_residual(*mutate(*_inputs()), backend=backend)


@pytest.mark.parametrize("call, match", [
    (lambda r, b, g: torch.ops.mtl_ops.gated_residual_forward(r, b, g[:2]), r"gates must have shape \(T, 2\)"),
    (lambda r, b, g: torch.ops.mtl_ops.gated_residual_forward(r, b.double(), g), r"branch must have the dtype"),
    (lambda r, b, g: torch.ops.mtl_ops.gated_residual_backward(r[:1], r, b, g), r"grad_out must match residual"),
])
def test_bad_input_direct_operator_call(call, match):
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    with pytest.raises(RuntimeError, match=match):
        call(*_inputs())


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend argument must be one of .*got 'fast'"):
        gated_residual(*_inputs(), backend="fast")


def test_unavailable_backend_says_why():
    with pytest.raises(BackendUnavailableError, match=r"backend 'cuda' .* unavailable: .*CUDA"):
        gated_residual(*_inputs(), backend="cuda")


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(3, 8, 64, 72, 96)], ids=str)
def test_parity_cuda(backend, dtype, shape):
    check_against_reference(backend, shape, dtype, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_cuda(backend, layout):
    check_against_reference(backend, (3, 2, 5, 4, 6), torch.float32, "cuda", layout)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_opcheck_and_determinism_cuda(backend):
    forward, backward = _op_pairs(backend)
    r, b, gates = make_inputs((3, 2, 16, 33, 35), torch.float32, "cuda")
    torch.library.opcheck(forward, (r.requires_grad_(), b.requires_grad_(), gates.requires_grad_()))
    dy = torch.randn_like(r)
    first = backward(dy, r.detach(), b.detach(), gates.detach())[2]
    assert torch.equal(first, backward(dy, r.detach(), b.detach(), gates.detach())[2])


@requires_cuda
def test_auto_backend_on_cuda_is_fused():
    from mtl_ops.backends import select_backend

    assert select_backend(OP, torch.device("cuda")) in ("cuda", "triton")


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
def test_torch_export_keeps_the_fused_operator(backend):
    class Block(torch.nn.Module):
        def forward(self, r, b, g):
            return gated_residual(r, b, g, backend=backend)

    args = make_inputs((3, 2, 4, 5, 6), torch.float32)
    exported = torch.export.export(Block(), args)
    assert "mtl_ops.gated_residual_forward" in exported.graph_module.code
    assert torch.equal(exported.module()(*args), Block()(*args))
