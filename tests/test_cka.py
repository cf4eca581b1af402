"""cka: the op suite (tests/op_suite.py), and what is particular to it: both estimators, accuracy under a large
common offset, the translation invariance the fused op relies on, the 0/0 and NaN conventions, the forward-only
rule (backend=None falls back to the reference, a fused backend named explicitly refuses), memory."""
import pytest
import torch
from harness import backend_params, layout_permuted, layout_strided
from op_suite import PYTHON, OpSuite, Sample, change

from mtl_ops.backends import BackendUnavailableError
from mtl_ops.bench.memory import cpu_peak_supported, peak_memory_bytes
from mtl_ops.ops import cka
from mtl_ops.reference import cka as reference

OP = "cka"
# (T, n, d): one strip (n ≤ 32 rows), several strips with a partial last one, d = 1, T = 1, n = 4 (smallest
# debiased), and n = 300 (strips of 38 rows).
SHAPES = [(3, 12, 5), (4, 70, 9), (2, 45, 1), (1, 33, 6), (5, 4, 3), (3, 300, 17)]


def make_features(shape, seed=0, offset=0.0, device="cpu"):
    """Features with a shared per-feature offset (as pooled ReLU features have) and correlated tasks."""
    g = torch.Generator().manual_seed(seed)
    T, n, d = shape
    common = torch.randn(1, n, d, generator=g, dtype=torch.float64)
    own = torch.randn(T, n, d, generator=g, dtype=torch.float64)
    mix = torch.linspace(0.2, 0.9, T, dtype=torch.float64).view(T, 1, 1)
    x = mix * common + (1 - mix) * own + offset * torch.rand(T, 1, d, generator=g, dtype=torch.float64)
    return x.to(device)


def layout_transposed(t):
    return t.transpose(1, 2).contiguous().transpose(1, 2)


class TestCka(OpSuite):
    OP = OP
    fn = staticmethod(cka)
    reference = staticmethod(reference)
    CASES = {f"{s}-{'debiased' if b else 'biased'}": (s, b) for s in SHAPES for b in (True, False)}
    CUDA_CASES = {f"(5, 800, 256)-{'debiased' if b else 'biased'}": ((5, 800, 256), b) for b in (True, False)}
    DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    CPU_BACKENDS = ("cpp",)
    CUDA_BACKENDS = ("cuda",)
    SMALL_CASE = ((3, 16, 5), True)
    BAD_CASE = ((2, 8, 3), True)
    LAYOUTS = {"transposed": layout_transposed, "strided": layout_strided, "permuted": layout_permuted}
    FORWARD_ONLY = True
    OUTPUT_KIND = "reduction"
    BAD_INPUTS = [
        ("2-d", change(0, torch.randn(8, 3)), ValueError, r"features must be 3-D \(T, n, d\).*got 2-D"),
        ("int", change(0, torch.ones(2, 8, 3, dtype=torch.int64)), ValueError, r"features must be a floating-point tensor"),
        ("n-3", change(0, torch.randn(2, 3, 4)), ValueError, r"more than 3 samples \(n > 3\).*got n=3"),
        ("n-1-biased", lambda s: Sample([torch.randn(2, 1, 4)], {"debiased": False}, []), ValueError,
         r"at least 2 samples \(n ≥ 2\).*got n=1"),
        ("T-0", change(0, torch.randn(0, 8, 4)), ValueError, r"at least one task and one feature"),
        ("d-0", change(0, torch.randn(2, 8, 0)), ValueError, r"at least one task and one feature"),
        ("list", change(0, [[[1.0]]]), TypeError, r"features must be a torch.Tensor", PYTHON),
    ]

    @classmethod
    def make(cls, case, dtype=torch.float32, device="cpu", seed=None):
        shape, debiased = case
        features = make_features(shape, seed=sum(shape) if seed is None else seed, device=device).to(dtype)
        return Sample([features], {"debiased": debiased}, [])

    @classmethod
    def operator_args(cls, sample):
        return sample.args[0], sample.kwargs["debiased"]

    def assert_close(self, got, want, dtype, kind, what, scaled=False):
        # the similarities are reduced in fp32 (fp64 for fp64 input) whatever the input precision
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        super().assert_close(got, want, acc, kind, what, scaled)


suite = TestCka()
cpp = pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
estimators = pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "biased"])


@cpp
@estimators
def test_large_common_offset_keeps_fp32_accuracy(backend, debiased):
    # An offset 50× the spread makes the uncentred Gram ~2500× its centred part; the fused op centres the
    # features first, so its fp32 result stays within the fp32 tolerance of the fp64 truth.
    features = make_features((3, 80, 40), seed=7, offset=50.0).float()
    suite.check_against_reference(backend, Sample([features], {"debiased": debiased}, []), torch.float32)


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu", ("cpp",)))
@estimators
def test_translation_invariance_the_fused_op_relies_on(backend, debiased):
    features = make_features((3, 20, 6), seed=3)
    shifted = features + torch.randn(3, 1, 6, dtype=torch.float64) * 10
    torch.testing.assert_close(cka(shifted, debiased=debiased, backend=backend),
                               cka(features, debiased=debiased, backend=backend), rtol=1e-9, atol=1e-10)


@cpp
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


@cpp
def test_forward_only_backend_refuses_grad_but_runs_under_no_grad(backend):
    features = make_features((2, 8, 3)).requires_grad_()
    with pytest.raises(BackendUnavailableError, match=r"cka: backend 'cpp' \(backend argument\) is unavailable: the "
                                                      r"cpp backend is forward only, but features requires grad"):
        cka(features, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(cka(features, backend=backend), reference(features.detach()))
    reference_out = cka(features, backend="reference")     # the reference is differentiable
    reference_out[0, 1].backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_features_that_require_grad_fall_back_to_the_reference():
    # backend=None: the fused backends cannot differentiate, so the reference runs and the result has a gradient
    features = make_features((2, 8, 3)).requires_grad_()
    out = cka(features)
    out[0, 1].backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    torch.testing.assert_close(out.detach(), reference(features.detach()), rtol=1e-9, atol=1e-10)


@pytest.mark.skipif(not cpu_peak_supported(), reason="needs /proc/self/clear_refs to measure the CPU peak")
@cpp
def test_never_holds_a_gram_matrix(backend):
    # T = 4, n = 3000: one n×n fp32 Gram is 34 MiB, the reference holds several T·n² buffers (≥ 137 MiB each);
    # the strips (256 rows) need T·256·n floats = 12 MiB.
    features = torch.randn(4, 3000, 16)
    cka(features, backend=backend)
    peak = peak_memory_bytes(lambda: cka(features, backend=backend), torch.device("cpu"))
    one_gram = 3000 ** 2 * 4
    assert peak < one_gram, f"peak {peak / 2**20:.1f} MiB, one Gram is {one_gram / 2**20:.1f} MiB"


def test_has_no_triton_backend():
    with pytest.raises(BackendUnavailableError, match=r"cka has no triton implementation"):
        cka(make_features((2, 8, 3)), backend="triton")


@cpp
def test_opcheck_biased(backend):
    torch.library.opcheck(torch.ops.mtl_ops.cka_forward.default, (make_features((3, 9, 4)).float(), False))
