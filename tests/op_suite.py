"""The test suite every fused op runs, generated from its description (torchvision's RoIOpTester pattern).

An op's test module subclasses ``OpSuite`` as ``Test<Op>`` and says what is particular to the op: the
public function and its reference, how to make inputs (``make``), its cases, dtypes, layouts, bad inputs and
which outputs are compared how. The tests here then run for every op: parity with the reference (forward and
backward, shapes, dtypes, layouts; the oracle is the reference in float64 on the CPU), gradcheck, opcheck on
the forward and backward operators, torch.compile(fullgraph=True), torch.export, run-to-run determinism of the
backward, bad input (the same error from the Python layer for every backend and from the C++ operator called
directly), the autocast rule, and the backend-choice rules. Parameters are generated per class by
``pytest_generate_tests`` (tests/conftest.py calls ``OpSuite.generate``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import pytest
import torch
from harness import TOLERANCES, backend_params

import mtl_ops
from mtl_ops.backends import BackendUnavailableError, select_backend


@dataclasses.dataclass
class Sample:
    """One call: ``fn(*args, **kwargs)``. ``diff`` are the positions of the differentiable tensors in ``args``
    (an int, or (i, j) for element j of the list at position i)."""
    args: list
    kwargs: dict
    diff: list

    def map(self, f: Callable[[torch.Tensor], torch.Tensor]) -> "Sample":
        """Every tensor (differentiable or not) through ``f``."""
        def go(a):
            if isinstance(a, torch.Tensor):
                return f(a)
            if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
                return [f(t) for t in a]
            return a
        return Sample([go(a) for a in self.args], dict(self.kwargs), list(self.diff))

    def get(self, path):
        return self.args[path] if isinstance(path, int) else self.args[path[0]][path[1]]

    def set(self, path, value):
        if isinstance(path, int):
            self.args[path] = value
        else:
            self.args[path[0]] = list(self.args[path[0]])
            self.args[path[0]][path[1]] = value

    def leaves(self) -> tuple["Sample", list]:
        """A copy whose differentiable tensors are fresh leaves that require grad, and those leaves."""
        s = Sample(list(self.args), dict(self.kwargs), list(self.diff))
        leaves = []
        for path in self.diff:
            leaf = s.get(path).detach().requires_grad_()
            s.set(path, leaf)
            leaves.append(leaf)
        return s, leaves


def run_with_grads(fn, sample: Sample, grad_out=None, seed=1):
    """(output, input gradients, grad_out) of ``fn(*args, **kwargs)`` for a random output gradient."""
    s, leaves = sample.leaves()
    out = fn(*s.args, **s.kwargs)
    if not leaves:
        return out, [], None
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, out.dtype)
    grads = torch.autograd.grad(out, leaves, grad_out, allow_unused=True, materialize_grads=True)
    return out, list(grads), grad_out


class OpSuite:
    """What an op's test class sets (see tests/test_gated_residual.py for the smallest one)."""
    OP: str                        # the op name (mtl_ops.backends.OPS)
    fn: Callable                   # the public function (staticmethod)
    reference: Callable            # its reference (staticmethod), called with the same args and kwargs
    CASES: dict = {}               # name -> case, handed to make
    DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    LAYOUTS: dict = {}             # name -> function of a tensor giving the same values in another layout
    CPU_BACKENDS = ("cpp", "triton")
    CUDA_BACKENDS = ("cuda", "triton")
    TRITON_CASES = None            # (case, dtype) pairs the Triton interpreter runs on the CPU (None: all)
    GRADCHECK_CASES: tuple = ()    # cases for gradcheck (float64)
    # backends checked by random directional derivatives (gradcheck's fast mode): the Triton interpreter costs
    # about 1 ms per program step
    GRADCHECK_FAST = ("triton",)
    SMALL_CASE: Any = None         # the case for opcheck, compile, export, determinism and autocast
    BAD_CASE: Any = None           # the case BAD_INPUTS mutate (None: SMALL_CASE)
    BAD_INPUTS: list = []          # (name, mutate(sample) -> sample, error type, message regex[, PYTHON])
    CUDA_CASES: dict = {}          # cases run on CUDA only (on top of CASES)
    FORWARD_ONLY = False
    SCALED: tuple = ()             # "output", "gradients": compared relative to the largest expected magnitude
                                   # (sums over many terms)
    OUTPUT_KIND = "elementwise"    # tolerance kind of the output; gradients use "reduction"
    SLOW_TRITON = False            # the interpreter takes seconds per call: Triton runs marked slow but parity

    # ---- what a subclass provides -------------------------------------------------------------------------
    @classmethod
    def make(cls, case, dtype=torch.float32, device="cpu", seed=0) -> Sample:
        raise NotImplementedError

    @classmethod
    def operator_args(cls, sample: Sample) -> tuple:
        """The forward operator's arguments for a sample (default: the positional arguments)."""
        return tuple(sample.args)

    @classmethod
    def grad_kind(cls, path) -> str:
        return "reduction"

    @classmethod
    def runs(cls, case: str, dtype) -> bool:
        """Whether the parity tests run ``case`` (a name in CASES or CUDA_CASES) in ``dtype``."""
        return True

    # ---- parameters ---------------------------------------------------------------------------------------
    @classmethod
    def generate(cls, metafunc) -> None:
        slow = cls.SLOW_TRITON and metafunc.function.__name__ != "test_parity_cpu"
        cpu = [pytest.param(*p.values, marks=list(p.marks) + ([pytest.mark.slow] if slow and p.values[0] == "triton"
                                                               else []), id=p.id)
               for p in backend_params(cls.OP, "cpu", cls.CPU_BACKENDS)]
        params = {
            "backend": lambda: cpu,
            "any_backend": lambda: ["reference"] + cpu,
            "cuda_backend": lambda: backend_params(cls.OP, "cuda", cls.CUDA_BACKENDS),
            "case": lambda: [pytest.param(c, id=str(c)) for c in cls.CASES],
            "dtype": lambda: [pytest.param(d, id=str(d).replace("torch.", "")) for d in cls.DTYPES],
            "layout": lambda: list(cls.LAYOUTS),
            "gradcheck_case": lambda: [pytest.param(c, id=str(c)) for c in cls.GRADCHECK_CASES],
            "bad": lambda: [pytest.param(b[:4], id=b[0]) for b in cls.BAD_INPUTS],
            # what the C++ operator is given directly: the cases past the Python argument types
            "operator_bad": lambda: [pytest.param(b[:4], id=b[0]) for b in cls.BAD_INPUTS if b[4:] != (PYTHON,)],
        }
        names = set(metafunc.fixturenames)
        for case_name, cases in (("case", cls.CASES), ("cuda_case", {**cls.CASES, **cls.CUDA_CASES})):
            if {case_name, "dtype"} <= names:  # the pairs the op runs (all, unless it says otherwise)
                names -= {case_name, "dtype"}
                metafunc.parametrize(f"{case_name},dtype", [
                    pytest.param(c, d, id=f"{c}-{str(d).replace('torch.', '')}") for c in cases for d in cls.DTYPES
                    if cls.runs(c, d)])
        for name, values in params.items():
            if name in names:
                metafunc.parametrize(name, values())

    @classmethod
    def sample(cls, case=None, dtype=torch.float32, device="cpu") -> Sample:
        return cls.make(cls.CASES[case] if isinstance(case, str) else (case or cls.SMALL_CASE), dtype, device)

    def call(self, backend):
        return lambda *args, **kwargs: self.fn(*args, backend=backend, **kwargs)

    # ---- comparison with the oracle -----------------------------------------------------------------------
    def tolerance(self, kind: str, dtype) -> tuple[float, float]:
        """(rtol, atol) for a result of ``kind`` in ``dtype`` (the harness's table)."""
        return TOLERANCES[kind][dtype]

    def assert_close(self, got, want, dtype, kind, what, scaled=False):
        assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        rtol, atol = self.tolerance(kind, dtype)
        scale = max(1.0, want.abs().max().item()) if scaled and want.numel() else 1.0
        torch.testing.assert_close(got.detach().double().cpu() / scale, want.detach().double().cpu() / scale,
                                   rtol=rtol, atol=atol, msg=lambda m: f"{self.OP} {what} ({dtype}, {kind}): {m}")

    def check_against_reference(self, backend, sample: Sample, dtype):
        """The op on ``backend`` against the reference in float64 on the CPU, on the same (rounded) inputs:
        output and every input gradient, their shapes and dtypes."""
        out, grads, grad_out = run_with_grads(self.call(backend), sample)
        oracle = sample.map(lambda t: t.detach().cpu().double() if t.is_floating_point() else t.detach().cpu())
        want, want_grads, _ = run_with_grads(self.reference, oracle,
                                             None if grad_out is None else grad_out.detach().cpu().double())
        with torch.no_grad():
            want_dtype = self.reference(*sample.args, **sample.kwargs).dtype
        assert out.dtype == want_dtype, f"{self.OP}: output dtype {out.dtype}, the reference gives {want_dtype}"
        self.assert_close(out, want, dtype, self.OUTPUT_KIND, "output", "output" in self.SCALED)
        for path, got, exp in zip(sample.diff, grads, want_grads):
            inp = sample.get(path)
            assert got.dtype == inp.dtype, f"{self.OP} d{path}: dtype {got.dtype}, input {inp.dtype}"
            coarser = max(dtype, inp.dtype, key=lambda d: torch.finfo(d).eps)
            self.assert_close(got, exp, coarser, self.grad_kind(path), f"gradient of argument {path}",
                              "gradients" in self.SCALED)
        return out

    def skip_interpreted(self, backend, case, dtype):
        if backend == "triton" and self.TRITON_CASES is not None and (case, dtype) not in self.TRITON_CASES:
            pytest.skip("the Triton interpreter runs a few small cases only")

    def operators(self, backend):
        suffix = "_triton" if backend == "triton" else ""
        ops = torch.ops.mtl_ops
        forward = getattr(ops, f"{self.OP}_forward{suffix}").default
        backward = None if self.FORWARD_ONLY else getattr(ops, f"{self.OP}_backward{suffix}").default
        return forward, backward

    # ---- the tests ----------------------------------------------------------------------------------------
    def test_parity_cpu(self, backend, case, dtype):
        self.skip_interpreted(backend, case, dtype)
        self.check_against_reference(backend, self.sample(case, dtype), dtype)

    def test_layouts_cpu(self, backend, layout):
        sample = self.sample().map(self.LAYOUTS[layout])
        self.check_against_reference(backend, sample, torch.float32)

    def test_gradcheck_fp64(self, any_backend, gradcheck_case):
        if self.FORWARD_ONLY:
            pytest.skip(f"{self.OP} is forward only")
        s, leaves = self.sample(gradcheck_case, torch.float64).map(
            lambda t: t.double() if t.is_floating_point() else t).leaves()

        def fn(*ts):
            for path, t in zip(s.diff, ts):
                s.set(path, t)
            return self.fn(*s.args, backend=any_backend, **s.kwargs)

        assert torch.autograd.gradcheck(fn, leaves, fast_mode=any_backend in self.GRADCHECK_FAST)

    def test_opcheck(self, backend):
        self.check_operators(backend, "cpu")

    def check_operators(self, backend, device):
        """opcheck of the forward operator (inputs that require grad: its autograd too) and of the backward."""
        forward, backward = self.operators(backend)
        sample = self.make(self.SMALL_CASE, torch.float32, device)
        s, _ = sample.leaves()
        torch.library.opcheck(forward, self.operator_args(s))
        if backward is not None:
            out = forward(*self.operator_args(sample))
            torch.library.opcheck(backward, self.backward_args(out, sample))

    def backward_args(self, out, sample: Sample) -> tuple:
        """The backward operator's arguments for the forward operator's output ``out`` (default: grad_out and the
        forward's arguments)."""
        first = out[0] if isinstance(out, (tuple, list)) else out
        return (torch.randn_like(first), *self.operator_args(sample))

    def test_compile_fullgraph(self, backend):
        torch._dynamo.reset()
        sample = self.sample()

        def step(*args, **kwargs):
            return self.fn(*args, backend=backend, **kwargs).square().sum()

        compiled = torch.compile(step, fullgraph=True)
        grad_out = torch.tensor(1.0)
        eager, eager_grads, _ = run_with_grads(step, sample, grad_out)
        got, got_grads, _ = run_with_grads(compiled, sample, grad_out)
        self.assert_close(got, eager, torch.float32, "reduction", "compiled loss", True)
        for g, e in zip(got_grads, eager_grads):
            self.assert_close(g, e, torch.float32, "reduction", "compiled gradient", True)

    def test_export_keeps_the_fused_operator(self, backend):
        fn, sample = self.fn, self.sample()
        paths = [i for i, a in enumerate(sample.args) if isinstance(a, torch.Tensor)] + [
            (i, j) for i, a in enumerate(sample.args) if isinstance(a, list) and a and isinstance(a[0], torch.Tensor)
            for j in range(len(a))]

        class Block(torch.nn.Module):
            def forward(self, *ts):
                s = sample.map(lambda t: t)
                for path, t in zip(paths, ts):
                    s.set(path, t)
                return fn(*s.args, backend=backend, **s.kwargs)

        inputs = tuple(sample.get(p) for p in paths)
        exported = torch.export.export(Block(), inputs)
        assert f"mtl_ops.{self.OP}_forward" in exported.graph_module.code
        assert torch.equal(exported.module()(*inputs), Block()(*inputs))

    def test_backward_is_deterministic(self, backend):
        first = run_with_grads(self.call(backend), self.sample())
        second = run_with_grads(self.call(backend), self.sample(), first[2])
        for a, b in zip([first[0]] + first[1], [second[0]] + second[1]):
            assert torch.equal(a, b), f"{self.OP}/{backend}: two runs on the same inputs differ"

    def test_bad_input(self, any_backend, bad):
        _, mutate, error, match = bad
        with pytest.raises(error, match=match):
            s = mutate(self.sample(self.BAD_CASE))
            self.fn(*s.args, backend=any_backend, **s.kwargs)

    def test_bad_input_direct_operator_call(self, operator_bad):
        """The C++ operator, called directly, refuses the input with the Python layer's error and message."""
        _, mutate, error, match = operator_bad
        if not mtl_ops.backends.LIBRARIES["cpp"].loaded:
            pytest.skip("compiled library not loaded")
        args = self.operator_args(mutate(self.sample(self.BAD_CASE)))
        forward, _ = self.operators("cpp")
        with pytest.raises(error, match=match):
            forward(*args)

    def test_autocast_promotes_mixed_dtypes(self):
        """Under autocast an op takes activations in two floating dtypes (a bf16 conv output beside fp32) and
        runs in the wider one: the result is the op on the promoted inputs (the fused kernels then run in fp32;
        the reference backend is plain PyTorch, whose own matmuls and convolutions autocast as usual)."""
        sample = self.sample()
        if not sample.diff:
            pytest.skip(f"{self.OP} takes any floating dtype as it comes")
        mixed = sample.map(lambda t: t)
        first = mixed.get(sample.diff[0])
        mixed.set(sample.diff[0], first.bfloat16())
        promoted = sample.map(lambda t: t)
        promoted.set(sample.diff[0], first.bfloat16().float())
        backends = ["reference"] + [b for b in ("cpp",) if mtl_ops.backends.unavailable_reason(b, "cpu", self.OP) is None]
        for backend in backends:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = self.fn(*mixed.args, backend=backend, **mixed.kwargs)
                want = self.fn(*promoted.args, backend=backend, **promoted.kwargs)
            assert torch.equal(got, want), f"{self.OP}/{backend}: mixed dtypes under autocast != promoted inputs"
            if backend != "reference":
                assert got.dtype == torch.float32
                self.assert_close(got, self.fn(*promoted.args, backend=backend, **promoted.kwargs).double(),
                                  torch.float32, "reduction", f"autocast on {backend}", True)

    def test_unknown_backend(self):
        s = self.sample()
        with pytest.raises(ValueError, match=r"backend argument must be one of .*got 'fast'"):
            self.fn(*s.args, backend="fast", **s.kwargs)

    def test_unavailable_backend_says_why(self):
        s = self.sample()
        with pytest.raises(BackendUnavailableError, match=rf"{self.OP}: backend 'cuda' .* unavailable: .*CUDA"):
            self.fn(*s.args, backend="cuda", **s.kwargs)

    def test_env_override_chooses_the_backend(self, monkeypatch):
        monkeypatch.setenv("MTL_OPS_BACKEND", "reference")
        s, leaves = self.sample().leaves()
        out = self.fn(*s.args, **s.kwargs)
        want = self.reference(*s.args, **s.kwargs)
        assert torch.equal(out, want)  # the reference itself ran

    def test_auto_backend_on_cuda_is_fused(self):
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
        assert select_backend(self.OP, torch.device("cuda")) in self.CUDA_BACKENDS

    @pytest.mark.cuda
    def test_parity_cuda(self, cuda_backend, cuda_case, dtype):
        case = self.CUDA_CASES.get(cuda_case, self.CASES.get(cuda_case))
        self.check_against_reference(cuda_backend, self.make(case, dtype, "cuda"), dtype)

    @pytest.mark.cuda
    def test_layouts_cuda(self, cuda_backend, layout):
        sample = self.make(self.SMALL_CASE, torch.float32, "cuda").map(self.LAYOUTS[layout])
        self.check_against_reference(cuda_backend, sample, torch.float32)

    @pytest.mark.cuda
    def test_backward_is_deterministic_cuda(self, cuda_backend):
        case = next(iter(self.CUDA_CASES.values()), self.SMALL_CASE)
        first = run_with_grads(self.call(cuda_backend), self.make(case, torch.float32, "cuda"))
        second = run_with_grads(self.call(cuda_backend), self.make(case, torch.float32, "cuda"), first[2])
        for a, b in zip([first[0]] + first[1], [second[0]] + second[1]):
            assert torch.equal(a, b), f"{self.OP}/{cuda_backend}: two runs on the same inputs differ"

    @pytest.mark.cuda
    def test_opcheck_cuda(self, cuda_backend):
        self.check_operators(cuda_backend, "cuda")


PYTHON = "python"  # marks a bad input that only the Python layer sees (a wrong Python type)


def change(i, value) -> Callable[[Sample], Sample]:
    """A bad-input mutation: argument ``i`` replaced by ``value(args)`` (or ``value``)."""
    def mutate(sample):
        s = sample.map(lambda t: t)
        s.args[i] = value(s.args) if callable(value) else value
        return s
    return mutate


def change_kwargs(**kwargs) -> Callable[[Sample], Sample]:
    def mutate(sample):
        s = sample.map(lambda t: t)
        s.kwargs.update(kwargs)
        return s
    return mutate
