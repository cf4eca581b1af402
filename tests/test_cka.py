"""The fused all-pairs CKA op (PDF §2.4) against the reference: parity per dtype and estimator, conditioning,
conventions, opcheck, compile, forward-only refusal, memory and bad input."""
import pytest
import torch
from harness import TOLERANCES, backend_params, requires_cuda

import mtl_ops
from mtl_ops.backends import BackendUnavailableError
from mtl_ops.bench.memory import cpu_peak_supported, peak_memory_bytes
from mtl_ops.ops import cka
from mtl_ops.reference import cka as reference

OP = "cka"
# (T, n, d): one strip (n ≤ 32 rows), several strips with a partial last one, d = 1, T = 1, n = 4 (smallest
# debiased), and n = 300 (strips of 38 rows).
SHAPES = [(3, 12, 5), (4, 70, 9), (2, 45, 1), (1, 33, 6), (5, 4, 3), (3, 300, 17)]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def make_features(shape, seed=0, offset=0.0, device="cpu"):
    """Features with a shared per-feature offset (as pooled ReLU features have) and correlated tasks."""
    g = torch.Generator().manual_seed(seed)
    T, n, d = shape
    common = torch.randn(1, n, d, generator=g, dtype=torch.float64)
    own = torch.randn(T, n, d, generator=g, dtype=torch.float64)
    mix = torch.linspace(0.2, 0.9, T, dtype=torch.float64).view(T, 1, 1)
    x = mix * common + (1 - mix) * own + offset * torch.rand(T, 1, d, generator=g, dtype=torch.float64)
    return x.to(device)


def assert_close_to_reference(got, features, debiased, dtype):
    expected = reference(features.double(), debiased=debiased)    # fp64 truth on the same (rounded) inputs
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rtol, atol = TOLERANCES["reduction"][torch.float64 if dtype == torch.float64 else torch.float32]
    torch.testing.assert_close(got.double().cpu(), expected.cpu(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "biased"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_parity(backend, shape, dtype, debiased):
    features = make_features(shape, seed=sum(shape)).to(dtype)
    assert_close_to_reference(cka(features, debiased=debiased, backend=backend), features, debiased, dtype)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "biased"])
def test_large_common_offset_keeps_fp32_accuracy(backend, debiased):
    # An offset 50× the spread makes the uncentred Gram ~2500× its centred part; the fused op centres the
    # features first, so its fp32 result stays within the fp32 tolerance of the fp64 truth.
    features = make_features((3, 80, 40), seed=7, offset=50.0)
    got = cka(features.float(), debiased=debiased, backend=backend)
    assert_close_to_reference(got, features.float(), debiased, torch.float32)


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "biased"])
def test_translation_invariance_the_fused_op_relies_on(backend, debiased):
    features = make_features((3, 20, 6), seed=3)
    shifted = features + torch.randn(3, 1, 6, dtype=torch.float64) * 10
    torch.testing.assert_close(cka(shifted, debiased=debiased, backend=backend),
                               cka(features, debiased=debiased, backend=backend), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_non_contiguous_features(backend):
    features = make_features((3, 40, 7), seed=4)
    transposed = features.transpose(1, 2).contiguous().transpose(1, 2)
    strided = torch.zeros(3, 40, 14, dtype=torch.float64)
    strided[..., ::2] = features
    for view in (transposed, strided[..., ::2], features.transpose(0, 1).contiguous().transpose(0, 1)):
        assert not view.is_contiguous()
        torch.testing.assert_close(cka(view, backend=backend), reference(features), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_constant_features_and_nan_conventions(backend):
    features = make_features((3, 10, 4), seed=5)
    features[1] = 1.0                                 # constant: centred Gram is exactly 0 → 0/0
    out = cka(features, backend=backend)
    torch.testing.assert_close(out, reference(features), rtol=1e-9, atol=1e-10)
    assert out[1, 1].item() == 1.0 and out[0, 1].item() == 0.0 and out[2, 1].item() == 0.0
    features[2, 3, 0] = float("nan")
    out = cka(features, backend=backend)
    for got in (out, reference(features)):  # NaN stays NaN (pairs with the constant task are still 0 by convention)
        assert torch.isnan(got[2, [0, 2]]).all() and torch.isnan(got[[0, 2], 2]).all() and got[2, 1].item() == 0.0


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_forward_only_refuses_grad_but_runs_under_no_grad(backend):
    features = make_features((2, 8, 3)).requires_grad_()
    with pytest.raises(ValueError, match=r"cka: the cpp backend is forward only, but features requires grad"):
        cka(features, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(cka(features, backend=backend), reference(features.detach()))
    reference_out = cka(features, backend="reference")     # the reference is differentiable
    reference_out[0, 1].backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "biased"])
def test_opcheck(backend, debiased):
    torch.library.opcheck(torch.ops.mtl_ops.cka_forward.default, (make_features((3, 9, 4)).float(), debiased))


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_compile_fullgraph(backend):
    torch._dynamo.reset()

    def similarity(x):
        return cka(x, backend=backend).sum()

    features = make_features((3, 16, 5)).float()
    compiled = torch.compile(similarity, fullgraph=True)
    torch.testing.assert_close(compiled(features), reference(features).sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not cpu_peak_supported(), reason="needs /proc/self/clear_refs to measure the CPU peak")
@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_never_holds_a_gram_matrix(backend):
    # T = 4, n = 3000: one n×n fp32 Gram is 34 MiB, the reference holds several T·n² buffers (≥ 137 MiB each);
    # the strips (256 rows) need T·256·n floats = 12 MiB.
    features = torch.randn(4, 3000, 16)
    cka(features, backend=backend)
    peak = peak_memory_bytes(lambda: cka(features, backend=backend), torch.device("cpu"))
    one_gram = 3000 ** 2 * 4
    assert peak < one_gram, f"peak {peak / 2**20:.1f} MiB, one Gram is {one_gram / 2**20:.1f} MiB"


# ---- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("features, debiased, error, match", [
    (torch.randn(8, 3), True, ValueError, r"features must be 3-D \(T, n, d\).*got 2-D"),
    (torch.ones(2, 8, 3, dtype=torch.int64), True, ValueError, r"features must be a floating-point tensor"),
    (torch.randn(2, 3, 4), True, ValueError, r"more than 3 samples \(n > 3\).*got n=3"),
    (torch.randn(2, 1, 4), False, ValueError, r"at least 2 samples \(n ≥ 2\).*got n=1"),
    (torch.randn(0, 8, 4), True, ValueError, r"at least one task and one feature"),
    (torch.randn(2, 8, 0), True, ValueError, r"at least one task and one feature"),
    ([[[1.0]]], True, TypeError, r"features must be a torch.Tensor"),
])
def test_bad_input(backend, features, debiased, error, match):
    with pytest.raises(error, match=match):
        cka(features, debiased=debiased, backend=backend)


@pytest.mark.parametrize("features, debiased, match", [
    (torch.randn(8, 3), True, r"features must be 3-D \(T, n, d\)"),
    (torch.ones(2, 8, 3, dtype=torch.int64), True, r"features must be a floating-point tensor"),
    (torch.randn(2, 3, 4), True, r"more than 3 samples \(n > 3\).*got n=3"),
    (torch.randn(2, 1, 4), False, r"at least 2 samples \(n ≥ 2\).*got n=1"),
    (torch.randn(2, 8, 0), True, r"at least one task and one feature"),
])
def test_bad_input_direct_operator_call(features, debiased, match):
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.mtl_ops.cka_forward(features, debiased)


def test_unavailable_backends_say_why():
    with pytest.raises(BackendUnavailableError, match=r"backend 'cuda' .* unavailable: .*CUDA"):
        cka(make_features((2, 8, 3)), backend="cuda")
    with pytest.raises(BackendUnavailableError, match=r"cka has no triton implementation"):
        cka(make_features((2, 8, 3)), backend="triton")


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda", ("cuda",)))
@pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "biased"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(5, 800, 256)], ids=str)
def test_parity_cuda(backend, shape, dtype, debiased):
    features = make_features(shape, seed=sum(shape), device="cuda").to(dtype)
    # Exact fp32 GEMMs whatever the global TF32 flag (the op's default; test_tf32_policy.py runs it with TF32 on).
    assert_close_to_reference(cka(features, debiased=debiased, backend=backend), features, debiased, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda", ("cuda",)))
def test_opcheck_cuda(backend):
    torch.library.opcheck(torch.ops.mtl_ops.cka_forward.default, (make_features((3, 9, 4), device="cuda").float(), True))


@requires_cuda
def test_auto_backend_on_cuda_is_fused():
    from mtl_ops.backends import select_backend

    assert select_backend(OP, torch.device("cuda")) == "cuda"
