"""ms_attention_mix: every backend against the reference, gradcheck, opcheck, compile, bad input."""
import pytest
import torch
from harness import assert_close, assert_compiled_matches_eager, backend_params, requires_cuda

import mtl_ops
from mtl_ops.ops import ms_attention_mix
from mtl_ops.reference import ms_attention_mix as reference

OP = "ms_attention_mix"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (B, K, (H, W), [(h_s, w_s) per scale]): odd sizes not divisible by the scale, S = 1..5, K = 1 and 40,
# a scale larger than the output (down-sampling) and one equal to it.
CASES = {
    "S1": (2, 3, (7, 9), [(3, 4)]),
    "S2-odd": (1, 1, (11, 13), [(11, 13), (5, 7)]),
    "S3-K40": (2, 40, (9, 10), [(9, 10), (5, 5), (3, 3)]),
    "S4-strides": (2, 5, (12, 16), [(12, 16), (6, 8), (3, 4), (2, 2)]),
    "S5-mixed": (1, 2, (10, 7), [(10, 7), (5, 4), (3, 2), (2, 1), (13, 11)]),
    "S4-small": (1, 2, (8, 8), [(8, 8), (4, 4), (2, 2), (1, 1)]),
    "1x1": (1, 1, (1, 1), [(1, 1), (2, 3)]),
}
# The Triton interpreter costs about 1 ms per program instance and loop step: a few small cases only.
TRITON_CASES = {("S1", torch.float32), ("S2-odd", torch.float32), ("S2-odd", torch.bfloat16),
                ("S2-odd", torch.float64), ("S4-small", torch.float32), ("1x1", torch.float32)}


def make_inputs(case, dtype, device="cpu", seed=0):
    B, K, size, scales = CASES[case] if isinstance(case, str) else case
    g = torch.Generator().manual_seed(seed)
    values = [torch.randn(B, K, h, w, generator=g).to(device, dtype) for h, w in scales]
    logits = [(2 * torch.randn(B, 1, h, w, generator=g)).to(device, dtype) for h, w in scales]
    return values, logits, size


def run_with_grads(fn, values, logits, grad_out):
    values = [v.detach().requires_grad_() for v in values]
    logits = [a.detach().requires_grad_() for a in logits]
    out = fn(values, logits)
    grads = torch.autograd.grad(out, values + logits, grad_out)
    return out, grads


def check_against_reference(backend, case, dtype, device="cpu", layout=None):
    values, logits, size = make_inputs(case, dtype, device)
    if layout is not None:
        values, logits = [layout(v) for v in values], [layout(a) for a in logits]
    B, K = values[0].shape[:2]
    grad_out = torch.randn(B, K, *size, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, grads = run_with_grads(lambda v, a: ms_attention_mix(v, a, size, backend=backend), values, logits, grad_out)
    out64, grads64 = run_with_grads(lambda v, a: reference(v, a, size), [v.double() for v in values],
                                    [a.double() for a in logits], grad_out.double())
    assert out.dtype == dtype and out.shape == (B, K, *size)
    assert_close(out, out64, dtype, what="out")
    S = len(values)
    for s, (got, want) in enumerate(zip(grads, grads64)):
        assert got.dtype == dtype
        what = f"d_values[{s}]" if s < S else f"d_logits[{s - S}]"
        assert_close(got, want, dtype, "reduction", what=what)
    return out, grads


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_parity_cpu(backend, dtype, case):
    if backend == "triton" and (case, dtype) not in TRITON_CASES:
        pytest.skip("Triton interpreter: a few small cases only")
    check_against_reference(backend, case, dtype)


LAYOUTS = {
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "strided": lambda t: torch.cat([t, t], dim=3)[..., ::2] if t.shape[3] > 0 else t,
    "transposed": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
}


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts_cpu(backend, layout):
    check_against_reference(backend, "S2-odd" if backend == "triton" else "S4-strides", torch.float32,
                            layout=LAYOUTS[layout])


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
def test_triton_backward_gather_windows_in_tiles(backend, monkeypatch):
    # A 1 x 1 scale is read by every output pixel: its gradient gathers the whole 6 x 6 output. With 2 x 2
    # window tiles that is 9 programs per gathered pixel block, each looping over 4 output pixels, their
    # partials summed in order (the full-size scale's window, 6 x 6 here, is tiled the same way).
    from harness import LaunchLog

    from mtl_ops.triton import load
    monkeypatch.setattr(load("ms_attention_mix"), "WINDOW_TILE", 2)
    log = LaunchLog(monkeypatch)
    check_against_reference(backend, (1, 2, (6, 6), [(6, 6), (1, 1)]), torch.float32)
    for kernel in ("_gather_values_kernel", "_gather_logits_kernel"):
        grids = [grid for name, grid, _ in log.launches if name == kernel]
        assert grids == [(1 * 9, 1), (1 * 9, 1)], kernel  # (pixel blocks x window tiles, batch x channel blocks)


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu"))
@pytest.mark.parametrize("B, K", [(0, 3), (2, 0)])
def test_empty_batch_or_channels(backend, B, K):
    values, logits, size = make_inputs((B, K, (5, 6), [(5, 6), (2, 3)]), torch.float32)
    out, grads = run_with_grads(lambda v, a: ms_attention_mix(v, a, size, backend=backend), values, logits,
                                torch.zeros(B, K, *size))
    assert out.shape == (B, K, 5, 6)
    assert all(g.shape == t.shape and not g.any() for g, t in zip(grads, values + logits))


def test_integer_factor_matches_interpolate_exactly_on_cpp():
    # With a single scale the weights are all 1: the op is F.interpolate, which the taps reproduce.
    values, logits, size = make_inputs((2, 4, (16, 24), [(4, 6)]), torch.float64)
    out = ms_attention_mix(values, logits, size, backend="cpp")
    want = torch.nn.functional.interpolate(values[0], size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("K", [6, 21], ids=["K6", "K21"])  # K21: several channel blocks of the cpp backward
def test_cpp_backward_does_not_depend_on_thread_count(K):
    values, logits, size = make_inputs((3, K, (24, 30), [(24, 30), (12, 15), (5, 7)]), torch.float32)
    grad_out = torch.randn(3, K, *size)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run_with_grads(lambda v, a: ms_attention_mix(v, a, size, backend="cpp"), values, logits,
                                          grad_out)[1])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu"))
@pytest.mark.parametrize("scales", [[(3, 4), (2, 2)], [(5, 3), (2, 4), (1, 1)]], ids=["S2", "S3"])
def test_gradcheck_fp64(backend, scales):
    B, K, size = (1, 2, (5, 6)) if backend != "triton" else (1, 2, (4, 5))
    values, logits, size = make_inputs((B, K, size, scales), torch.float64)
    S = len(values)
    inputs = [t.requires_grad_() for t in values + logits]
    # Triton runs interpreted (about 1 ms per program step): gradcheck's fast mode (random projections)
    assert torch.autograd.gradcheck(
        lambda *ts: ms_attention_mix(list(ts[:S]), list(ts[S:]), size, backend=backend), inputs,
        fast_mode=backend == "triton")


def _op_pair(backend):
    if backend == "triton":
        return (torch.ops.mtl_ops.ms_attention_mix_forward_triton.default,
                torch.ops.mtl_ops.ms_attention_mix_backward_triton.default)
    return torch.ops.mtl_ops.ms_attention_mix_forward.default, torch.ops.mtl_ops.ms_attention_mix_backward.default


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
def test_opcheck(backend):
    forward, backward = _op_pair(backend)
    values, logits, size = make_inputs((1, 2, (5, 6), [(5, 6), (2, 3)]), torch.float32)
    values = [v.requires_grad_() for v in values]
    logits = [a.requires_grad_() for a in logits]
    torch.library.opcheck(forward, (values, logits, list(size)))
    out, lse = forward(values, logits, list(size))
    torch.library.opcheck(backward, (torch.randn_like(out), [v.detach() for v in values],
                                     [a.detach() for a in logits], lse))


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
def test_compile_fullgraph(backend):
    values, logits, size = make_inputs((1, 3, (6, 7), [(6, 7), (3, 4)]), torch.float32)
    assert_compiled_matches_eager(lambda v, a: ms_attention_mix(v, a, size, backend=backend).square().sum(),
                                  run_with_grads, values, logits)


# ---- bad input ---------------------------------------------------------------------------------------

def _inputs():
    return make_inputs("S2-odd", torch.float32)


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu"))
@pytest.mark.parametrize("mutate, error, match", [
    (lambda v, a, s: (v[0], a, s), TypeError, r"values must be a list or tuple of tensors .*got Tensor"),
    (lambda v, a, s: ([], [], s), ValueError, r"values must hold 1 to 8 tensors .*got 0"),
    (lambda v, a, s: (v * 5, a * 5, s), ValueError, r"values must hold 1 to 8 tensors .*got 10"),
    (lambda v, a, s: (v, a[:1], s), ValueError, r"logits must hold one tensor per scale \(2\), got 1"),
    (lambda v, a, s: (v, a, (11,)), ValueError, r"size must be two positive integers \(H, W\), got \(11,\)"),
    (lambda v, a, s: (v, a, (0, 4)), ValueError, r"size must be two positive integers"),
    (lambda v, a, s: ([v[0][0]] + v[1:], a, s), ValueError, r"values\[0\] must be 4-d \(B, K, h, w\), got 3-d"),
    (lambda v, a, s: ([v[0], v[1][:, :0]], a, s), ValueError,
     r"values\[1\] must have shape \(B, K, h, w\) = \(1, 1, h>0, w>0\), got \(1, 0, 5, 7\)"),
    (lambda v, a, s: (v, [a[0], a[1][..., :3]], s), ValueError,
     r"logits\[1\] must have shape \(B, 1, h, w\) = \(1, 1, 5, 7\), got \(1, 1, 5, 3\)"),
    (lambda v, a, s: (v, [a[0], a[1].double()], s), TypeError,
     r"values\[1\] and logits\[1\] must have the dtype of values\[0\] \(torch.float32\), got torch.float32 and torch.float64"),
    (lambda v, a, s: ([t.int() for t in v], a, s), TypeError, r"values must be float32, float64, float16 or bfloat16"),
    (lambda v, a, s: (v, [a[0], a[1].to("meta")], s), ValueError, r"all tensors must be on one device \(cpu\)"),
    (lambda v, a, s: (v, [a[0], a[1].numpy()], s), TypeError, r"logits\[1\] must be a torch.Tensor, got ndarray"),
])
def test_bad_input(backend, mutate, error, match):
    with pytest.raises(error, match=match):
        ms_attention_mix(*mutate(*_inputs()), backend=backend)


@pytest.mark.parametrize("call, match", [
    (lambda v, a, s: torch.ops.mtl_ops.ms_attention_mix_forward(v, a[:1], list(s)), r"logits must hold one tensor"),
    (lambda v, a, s: torch.ops.mtl_ops.ms_attention_mix_forward(v, [a[0], a[1][..., :3]], list(s)),
     r"logits\[1\] must have shape"),
    (lambda v, a, s: torch.ops.mtl_ops.ms_attention_mix_forward(v, a, [5]), r"size must be two positive"),
    (lambda v, a, s: torch.ops.mtl_ops.ms_attention_mix_backward(torch.zeros(1, 2, 3, 3), v, a, torch.zeros(1, 3, 3)),
     r"grad_out must match the output \(B, K, H, W\) = \(1, 1, H, W\)"),
    (lambda v, a, s: torch.ops.mtl_ops.ms_attention_mix_backward(torch.zeros(1, 1, 11, 13), v, a,
                                                                 torch.zeros(1, 11, 12)), r"lse must be \(B, H, W\)"),
])
def test_bad_input_direct_operator_call(call, match):
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    with pytest.raises(RuntimeError, match=match):
        call(*_inputs())


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_parity_cuda(backend, dtype, case):
    check_against_reference(backend, case, dtype, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_full_size_and_determinism_cuda(backend):
    case = (2, 40, (72, 96), [(72, 96), (36, 48), (18, 24), (9, 12)])
    check_against_reference(backend, case, torch.float32, "cuda")
    values, logits, size = make_inputs(case, torch.float32, "cuda")
    grad_out = torch.randn(2, 40, *size, device="cuda")
    fn = lambda v, a: ms_attention_mix(v, a, size, backend=backend)  # noqa: E731
    first = run_with_grads(fn, values, logits, grad_out)[1]
    second = run_with_grads(fn, values, logits, grad_out)[1]
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_opcheck_cuda(backend):
    forward, _ = _op_pair(backend)
    values, logits, size = make_inputs((2, 3, (9, 10), [(9, 10), (4, 5)]), torch.float32, "cuda")
    torch.library.opcheck(forward, ([v.requires_grad_() for v in values], [a.requires_grad_() for a in logits],
                                    list(size)))


@requires_cuda
def test_auto_backend_on_cuda_is_fused():
    from mtl_ops.backends import select_backend

    assert select_backend(OP, torch.device("cuda")) in ("cuda", "triton")
