"""What every Triton launcher must do whatever the op: run its kernels under the tensors' device, keep every
grid axis within the hardware limit (by chunking, checked here with the limit lowered so tiny inputs take
the chunked path under the interpreter), index in 64 bits where sizes can pass 2^31, and accumulate in the
shared dtype rule. The cuda-marked tests at the end run the real limits on a GPU."""
import contextlib
import functools
import types

import pytest
import torch
import triton
import triton.language as tl
from harness import TOLERANCES, LaunchLog, backend_params
from rpg_cases import make_case

from mtl_ops.ops import ctal_affinity, gated_residual, ms_attention_mix, routed_primitive_gather, sfa_apply
from mtl_ops.reference import ctal_affinity as ctal_reference
from mtl_ops.reference import gated_residual as gated_reference
from mtl_ops.reference import ms_attention_mix as mix_reference
from mtl_ops.reference import routed_primitive_gather as rpg_reference
from mtl_ops.reference import sfa_apply as sfa_reference
from mtl_ops.triton import _launch, limits, load
from mtl_ops.triton._launch import block_start

OPS = ("gated_residual", "sfa_apply", "ms_attention_mix", "ctal_affinity", "routed_primitive_gather")
# Triton runs these tests interpreted on a CPU-only machine, compiled on a GPU one.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _triton_param(op):
    (p,) = backend_params(op, DEVICE, ("triton",))
    return pytest.param(op, marks=p.marks, id=op)


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# One tiny case per op whose chunked grid axis has 3 or more programs, so a limit of 2 splits it
# unevenly. Each returns (forward and backward results, inputs and grad_out, reference function).
def _gated_case(device):
    r, b = _randn(3, 1, 2, 3, 4, seed=0), _randn(3, 1, 2, 3, 4, seed=1)
    gates = torch.softmax(_randn(3, 2, seed=2), dim=1)
    return [r, b, gates], _randn(3, 1, 2, 3, 4, seed=3), lambda r, b, g: gated_residual(r, b, g, backend="triton"), \
        gated_reference


def _sfa_case(device, M=1):
    f, m = _randn(3, 2, 3, 4, seed=0), _randn(2, 3, M, 3, 4, seed=1)  # T = 2, B = 3
    return [f, m], _randn(2, 3, 2, 3, 4, seed=2), lambda f, m: sfa_apply(f, m, backend="triton"), sfa_reference


def _mix_case(device):
    size = (4, 5)
    values = [_randn(3, 2, 4, 5, seed=0), _randn(3, 2, 2, 3, seed=1)]
    logits = [_randn(3, 1, 4, 5, seed=2), _randn(3, 1, 2, 3, seed=3)]
    return (values + logits, _randn(3, 2, *size, seed=4),
            lambda *t: ms_attention_mix(list(t[:2]), list(t[2:]), size, backend="triton"),
            lambda *t: mix_reference(list(t[:2]), list(t[2:]), size))


def _ctal_case(device):
    B, T, C, H, W, k = 1, 2, 2, 2, 3, 3  # gram axis 1: B * T^2 = 4 programs
    x, v = _randn(B, T, C, H, W, seed=0), _randn(B, T, C, H, W, seed=1)
    weight, bias = 0.3 * _randn(H * W, T, k, k, seed=2), 0.1 * _randn(H * W, seed=3)
    return ([x, v, weight, bias], _randn(B, T, C, H, W, seed=4),
            lambda *a: ctal_affinity(*a, 0.3, backend="triton"), lambda *a: ctal_reference(*a, 0.3))


def _rpg_case(device):
    # T = 3 tasks (d w_task's axis 1), 17 shared channels in 2 blocks + 1 task block (the forward's axis 1),
    # 7 primitives (the response gradients' axis 1).
    args, kw = make_case(prims="all", T=3, B=1, C=2, H=4, W=5, C_sh=17, C_sp=1, groups=1, device=device)
    diff = [0, 4, 5, 6, 7]

    def fn(reference):
        def run(x, ws, bs, wt, bt):
            f = rpg_reference if reference else functools.partial(routed_primitive_gather, backend="triton")
            return f(x, args[1], args[2], [t.to(x.dtype) for t in args[3]], ws, bs, wt, bt, **kw)
        return run
    inputs = [args[i].cpu() for i in diff]
    return inputs, _randn(3, 18, 4, 5, seed=9), fn(False), fn(True)


CASES = {"gated_residual": _gated_case, "sfa_apply": _sfa_case, "ms_attention_mix": _mix_case,
         "ctal_affinity": _ctal_case, "routed_primitive_gather": _rpg_case}


def _run(fn, inputs, grad_out):
    leaves = [t.detach().to(DEVICE).requires_grad_() for t in inputs]
    out = fn(*leaves)
    return [out.detach()] + list(torch.autograd.grad(out, leaves, grad_out.to(DEVICE, out.dtype)))


def _recorded_run(op, monkeypatch, limit=None):
    if limit is not None:
        monkeypatch.setattr(_launch, "MAX_GRID_AXIS", limit)
    inputs, grad_out, fn, _ = CASES[op](DEVICE)
    log = LaunchLog(monkeypatch)
    return _run(fn, inputs, grad_out), log


@functools.lru_cache(maxsize=None)
def _unchunked(op):
    with pytest.MonkeyPatch.context() as mp:
        results, log = _recorded_run(op, mp)
    return results, log


@pytest.mark.parametrize("op", [_triton_param(op) for op in OPS])
def test_every_launch_runs_under_the_device_guard(op):
    results, log = _unchunked(op)
    assert log.launches, "no Triton kernel ran"
    unguarded = [name for name, _, guarded in log.launches if not guarded]
    assert not unguarded, f"launched outside the device guard: {unguarded}"
    assert set(log.guard_devices) == {results[0].device}


@pytest.mark.parametrize("op", [_triton_param(op) for op in OPS])
def test_grid_axis_chunking_matches_one_launch(op, monkeypatch):
    # The hardware limit lowered to 2: every axis above 0 must be cut into launches of at most 2 programs,
    # and the results must be bit-identical to the unchunked launches (same programs, same order of sums).
    want, plain = _unchunked(op)
    got, log = _recorded_run(op, monkeypatch, limit=2)
    too_big = [(name, grid) for name, grid, _ in log.launches if any(n > 2 for n in grid[1:])]
    assert not too_big, f"grid axes above the lowered limit: {too_big}"
    assert len(log.launches) > len(plain.launches), "no launch was chunked: the case does not test chunking"
    for i, (g, w) in enumerate(zip(got, want)):
        assert torch.equal(g, w), f"result {i} differs between chunked and single launches"
    # and both agree with the reference
    inputs, grad_out, _, ref = CASES[op](DEVICE)
    ref_results = _run(ref, [t.double() for t in inputs], grad_out.double())
    rtol, atol = TOLERANCES["reduction"][torch.float32]
    for i, (g, r) in enumerate(zip(got, ref_results)):
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(g.cpu().double() / scale, r.cpu() / scale, rtol=rtol, atol=atol,
                                   msg=lambda m: f"{op} result {i}: {m}")


def test_grid_chunks_cover_an_axis_in_order(monkeypatch):
    assert list(_launch.grid_chunks(0)) == []
    assert list(_launch.grid_chunks(65535)) == [(0, 65535)]
    assert list(_launch.grid_chunks(65535 * 2 + 5)) == [(0, 65535), (65535, 65535), (131070, 5)]
    monkeypatch.setattr(_launch, "MAX_GRID_AXIS", 3)  # read at call time, so a test can lower it
    assert list(_launch.grid_chunks(7)) == [(0, 3), (3, 3), (6, 1)]


def test_device_guard_selects_the_tensor_device():
    # A CUDA tensor's guard switches to its device (constructing torch.cuda.device touches no GPU);
    # a CPU tensor's (the interpreter) does nothing.
    guard = _launch.device_guard(types.SimpleNamespace(device=torch.device("cuda", 1)))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(_launch.device_guard(torch.zeros(1)), contextlib.nullcontext)


def test_accumulation_dtypes():
    assert _launch.acc_dtypes(torch.float64) == (torch.float64, tl.float64)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert _launch.acc_dtypes(dtype) == (torch.float32, tl.float32)


@triton.jit
def _block_start_probe(pid_ptr, out_ptr, BLOCK: tl.constexpr):
    tl.store(out_ptr, block_start(tl.load(pid_ptr), BLOCK))


_mask_offsets = load("sfa_apply")._mask_offsets


@triton.jit
def _mask_offsets_probe(start_ptr, P, out_ptr, SPATIAL: tl.constexpr, BLOCK: tl.constexpr):
    offs = _mask_offsets(tl.load(start_ptr), tl.arange(0, BLOCK), P, SPATIAL)
    tl.store(out_ptr + tl.arange(0, BLOCK), offs.to(tl.int64))


@pytest.mark.triton
def test_block_start_is_64_bit():
    # Program 3,000,000 of 1024-element blocks starts at 3,072,000,000 > 2^31: int32 arithmetic would wrap.
    pid = torch.tensor([3_000_000], dtype=torch.int32, device=DEVICE)
    out = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    with _launch.device_guard(out):
        _block_start_probe[(1,)](pid, out, BLOCK=1024)
    assert out.item() == 3_000_000 * 1024


@pytest.mark.triton
@pytest.mark.parametrize("spatial", [True, False], ids=["spatial", "channel"])
def test_sfa_mask_offsets_past_2_31(spatial):
    # A block starting past 2^31 in a (C*P) feature row: its mask offsets (pixel p % P for a spatial mask,
    # the element itself for a per-channel one) computed from the int64 start, lanes crossing a row of P.
    start, P, BLOCK = 3 * 2 ** 31 + 5, 7, 16
    out = torch.zeros(BLOCK, dtype=torch.int64, device=DEVICE)
    with _launch.device_guard(out):
        _mask_offsets_probe[(1,)](torch.tensor([start], device=DEVICE), P, out, SPATIAL=spatial, BLOCK=BLOCK)
    lanes = torch.arange(BLOCK, dtype=torch.int64)
    want = (start + lanes) % P if spatial else start + lanes
    assert torch.equal(out.cpu(), want)


def test_plane_check_names_the_plane():
    with pytest.raises(ValueError, match=r"sfa_apply: one feature plane \(h\*w\) must have at most 2147418112 "
                                         r"elements for the triton backend, got 2147483648"):
        _launch.require(limits.plane("sfa_apply: one feature plane (h*w)", 2 ** 31))
    _launch.require(limits.plane("fits", limits.PLANE_MAX))


@pytest.mark.triton
def test_inputs_past_the_plane_limit_fall_back_or_say_why(monkeypatch):
    # The op layer asks the same limits before choosing Triton (the limit lowered so tiny inputs pass it): an
    # explicit backend="triton" refuses with the reason, backend=None takes the next backend.
    from mtl_ops import backends
    from mtl_ops.backends import BackendUnavailableError

    monkeypatch.setattr(limits, "PLANE_MAX", 11)
    f, m = _randn(1, 2, 3, 4, seed=0).to(DEVICE), _randn(2, 1, 1, 3, 4, seed=1).to(DEVICE)
    with pytest.raises(BackendUnavailableError, match=r"backend 'triton' .* unavailable: sfa_apply: one feature "
                                                      r"plane \(h\*w\) must have at most 11 elements"):
        sfa_apply(f, m, backend="triton")
    monkeypatch.setitem(backends._PREFERENCE, DEVICE, ("triton", "reference"))  # Triton first, then the reference
    spec = sfa_apply.__globals__["SPEC"]
    assert backends.select_backend("sfa_apply", torch.device(DEVICE), None, spec.can_run, (f, m)) == "reference"
    torch.testing.assert_close(sfa_apply(f, m), sfa_reference(f, m))
    monkeypatch.setattr(limits, "PLANE_MAX", 12)  # the plane fits again: Triton is chosen
    assert backends.select_backend("sfa_apply", torch.device(DEVICE), None, spec.can_run, (f, m)) == "triton"


# ---- real limits on a GPU (skipped without one) ----------------------------------------------------------

def _free_gib():
    return torch.cuda.mem_get_info()[0] / 2 ** 30 if torch.cuda.is_available() else 0.0


def _needs_gib(gib):
    return pytest.mark.skipif(_free_gib() < gib, reason=f"needs a CUDA GPU with {gib} GiB free")


def _assert_close(got, want, dtype=torch.float32, kind="reduction"):
    rtol, atol = TOLERANCES[kind][dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.parametrize("op", OPS)
def test_axis_above_65535_cuda(op):
    # The sizes that put more than 65,535 programs on a grid axis, small enough to check whole.
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = "cuda"
    if op == "gated_residual":
        r, b = torch.randn(70_000, 1, 1, 1, 3, device=dev), torch.randn(70_000, 1, 1, 1, 3, device=dev)
        gates = torch.rand(70_000, 2, device=dev)
        inputs, fn, ref = [r, b, gates], functools.partial(gated_residual, backend="triton"), gated_reference
    elif op == "sfa_apply":
        inputs = [torch.randn(70_000, 2, 1, 2, device=dev), torch.randn(1, 70_000, 1, 1, 2, device=dev)]
        fn, ref = functools.partial(sfa_apply, backend="triton"), sfa_reference
    elif op == "ms_attention_mix":
        size = (2, 3)
        values = [torch.randn(70_000, 2, 2, 3, device=dev), torch.randn(70_000, 2, 1, 1, device=dev)]
        logits = [torch.randn(70_000, 1, 2, 3, device=dev), torch.randn(70_000, 1, 1, 1, device=dev)]
        inputs = values + logits
        fn = lambda *t: ms_attention_mix(list(t[:2]), list(t[2:]), size, backend="triton")  # noqa: E731
        ref = lambda *t: mix_reference(list(t[:2]), list(t[2:]), size)  # noqa: E731
    elif op == "ctal_affinity":
        # gram axis 1 = B * T^2 * ceil(C/64)^2 = 65,600. C = 2, not 1: with one channel the per-pixel
        # normalisation x/|x| is ±1 and its fp32 gradient is rounding noise over |x|, which for the smallest of
        # 32,800 random x reached 3e-4 of the gradient's scale on every backend (cpp included), 2e-7 with C = 2
        B, T, C, H, W, k = 4100, 4, 2, 1, 2, 3
        inputs = [torch.randn(B, T, C, H, W, device=dev), torch.randn(B, T, C, H, W, device=dev),
                  0.3 * torch.randn(H * W, T, k, k, device=dev), 0.1 * torch.randn(H * W, device=dev)]
        fn, ref = lambda *a: ctal_affinity(*a, 0.3, backend="triton"), lambda *a: ctal_reference(*a, 0.3)
    else:  # 2100 x 2100 outputs: 68,907 pixel blocks
        args, kw = make_case(prims="default5", T=1, B=1, C=1, H=2100, W=2100, C_sh=2, C_sp=1, groups=1,
                             device=dev)
        inputs = [args[i] for i in (0, 4, 5, 6, 7)]
        fn = lambda x, ws, bs, wt, bt: routed_primitive_gather(  # noqa: E731
            x, args[1], args[2], args[3], ws, bs, wt, bt, backend="triton", **kw)
        frozen64 = [f.cpu().double() for f in args[3]]  # the oracle runs on the CPU in float64
        ref = lambda x, ws, bs, wt, bt: rpg_reference(x, args[1], args[2], frozen64, ws, bs, wt, bt, **kw)  # noqa
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    grad_out = torch.randn_like(out)
    got = [out] + list(torch.autograd.grad(out, leaves, grad_out))
    # the oracle in float64 on the CPU: PyTorch's float64 convolutions on the GPU were seen to be off
    leaves64 = [t.detach().cpu().double().requires_grad_() for t in inputs]
    out64 = ref(*leaves64)
    want = [out64] + list(torch.autograd.grad(out64, leaves64, grad_out.cpu().double()))
    for g, w in zip(got, want):
        scale = max(1.0, w.abs().max().item())
        _assert_close(g.cpu() / scale, w / scale)


@pytest.mark.cuda
@pytest.mark.triton
@_needs_gib(40)
def test_gated_residual_task_above_2_31_elements_cuda():
    inner = 2 ** 31 + 1000  # one task: every offset past the first 2^31 elements needs 64 bits
    r = torch.randn(1, inner, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(1, inner, device="cuda", dtype=torch.bfloat16)
    gates = torch.tensor([[0.7, 0.3]], device="cuda")
    y = gated_residual(r, b, gates, backend="triton")
    rt, bt = r[:, -5000:].float(), b[:, -5000:].float()
    _assert_close(y[:, -5000:], gated_reference(rt, bt, gates), torch.bfloat16, "elementwise")
    del y
    dr, db, _ = load("gated_residual").backward(torch.ones_like(r), r, b, gates)
    live = (rt + bt > 0).float()
    _assert_close(dr[:, -5000:], 0.3 + 0.7 * live, torch.bfloat16, "elementwise")
    _assert_close(db[:, -5000:], 0.7 * live, torch.bfloat16, "elementwise")


@pytest.mark.cuda
@pytest.mark.triton
@_needs_gib(40)
@pytest.mark.parametrize("M", [1, "C"], ids=["spatial", "channel"])
def test_sfa_apply_row_above_2_31_elements_cuda(M):
    C, h, w = 2 ** 15 + 1, 256, 256  # C * h * w = 2^31 + 65,536
    f = torch.randn(1, C, h, w, device="cuda", dtype=torch.bfloat16)
    m = torch.randn(1, 1, C if M == "C" else 1, h, w, device="cuda", dtype=torch.bfloat16)
    out = sfa_apply(f, m, backend="triton")
    _assert_close(out[:, :, -3:], sfa_reference(f[:, -3:].float(), m[:, :, -3:].float() if M == "C" else m.float()),
                  torch.bfloat16, "elementwise")
    g = torch.ones_like(out)
    df, dm = load("sfa_apply").backward(g, f, m)
    m_tail = m[:, :, -3:] if M == "C" else m
    _assert_close(df[:, -3:], torch.sigmoid(m_tail[0].float()).expand(1, 3, h, w), torch.bfloat16, "elementwise")
    if M == "C":
        s = torch.sigmoid(m_tail.float())
        _assert_close(dm[:, :, -3:], s * (1 - s) * f[:, -3:].float(), torch.bfloat16, "elementwise")


@pytest.mark.cuda
@pytest.mark.triton
@_needs_gib(24)
def test_routed_primitive_gather_image_above_2_31_outputs_cuda():
    # 256 shared channels of 2900 x 2900 outputs: o * H' * W' passes 2^31 inside one image.
    args, kw = make_case(prims="identity", T=1, B=1, C=1, H=2900, W=2900, C_sh=256, C_sp=1, groups=1,
                         device="cuda", dtype=torch.bfloat16)
    y = routed_primitive_gather(*args, backend="triton", **kw)
    x, ws, bs = args[0], args[4], args[5]
    want = ws[-2:, :, 0, 0].float() @ x[0].float().reshape(1, -1)[:, -5000:] + bs[-2:, None].float()
    _assert_close(y[0, 254:256].reshape(2, -1)[:, -5000:], want, torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.parametrize("op", OPS)
def test_backward_is_deterministic_cuda(op):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    inputs, grad_out, fn, _ = CASES[op]("cuda")
    first = _run(fn, inputs, grad_out)
    second = _run(fn, inputs, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def _run_on(op, device):
    inputs, grad_out, fn, _ = CASES[op](device)
    leaves = [t.detach().to(device).requires_grad_() for t in inputs]
    out = fn(*leaves)
    return [out.detach()] + list(torch.autograd.grad(out, leaves, grad_out.to(device, out.dtype)))


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("op", OPS)
def test_tensors_on_a_non_current_gpu_cuda(op):
    want = _run_on(op, "cuda:0")
    with torch.cuda.device(0):
        got = _run_on(op, "cuda:1")
    for g, w in zip(got, want):
        assert g.device == torch.device("cuda", 1)
        assert torch.equal(g.cpu(), w.cpu())


@pytest.mark.cuda
@pytest.mark.triton
@pytest.mark.parametrize("op", OPS)
def test_non_default_stream_cuda(op):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    want = _run_on(op, "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = _run_on(op, "cuda")
    torch.cuda.current_stream().wait_stream(stream)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
