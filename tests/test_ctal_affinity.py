"""ctal_affinity: the op suite (tests/op_suite.py), and what is particular to it: fp32 parameters with half
activations, fp32 accumulation as Z grows with N, no N x N allocation, the plain reassociation oracle, the
backward's argument checks."""
import pytest
import torch
from harness import backend_params, layout_channels_last, layout_permuted
from op_suite import PYTHON, OpSuite, Sample, change, run_with_grads

import mtl_ops
from mtl_ops.bench.memory import cpu_peak_supported, peak_memory_bytes
from mtl_ops.ops import ctal_affinity
from mtl_ops.reference import ctal_affinity as reference

OP = "ctal_affinity"
# (B, T, C, H, W, k, per_task): T = 2..4, k = 3 and 5, non-square and odd grids, batch 1.
CONFIGS = [
    (1, 2, 3, 5, 7, 3, False), (2, 3, 4, 4, 6, 3, True), (1, 4, 2, 3, 5, 5, False), (2, 2, 5, 7, 3, 5, True),
    (1, 3, 4, 6, 5, 3, False), (1, 3, 3, 5, 4, 3, True), (2, 4, 2, 2, 3, 3, True), (1, 2, 3, 1, 6, 5, False),
    (1, 2, 2, 3, 5, 5, True),
]


def cfg_id(cfg):
    B, T, C, H, W, k, per_task = cfg
    return f"B{B}T{T}C{C}_{H}x{W}_k{k}_{'per_task' if per_task else 'shared'}"


class TestCtalAffinity(OpSuite):
    OP = OP
    fn = staticmethod(ctal_affinity)
    # parameters may be fp32 beside half activations: the reference takes them in the activations' dtype
    reference = staticmethod(lambda x, v, w, b, gamma: reference(x, v, w.to(x.dtype), b.to(x.dtype), gamma))
    CASES = {cfg_id(c): c for c in CONFIGS}
    CUDA_CASES = {cfg_id(c): c for c in [(2, 3, 16, 24, 32, 3, False), (2, 3, 16, 24, 32, 3, True)]}
    # The Triton interpreter costs ~1 ms per program instance: two cases in fp32, one in every dtype.
    TRITON_CASES = {(cfg_id(CONFIGS[0]), torch.float32), (cfg_id(CONFIGS[8]), torch.float32),
                    *((cfg_id(CONFIGS[4]), d) for d in OpSuite.DTYPES)}
    SMALL_CASE = (1, 2, 3, 3, 4, 3, False)
    BAD_CASE = (2, 3, 4, 5, 6, 3, False)
    GRADCHECK_CASES = ((1, 2, 2, 3, 4, 3, False), (1, 2, 2, 3, 4, 3, True))
    LAYOUTS = {"permuted": layout_permuted, "channels_last": layout_channels_last}
    SCALED = ("output", "gradients")  # Z sums over all N pixels: errors scale with its magnitude
    OUTPUT_KIND = "reduction"
    SLOW_TRITON = True
    BAD_INPUTS = [
        ("v-shape", change(1, lambda a: a[1][:, :2]), ValueError, r"v must have the shape of x \(2, 3, 4, 5, 6\), got \(2, 2"),
        ("x-4d", lambda s: change(1, lambda a: a[1][0])(change(0, lambda a: a[0][0])(s)), ValueError,
         r"x must have shape \(B, T, C, H, W\), got \(3, 4, 5, 6\)"),
        # found by the property tests: an empty map (N = 0) crashed the C++ kernel and the reference
        ("empty-map", lambda s: s.map(lambda t: t[..., :0, :] if t.dim() == 5 and t.shape[1] == 3 else t), ValueError,
         r"x must have H, W >= 1, got shape \(2, 3, 4, 0, 6\)"),
        ("k-even", change(2, lambda a: a[2][:, :, :2, :2]), ValueError, r"kernel size k must be odd, got k = 2"),
        ("weight-N", change(2, lambda a: a[2][:20]), ValueError,
         r"weight must have shape \(N, T, k, k\) with N = H\*W = 30, T = 3, got \(20,"),
        ("weight-T", change(2, lambda a: a[2][:, :2]), ValueError, r"weight must have shape \(N, T, k, k\) .* got \(30, 2, 3, 3\)"),
        ("weight-per-task", change(2, lambda a: a[2][None].expand(3, -1, -1, -1, -1)[:2]), ValueError,
         r"weight must have shape \(T, N, T, k, k\)"),
        ("weight-2d", change(2, lambda a: a[2][0, 0]), ValueError, r"weight must have shape \(N, T, k, k\) or \(T, N, T, k, k\)"),
        ("bias-shared", change(3, lambda a: a[3][:5]), ValueError, r"bias must have shape \(30,\) for shared weight, got \(5,\)"),
        ("bias-per-task", change(2, lambda a: a[2][None].expand(3, -1, -1, -1, -1)), ValueError,
         r"bias must have shape \(3, 30\) for per-task"),
        ("v-dtype", change(1, lambda a: a[1].double()), TypeError, r"v must have the dtype of x \(torch.float32\), got torch.float64"),
        ("int", lambda s: change(1, lambda a: a[1].int())(change(0, lambda a: a[0].int())(s)), TypeError,
         r"x must be float32, float64, float16 or bfloat16, got torch.int32"),
        ("weight-dtype", lambda s: s.map(lambda t: t.half() if t.dim() == 5 else t.double()), TypeError,
         r"weight must be float32 or the dtype of x"),
        ("bias-dtype", change(3, lambda a: a[3].double()), TypeError, r"bias must have the dtype of weight"),
        ("device", change(3, lambda a: a[3].to("meta")), ValueError, r"must be on one device, got cpu, cpu, cpu and meta"),
        ("ndarray", change(1, lambda a: a[1].numpy()), TypeError, r"v must be a torch.Tensor, got ndarray", PYTHON),
        ("gamma-str", change(4, "0.05"), TypeError, r"gamma must be a Python float, got str", PYTHON),
    ]

    @classmethod
    def make(cls, cfg, dtype=torch.float32, device="cpu", seed=0, param_dtype=None, gamma=0.3):
        B, T, C, H, W, k, per_task = cfg
        N = H * W
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, T, C, H, W, generator=g)
        v = torch.randn(B, T, C, H, W, generator=g)
        weight = 0.3 * torch.randn((T, N, T, k, k) if per_task else (N, T, k, k), generator=g)
        bias = 0.1 * torch.randn((T, N) if per_task else (N,), generator=g)
        p = param_dtype or dtype
        return Sample([x.to(device, dtype), v.to(device, dtype), weight.to(device, p), bias.to(device, p), gamma], {},
                      [0, 1, 2, 3])

    @classmethod
    def backward_args(cls, out, sample):
        return (torch.randn_like(out[0]), *sample.args, out[1])


suite = TestCtalAffinity()


def slow_triton(backends=("cpp", "triton")):
    return [pytest.param(*p.values, marks=list(p.marks) + ([pytest.mark.slow] if p.values[0] == "triton" else []),
                         id=p.id) for p in backend_params(OP, "cpu", backends)]


@pytest.mark.parametrize("backend", slow_triton())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_with_fp32_parameters(backend, dtype):
    suite.check_against_reference(backend, suite.make((1, 2, 3, 4, 5, 3, True), dtype, param_dtype=torch.float32), dtype)


@pytest.mark.parametrize("backend", slow_triton())
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


@pytest.mark.parametrize("backend", slow_triton())
def test_opcheck_per_task_weight(backend):
    forward, backward = suite.operators(backend)
    s, _ = suite.make((1, 2, 3, 3, 4, 3, True)).leaves()
    torch.library.opcheck(forward, tuple(s.args))
    out = forward(*suite.make((1, 2, 3, 3, 4, 3, True)).args)
    torch.library.opcheck(backward, suite.backward_args(out, suite.make((1, 2, 3, 3, 4, 3, True))))


@pytest.mark.skipif(not cpu_peak_supported(), reason="needs /proc/self/clear_refs to measure the CPU peak")
@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_no_n_by_n_allocation_at_half_nyuv2_resolution(backend):
    # 144 x 192: N = 27,648, so one N x N fp32 tensor is 3.06 GB. Forward and backward must stay far below.
    sample = suite.make((1, 2, 2, 144, 192, 3, False))
    grad_out = torch.randn(sample.args[0].shape)

    def call():
        return run_with_grads(suite.call(backend), sample, grad_out)

    call()
    peak = peak_memory_bytes(call, torch.device("cpu"))
    n_by_n = 27648 ** 2 * 4
    assert peak < n_by_n / 20, f"peak {peak / 2**20:.0f} MiB, one N x N tensor is {n_by_n / 2**20:.0f} MiB"


@pytest.mark.parametrize("call, match", [
    (lambda x, v, w, b: torch.ops.mtl_ops.ctal_affinity_backward(x[:1], x, v, w, b, 0.1, x), r"grad_out must match x"),
    (lambda x, v, w, b: torch.ops.mtl_ops.ctal_affinity_backward(x, x, v, w, b, 0.1, x), r"gram must be the forward's"),
])
def test_direct_backward_checks_its_arguments(call, match):
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    with pytest.raises(RuntimeError, match=match):
        call(*suite.sample(suite.BAD_CASE).args[:4])


@pytest.mark.parametrize("cfg", CONFIGS[:4], ids=cfg_id)
def test_plain_reassociation_matches_reference(cfg):
    from mtl_ops.reference import ctal_affinity_reassociated

    sample = suite.make(cfg, torch.float64)
    grad_out = torch.randn(sample.args[0].shape, dtype=torch.float64)
    y, grads, _ = run_with_grads(ctal_affinity_reassociated, sample, grad_out)
    y64, grads64, _ = run_with_grads(reference, sample, grad_out)
    for got, want in zip([y] + grads, [y64] + grads64):
        suite.assert_close(got, want, torch.float64, "reduction", "reassociated", True)
