"""routed_primitive_gather: the op suite (tests/op_suite.py) over every primitive alone and in mixtures, and
what is particular to it: odd shapes and one-branch layers, the Triton tiling (bounded pieces, capped tiles,
the meta table, no atomics), max-pool ties and -inf windows, and the CUDA paths (graph capture, streams,
devices, the bank in chunks)."""
import pytest
import torch
from harness import (LaunchLog, assert_close, backend_params, layout_channels_last, layout_strided, requires_triton,
                     tf32_everywhere)
from op_suite import OpSuite, Sample, change, change_kwargs, run_with_grads
from rpg_cases import PRIMITIVE_SETS, make_case

import mtl_ops
from mtl_ops.ops import routed_primitive_gather
from mtl_ops.reference import routed_primitive_gather as reference

OP = "routed_primitive_gather"
DIFF = [0, 4, 5, 6, 7]  # positions of the differentiable inputs
# The Triton interpreter runs about 1 ms per operation: tiny shapes (2 images, 2 channels, one program each).
TRITON_TINY = dict(T=2, B=1, C=2, H=5, W=6, C_sh=2, C_sp=1)


def sample_of(args, kwargs) -> Sample:
    return Sample(list(args), dict(kwargs), list(DIFF))


class TestRoutedPrimitiveGather(OpSuite):
    OP = OP
    fn = staticmethod(routed_primitive_gather)
    reference = staticmethod(reference)
    # every primitive alone and the mixtures, at strides 1 and 2 (in fp32), and "all" in every dtype
    CASES = {f"{prims}-s{stride}": dict(prims=prims, stride=stride, groups=2 if len(PRIMITIVE_SETS[prims]) * 4 % 2 == 0
                                        else 1) for prims in sorted(PRIMITIVE_SETS) for stride in (1, 2)}
    CASES["all-s2-9x7"] = dict(prims="all", stride=2, H=9, W=7)
    CASES.update({f"triton-{p}-s{s}-g{g}": dict(prims=p, stride=s, groups=g, **TRITON_TINY)
                  for p, s, g in [("all", 1, 2), ("all", 2, 1), ("default5", 2, 2), ("dense_conv_dilated", 1, 1),
                                  ("shift", 2, 2)]})
    CUDA_CASES = {
        **{f"cuda-{p}-s{s}": dict(prims=p, stride=s, H=11, W=13)
           for p, s in [("all", 1), ("all", 2), ("default5", 2), ("dense_conv_dilated", 1)]},
        # the benchmark's configuration (ETR-NLP's default five primitives, sharing ratio 0.9, G = 1)
        "benchmark": dict(prims="default5", T=3, B=8, C=64, H=72, W=96, C_sh=57, C_sp=7, groups=1),
    }
    TRITON_CASES = {(c, d) for c in CASES if c.startswith("triton-") for d in (torch.float32, torch.float64)}
    SMALL_CASE = dict(prims="default5", stride=2, groups=1, **dict(TRITON_TINY, C=1, C_sh=1, H=3, W=4))
    BAD_CASE = dict(prims="default5")
    GRADCHECK_CASES = tuple(dict(prims=p, T=2, B=1, C=2, H=4, W=5, C_sh=2, C_sp=1, groups=2, stride=s)
                            for p, s in (("all", 1), ("default5", 2)))
    LAYOUTS = {"channels_last": layout_channels_last, "strided": layout_strided}
    GRADCHECK_FAST = ("reference", "triton")  # the reference's full Jacobian takes half a minute here
    OUTPUT_KIND = "reduction"
    SCALED = ("gradients",)  # weight gradients sum over B·H'·W' terms
    BAD_INPUTS = [
        ("x-3d", change(0, lambda a: a[0][0]), ValueError, r"x must be \(T\*B, C_in, H, W\), got shape \(4, 7, 9\)"),
        ("x-batch", change(0, lambda a: a[0][:3]), ValueError, r"x's batch \(3\) must be T\*B with T = w_task.size\(0\) = 2"),
        ("x-int", change(0, lambda a: a[0].int()), TypeError, r"x must be float32, float64, float16 or bfloat16, got torch.int32"),
        ("no-kinds", change(1, []), ValueError, r"kinds must name at least one primitive"),
        ("params", change(2, [0]), ValueError, r"params must hold 2 ints per primitive \(10\), got 1"),
        ("kind-9", change(1, [9, 0, 0, 0, 0]), ValueError, r"kinds\[0\] must be a primitive code in \[0, 7\), got 9"),
        ("frozen-kernel", change(3, lambda a: [torch.zeros(4, 1, 5, 5)] + a[3][1:]), ValueError,
         r"frozen\[0\] must be a \(4, 1, 3, 3\) kernel, got shape \(4, 1, 5, 5\)"),
        ("frozen-noise", change(3, lambda a: a[3][:2] + [torch.zeros(3, 3, 5)] + a[3][3:]), ValueError,
         r"frozen\[2\] must be a \(4, Hn, Wn\) noise mask"),
        ("w-shared", change(4, lambda a: a[4][:, :3]), ValueError,
         r"w_shared must be \(C_sh, k\*C_in/groups, 1, 1\) = \(C_sh, 10, 1, 1\)"),
        ("w-shared-dtype", change(4, lambda a: a[4].double()), TypeError,
         r"weights and biases must have the dtype of x \(torch.float32\)"),
        ("b-shared", change(5, lambda a: a[5][:1]), ValueError, r"b_shared must be \(C_sh,\) = \(4,\), got shape \(1,\)"),
        ("w-task", change(6, lambda a: a[6][..., :2]), ValueError, r"w_task must be \(T, C_sp, C_in, 3, 3\)"),
        ("b-task", change(7, lambda a: a[7][:1]), ValueError, r"b_task must be \(T, C_sp\) = \(2, 3\), got shape \(1, 3\)"),
        ("groups", change_kwargs(groups=3), ValueError,
         r"groups \(3\) must divide C_in \(4\) and C_sh \(4\); gcd\(C_in, C_sh\) = 4"),
        ("stride", change_kwargs(stride=0), ValueError, r"stride must be an int >= 1, got 0"),
        ("dilation", change(2, [0] * 10), ValueError, r"params\[0\] \(dilation of primitive 0\) must be >= 1"),
    ]

    @classmethod
    def make(cls, case, dtype=torch.float32, device="cpu", seed=0):
        return sample_of(*make_case(dtype=dtype, device=device, seed=seed, **case))

    @classmethod
    def operator_args(cls, sample):
        return (*sample.args, sample.kwargs["stride"], sample.kwargs["groups"])

    @classmethod
    def runs(cls, case, dtype):
        """Every case in fp32; every dtype for "all" (CPU) and the four CUDA mixtures; fp64 for the Triton ones."""
        return (dtype == torch.float32 or case == "all-s2-9x7" or case.startswith("cuda-")
                or case.startswith("triton-") and dtype == torch.float64)


suite = TestRoutedPrimitiveGather()


def check(backend, dtype=torch.float32, device="cpu", **case):
    return suite.check_against_reference(backend, suite.make(case, dtype, device), dtype)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("case", [
    dict(T=1, B=1, C=1, H=1, W=1, C_sh=1, C_sp=1, groups=1),       # batch 1, 1x1 image
    dict(T=3, B=1, C=6, H=5, W=11, C_sh=3, C_sp=2, groups=3),       # odd sizes, C_sh < C_in
    dict(T=2, B=3, C=4, H=13, W=3, C_sh=8, C_sp=1, groups=4, stride=2),
    dict(T=2, B=1, C=4, H=6, W=5, C_sh=4, C_sp=0, groups=1),        # sharing ratio 1: no task channels
    dict(T=2, B=1, C=3, H=40, W=30, C_sh=3, C_sp=2, groups=1),      # several row tiles per image
    dict(T=2, B=2, C=2, H=40, W=30, C_sh=2, C_sp=1, groups=1),      # row tiles, two images per route
    # small maps: several whole images in one tile (the cpp kernel packs up to 8 and 512 pixels, of one
    # route), the route's last tile ragged: 8 + 3 images; 4 + 2 images of 110 pixels at stride 2
    dict(T=2, B=11, C=3, H=5, W=4, C_sh=3, C_sp=2, groups=3),
    dict(T=3, B=6, C=2, H=19, W=21, C_sh=2, C_sp=2, groups=2, stride=2),
    dict(T=2, B=0, C=4, H=5, W=6, C_sh=4, C_sp=2, groups=2),        # empty batch
], ids=str)
def test_parity_shapes(backend, case):
    check(backend, prims="all", **case)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
def test_cpp_result_does_not_depend_on_the_thread_count(backend):
    """The work items (packed small images, row tiles) and the order their weight-gradient partials are summed
    in depend on the shapes only: one thread and three give the same bits, forward and backward."""
    sample = suite.make(dict(prims="all", T=2, B=11, C=3, H=5, W=4, C_sh=3, C_sp=2, groups=3))
    previous = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            runs.append(run_with_grads(suite.call(backend), sample))
    finally:
        torch.set_num_threads(previous)
    (y1, g1, _), (y3, g3, _) = runs
    assert torch.equal(y1, y3) and all(torch.equal(a, b) for a, b in zip(g1, g3))


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
def test_parity_triton_several_programs_and_half(backend):
    check(backend, torch.bfloat16, prims="default5", T=2, B=1, C=2, H=9, W=10, C_sh=2, C_sp=1, groups=1)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp", "triton")))
@pytest.mark.parametrize("C_sh, C_sp", [(3, 0), (0, 3)], ids=["no_task_channels", "no_shared_channels"])
def test_parity_one_branch_only(backend, C_sh, C_sp):
    # Sharing ratio 1 (C_sh = C_out, no per-task channels) and its opposite, forward and backward.
    check(backend, prims="default5", T=2, B=1, C=2, H=4, W=5, C_sh=C_sh, C_sp=C_sp, groups=1)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
def test_parity_triton_wide_layers(backend):
    # More channels than one tile holds: 2 blocks of shared outputs (64 each), 2 of task outputs, 2 of input
    # channels (16 each, which the dense conv also loops over), and 4 groups of 5 input channels, so channel
    # blocks straddle groups.
    check(backend, prims="all", T=2, B=1, C=20, H=3, W=4, C_sh=80, C_sp=70, groups=4)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
def test_triton_backward_in_bounded_pieces(backend, monkeypatch):
    # Several pixel blocks per image (16 x 16 at stride 1: 4 blocks of 64), at most 2 weight-gradient
    # partials (each program then sums 4 (image, pixel block) items in order), and one image per chunk of the
    # response-gradient workspace.
    from mtl_ops.triton import load
    rpg = load("routed_primitive_gather")
    monkeypatch.setattr(rpg, "MAX_SPLITS", 2)
    monkeypatch.setattr(rpg, "GRAD_CHUNK_ELEMS", 1)
    log = LaunchLog(monkeypatch)
    check(backend, prims="default5", T=2, B=1, C=2, H=16, W=16, C_sh=2, C_sp=1, groups=1)
    grids = {}
    for name, grid, _ in log.launches:
        grids.setdefault(name, []).append(grid)
    tiles = 1 * 5 * 1  # output-channel blocks x primitives x channel blocks
    assert grids["_wgrad_shared_kernel"] == [(2 * tiles,)]
    assert grids["_wgrad_task_kernel"] == [(2 * 9, 2)]  # 2 splits x 9 taps, 2 tasks
    assert len(grids["_input_grad_kernel"]) == 2  # one launch per image


@requires_triton
def test_triton_tiles_are_capped():
    # A 256-channel layer: accumulators stay (64 x 64) and channel tiles 16, whatever the width.
    from mtl_ops.triton import load
    rpg = load("routed_primitive_gather")
    args, kwargs = make_case(prims="identity", T=1, B=1, C=256, H=2, W=2, C_sh=256, C_sp=256, groups=1)
    plan = rpg._Plan(args[0], args[1], args[2], args[3], args[4], args[6], **kwargs)
    assert (plan.BO, plan.BQ, plan.BC) == (64, 64, 16)
    assert (plan.n_ob, plan.n_qb, plan.n_cb) == (4, 4, 16)


@requires_triton
def test_triton_meta_table_is_copied_to_the_device_once():
    # A host-to-device copy on every call would synchronise and break CUDA-graph capture.
    from mtl_ops.triton import load
    rpg = load("routed_primitive_gather")
    args, kwargs = make_case(prims="default5")
    plans = [rpg._Plan(args[0], args[1], args[2], args[3], args[4], args[6], **kwargs) for _ in range(2)]
    assert plans[0].meta is plans[1].meta
    assert plans[0].meta.tolist() == [[5, 1, 0, 0, 1, 1], [5, 2, 0, 36, 1, 1], [4, 0, 0, 72, 3, 5],
                                      [1, 0, 0, 132, 1, 1], [2, 0, 0, 0, 1, 1]]


@requires_triton
def test_triton_weight_gradient_partials_do_not_grow_with_the_batch():
    # The benchmark size (T*B = 48, 128 x 128): one partial per (image, pixel block) would be 12,288.
    from mtl_ops.triton import load
    rpg = load("routed_primitive_gather")
    splits, per = rpg._splits(48 * 256, tiles=4 * 5 * 16)
    assert splits <= rpg.MAX_SPLITS and splits * per >= 48 * 256 and (splits - 1) * per < 48 * 256


@requires_triton
def test_triton_backward_uses_no_atomics():
    # Atomic float adds make d x differ from run to run; the backward is written as gathers and ordered sums.
    import inspect

    from mtl_ops.triton import load
    assert "atomic_" not in inspect.getsource(load("routed_primitive_gather"))


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp", "triton")))
def test_non_contiguous_input(backend):
    sample = suite.make(dict(prims="default5", **TRITON_TINY))
    sample.args[0] = sample.args[0].to(memory_format=torch.channels_last)
    suite.check_against_reference(backend, sample, torch.float32)


def _max_pool_alone(sample):
    sample.args[6] = torch.zeros_like(sample.args[6])  # d_x comes from the max pool alone
    return sample


def test_max_pool_ties_route_to_first_maximum():
    sample = _max_pool_alone(suite.make(dict(prims="max_pool", C=2, groups=1, C_sh=1, C_sp=1)))
    sample.args[0] = torch.ones_like(sample.args[0])  # every window is a tie
    for backend in ["reference"] + (["cpp"] if mtl_ops.backends.LIBRARIES["cpp"].loaded else []):
        _, (dx, *_), _ = run_with_grads(suite.call(backend), sample, torch.ones(4, 2, 7, 9))
        if backend == "reference":
            want = dx
        assert_close(dx, want.double(), torch.float32)


def check_neg_inf_windows(backend, stride, device="cpu"):
    """PyTorch's max_pool2d (the reference) gives a window whose in-image values are all -inf its gradient at
    the first in-image tap; every backend must do the same, never lose it into the padding. Max pool alone on
    an input whose border windows hold nothing but -inf inside the image: top-left corner, a strip along the
    left border, one along the right border, and an interior window."""
    sample = _max_pool_alone(suite.make(dict(prims="max_pool", T=2, B=1, C=2, H=9, W=10, C_sh=2, C_sp=1, groups=1,
                                             stride=stride), device=device))
    x = sample.args[0].clone()
    inf = float("-inf")
    x[:, :, :2, :2] = inf
    x[:, 0, 3:9, :2] = inf
    x[:, 1, :, -2:] = inf
    x[:, 0, 4:7, 4:7] = inf
    sample.args[0] = x
    _, (dx, *_), grad_out = run_with_grads(suite.call(backend), sample)
    oracle = sample.map(lambda t: t.detach().cpu().double())
    _, (want, *_), _ = run_with_grads(reference, oracle, grad_out.cpu().double())
    assert torch.isfinite(want).all()
    assert_close(dx, want, torch.float32, "reduction", what="d_x")


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp", "triton")))
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_neg_inf_windows_route_to_first_in_image_tap(backend, stride):
    check_neg_inf_windows(backend, stride)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
@pytest.mark.parametrize("stride", [1, 2])
def test_opcheck_triton_gather_and_scatter_primitives(backend, stride):
    # the interpreter: one channel, one primitive of each flavour (gather, scatter)
    forward, backward = suite.operators(backend)
    sample = suite.make(dict(prims="max_pool" if stride == 2 else "dw_conv_dilated", T=2, B=1, C=1, H=3, W=4,
                             C_sh=1, C_sp=1, groups=1, stride=stride))
    s, _ = sample.leaves()
    torch.library.opcheck(forward, suite.operator_args(s))
    torch.library.opcheck(backward, suite.backward_args(forward(*suite.operator_args(sample)), sample))


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("stride", [1, 2])
def test_opcheck_every_primitive(backend, stride):
    forward, backward = suite.operators(backend)
    sample = suite.make(dict(prims="all", T=2, B=1, C=2, H=4, W=5, C_sh=2, C_sp=1, groups=1, stride=stride))
    s, _ = sample.leaves()
    torch.library.opcheck(forward, suite.operator_args(s))
    torch.library.opcheck(backward, suite.backward_args(forward(*suite.operator_args(sample)), sample))


def test_direct_backward_checks_grad_out():
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    with pytest.raises(RuntimeError, match=r"grad_out must be \(4, 7, 7, 9\)"):
        torch.ops.mtl_ops.routed_primitive_gather_backward(torch.zeros(4, 7, 7, 8), *suite.sample(suite.BAD_CASE).args,
                                                           1, 2)


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("case", [
    dict(T=2, B=1, C=4, H=6, W=5, C_sh=4, C_sp=0, groups=1),             # C_sh = C_out: no task channels
    dict(T=2, B=2, C=4, H=7, W=9, C_sh=0, C_sp=3, groups=1),             # no shared channels
    dict(T=3, B=2, C=6, H=33, W=35, C_sh=3, C_sp=2, groups=3, stride=2),
    dict(T=2, B=3, C=4, H=13, W=3, C_sh=8, C_sp=1, groups=4, stride=2),  # C_sh > C_in
    dict(T=2, B=1, C=8, H=2, W=3, C_sh=4, C_sp=2, groups=2, stride=3),   # an image smaller than the stride
    dict(T=1, B=1, C=1, H=1, W=1, C_sh=1, C_sp=1, groups=1),             # 1x1 image
    dict(T=2, B=0, C=4, H=5, W=6, C_sh=4, C_sp=2, groups=2),             # empty batch
], ids=str)
def test_parity_cuda_shapes(backend, case):
    suite.check_against_reference(backend, suite.make(dict(prims="all", **case), device="cuda"), torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_neg_inf_windows_cuda(backend, stride):
    check_neg_inf_windows(backend, stride, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda", ("cuda",)))
def test_cuda_exact_fp32_with_tf32_enabled(backend):
    """The op's matrix products stay exact fp32 when a training script turns TF32 on globally."""
    with tf32_everywhere():
        check(backend, prims="all", T=2, B=2, C=32, H=24, W=20, C_sh=28, C_sp=4, groups=4, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda", ("cuda",)))
def test_cuda_bank_in_chunks(backend, monkeypatch):
    """A bound on the primitive bank below one image's worth: the images go one per chunk."""
    monkeypatch.setenv("MTL_OPS_RPG_BANK_BYTES", "1")
    check(backend, prims="many18", T=2, B=2, C=4, H=9, W=11, C_sh=4, C_sp=2, groups=2, device="cuda")
    monkeypatch.setenv("MTL_OPS_RPG_BANK_BYTES", "lots")
    sample = suite.make(dict(prims="default5"), device="cuda")
    with pytest.raises(RuntimeError, match=r"MTL_OPS_RPG_BANK_BYTES must be a positive number of bytes, got 'lots'"):
        torch.ops.mtl_ops.routed_primitive_gather_forward(*suite.operator_args(sample))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_graph_capture_and_replay(backend, stride):
    """Forward and backward operators captured in a CUDA graph (no host-to-device copy, no synchronisation)
    and replayed on new input values give the eager results."""
    forward, backward = suite.operators(backend)
    args, kwargs = make_case(prims="all", T=2, B=2, C=8, H=12, W=13, C_sh=8, C_sp=4, groups=2, stride=stride,
                             device="cuda")
    x, kinds, params, frozen, ws, bs, wt, bt = args
    static_x = x.clone()
    static_g = torch.randn_like(forward(*args, stride, kwargs["groups"]))

    def step():
        y = forward(static_x, kinds, params, frozen, ws, bs, wt, bt, stride, kwargs["groups"])
        return (y, *backward(static_g, static_x, kinds, params, frozen, ws, bs, wt, bt, stride, kwargs["groups"]))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (allocator, cuBLAS workspace)
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    static_x.copy_(torch.randn_like(x))
    static_g.copy_(torch.randn_like(static_g))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, step()):
        assert_close(got, want.double(), torch.float32, what="graph replay vs eager")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_cuda_non_default_stream(backend):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        check(backend, prims="all", T=2, B=2, C=6, H=30, W=27, C_sh=6, C_sp=3, groups=3, device="cuda")
    torch.cuda.current_stream().wait_stream(side)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_cuda_tensors_on_non_current_device(backend):
    with torch.cuda.device(0):
        check(backend, prims="all", T=2, B=1, C=4, H=9, W=8, C_sh=4, C_sp=2, groups=2, device="cuda:1")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_compile_fullgraph_cuda(backend):
    torch._dynamo.reset()
    sample = suite.make(dict(prims="default5", stride=2, **dict(TRITON_TINY, C=1, C_sh=1, groups=1, H=3, W=4)),
                        device="cuda")

    def step(*args, **kwargs):
        return routed_primitive_gather(*args, backend=backend, **kwargs).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    _, eager, _ = run_with_grads(step, sample, torch.tensor(1.0, device="cuda"))
    _, got, _ = run_with_grads(compiled, sample, torch.tensor(1.0, device="cuda"))
    for g, e in zip(got, eager):
        assert_close(g, e.double(), torch.float32, "reduction")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_backward_is_deterministic_with_groups_and_stride(backend, stride):
    """Two runs give the same forward and gradients bit for bit (no atomics in any reduction)."""
    sample = suite.make(dict(prims="all", T=2, B=2, C=16, H=40, W=36, C_sh=16, C_sp=8, groups=2, stride=stride),
                        device="cuda")
    y1, grads1, grad_out = run_with_grads(suite.call(backend), sample)
    y2, grads2, _ = run_with_grads(suite.call(backend), sample, grad_out)
    assert torch.equal(y1, y2)
    for name, a, b in zip(("d_x", "d_w_shared", "d_b_shared", "d_w_task", "d_b_task"), grads1, grads2):
        assert torch.equal(a, b), f"{name} differs between two runs"


# found by the property tests: PyTorch's CPU bf16 convolution returned garbage weight gradients (up to 1e38,
# changing from run to run) for an input one pixel wide at stride 2 with the input or the weight channels-last;
# the reference and the effective-kernel path now give it contiguous operands (mtl_ops/common/conv.py)
@pytest.mark.parametrize("channels_last", [(0,), (6,)], ids=["x", "w_task"])
@pytest.mark.parametrize("fn", [lambda *a, **k: routed_primitive_gather(*a, backend="reference", **k),
                                mtl_ops.ops.routed_primitive_gather_linear], ids=["reference", "effective_kernel"])
def test_bf16_channels_last_one_pixel_wide(fn, channels_last):
    wide = make_case(prims=[(0, 0, 0)], T=1, B=1, C=2, H=4, W=1, C_sh=1, C_sp=1, groups=1, stride=2,
                     dtype=torch.bfloat16)
    sample = sample_of(*wide)
    for i in channels_last:
        sample.args[i] = layout_channels_last(sample.args[i])
    fast = TestRoutedPrimitiveGather()
    fast.fn = staticmethod(lambda *a, backend, **k: fn(*a, **k))
    for _ in range(20):  # the bug struck about one run in three
        fast.check_against_reference("reference", sample, torch.bfloat16)
