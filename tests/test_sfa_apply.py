"""sfa_apply: every backend against the reference, gradcheck, opcheck, compile, bad input."""
import pytest
import torch
from harness import assert_close, assert_compiled_matches_eager, backend_params, requires_cuda

import mtl_ops
from mtl_ops.ops import sfa_apply
from mtl_ops.reference import sfa_apply as reference

OP = "sfa_apply"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (T, B, C, h, w)
SHAPES = [(3, 2, 5, 7, 9), (1, 1, 1, 1, 1), (4, 2, 6, 5, 3), (2, 1, 3, 1, 17)]


def make_inputs(shape, M, dtype, device="cpu", seed=0):
    T, B, C, h, w = shape
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, C, h, w, generator=g).to(device, dtype)
    m = (2 * torch.randn(T, B, C if M == "C" else 1, h, w, generator=g)).to(device, dtype)
    return f, m


def run_with_grads(fn, f, m, grad_out):
    f, m = f.detach().requires_grad_(), m.detach().requires_grad_()
    out = fn(f, m)
    return out, torch.autograd.grad(out, (f, m), grad_out)


def check_against_reference(backend, shape, M, dtype, device="cpu", layout=None):
    f, m = make_inputs(shape, M, dtype, device)
    if layout is not None:
        f, m = layout(f), layout(m)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, (df, dm) = run_with_grads(lambda f, m: sfa_apply(f, m, backend=backend), f, m, grad_out)
    out64, (df64, dm64) = run_with_grads(reference, f.double(), m.double(), grad_out.double())
    assert out.dtype == dtype and df.dtype == dtype and dm.dtype == dtype
    assert_close(out, out64, dtype, what="out")
    assert_close(df, df64, dtype, "reduction", what="d_features")
    assert_close(dm, dm64, dtype, "reduction" if M == 1 else "elementwise", what="d_mask_logits")


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
@pytest.mark.parametrize("M", [1, "C"], ids=["spatial", "channel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_parity_cpu(backend, M, dtype, shape):
    check_against_reference(backend, shape, M, dtype)


LAYOUTS = {
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else
    t.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3),
    "strided": lambda t: torch.cat([t, t], dim=-1)[..., ::2],
}


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
@pytest.mark.parametrize("M", [1, "C"], ids=["spatial", "channel"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_cpu(backend, M, layout):
    check_against_reference(backend, (3, 2, 5, 4, 6), M, torch.float32, layout=LAYOUTS[layout])


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_several_pixel_chunks(backend):
    # The CPU kernel splits each plane into 1024-pixel chunks: cross that boundary with a ragged tail.
    check_against_reference(backend, (2, 2, 3, 37, 41), 1, torch.float32)


def test_cpp_backward_does_not_depend_on_thread_count():
    f, m = make_inputs((4, 3, 8, 40, 40), 1, torch.float32)
    grad_out = torch.randn(4, 3, 8, 40, 40)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run_with_grads(lambda f, m: sfa_apply(f, m, backend="cpp"), f, m, grad_out)[1])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu"))
@pytest.mark.parametrize("M", [1, "C"], ids=["spatial", "channel"])
def test_gradcheck_fp64(backend, M):
    f, m = make_inputs((3, 2, 3, 2, 3), M, torch.float64)
    # Triton runs interpreted (about 1 ms per program step): gradcheck's fast mode (random projections)
    assert torch.autograd.gradcheck(lambda f, m: sfa_apply(f, m, backend=backend),
                                    (f.requires_grad_(), m.requires_grad_()), fast_mode=backend == "triton")


def _op_pair(backend):
    if backend == "triton":
        return torch.ops.mtl_ops.sfa_apply_forward_triton.default, torch.ops.mtl_ops.sfa_apply_backward_triton.default
    return torch.ops.mtl_ops.sfa_apply_forward.default, torch.ops.mtl_ops.sfa_apply_backward.default


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
@pytest.mark.parametrize("M", [1, "C"], ids=["spatial", "channel"])
def test_opcheck(backend, M):
    forward, backward = _op_pair(backend)
    f, m = make_inputs((3, 2, 4, 3, 5), M, torch.float32)
    torch.library.opcheck(forward, (f.requires_grad_(), m.requires_grad_()))
    torch.library.opcheck(backward, (torch.randn(3, 2, 4, 3, 5), f.detach(), m.detach()))


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
def test_compile_fullgraph(backend):
    f, m = make_inputs((3, 2, 4, 3, 5), 1, torch.float32)
    assert_compiled_matches_eager(lambda f, m: sfa_apply(f, m, backend=backend).square().sum(), run_with_grads, f, m)


# ---- bad input ---------------------------------------------------------------------------------------

def _inputs():
    return make_inputs((3, 2, 4, 5, 6), 1, torch.float32)


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu"))
@pytest.mark.parametrize("mutate, error, match", [
    (lambda f, m: (f[0], m), ValueError, r"features must be 4-d \(B, C, h, w\), got 3-d"),
    (lambda f, m: (f, m[0]), ValueError, r"mask_logits must be 5-d \(T, B, M, h, w\), got 4-d"),
    (lambda f, m: (f, m.expand(3, 2, 3, 5, 6)), ValueError,
     r"mask_logits must have shape \(T, B, M, h, w\) = \(T, 2, 1 or 4, 5, 6\), got \(3, 2, 3, 5, 6\)"),
    (lambda f, m: (f, m[:, :1]), ValueError, r"mask_logits must have shape .*got \(3, 1, 1, 5, 6\)"),
    (lambda f, m: (f, m[..., :5]), ValueError, r"mask_logits must have shape .*got \(3, 2, 1, 5, 5\)"),
    (lambda f, m: (f.int(), m.int()), TypeError, r"features must be float32, float64, float16 or bfloat16, got torch.int32"),
    (lambda f, m: (f, m.double()), TypeError, r"mask_logits must have the dtype of features \(torch.float32\), got torch.float64"),
    (lambda f, m: (f, m.to("meta")), ValueError, r"must be on one device, got cpu and meta"),
    (lambda f, m: (f.numpy(), m), TypeError, r"features must be a torch.Tensor, got ndarray"),
])
def test_bad_input(backend, mutate, error, match):
    with pytest.raises(error, match=match):
        sfa_apply(*mutate(*_inputs()), backend=backend)


@pytest.mark.parametrize("call, match", [
    (lambda f, m: torch.ops.mtl_ops.sfa_apply_forward(f, m[0]), r"mask_logits must be 5-d"),
    (lambda f, m: torch.ops.mtl_ops.sfa_apply_forward(f, m.double()), r"mask_logits must have the dtype"),
    (lambda f, m: torch.ops.mtl_ops.sfa_apply_backward(f, f, m), r"grad_out must be \(T, B, C, h, w\)"),
])
def test_bad_input_direct_operator_call(call, match):
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    with pytest.raises(RuntimeError, match=match):
        call(*_inputs())


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("M", [1, "C"], ids=["spatial", "channel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(4, 8, 64, 72, 96)], ids=str)
def test_parity_cuda(backend, M, dtype, shape):
    check_against_reference(backend, shape, M, dtype, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_opcheck_and_determinism_cuda(backend):
    forward, backward = _op_pair(backend)
    f, m = make_inputs((3, 2, 16, 33, 35), 1, torch.float32, "cuda")
    torch.library.opcheck(forward, (f.requires_grad_(), m.requires_grad_()))
    dy = torch.randn(3, 2, 16, 33, 35, device="cuda")
    first = backward(dy, f.detach(), m.detach())
    assert all(torch.equal(a, b) for a, b in zip(first, backward(dy, f.detach(), m.detach())))


@requires_cuda
def test_auto_backend_on_cuda_is_fused():
    from mtl_ops.backends import select_backend

    assert select_backend(OP, torch.device("cuda")) in ("cuda", "triton")
