"""sfa_apply: the op suite (tests/op_suite.py), and what is particular to it: the spatial (M = 1) and channel
(M = C) masks, the CPU kernel's pixel chunks, thread-count independence, the backward's grad_out check."""
import pytest
import torch
from harness import backend_params, layout_channels_last, layout_strided
from op_suite import PYTHON, OpSuite, Sample, change, run_with_grads

import mtl_ops
from mtl_ops.ops import sfa_apply
from mtl_ops.reference import sfa_apply as reference

OP = "sfa_apply"
# (T, B, C, h, w, M): M = 1 a spatial mask, "C" one per channel
SHAPES = [(3, 2, 5, 7, 9), (1, 1, 1, 1, 1), (4, 2, 6, 5, 3), (2, 1, 3, 1, 17)]


class TestSfaApply(OpSuite):
    OP = OP
    fn = staticmethod(sfa_apply)
    reference = staticmethod(reference)
    CASES = {f"{s}-{m}": (*s, m) for s in SHAPES for m in (1, "C")}
    CUDA_CASES = {f"(4, 8, 64, 72, 96)-{m}": (4, 8, 64, 72, 96, m) for m in (1, "C")}
    SMALL_CASE = (3, 2, 4, 5, 6, 1)
    GRADCHECK_CASES = ((3, 2, 3, 2, 3, 1), (3, 2, 3, 2, 3, "C"))
    LAYOUTS = {"channels_last": layout_channels_last, "strided": layout_strided}
    BAD_INPUTS = [
        ("features-3d", change(0, lambda a: a[0][0]), ValueError, r"features must be 4-d \(B, C, h, w\), got 3-d"),
        ("mask-4d", change(1, lambda a: a[1][0]), ValueError, r"mask_logits must be 5-d \(T, B, M, h, w\), got 4-d"),
        ("mask-M", change(1, lambda a: a[1].expand(3, 2, 3, 5, 6)), ValueError,
         r"mask_logits must have shape \(T, B, M, h, w\) = \(T, 2, 1 or 4, 5, 6\), got \(3, 2, 3, 5, 6\)"),
        ("mask-B", change(1, lambda a: a[1][:, :1]), ValueError, r"mask_logits must have shape .*got \(3, 1, 1, 5, 6\)"),
        ("mask-w", change(1, lambda a: a[1][..., :5]), ValueError, r"mask_logits must have shape .*got \(3, 2, 1, 5, 5\)"),
        ("int", lambda s: s.map(lambda t: t.int()), TypeError,
         r"features must be float32, float64, float16 or bfloat16, got torch.int32"),
        ("mask-dtype", change(1, lambda a: a[1].double()), TypeError,
         r"mask_logits must have the dtype of features \(torch.float32\), got torch.float64"),
        ("device", change(1, lambda a: a[1].to("meta")), ValueError, r"must be on one device, got cpu and meta"),
        ("ndarray", change(0, lambda a: a[0].numpy()), TypeError, r"features must be a torch.Tensor, got ndarray", PYTHON),
    ]

    @classmethod
    def make(cls, case, dtype=torch.float32, device="cpu", seed=0):
        T, B, C, h, w, M = case
        g = torch.Generator().manual_seed(seed)
        f = torch.randn(B, C, h, w, generator=g).to(device, dtype)
        m = (2 * torch.randn(T, B, C if M == "C" else 1, h, w, generator=g)).to(device, dtype)
        return Sample([f, m], {}, [0, 1])


suite = TestSfaApply()


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
@pytest.mark.parametrize("M", [1, "C"], ids=["spatial", "channel"])
@pytest.mark.parametrize("layout", [layout_channels_last, layout_strided], ids=["channels_last", "strided"])
def test_layouts_of_both_masks(backend, M, layout):
    suite.check_against_reference(backend, suite.make((3, 2, 5, 4, 6, M)).map(layout), torch.float32)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_several_pixel_chunks(backend):
    # The CPU kernel splits each plane into 1024-pixel chunks: cross that boundary with a ragged tail.
    suite.check_against_reference(backend, suite.make((2, 2, 3, 37, 41, 1)), torch.float32)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_cpp_backward_does_not_depend_on_thread_count(backend):
    sample = suite.make((4, 3, 8, 40, 40, 1))
    grad_out = torch.randn(4, 3, 8, 40, 40)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run_with_grads(suite.call(backend), sample, grad_out)[1])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
def test_opcheck_channel_mask(backend):
    forward, backward = suite.operators(backend)
    f, m = suite.make((3, 2, 4, 3, 5, "C")).args
    torch.library.opcheck(forward, (f.requires_grad_(), m.requires_grad_()))
    torch.library.opcheck(backward, (torch.randn(3, 2, 4, 3, 5), f.detach(), m.detach()))


def test_direct_backward_checks_grad_out():
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    f, m = suite.sample().args
    with pytest.raises(RuntimeError, match=r"grad_out must be \(T, B, C, h, w\)"):
        torch.ops.mtl_ops.sfa_apply_backward(f, f, m)
