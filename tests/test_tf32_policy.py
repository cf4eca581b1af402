"""The fp32 GEMM precision policy of the GEMM-based ops, ctal_affinity and cka (csrc/common/fp32_matmul_precision.h):
exact IEEE fp32 by default whatever PyTorch's global matmul settings (TF32 / float32 matmul precision / preferred
BLAS), opt-in with ``allow_tf32=True``; the global settings are the same after every call. The guard itself is
checked on the CPU through ``mtl_ops::_fp32_matmul_guard_probe`` (for both device types), the results on the CPU
and, with TF32 on, on CUDA."""
import threading

import pytest
import torch
from harness import TOLERANCES, backend_params, global_matmul_precision, matmul_precision_snapshot
from test_cka import make_features
from test_ctal_affinity import suite as ctal_suite

import mtl_ops
from mtl_ops.ops import cka, ctal_affinity
from mtl_ops.reference import cka as cka_reference
from mtl_ops.reference import ctal_affinity as ctal_reference

def make_inputs(cfg, device="cpu"):
    """x, v, weight, bias of ctal_affinity (the inputs of its op suite)."""
    return ctal_suite.make(cfg, device=device).args[:4]


def run_with_grads(fn, inputs, grad_out):
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = fn(*leaves)
    return y, torch.autograd.grad(y, leaves, grad_out)


def assert_scaled_close(actual, expected, dtype, what):
    ctal_suite.assert_close(actual, expected, dtype, "reduction", what, scaled=True)


needs_cpp = pytest.mark.skipif(not mtl_ops.backends.LIBRARIES["cpp"].loaded, reason="compiled library not loaded")

# The global states a training script may leave: name -> global_matmul_precision arguments.
STATES = {
    "default": {},
    "allow_tf32": {"allow_tf32": True},
    "precision_high": {"precision": "high"},
    "precision_medium": {"precision": "medium"},
}
LEGACY = {"highest": 0, "high": 1, "medium": 2}  # at::Float32MatmulPrecision


def probe(allow_tf32: bool, device_type: str) -> list[int]:
    """[NoTF32Guard active, allowTF32CuBLAS(), float32MatmulPrecision()] inside a guard for device_type."""
    return list(torch.ops.mtl_ops._fp32_matmul_guard_probe(allow_tf32, device_type))


def settings(state, blas=None):
    """global_matmul_precision for STATES[state] (and a preferred BLAS library), skipped where this torch cannot
    select that library."""
    try:
        with global_matmul_precision(blas=blas):
            pass
    except RuntimeError as e:
        pytest.skip(f"preferred_blas_library({blas!r}) unavailable here: {e}")
    return global_matmul_precision(blas=blas, **STATES[state])


@needs_cpp
@pytest.mark.parametrize("blas", ["cublas", "cublaslt"])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("state", STATES)
def test_exact_guard_disables_tf32_inside_and_restores(state, device_type, blas):
    with settings(state, blas):
        before = matmul_precision_snapshot()
        legacy = LEGACY[before["float32_matmul_precision"]]
        no_tf32, allow_tf32_inside, legacy_inside = probe(False, device_type)
        assert no_tf32 == 1  # thread-local: cuBLAS's math mode (its default BLAS path) is exact
        # Paths that read the global flag are switched to "highest" for the call: cuBLASLt on CUDA, oneDNN's bf16
        # GEMMs ("medium") on the CPU; otherwise the global state is left alone.
        switched = legacy != 0 and (device_type == "cuda" and blas == "cublaslt" or device_type == "cpu" and legacy == 2)
        if not switched:
            assert (allow_tf32_inside, legacy_inside) == (int(legacy != 0), legacy)
        else:
            assert allow_tf32_inside == 0  # what cuBLASLt's compute type follows
            # "high" is switched with setAllowTF32CuBLAS(false), which touches only the CUDA matmul setting; where
            # set_float32_matmul_precision("high") also set oneDNN's to tf32, PyTorch's legacy getter rejects that
            # state (-1) until the restore.
            mixed = legacy == 1 and before["mkldnn.matmul.fp32_precision"] == "tf32"
            assert legacy_inside == (-1 if mixed else 0)
        assert matmul_precision_snapshot() == before


@needs_cpp
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
@pytest.mark.parametrize("state", STATES)
def test_opt_in_leaves_the_global_setting_in_force(state, device_type):
    with settings(state, "cublaslt"):
        before = matmul_precision_snapshot()
        legacy = LEGACY[before["float32_matmul_precision"]]
        assert probe(True, device_type) == [0, int(legacy != 0), legacy]
        assert matmul_precision_snapshot() == before


@needs_cpp
def test_concurrent_calls_restore_the_global_setting_once():
    # Operator calls on several threads under "medium" (each switches the global state on the CPU): the holder
    # count must restore "medium" once, after the last call, whatever the interleaving.
    features = make_features((3, 300, 17), seed=2).float()
    with global_matmul_precision():
        exact = cka(features, backend="cpp")
    results, errors = [], []

    def work():
        try:
            for _ in range(10):
                results.append(cka(features, backend="cpp"))
                probe(False, "cpu")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with global_matmul_precision("medium"):
        before = matmul_precision_snapshot()
        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert matmul_precision_snapshot() == before
    assert len(results) == 60  # (bitwise equality is not asserted: concurrent BLAS calls may split work differently)
    for r in results:
        torch.testing.assert_close(r, exact, rtol=1e-6, atol=1e-7)


# ---- results: CPU --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_params("cka", "cpu", ("cpp",)))
@pytest.mark.parametrize("state", [s for s in STATES if s != "default"])
def test_cka_cpu_is_exact_under_any_global_setting(backend, state):
    # "medium" lets oneDNN run fp32 GEMMs in bf16 on CPUs with bf16 units (AVX512-BF16, AMX): the default policy
    # must give bit for bit the result of "highest".
    features = make_features((3, 300, 17), seed=4).float()
    with global_matmul_precision():
        exact = cka(features, backend=backend)
    with global_matmul_precision(**STATES[state]):
        assert torch.equal(cka(features, backend=backend), exact)


@pytest.mark.parametrize("backend", backend_params("ctal_affinity", "cpu", ("cpp",)))
@pytest.mark.parametrize("state", [s for s in STATES if s != "default"])
def test_ctal_cpu_is_exact_under_any_global_setting(backend, state):
    inputs = make_inputs((2, 3, 16, 12, 12, 3, True))
    grad_out = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1))

    def run():
        return run_with_grads(lambda *a: ctal_affinity(*a, 0.3, backend=backend), inputs, grad_out)

    with global_matmul_precision():
        y, grads = run()
    with global_matmul_precision(**STATES[state]):
        y2, grads2 = run()
    assert torch.equal(y2, y) and all(torch.equal(a, b) for a, b in zip(grads2, grads))


@pytest.mark.parametrize("backend", backend_params("ctal_affinity", "cpu", ("cpp",)))
def test_ctal_allow_tf32_reaches_the_operators(backend):
    # The opt-in is an operator argument of the forward and of the backward (and the Triton backend, always IEEE,
    # takes none): with the global setting at "highest" it changes nothing.
    inputs = make_inputs((1, 2, 3, 5, 7, 3, False))
    grad_out = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1))
    y, grads = run_with_grads(lambda *a: ctal_affinity(*a, 0.3, backend=backend), inputs, grad_out)
    y2, grads2 = run_with_grads(lambda *a: ctal_affinity(*a, 0.3, backend=backend, allow_tf32=True), inputs, grad_out)
    assert torch.equal(y2, y) and all(torch.equal(a, b) for a, b in zip(grads2, grads))
    out, gram = torch.ops.mtl_ops.ctal_affinity_forward(*inputs, 0.3, True)
    torch.testing.assert_close(out, y, rtol=0, atol=0)
    dx = torch.ops.mtl_ops.ctal_affinity_backward(grad_out, *inputs, 0.3, gram, True)[0]
    torch.testing.assert_close(dx, grads[0], rtol=0, atol=0)


# ---- results: CUDA with TF32 on ----------------------------------------------------------------------------

CUDA_TF32_STATES = [("allow_tf32", None), ("precision_high", None), ("precision_high", "cublaslt")]


def _tf32_id(p):
    return f"{p[0]}-{p[1] or 'cublas'}"


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params("cka", "cuda", ("cuda",)))
@pytest.mark.parametrize("debiased", [True, False], ids=["debiased", "biased"])
@pytest.mark.parametrize("shape, offset", [((5, 800, 256), 0.0), ((3, 80, 40), 50.0)], ids=["large", "offset50"])
@pytest.mark.parametrize("tf32_state", CUDA_TF32_STATES, ids=_tf32_id)
def test_cka_cuda_is_fp32_exact_with_tf32_on(backend, tf32_state, shape, offset, debiased):
    # The offset case: the column means are GEMVs too, and a common offset 50x the spread is what centring removes.
    features = make_features(shape, seed=11, offset=offset, device="cuda").float()
    expected = cka_reference(features.double(), debiased=debiased)
    rtol, atol = TOLERANCES["reduction"][torch.float32]
    with settings(*tf32_state):
        got = cka(features, debiased=debiased, backend=backend)
        assert torch.backends.cuda.matmul.allow_tf32  # the op left the global flag on
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=atol)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params("ctal_affinity", "cuda", ("cuda",)))
@pytest.mark.parametrize("tf32_state", CUDA_TF32_STATES, ids=_tf32_id)
def test_ctal_cuda_is_fp32_exact_with_tf32_on(backend, tf32_state):
    # Z sums over N = 256 pixels of T*C = 48 channels: TF32's operand rounding alone gives ~4e-4 relative error.
    inputs = make_inputs((2, 3, 16, 16, 16, 3, True), device="cuda")
    grad_out = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1)).to("cuda")
    y64, grads64 = run_with_grads(lambda *a: ctal_reference(*a, 0.3), [t.double() for t in inputs], grad_out.double())
    with settings(*tf32_state):
        y, grads = run_with_grads(lambda *a: ctal_affinity(*a, 0.3, backend=backend), inputs, grad_out)
        assert torch.backends.cuda.matmul.allow_tf32
    assert_scaled_close(y, y64, torch.float32, "r")
    for name, got, want in zip(("d_x", "d_v", "d_weight", "d_bias"), grads, grads64):
        assert_scaled_close(got, want, torch.float32, name)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params("ctal_affinity", "cuda", ("cuda",)))
def test_ctal_cuda_opt_in_runs_with_tf32(backend):
    # allow_tf32=True with the global flag on: TF32 tensor cores (on sm_80+), results within TF32's accuracy.
    inputs = make_inputs((2, 3, 16, 16, 16, 3, True), device="cuda")
    y64 = ctal_reference(*[t.double() for t in inputs], 0.3)
    with global_matmul_precision(allow_tf32=True):
        y = ctal_affinity(*inputs, 0.3, backend=backend, allow_tf32=True)
    scale = y64.abs().max().item()
    torch.testing.assert_close(y.double() / scale, y64 / scale, rtol=5e-3, atol=5e-3)
