"""ms_attention_mix: the op suite (tests/op_suite.py), and what is particular to it: the Triton backward's
gather-window tiles, empty batches and channels, exactness against F.interpolate, thread-count
independence, the backward's argument checks."""
import pytest
import torch
from harness import LaunchLog, backend_params, layout_channels_last, layout_strided
from op_suite import PYTHON, OpSuite, Sample, change, run_with_grads

import mtl_ops
from mtl_ops.ops import ms_attention_mix
from mtl_ops.reference import ms_attention_mix as reference

OP = "ms_attention_mix"


def layout_transposed(t):
    return t.transpose(2, 3).contiguous().transpose(2, 3)


class TestMsAttentionMix(OpSuite):
    OP = OP
    fn = staticmethod(ms_attention_mix)
    reference = staticmethod(reference)
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
    CUDA_CASES = {"full-size": (2, 40, (72, 96), [(72, 96), (36, 48), (18, 24), (9, 12)])}
    # The Triton interpreter costs about 1 ms per program instance and loop step: a few small cases only.
    TRITON_CASES = {("S1", torch.float32), ("S2-odd", torch.float32), ("S2-odd", torch.bfloat16),
                    ("S2-odd", torch.float64), ("S4-small", torch.float32), ("1x1", torch.float32)}
    SMALL_CASE = (1, 2, (5, 6), [(5, 6), (2, 3)])
    # the output sums S softmax-weighted values, each a 4-tap bilinear sample: a reduction (the property tests
    # found fp32 errors of 1.5e-5 on outputs that cancel terms near 3, with 8 scales, on cpp and the reference)
    OUTPUT_KIND = "reduction"
    BAD_CASE = CASES["S2-odd"]
    GRADCHECK_CASES = ((1, 2, (4, 5), [(3, 4), (2, 2)]), (1, 2, (4, 5), [(5, 3), (2, 4), (1, 1)]))
    LAYOUTS = {"channels_last": layout_channels_last, "strided": layout_strided, "transposed": layout_transposed}
    BAD_INPUTS = [
        ("values-tensor", change(0, lambda a: a[0][0]), TypeError, r"values must be a list or tuple of tensors .*got Tensor",
         PYTHON),
        ("no-scales", lambda s: change(1, [])(change(0, [])(s)), ValueError, r"values must hold 1 to 8 tensors .*got 0",
         PYTHON),  # an operator call without tensors has no device to dispatch on
        ("10-scales", lambda s: change(1, lambda a: a[1] * 5)(change(0, lambda a: a[0] * 5)(s)), ValueError,
         r"values must hold 1 to 8 tensors .*got 10"),
        ("logits-count", change(1, lambda a: a[1][:1]), ValueError, r"logits must hold one tensor per scale \(2\), got 1"),
        ("size-1", change(2, (11,)), ValueError, r"size must be two positive integers \(H, W\), got"),
        ("size-0", change(2, (0, 4)), ValueError, r"size must be two positive integers"),
        ("values-3d", change(0, lambda a: [a[0][0][0]] + a[0][1:]), ValueError,
         r"values\[0\] must be 4-d \(B, K, h, w\), got 3-d"),
        ("values-K", change(0, lambda a: [a[0][0], a[0][1][:, :0]]), ValueError,
         r"values\[1\] must have shape \(B, K, h, w\) = \(1, 1, h>0, w>0\), got \(1, 0, 5, 7\)"),
        ("logits-shape", change(1, lambda a: [a[1][0], a[1][1][..., :3]]), ValueError,
         r"logits\[1\] must have shape \(B, 1, h, w\) = \(1, 1, 5, 7\), got \(1, 1, 5, 3\)"),
        ("logits-dtype", change(1, lambda a: [a[1][0], a[1][1].double()]), TypeError,
         r"values\[1\] and logits\[1\] must have the dtype of values\[0\] \(torch.float32\), got torch.float32 and "
         r"torch.float64"),
        ("int", change(0, lambda a: [t.int() for t in a[0]]), TypeError, r"values must be float32, float64, float16 or bfloat16"),
        ("device", change(1, lambda a: [a[1][0], a[1][1].to("meta")]), ValueError, r"all tensors must be on one device \(cpu\)"),
        ("ndarray", change(1, lambda a: [a[1][0], a[1][1].numpy()]), TypeError, r"logits\[1\] must be a torch.Tensor, got ndarray",
         PYTHON),
    ]

    @classmethod
    def make(cls, case, dtype=torch.float32, device="cpu", seed=0):
        B, K, size, scales = case
        g = torch.Generator().manual_seed(seed)
        values = [torch.randn(B, K, h, w, generator=g).to(device, dtype) for h, w in scales]
        logits = [(2 * torch.randn(B, 1, h, w, generator=g)).to(device, dtype) for h, w in scales]
        S = len(scales)
        return Sample([values, logits, size], {}, [(0, s) for s in range(S)] + [(1, s) for s in range(S)])

    @classmethod
    def operator_args(cls, sample):
        values, logits, size = sample.args
        return values, logits, list(size)

    @classmethod
    def backward_args(cls, out, sample):
        values, logits, _ = sample.args
        return torch.randn_like(out[0]), values, logits, out[1]


suite = TestMsAttentionMix()


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("layout", list(TestMsAttentionMix.LAYOUTS))
def test_layouts_with_four_scales(backend, layout):
    sample = suite.sample("S4-strides").map(TestMsAttentionMix.LAYOUTS[layout])
    suite.check_against_reference(backend, sample, torch.float32)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
def test_triton_backward_gather_windows_in_tiles(backend, monkeypatch):
    # A 1 x 1 scale is read by every output pixel: its gradient gathers the whole 6 x 6 output. With 2 x 2
    # window tiles that is 9 programs per gathered pixel block, each looping over 4 output pixels, their
    # partials summed in order (the full-size scale's window, 6 x 6 here, is tiled the same way).
    from mtl_ops.triton import load
    monkeypatch.setattr(load("ms_attention_mix"), "WINDOW_TILE", 2)
    log = LaunchLog(monkeypatch)
    suite.check_against_reference(backend, suite.make((1, 2, (6, 6), [(6, 6), (1, 1)])), torch.float32)
    for kernel in ("_gather_values_kernel", "_gather_logits_kernel"):
        grids = [grid for name, grid, _ in log.launches if name == kernel]
        assert grids == [(1 * 9, 1), (1 * 9, 1)], kernel  # (pixel blocks x window tiles, batch x channel blocks)


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu"))
@pytest.mark.parametrize("B, K", [(0, 3), (2, 0)])
def test_empty_batch_or_channels(backend, B, K):
    sample = suite.make((B, K, (5, 6), [(5, 6), (2, 3)]))
    out, grads, _ = run_with_grads(suite.call(backend), sample, torch.zeros(B, K, 5, 6))
    assert out.shape == (B, K, 5, 6)
    assert all(g.shape == sample.get(p).shape and not g.any() for g, p in zip(grads, sample.diff))


def test_integer_factor_matches_interpolate_exactly_on_cpp():
    # With a single scale the weights are all 1: the op is F.interpolate, which the taps reproduce.
    values, logits, size = suite.make((2, 4, (16, 24), [(4, 6)]), torch.float64).args
    out = ms_attention_mix(values, logits, size, backend="cpp")
    want = torch.nn.functional.interpolate(values[0], size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("K", [6, 21], ids=["K6", "K21"])  # K21: several channel blocks of the cpp backward
def test_cpp_backward_does_not_depend_on_thread_count(K):
    sample = suite.make((3, K, (24, 30), [(24, 30), (12, 15), (5, 7)]))
    grad_out = torch.randn(3, K, 24, 30)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run_with_grads(suite.call("cpp"), sample, grad_out)[1])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("call, match", [
    (lambda v, a, s: torch.ops.mtl_ops.ms_attention_mix_backward(torch.zeros(1, 2, 3, 3), v, a, torch.zeros(1, 3, 3)),
     r"grad_out must match the output \(B, K, H, W\) = \(1, 1, H, W\)"),
    (lambda v, a, s: torch.ops.mtl_ops.ms_attention_mix_backward(torch.zeros(1, 1, 11, 13), v, a,
                                                                 torch.zeros(1, 11, 12)), r"lse must be \(B, H, W\)"),
])
def test_direct_backward_checks_its_arguments(call, match):
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    with pytest.raises(RuntimeError, match=match):
        call(*suite.sample("S2-odd").args)
