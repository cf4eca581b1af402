"""routed_primitive_gather: every backend against the reference (each primitive, mixtures, strides 1 and 2,
odd sizes, dtypes), gradcheck, opcheck, compile, bad input."""
import pytest
import torch
from harness import assert_close, backend_params, requires_triton, tf32_everywhere
from rpg_cases import PRIMITIVE_SETS, make_case

import mtl_ops
from mtl_ops.ops import routed_primitive_gather
from mtl_ops.reference import routed_primitive_gather as reference

OP = "routed_primitive_gather"
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DIFF = (0, 4, 5, 6, 7)  # positions of the differentiable inputs


def run_with_grads(fn, args, kwargs, grad_out=None):
    args = list(args)
    for i in DIFF:
        args[i] = args[i].detach().requires_grad_()
    y = fn(*args, **kwargs)
    if grad_out is None:
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y)
    grads = torch.autograd.grad(y, [args[i] for i in DIFF], grad_out, allow_unused=True, materialize_grads=True)
    return y, grads, grad_out


def check_against_reference(backend, dtype=torch.float32, **case):
    args, kwargs = make_case(dtype=dtype, **case)
    y, grads, grad_out = run_with_grads(lambda *a, **k: routed_primitive_gather(*a, backend=backend, **k), args, kwargs)
    args64 = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
    args64[3] = [f.double() for f in args[3]]
    y64, grads64, _ = run_with_grads(reference, args64, kwargs, grad_out.double())
    assert y.dtype == dtype and y.shape == y64.shape
    assert_close(y, y64, dtype, "reduction", what="y")
    for name, got, want in zip(("d_x", "d_w_shared", "d_b_shared", "d_w_task", "d_b_task"), grads, grads64):
        assert got.dtype == dtype
        scale = max([1.0] + want.abs().flatten().tolist()[:0] + ([want.abs().max().item()] if want.numel() else []))  # weight gradients sum over B·H'·W' terms
        assert_close(got / scale, want / scale, dtype, "reduction", what=name)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("prims", sorted(PRIMITIVE_SETS))
def test_parity_each_primitive_and_mixtures(backend, prims, stride):
    groups = 2 if len(PRIMITIVE_SETS[prims]) * 4 % 2 == 0 else 1
    check_against_reference(backend, prims=prims, stride=stride, groups=groups)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_parity_dtypes(backend, dtype):
    check_against_reference(backend, dtype, prims="all", stride=2, H=9, W=7)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp",)))
@pytest.mark.parametrize("case", [
    dict(T=1, B=1, C=1, H=1, W=1, C_sh=1, C_sp=1, groups=1),       # batch 1, 1x1 image
    dict(T=3, B=1, C=6, H=5, W=11, C_sh=3, C_sp=2, groups=3),       # odd sizes, C_sh < C_in
    dict(T=2, B=3, C=4, H=13, W=3, C_sh=8, C_sp=1, groups=4, stride=2),
    dict(T=2, B=1, C=4, H=6, W=5, C_sh=4, C_sp=0, groups=1),        # sharing ratio 1: no task channels
    dict(T=2, B=1, C=3, H=40, W=30, C_sh=3, C_sp=2, groups=1),      # several row tiles per image
    dict(T=2, B=0, C=4, H=5, W=6, C_sh=4, C_sp=2, groups=2),        # empty batch
], ids=str)
def test_parity_shapes(backend, case):
    check_against_reference(backend, prims="all", **case)


# The Triton interpreter runs about 1 ms per operation: tiny shapes (2 images, 2 channels, one program each).
TRITON_TINY = dict(T=2, B=1, C=2, H=5, W=6, C_sh=2, C_sp=1)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("prims, stride, groups", [
    ("all", 1, 2), pytest.param("all", 2, 1, marks=pytest.mark.slow), ("default5", 2, 2),
    pytest.param("dense_conv_dilated", 1, 1, marks=pytest.mark.slow), ("shift", 2, 2)])
def test_parity_triton(backend, prims, stride, groups, dtype):
    check_against_reference(backend, dtype, prims=prims, stride=stride, groups=groups, **TRITON_TINY)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
def test_parity_triton_several_programs_and_half(backend):
    check_against_reference(backend, torch.bfloat16, prims="default5", T=2, B=1, C=2, H=9, W=10, C_sh=2, C_sp=1,
                            groups=1)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp", "triton")))
@pytest.mark.parametrize("C_sh, C_sp", [(3, 0), (0, 3)], ids=["no_task_channels", "no_shared_channels"])
def test_parity_one_branch_only(backend, C_sh, C_sp):
    # Sharing ratio 1 (C_sh = C_out, no per-task channels) and its opposite, forward and backward.
    check_against_reference(backend, prims="default5", T=2, B=1, C=2, H=4, W=5, C_sh=C_sh, C_sp=C_sp, groups=1)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
def test_parity_triton_wide_layers(backend):
    # More channels than one tile holds: 2 blocks of shared outputs (64 each), 2 of task outputs, 2 of input
    # channels (16 each, which the dense conv also loops over), and 4 groups of 5 input channels, so channel
    # blocks straddle groups.
    check_against_reference(backend, prims="all", T=2, B=1, C=20, H=3, W=4, C_sh=80, C_sp=70, groups=4)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("triton",)))
def test_triton_backward_in_bounded_pieces(backend, monkeypatch):
    # Several pixel blocks per image (16 x 16 at stride 1: 4 blocks of 64), at most 2 weight-gradient
    # partials (each program then sums 4 (image, pixel block) items in order), and one image per chunk of the
    # response-gradient workspace.
    from harness import LaunchLog

    from mtl_ops.triton import load
    rpg = load("routed_primitive_gather")
    monkeypatch.setattr(rpg, "MAX_SPLITS", 2)
    monkeypatch.setattr(rpg, "GRAD_CHUNK_ELEMS", 1)
    log = LaunchLog(monkeypatch)
    check_against_reference(backend, prims="default5", T=2, B=1, C=2, H=16, W=16, C_sh=2, C_sp=1, groups=1)
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
    args, kwargs = make_case(prims="default5", **TRITON_TINY)
    x = args[0].to(memory_format=torch.channels_last)
    y = routed_primitive_gather(x, *args[1:], backend=backend, **kwargs)
    assert_close(y, reference(*args, **kwargs).double(), torch.float32, "reduction")


def test_max_pool_ties_route_to_first_maximum():
    args, kwargs = make_case(prims="max_pool", C=2, groups=1, C_sh=1, C_sp=1)
    args = list(args)
    args[0] = torch.ones_like(args[0])  # every window is a tie
    args[6] = torch.zeros_like(args[6])  # d_x comes from the max pool alone
    for backend in ["reference"] + (["cpp"] if mtl_ops.backends.LIBRARIES["cpp"].loaded else []):
        _, (dx, *_), _ = run_with_grads(lambda *a, **k: routed_primitive_gather(*a, backend=backend, **k),
                                        args, kwargs, torch.ones(4, 2, 7, 9))
        if backend == "reference":
            want = dx
        assert_close(dx, want.double(), torch.float32)


def _neg_inf_windows_case(stride, device="cpu"):
    """Max pool alone (d_x comes from it only) on an input whose border windows hold nothing but -inf inside
    the image: top-left corner, a strip along the left border, one along the right border, and an interior
    window."""
    args, kwargs = make_case(prims="max_pool", T=2, B=1, C=2, H=9, W=10, C_sh=2, C_sp=1, groups=1, stride=stride,
                             device=device)
    args = list(args)
    x = args[0].clone()
    inf = float("-inf")
    x[:, :, :2, :2] = inf
    x[:, 0, 3:9, :2] = inf
    x[:, 1, :, -2:] = inf
    x[:, 0, 4:7, 4:7] = inf
    args[0] = x
    args[6] = torch.zeros_like(args[6])
    return args, kwargs


def check_neg_inf_windows(backend, stride, device="cpu"):
    """PyTorch's max_pool2d (the reference) gives a window whose in-image values are all -inf its gradient at
    the first in-image tap; every backend must do the same, never lose it into the padding."""
    args, kwargs = _neg_inf_windows_case(stride, device)
    _, (dx, *_), grad_out = run_with_grads(lambda *a, **k: routed_primitive_gather(*a, backend=backend, **k),
                                           args, kwargs)
    args64 = [a.double() if isinstance(a, torch.Tensor) else a for a in args]
    args64[3] = [f.double() for f in args[3]]
    _, (want, *_), _ = run_with_grads(reference, args64, kwargs, grad_out.double())
    assert torch.isfinite(want).all()
    assert_close(dx, want, torch.float32, "reduction", what="d_x")


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp", "triton")))
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_neg_inf_windows_route_to_first_in_image_tap(backend, stride):
    check_neg_inf_windows(backend, stride)


@pytest.mark.parametrize("backend, prims, stride", [("reference", "default5", 2)] + [
    pytest.param(b.values[0], prims, stride, marks=b.marks, id=f"{b.id}-{prims}-{stride}")
    for b in backend_params(OP, "cpu", ("cpp",)) for prims, stride in (("all", 1), ("default5", 2))])
def test_gradcheck_fp64(backend, prims, stride):
    args, kwargs = make_case(prims=prims, T=2, B=1, C=2, H=4, W=5, C_sh=2, C_sp=1, groups=2, stride=stride,
                             dtype=torch.float64)
    args = list(args)
    for i in DIFF:
        args[i].requires_grad_()

    def fn(x, ws, bs, wt, bt):
        return routed_primitive_gather(x, args[1], args[2], args[3], ws, bs, wt, bt, backend=backend, **kwargs)

    assert torch.autograd.gradcheck(fn, [args[i] for i in DIFF], fast_mode=backend == "reference")


def _ops(backend):
    suffix = "_triton" if backend == "triton" else ""
    return (getattr(torch.ops.mtl_ops, f"routed_primitive_gather_forward{suffix}").default,
            getattr(torch.ops.mtl_ops, f"routed_primitive_gather_backward{suffix}").default)


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp", "triton")))
@pytest.mark.parametrize("stride", [1, 2])
def test_opcheck(backend, stride):
    forward, backward = _ops(backend)
    if backend == "triton":  # the interpreter: one channel, one primitive of each flavour (gather, scatter)
        args, kwargs = make_case(prims="max_pool" if stride == 2 else "dw_conv_dilated", T=2, B=1, C=1, H=3, W=4,
                                 C_sh=1, C_sp=1, groups=1, stride=stride)
    else:
        args, kwargs = make_case(prims="all", T=2, B=1, C=2, H=4, W=5, C_sh=2, C_sp=1, groups=1, stride=stride)
    args = list(args)
    for i in DIFF:
        args[i].requires_grad_()
    full = (*args, kwargs["stride"], kwargs["groups"])
    torch.library.opcheck(forward, full)
    y = forward(*full)
    torch.library.opcheck(backward, (torch.randn_like(y).detach(), *[a.detach() if isinstance(a, torch.Tensor) else a
                                                                      for a in full]))


@pytest.mark.parametrize("backend", backend_params(OP, "cpu", ("cpp", "triton")))
def test_compile_fullgraph(backend):
    check_compile_fullgraph(backend, "cpu")


def check_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    tiny = dict(TRITON_TINY, C=1, C_sh=1, groups=1, H=3, W=4)
    interpreted = backend == "triton" and device == "cpu"
    args, kwargs = make_case(prims="avg_pool" if interpreted else "default5", stride=2, device=device, **tiny)

    def step(x, ws, bs, wt, bt):
        return routed_primitive_gather(x, args[1], args[2], args[3], ws, bs, wt, bt, backend=backend,
                                       **kwargs).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    leaves = [args[i].detach().requires_grad_() for i in DIFF]
    eager = torch.autograd.grad(step(*leaves), leaves)
    got = torch.autograd.grad(compiled(*leaves), leaves)
    for g, e in zip(got, eager):
        assert_close(g, e.double(), torch.float32, "reduction")


# ---- bad input ---------------------------------------------------------------------------------------

def _bad(i, value):
    def mutate(args):
        args = list(args)
        args[i] = value(args) if callable(value) else value
        return args
    return mutate


@pytest.mark.parametrize("backend", ["reference"] + backend_params(OP, "cpu", ("cpp", "triton")))
@pytest.mark.parametrize("mutate, kw, error, match", [
    (_bad(0, lambda a: a[0][0]), {}, ValueError, r"x must be \(T\*B, C_in, H, W\), got shape \(4, 7, 9\)"),
    (_bad(0, lambda a: a[0][:3]), {}, ValueError, r"x's batch \(3\) must be T\*B with T = w_task.size\(0\) = 2"),
    (_bad(0, lambda a: a[0].int()), {}, TypeError, r"x must be float32, float64, float16 or bfloat16, got torch.int32"),
    (_bad(1, []), {}, ValueError, r"kinds must name at least one primitive"),
    (_bad(2, [0]), {}, ValueError, r"params must hold 2 ints per primitive \(10\), got 1"),
    (_bad(1, [9, 0, 0, 0, 0]), {}, ValueError, r"kinds\[0\] must be a primitive code in \[0, 7\), got 9"),
    (_bad(3, lambda a: [torch.zeros(4, 1, 5, 5)] + a[3][1:]), {}, ValueError,
     r"frozen\[0\] must be a \(4, 1, 3, 3\) kernel, got shape \(4, 1, 5, 5\)"),
    (_bad(3, lambda a: a[3][:2] + [torch.zeros(3, 3, 5)] + a[3][3:]), {}, ValueError,
     r"frozen\[2\] must be a \(4, Hn, Wn\) noise mask"),
    (_bad(4, lambda a: a[4][:, :3]), {}, ValueError, r"w_shared must be \(C_sh, k\*C_in/groups, 1, 1\) = \(C_sh, 10, 1, 1\)"),
    (_bad(4, lambda a: a[4].double()), {}, TypeError, r"weights and biases must have the dtype of x \(torch.float32\)"),
    (_bad(5, lambda a: a[5][:1]), {}, ValueError, r"b_shared must be \(C_sh,\) = \(4,\), got shape \(1,\)"),
    (_bad(6, lambda a: a[6][..., :2]), {}, ValueError, r"w_task must be \(T, C_sp, C_in, 3, 3\)"),
    (_bad(7, lambda a: a[7][:1]), {}, ValueError, r"b_task must be \(T, C_sp\) = \(2, 3\), got shape \(1, 3\)"),
    (lambda a: a, dict(groups=3), ValueError, r"groups \(3\) must divide C_in \(4\) and C_sh \(4\); gcd\(C_in, C_sh\) = 4"),
    (lambda a: a, dict(stride=0), ValueError, r"stride must be an int >= 1, got 0"),
    (_bad(2, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), {}, ValueError, r"params\[0\] \(dilation of primitive 0\) must be >= 1"),
])
def test_bad_input(backend, mutate, kw, error, match):
    args, kwargs = make_case(prims="default5")
    kwargs.update(kw)
    with pytest.raises(error, match=match):
        routed_primitive_gather(*mutate(args), backend=backend, **kwargs)


@pytest.mark.parametrize("mutate, kw, match", [
    (_bad(4, lambda a: a[4][:, :3]), {}, r"w_shared must be \(C_sh, k\*C_in/groups, 1, 1\)"),
    (lambda a: a, dict(groups=3), r"groups \(3\) must divide C_in \(4\) and C_sh \(4\)"),
    (_bad(1, [9, 0, 0, 0, 0]), {}, r"kinds\[0\] must be a primitive code"),
    (_bad(3, lambda a: [torch.zeros(4, 1, 5, 5)] + a[3][1:]), {}, r"frozen\[0\] must be a \(4, 1, 3, 3\) kernel"),
])
def test_bad_input_direct_operator_call(mutate, kw, match):
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    args, kwargs = make_case(prims="default5")
    kwargs.update(kw)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.mtl_ops.routed_primitive_gather_forward(*mutate(args), kwargs["stride"], kwargs["groups"])


def test_direct_backward_checks_grad_out():
    if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
        pytest.skip("compiled library not loaded")
    args, kwargs = make_case(prims="default5")
    with pytest.raises(RuntimeError, match=r"grad_out must be \(4, 7, 7, 9\)"):
        torch.ops.mtl_ops.routed_primitive_gather_backward(torch.zeros(4, 7, 7, 8), *args, 1, 2)


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prims, stride", [("all", 1), ("all", 2), ("default5", 2), ("dense_conv_dilated", 1)])
def test_parity_cuda(backend, dtype, prims, stride):
    check_against_reference(backend, dtype, prims=prims, stride=stride, device="cuda", H=11, W=13)


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
    check_against_reference(backend, torch.float32, prims="all", device="cuda", **case)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("prims", sorted(PRIMITIVE_SETS))
def test_parity_cuda_each_primitive_and_mixtures(backend, prims, stride):
    check_against_reference(backend, prims=prims, stride=stride, groups=2, device="cuda", H=10, W=13)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_parity_cuda_benchmark_size(backend):
    """The benchmark's configuration (ETR-NLP's default five primitives, sharing ratio 0.9, G = 1)."""
    check_against_reference(backend, prims="default5", T=3, B=8, C=64, H=72, W=96, C_sh=57, C_sp=7, groups=1,
                            device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_neg_inf_windows_cuda(backend, stride):
    check_neg_inf_windows(backend, stride, device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_backward_is_deterministic(backend, stride):
    """Two runs give the same forward and gradients bit for bit (no atomics in any reduction)."""
    args, kwargs = make_case(prims="all", T=2, B=2, C=16, H=40, W=36, C_sh=16, C_sp=8, groups=2, stride=stride,
                             device="cuda")
    fn = lambda *a, **k: routed_primitive_gather(*a, backend=backend, **k)  # noqa: E731
    y1, grads1, grad_out = run_with_grads(fn, args, kwargs)
    y2, grads2, _ = run_with_grads(fn, args, kwargs, grad_out)
    assert torch.equal(y1, y2)
    for name, a, b in zip(("d_x", "d_w_shared", "d_b_shared", "d_w_task", "d_b_task"), grads1, grads2):
        assert torch.equal(a, b), f"{name} differs between two runs"


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda", ("cuda",)))
def test_cuda_exact_fp32_with_tf32_enabled(backend):
    """The op's matrix products stay exact fp32 when a training script turns TF32 on globally."""
    with tf32_everywhere():
        check_against_reference(backend, prims="all", T=2, B=2, C=32, H=24, W=20, C_sh=28, C_sp=4, groups=4,
                                device="cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda", ("cuda",)))
def test_cuda_bank_in_chunks(backend, monkeypatch):
    """A bound on the primitive bank below one image's worth: the images go one per chunk."""
    monkeypatch.setenv("MTL_OPS_RPG_BANK_BYTES", "1")
    check_against_reference(backend, prims="many18", T=2, B=2, C=4, H=9, W=11, C_sh=4, C_sp=2, groups=2,
                            device="cuda")
    monkeypatch.setenv("MTL_OPS_RPG_BANK_BYTES", "lots")
    args, kwargs = make_case(prims="default5", device="cuda")
    with pytest.raises(RuntimeError, match=r"MTL_OPS_RPG_BANK_BYTES must be a positive number of bytes, got 'lots'"):
        torch.ops.mtl_ops.routed_primitive_gather_forward(*args, kwargs["stride"], kwargs["groups"])


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_graph_capture_and_replay(backend, stride):
    """Forward and backward operators captured in a CUDA graph (no host-to-device copy, no synchronisation)
    and replayed on new input values give the eager results."""
    forward, backward = _ops(backend)
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
        check_against_reference(backend, prims="all", T=2, B=2, C=6, H=30, W=27, C_sh=6, C_sp=3, groups=3,
                                device="cuda")
    torch.cuda.current_stream().wait_stream(side)


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_cuda_tensors_on_non_current_device(backend):
    with torch.cuda.device(0):
        check_against_reference(backend, prims="all", T=2, B=1, C=4, H=9, W=8, C_sh=4, C_sp=2, groups=2,
                                device="cuda:1")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_cuda_input_layouts(backend, layout):
    args, kwargs = make_case(prims="all", T=2, B=2, C=4, H=9, W=11, C_sh=4, C_sp=2, groups=2, device="cuda")
    x = args[0]
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    else:
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        big[..., ::2] = x
        x = big[..., ::2]
    fn = lambda *a, **k: routed_primitive_gather(*a, backend=backend, **k)  # noqa: E731
    y, grads, grad_out = run_with_grads(fn, [x, *args[1:]], kwargs)
    y_c, grads_c, _ = run_with_grads(fn, args, kwargs, grad_out)
    assert_close(y, y_c.double(), torch.float32, "reduction")
    for got, want in zip(grads, grads_c):
        assert_close(got, want.double(), torch.float32, "reduction")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_compile_fullgraph_cuda(backend):
    check_compile_fullgraph(backend, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", backend_params(OP, "cuda"))
def test_opcheck_cuda(backend):
    forward, backward = _ops(backend)
    args, kwargs = make_case(prims="all", T=2, B=1, C=2, H=5, W=6, C_sh=2, C_sp=1, groups=1, stride=2, device="cuda")
    full = (*args, kwargs["stride"], kwargs["groups"])
    torch.library.opcheck(forward, full)
    y = forward(*full)
    torch.library.opcheck(backward, (torch.randn_like(y), *full))
