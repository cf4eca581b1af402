"""Conversions users apply to whole models, for every public module of mtl_ops.nn and every network of
mtl_ops.models (tests/module_cases.py): ``.to(memory_format=torch.channels_last)``, ``.to(torch.float64)``,
``.to(torch.bfloat16)``, ``.half()``, ``copy.deepcopy``, pickling, ``state_dict`` saved from the compiled
backend and loaded into a module on the reference or Triton backend, and ``torch.compile``. Each converted
module computes what the original computes (in eval mode, on the same input), within the precision of the
dtype it now runs in."""
from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from harness import backend_params
from module_cases import BACKEND_CASES, MODULES
from train_helpers import one_thread  # noqa: F401  (autouse: one intra-op thread)

FP32 = torch.float32
CONTIGUOUS = torch.contiguous_format
# relative to the largest output magnitude: whole networks in half precision accumulate their rounding
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def build(name: str, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return MODULES[name][0](**options).eval()


def run(name: str, module, dtype=FP32, memory_format=CONTIGUOUS) -> list[torch.Tensor]:
    with torch.no_grad():
        return MODULES[name][1](module, dtype, memory_format)


def assert_same_outputs(got: list[torch.Tensor], want: list[torch.Tensor], dtype=FP32, what=""):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        # relative to the output's own magnitude (AdaShare's initial outputs are ~1e-5)
        scale = (w.abs().max().item() if w.numel() else 0.0) or 1.0
        torch.testing.assert_close(g.double() / scale, w.double() / scale, rtol=TOLERANCE[dtype],
                                   atol=TOLERANCE[dtype], msg=lambda m: f"{what} ({dtype}): {m}")


CASES = [pytest.param(name, id=name) for name in MODULES]


@pytest.mark.parametrize("name", CASES)
def test_channels_last(name):
    module = build(name)
    want = run(name, module)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    assert module.to(memory_format=torch.channels_last) is module
    after = module.state_dict()
    assert {k: v.shape for k, v in after.items()} == {k: v.shape for k, v in before.items()}  # checkpoints load
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert_same_outputs(run(name, module, memory_format=torch.channels_last), want, what="channels_last")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_dtype(name, dtype):
    module = build(name)
    want = run(name, module)
    converted = module.half() if dtype == torch.float16 else module.to(dtype)
    assert all(p.dtype == dtype for p in converted.parameters())
    got = run(name, converted, dtype)
    # AdaSharePolicy's probabilities are fp32 by contract; everything else follows the module's dtype
    assert all(g.dtype in (dtype, FP32) for g in got) and any(g.dtype == dtype for g in got) or name == "AdaSharePolicy"
    assert_same_outputs(got, want, dtype, f"{name}.to({dtype})")


@pytest.mark.parametrize("name", CASES)
def test_deepcopy_and_pickle(name):
    module = build(name)
    want = run(name, module)
    for how, copied in (("deepcopy", copy.deepcopy(module)), ("pickle", pickle.loads(pickle.dumps(module)))):
        ours = {p.data_ptr() for p in module.parameters()}
        assert not ours & {p.data_ptr() for p in copied.parameters()}, f"{how} shares parameters"
        got = run(name, copied)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), f"{how}: outputs differ"


def _targets():
    """(case, backend the state_dict is loaded into): the cases with a backend go from cpp to reference and to
    Triton (its interpreter: the networks are slow there); the others are saved and loaded as they are."""
    out = []
    for name in MODULES:
        if name not in BACKEND_CASES:
            out.append(pytest.param(name, None, id=name))
            continue
        out.append(pytest.param(name, "reference", id=f"{name}-reference"))
        for p in backend_params("sfa_apply", "cpu", ("triton",)):
            marks = list(p.marks) + ([pytest.mark.slow] if name.startswith("net-") else [])
            out.append(pytest.param(name, "triton", marks=marks, id=f"{name}-triton"))
    return out


@pytest.mark.parametrize("name, backend", _targets())
def test_state_dict_round_trip_across_backends(name, backend):
    saved_from = build(name, **({"backend": "cpp"} if backend else {}))
    want = run(name, saved_from)
    buffer = io.BytesIO()
    torch.save(saved_from.state_dict(), buffer)
    buffer.seek(0)
    loaded = build(name, seed=1, **({"backend": backend} if backend else {}))  # another initialisation
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert_same_outputs(run(name, loaded), want, what=f"state_dict cpp -> {backend}")


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_torch_compile(name):
    torch._dynamo.reset()
    module = build(name)
    want = run(name, module)
    if name == "AdaSharePolicy":  # no forward: its sampling compiles (tests/test_adashare.py)
        pytest.skip("AdaSharePolicy has no forward")
    compiled = torch.compile(module, fullgraph=True)
    assert_same_outputs(run(name, compiled), want, what="torch.compile")
