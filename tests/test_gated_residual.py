"""gated_residual: the op suite (tests/op_suite.py), and what is particular to it: gates in the activation dtype,
work-item boundaries of the kernels, layouts kept, empty tensors, thread-count independence."""
import pytest
import torch
from harness import backend_params, layout_channels_last, layout_permuted, layout_strided
from op_suite import PYTHON, OpSuite, Sample, change, run_with_grads

import mtl_ops
from mtl_ops.ops import gated_residual
from mtl_ops.reference import gated_residual as reference

OP = "gated_residual"


class TestGatedResidual(OpSuite):
    OP = OP
    fn = staticmethod(gated_residual)
    reference = staticmethod(reference)
    CASES = {str(s): s for s in [(3, 2, 5, 7, 9), (1, 1, 1, 1, 1), (2, 1, 3, 1, 17), (4, 3, 8, 6, 10), (3, 1, 4, 5, 6)]}
    CUDA_CASES = {"(3, 8, 64, 72, 96)": (3, 8, 64, 72, 96)}
    SMALL_CASE = (3, 2, 4, 5, 6)
    GRADCHECK_CASES = ((2, 2, 3, 2, 3),)
    LAYOUTS = {"channels_last": layout_channels_last, "permuted": layout_permuted, "strided": layout_strided}
    BAD_INPUTS = [
        ("branch-shape", change(1, lambda a: a[1][:, :1]), ValueError,
         r"branch must have the shape of residual \(3, 2, 4, 5, 6\), got \(3, 1"),
        ("gates-rows", change(2, lambda a: a[2][:2]), ValueError, r"gates must have shape \(T, 2\) = \(3, 2\), got \(2, 2\)"),
        ("gates-1d", change(2, lambda a: a[2].reshape(6)), ValueError, r"gates must have shape \(T, 2\)"),
        ("branch-dtype", change(1, lambda a: a[1].double()), TypeError,
         r"branch must have the dtype of residual \(torch.float32\), got torch.float64"),
        ("int", lambda s: s.map(lambda t: t.int() if t.dim() == 5 else t), TypeError,
         r"residual must be float32, float64, float16 or bfloat16, got torch.int32"),
        ("gates-dtype", lambda s: change(2, lambda a: a[2].double())(s.map(lambda t: t.half())), TypeError,
         r"gates must be float32 or the dtype of residual"),
        ("device", change(2, lambda a: a[2].to("meta")), ValueError, r"must be on one device, got cpu, cpu and meta"),
        ("0-d", lambda s: s.map(lambda t: t.reshape(-1)[0] if t.dim() == 5 else t), ValueError, r"leading task dimension"),
        ("ndarray", change(1, lambda a: a[1].numpy()), TypeError, r"branch must be a torch.Tensor, got ndarray", PYTHON),
    ]

    @classmethod
    def make(cls, shape, dtype=torch.float32, device="cpu", seed=0, gates_dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        r = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        b = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
        gates = torch.softmax(torch.randn(shape[0], 2, generator=g), dim=1).to(device=device, dtype=gates_dtype)
        return Sample([r, b, gates], {}, [0, 1, 2])

    @classmethod
    def grad_kind(cls, path):
        return "reduction" if path == 2 else "elementwise"  # the gate gradients sum over a task's elements


cpu_backends = pytest.mark.parametrize("backend", backend_params(OP, "cpu"))
suite = TestGatedResidual()


@cpu_backends
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gates_in_activation_dtype(backend, dtype):
    suite.check_against_reference(backend, suite.make((3, 2, 5, 7, 9), dtype, gates_dtype=dtype), dtype)


@cpu_backends
def test_channels_last_runs_in_place_and_keeps_its_strides(backend):
    y = suite.check_against_reference(backend, suite.sample().map(layout_channels_last), torch.float32)
    assert y.stride() == layout_channels_last(torch.empty(suite.SMALL_CASE)).stride()


@cpu_backends
@pytest.mark.parametrize("layout", [layout_channels_last, layout_permuted], ids=["channels_last", "permuted"])
def test_opcheck_layouts(backend, layout):
    # the fake kernels predict the strides the kernels give (mtl_ops.common.layout) for task-major layouts too
    forward, backward = suite.operators(backend)
    s, _ = suite.sample().map(layout).leaves()
    torch.library.opcheck(forward, tuple(s.args))
    torch.library.opcheck(backward, (torch.randn_like(s.args[0]), *[t.detach() for t in s.args]))


@cpu_backends
def test_large_enough_for_several_work_items(backend):
    # The CPU kernel splits each task into 32768-element items and the Triton one into 1024-element
    # programs: cross those boundaries (and leave a ragged tail) so the per-item partial sums are exercised.
    shape = (2, 1, 1, 1, 40000) if backend == "cpp" else (2, 1, 1, 1, 2500)
    suite.check_against_reference(backend, suite.make(shape), torch.float32)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cpp_large_output(backend, dtype):
    # An output above 8 MiB (hundreds of work items per task), with a ragged last item.
    shape = (2, 1, 1, 1, (9 << 20) // torch.finfo(dtype).bits * 8 // 2 + 77)
    suite.check_against_reference(backend, suite.make(shape, dtype), dtype)


@cpu_backends
def test_empty_tensors(backend):
    y, (dr, db, dg), _ = run_with_grads(suite.call(backend), suite.make((2, 0, 3, 4, 5)))
    assert y.shape == (2, 0, 3, 4, 5) and dr.shape == y.shape and torch.equal(dg, torch.zeros(2, 2))


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_cpp_gate_gradients_do_not_depend_on_thread_count(backend):
    sample = suite.make((2, 2, 8, 64, 64))
    grad_out = torch.randn(2, 2, 8, 64, 64)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run_with_grads(suite.call(backend), sample, grad_out)[1][2])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_direct_backward_checks_grad_out():
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    r, b, g = suite.sample().args
    with pytest.raises(RuntimeError, match=r"grad_out must match residual"):
        torch.ops.mtl_ops.gated_residual_backward(r[:1], r, b, g)
