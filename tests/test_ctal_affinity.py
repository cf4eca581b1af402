"""ctal_affinity: every backend against the reference, gradcheck, opcheck, compile, memory, bad input."""
import pytest
import torch
from harness import TOLERANCES, backend_params, requires_cuda

import mtl_ops
from mtl_ops.backends import BackendUnavailableError
from mtl_ops.bench.memory import cpu_peak_supported, peak_memory_bytes
from mtl_ops.ops import ctal_affinity
from mtl_ops.reference import ctal_affinity as reference

OP = "ctal_affinity"
# (B, T, C, H, W, k, per_task): T = 2..4, k = 3 and 5, non-square and odd grids, batch 1.
CONFIGS = [
    (1, 2, 3, 5, 7, 3, False), (2, 3, 4, 4, 6, 3, True), (1, 4, 2, 3, 5, 5, False), (2, 2, 5, 7, 3, 5, True),
    (1, 3, 4, 6, 5, 3, False), (1, 3, 3, 5, 4, 3, True), (2, 4, 2, 2, 3, 3, True), (1, 2, 3, 1, 6, 5, False),
]
# The Triton interpreter costs ~1 ms per program instance: fewer, smaller cases.
TRITON_CONFIGS = [(1, 2, 3, 5, 7, 3, False), (1, 2, 2, 3, 5, 5, True)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def cpu_backends(backends=("cpp", "triton")):
    """backend_params for the CPU, with the Triton runs marked slow: the interpreter costs seconds per call
    even on these tiny grids, so only test_parity_triton runs Triton in the fast suite."""
    out = []
    for p in backend_params(OP, "cpu", backends):
        marks = list(p.marks) + ([pytest.mark.slow] if p.values[0] == "triton" else [])
        out.append(pytest.param(*p.values, marks=marks, id=p.id))
    return out


def cfg_id(cfg):
    B, T, C, H, W, k, per_task = cfg
    return f"B{B}T{T}C{C}_{H}x{W}_k{k}_{'per_task' if per_task else 'shared'}"


def make_inputs(cfg, dtype=torch.float32, device="cpu", seed=0, param_dtype=None):
    B, T, C, H, W, k, per_task = cfg
    N = H * W
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, H, W, generator=g)
    v = torch.randn(B, T, C, H, W, generator=g)
    wshape = (T, N, T, k, k) if per_task else (N, T, k, k)
    weight = 0.3 * torch.randn(wshape, generator=g)
    bias = 0.1 * torch.randn((T, N) if per_task else (N,), generator=g)
    param_dtype = param_dtype or dtype
    return (x.to(device, dtype), v.to(device, dtype), weight.to(device, param_dtype), bias.to(device, param_dtype))


def run_with_grads(fn, inputs, grad_out):
    leaves = tuple(t.detach().requires_grad_() for t in inputs)
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, grad_out)


def assert_scaled_close(actual, expected, dtype, what):
    """The reduction tolerance of ``dtype`` relative to the largest magnitude of the expected tensor: the
    outputs are sums over all N pixels (Z grows with N), so absolute errors scale with them."""
    rtol, atol = TOLERANCES["reduction"][dtype]
    scale = max(1.0, expected.abs().max().item())
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.double() / scale, expected.double() / scale, rtol=rtol, atol=atol,
                               msg=lambda m: f"{what} ({dtype}): {m}")


def check_against_reference(backend, cfg, dtype, device="cpu", gamma=0.3, param_dtype=None):
    inputs = make_inputs(cfg, dtype, device, param_dtype=param_dtype)
    grad_out = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    y, grads = run_with_grads(lambda *a: ctal_affinity(*a, gamma, backend=backend), inputs, grad_out)
    y64, grads64 = run_with_grads(lambda *a: reference(*a, gamma), [t.double() for t in inputs], grad_out.double())
    assert y.dtype == dtype
    assert_scaled_close(y, y64, dtype, "r")
    for name, got, want, inp in zip(("d_x", "d_v", "d_weight", "d_bias"), grads, grads64, inputs):
        assert got.dtype == inp.dtype
        coarser = max(dtype, inp.dtype, key=lambda d: torch.finfo(d).eps)
        assert_scaled_close(got, want, coarser, name)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("cfg", CONFIGS, ids=cfg_id)
def test_parity_cpp(backend, cfg):
    check_against_reference(backend, cfg, torch.float32)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
@pytest.mark.parametrize("cfg", TRITON_CONFIGS, ids=cfg_id)
def test_parity_triton(backend, cfg):
    check_against_reference(backend, cfg, torch.float32)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(backend, dtype):
    check_against_reference(backend, (1, 3, 4, 5, 6, 3, False), dtype)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_with_fp32_parameters(backend, dtype):
    check_against_reference(backend, (1, 2, 3, 4, 5, 3, True), dtype, param_dtype=torch.float32)


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_accumulates_in_fp32_as_z_grows_with_n(backend, dtype):
    # Nearly parallel pixels: every cosine is ~1, so Z sums N terms of one sign and reaches ~N times the
    # features. Half accumulation would lose that sum; fp32 accumulation keeps the half rounding of r only.
    B, T, C, H, W, k = 1, 2, 4, 12, 16, 3
    N = H * W
    g = torch.Generator().manual_seed(3)
    x = (torch.ones(B, T, C, H, W) + 0.05 * torch.randn(B, T, C, H, W, generator=g)).to(dtype)
    v = (1 + 0.1 * torch.rand(B, T, C, H, W, generator=g)).to(dtype)
    weight = torch.full((N, T, k, k), 0.05).to(dtype)
    bias = torch.zeros(N).to(dtype)
    y = ctal_affinity(x, v, weight, bias, 0.5, backend=backend)
    y64 = reference(x.double(), v.double(), weight.double(), bias.double(), 0.5)
    assert y64.abs().max() > 0.5 * N * 0.05 * T * k * k * 0.9  # Z really is of order N
    rel = ((y.double() - y64).abs() / y64.abs()).max().item()
    assert rel < 2 * torch.finfo(dtype).eps, f"relative error {rel}"


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("per_task", [False, True], ids=["shared", "per_task"])
def test_gradcheck_fp64(backend, per_task):
    inputs = make_inputs((1, 2, 2, 3, 4, 3, per_task), torch.float64)
    inputs = tuple(t.requires_grad_() for t in inputs)
    # The Triton interpreter is ~1 ms per program: check random directional derivatives (fast mode) there.
    assert torch.autograd.gradcheck(lambda *a: ctal_affinity(*a, 0.4, backend=backend), inputs,
                                    fast_mode=backend == "triton")


def _op_pairs(backend):
    if backend == "triton":
        return (torch.ops.mtl_ops.ctal_affinity_forward_triton.default,
                torch.ops.mtl_ops.ctal_affinity_backward_triton.default)
    return torch.ops.mtl_ops.ctal_affinity_forward.default, torch.ops.mtl_ops.ctal_affinity_backward.default


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("per_task", [False, True], ids=["shared", "per_task"])
def test_opcheck(backend, per_task):
    forward, backward = _op_pairs(backend)
    x, v, w, b = make_inputs((1, 2, 3, 3, 4, 3, per_task))
    torch.library.opcheck(forward, (x.requires_grad_(), v.requires_grad_(), w.requires_grad_(),
                                    b.requires_grad_(), 0.2))
    _, gram = forward(x.detach(), v.detach(), w.detach(), b.detach(), 0.2)
    torch.library.opcheck(backward, (torch.randn_like(x), x.detach(), v.detach(), w.detach(), b.detach(), 0.2, gram))


@pytest.mark.parametrize("backend", cpu_backends())
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    inputs = make_inputs((1, 2, 3, 3, 4, 3, False))

    def step(x, v, w, b):
        return ctal_affinity(x, v, w, b, 0.05, backend=backend).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    grad_out = torch.tensor(1.0)
    _, eager_grads = run_with_grads(step, inputs, grad_out)
    y, compiled_grads = run_with_grads(compiled, inputs, grad_out)
    assert_scaled_close(y, step(*inputs).detach().double(), torch.float32, "loss")
    for got, want in zip(compiled_grads, eager_grads):
        assert_scaled_close(got, want, torch.float32, "grad")


@pytest.mark.skipif(not cpu_peak_supported(), reason="needs /proc/self/clear_refs to measure the CPU peak")
@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_no_n_by_n_allocation_at_half_nyuv2_resolution(backend):
    # 144 x 192: N = 27,648, so one N x N fp32 tensor is 3.06 GB. Forward and backward must stay far below.
    inputs = make_inputs((1, 2, 2, 144, 192, 3, False))
    leaves = tuple(t.requires_grad_() for t in inputs)
    grad_out = torch.randn(inputs[0].shape)

    def call():
        y = ctal_affinity(*leaves, 0.05, backend=backend)
        return torch.autograd.grad(y, leaves, grad_out)

    call()
    peak = peak_memory_bytes(call, torch.device("cpu"))
    n_by_n = 27648 ** 2 * 4
    assert peak < n_by_n / 20, f"peak {peak / 2**20:.0f} MiB, one N x N tensor is {n_by_n / 2**20:.0f} MiB"


@pytest.mark.parametrize("backend", cpu_backends())
def test_non_contiguous_inputs(backend):
    x, v, w, b = make_inputs((2, 3, 4, 5, 6, 3, False))
    xs, vs = x.transpose(0, 1).contiguous().transpose(0, 1), v[..., :].contiguous(memory_format=torch.channels_last_3d)
    y = ctal_affinity(xs, vs, w, b, 0.3, backend=backend)
    assert_scaled_close(y, reference(x.double(), v.double(), w.double(), b.double(), 0.3), torch.float32, "r")


# ---- bad input ---------------------------------------------------------------------------------------

def _inputs():
    return make_inputs((2, 3, 4, 5, 6, 3, False))


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu"))
@pytest.mark.parametrize("mutate, error, match", [
    (lambda x, v, w, b: (x, v[:, :2], w, b), ValueError, r"v must have the shape of x \(2, 3, 4, 5, 6\), got \(2, 2"),
    (lambda x, v, w, b: (x[0], v[0], w, b), ValueError, r"x must have shape \(B, T, C, H, W\), got \(3, 4, 5, 6\)"),
    (lambda x, v, w, b: (x, v, w[:, :, :2, :2], b), ValueError, r"kernel size k must be odd, got k = 2"),
    (lambda x, v, w, b: (x, v, w[:20], b), ValueError, r"weight must have shape \(N, T, k, k\) with N = H\*W = 30, T = 3, got \(20,"),
    (lambda x, v, w, b: (x, v, w[:, :2], b), ValueError, r"weight must have shape \(N, T, k, k\) .* got \(30, 2, 3, 3\)"),
    (lambda x, v, w, b: (x, v, w[None].expand(3, -1, -1, -1, -1)[:2], b), ValueError, r"weight must have shape \(T, N, T, k, k\)"),
    (lambda x, v, w, b: (x, v, w[0, 0], b), ValueError, r"weight must have shape \(N, T, k, k\) or \(T, N, T, k, k\)"),
    (lambda x, v, w, b: (x, v, w, b[:5]), ValueError, r"bias must have shape \(30,\) for shared weight, got \(5,\)"),
    (lambda x, v, w, b: (x, v, w[None].expand(3, -1, -1, -1, -1), b), ValueError, r"bias must have shape \(3, 30\) for per-task"),
    (lambda x, v, w, b: (x, v.double(), w, b), TypeError, r"v must have the dtype of x \(torch.float32\), got torch.float64"),
    (lambda x, v, w, b: (x.int(), v.int(), w, b), TypeError, r"x must be float32, float64, float16 or bfloat16, got torch.int32"),
    (lambda x, v, w, b: (x.half(), v.half(), w.double(), b.double()), TypeError, r"weight must be float32 or the dtype of x"),
    (lambda x, v, w, b: (x, v, w, b.double()), TypeError, r"bias must have the dtype of weight"),
    (lambda x, v, w, b: (x, v, w, b.to("meta")), ValueError, r"must be on one device, got cpu, cpu, cpu and meta"),
    (lambda x, v, w, b: (x, v.numpy(), w, b), TypeError, r"v must be a torch.Tensor, got ndarray"),
])
def test_bad_input(backend, mutate, error, match):
    with pytest.raises(error, match=match):
        ctal_affinity(*mutate(*_inputs()), 0.05, backend=backend)


def test_gamma_must_be_a_number():
    with pytest.raises(TypeError, match=r"gamma must be a Python float, got str"):
        ctal_affinity(*_inputs(), "0.05")


@pytest.mark.parametrize("call, match", [
    (lambda x, v, w, b: torch.ops.mtl_ops.ctal_affinity_forward(x, v[:, :2], w, b, 0.1), r"v must have the shape of x"),
    (lambda x, v, w, b: torch.ops.mtl_ops.ctal_affinity_forward(x, v, w[:, :, :2, :2], b, 0.1), r"k must be odd"),
    (lambda x, v, w, b: torch.ops.mtl_ops.ctal_affinity_forward(x, v, w[:20], b, 0.1), r"weight must have shape \(N, T, k, k\)"),
    (lambda x, v, w, b: torch.ops.mtl_ops.ctal_affinity_forward(x, v, w, b[:5], 0.1), r"bias must have shape \(N,\) = \(30,\)"),
    (lambda x, v, w, b: torch.ops.mtl_ops.ctal_affinity_forward(x, v.double(), w, b, 0.1), r"v must have the dtype of x"),
    (lambda x, v, w, b: torch.ops.mtl_ops.ctal_affinity_backward(x[:1], x, v, w, b, 0.1, x), r"grad_out must match x"),
    (lambda x, v, w, b: torch.ops.mtl_ops.ctal_affinity_backward(x, x, v, w, b, 0.1, x), r"gram must be the forward's"),
])
def test_bad_input_direct_operator_call(call, match):
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    with pytest.raises(RuntimeError, match=match):
        call(*_inputs())


def test_unavailable_backend_says_why():
    with pytest.raises(BackendUnavailableError, match=r"backend 'cuda' .* unavailable: .*CUDA"):
        ctal_affinity(*_inputs(), 0.05, backend="cuda")


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS + [(2, 3, 16, 24, 32, 3, False), (2, 3, 16, 24, 32, 3, True)], ids=cfg_id)
def test_parity_cuda(backend, dtype, cfg):
    check_against_reference(backend, cfg, dtype, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_opcheck_cuda(backend):
    forward, _ = _op_pairs(backend)
    x, v, w, b = make_inputs((2, 3, 8, 9, 11, 3, True), device="cuda")
    torch.library.opcheck(forward, (x.requires_grad_(), v.requires_grad_(), w.requires_grad_(), b.requires_grad_(), 0.2))


@requires_cuda
def test_auto_backend_on_cuda_is_fused():
    from mtl_ops.backends import select_backend

    assert select_backend(OP, torch.device("cuda")) in ("cuda", "triton")


@pytest.mark.parametrize("cfg", CONFIGS[:4], ids=cfg_id)
def test_plain_reassociation_matches_reference(cfg):
    from mtl_ops.reference import ctal_affinity_reassociated

    inputs = [t.double() for t in make_inputs(cfg)]
    grad_out = torch.randn(inputs[0].shape, dtype=torch.float64)
    y, grads = run_with_grads(lambda *a: ctal_affinity_reassociated(*a, 0.3), inputs, grad_out)
    y64, grads64 = run_with_grads(lambda *a: reference(*a, 0.3), inputs, grad_out)
    for got, want in zip((y,) + grads, (y64,) + grads64):
        assert_scaled_close(got, want, torch.float64, "reassociated")
