"""A fused op from its spec: ``FusedOp`` describes one op, ``register`` turns it into the callable that
the public function calls.

What ``register`` does with a spec, once, at import:
  * defines the Triton operators ``mtl_ops::<op>_forward_triton`` / ``_backward_triton`` from their schemas
    (the C++ operators ``mtl_ops::<op>_forward`` / ``_backward`` come from csrc/ops.cpp);
  * registers the fake kernels on every forward and backward operator (the forward fake first runs the
    spec's argument checks, so torch.compile and torch.export refuse bad input as eager calls do);
  * registers autograd on every forward operator from the spec's one backward formula: setup_context saves
    the tensor inputs (and the outputs the backward reads) and keeps the other arguments; the backward calls
    the same backend's backward operator. PyTorch derives the operator's autograd.Function from this
    (``torch.library.register_autograd``), so opcheck, torch.compile and direct operator calls differentiate
    the same way as the public functions;
  * records which backends implement the op (``mtl_ops.backends``).

Per call (``FusedOpCall.__call__``), the work that changes with the inputs only: the argument types, the
autocast rule, the backend choice (``backends.select_backend`` with the spec's ``can_run``), the value
checks for the backends that do not make them themselves (reference, Triton: the C++ operators check their
arguments in C++ with the same messages), and the operator call. Without grad (grad mode off, or no input
that requires it) the forward operator runs below the autograd layer, skipping the autograd Function.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import backends
from .._loader import LIBRARIES
from ..triton import load as load_triton

COMPILED = ("cpp", "cuda")


@dataclass(frozen=True)
class Promote:
    """An autocast rule, applied when autocast is on for the inputs' device: activations that arrive in
    different floating dtypes (a half conv output beside an fp32 skip path) run in the widest one, as
    PyTorch's element-wise ops do; a parameter in another dtype than the activations goes to fp32, and a
    ``follow`` tensor takes the dtype of another argument. Positions are operator argument positions; an
    argument in ``same`` may be a list of tensors."""
    same: tuple[int, ...]
    params: tuple[int, ...] = ()
    follow: tuple[tuple[int, int], ...] = ()  # (position, position whose dtype it takes)

    def __call__(self, args: tuple) -> tuple:
        members = [t for i in self.same for t in (args[i] if isinstance(args[i], (list, tuple)) else (args[i],))]
        dtypes = {t.dtype for t in members if isinstance(t, torch.Tensor) and t.dtype.is_floating_point}
        if len(dtypes) == 1 and not self.params and not self.follow:
            return args
        args = list(args)
        if len(dtypes) > 1:
            common = next(iter(dtypes))
            for d in dtypes:
                common = torch.promote_types(common, d)
            for i in self.same:
                args[i] = ([self._cast(t, common) for t in args[i]] if isinstance(args[i], (list, tuple))
                           else self._cast(args[i], common))
        activation = members[0].dtype if len(dtypes) <= 1 else common
        for i in self.params:
            t = args[i]
            if isinstance(t, torch.Tensor) and t.dtype.is_floating_point and t.dtype not in (activation, torch.float32):
                args[i] = t.float()
        for i, src in self.follow:
            if isinstance(args[i], torch.Tensor) and args[i].dtype.is_floating_point:
                args[i] = self._cast(args[i], args[src].dtype)
        return tuple(args)

    @staticmethod
    def _cast(t, dtype):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype.is_floating_point else t


@dataclass(frozen=True)
class FusedOp:
    """One fused op. Its operators take ``args`` (the public function's arguments in operator order); the C++
    ones take ``options`` after them (arguments the Triton kernels have no use for, e.g. ``allow_tf32``).

    name: the op; its C++ operators are ``mtl_ops::<name>_forward`` / ``_backward`` (csrc/ops.cpp).
    backends: the backends that implement it.
    reference: the plain PyTorch definition, called with ``args``.
    parse: ``parse(*args) -> args``: the argument types (every backend; what the operator schemas cannot say
        clearly), normalised (lists, ints).
    check: ``check(*args)``: the value rules (shapes, dtypes, devices) with the messages the C++ checks give.
        Run for the reference and Triton backends and in the forward fake kernels; the C++ operators check
        their own arguments.
    forward_fake, backward_fake: the fake kernels (shapes, dtypes and strides of the real outputs) of the
        forward and backward operators; no backward_fake: the op is forward only.
    triton_schemas: (forward, backward) schemas of the Triton operators, when the op has a Triton backend.
    backward: ``backward(backward_op, grad_out, inputs, outputs) -> one gradient (or None) per input``, the
        backward formula; ``inputs`` are the forward operator's arguments and ``outputs`` maps the indices of
        ``saved_outputs`` to those outputs. None: ``backward_op(grad_out, *inputs)`` (the backward kernel
        recomputes what it needs from the inputs).
    saved_outputs: forward outputs the backward reads; they are not differentiable.
    output: which output of the forward operator the public function returns (None: its only one).
    can_run: ``can_run(backend, *args) -> reason | None``: why an available backend cannot run these
        particular inputs. backend=None then takes the next backend; an explicit backend raises.
    autocast: the autocast rule (None: the op takes any floating dtype as it comes).
    """
    name: str
    backends: tuple[str, ...]
    reference: Callable
    parse: Callable
    check: Callable
    forward_fake: Callable
    backward_fake: Callable | None = None
    triton_schemas: tuple[str, str] | None = None
    backward: Callable | None = None
    saved_outputs: tuple[int, ...] = ()
    output: int | None = None
    can_run: Callable | None = None
    autocast: Promote | None = None


def tensor_args(op: str, *names: str) -> Callable:
    """A ``parse`` for an op whose arguments are all tensors: each must be a torch.Tensor."""

    def parse(*args):
        for name, t in zip(names, args):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        return args

    return parse


class FusedOpCall:
    """The registered op: ``op(args, backend, options)`` runs it; ``operators[backend]`` is the backend's
    (forward, backward) operator pair."""

    def __init__(self, spec: FusedOp):
        self.spec = spec
        self.name = spec.name
        self.differentiable = spec.backward_fake is not None
        self.operators = self._operators()
        self._check_arity = len(inspect.signature(spec.check).parameters)
        for forward_op, backward_op in set(self.operators.values()):
            self._register(forward_op, backward_op)
        backends.register_op(spec.name, spec.backends)

    # ---- registration -------------------------------------------------------------------------------------
    def _operators(self) -> dict[str, tuple[Any, Any]]:
        spec, ops = self.spec, {}
        if "triton" in spec.backends:
            pair = []
            for kind, schema in zip(("forward", "backward"), spec.triton_schemas):
                pair.append(torch.library.custom_op(f"mtl_ops::{spec.name}_{kind}_triton", _triton_kernel(
                    spec.name, kind), mutates_args=(), schema=schema)._opoverload)
            ops["triton"] = tuple(pair)
        if LIBRARIES["cpp"].loaded and any(b in spec.backends for b in COMPILED):
            namespace = torch.ops.mtl_ops
            pair = (getattr(namespace, f"{spec.name}_forward").default,
                    getattr(namespace, f"{spec.name}_backward").default if self.differentiable else None)
            for b in COMPILED:  # one operator: the dispatcher picks the CPU or the CUDA kernel
                if b in spec.backends:
                    ops[b] = pair
        return ops

    def _register(self, forward_op, backward_op) -> None:
        spec, arity = self.spec, self._check_arity

        def forward_fake(*args):
            spec.check(*args[:arity])
            return spec.forward_fake(*args)

        torch.library.register_fake(forward_op)(forward_fake)
        if backward_op is None:
            return
        torch.library.register_fake(backward_op)(spec.backward_fake)
        backward = spec.backward or _recompute

        def setup_context(ctx, inputs, output):
            tensors, ctx.layout = _flatten(inputs)
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            for i in spec.saved_outputs:
                tensors.append(outputs[i])
                ctx.mark_non_differentiable(outputs[i])
            ctx.save_for_backward(*tensors)

        def backward_fn(ctx, grad_out, *_grads_of_saved_outputs):
            saved = ctx.saved_tensors
            inputs = _unflatten(saved, ctx.layout)
            outputs = dict(zip(spec.saved_outputs, saved[len(saved) - len(spec.saved_outputs):]))
            return tuple(backward(backward_op, grad_out, inputs, outputs))

        torch.library.register_autograd(forward_op, backward_fn, setup_context=setup_context)

    # ---- per call -----------------------------------------------------------------------------------------
    def __call__(self, args: tuple, backend: str | None = None, options: tuple = ()):
        spec = self.spec
        args = spec.parse(*args)
        first = args[0] if isinstance(args[0], torch.Tensor) else args[0][0]
        device = first.device
        if spec.autocast is not None and torch.is_autocast_enabled(device.type):
            args = spec.autocast(args)
        chosen = backends.select_backend(spec.name, device, backend, spec.can_run, args)
        if chosen == "reference":
            spec.check(*args)
            return spec.reference(*args)
        forward_op = self.operators[chosen][0]
        if chosen == "triton":
            spec.check(*args)
        else:
            args = args + options
        if torch.compiler.is_compiling() or (self.differentiable and torch.is_grad_enabled()
                                             and _any_requires_grad(args)):
            out = forward_op(*args)
        else:  # nothing to differentiate: the kernel itself, without the autograd layer's Python hop
            with torch._C._AutoDispatchBelowAutograd():
                out = forward_op(*args)
        return out if spec.output is None else out[spec.output]


def register(spec: FusedOp) -> FusedOpCall:
    return FusedOpCall(spec)


def _triton_kernel(op: str, kind: str) -> Callable:
    def run(*args):
        return getattr(load_triton(op), kind)(*args)

    run.__name__ = f"{op}_{kind}_triton"
    return run


def _recompute(backward_op, grad_out, inputs, outputs):
    return backward_op(grad_out, *inputs)


def _any_requires_grad(args) -> bool:
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.requires_grad:
                return True
        elif isinstance(a, (list, tuple)):
            for t in a:
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    return True
    return False


_TENSOR = object()  # layout marker: one saved tensor


class _TensorList(int):
    """Layout marker: a list of this many saved tensors."""


def _flatten(inputs) -> tuple[list, list]:
    """(the tensors of ``inputs``, flattened; the layout that rebuilds ``inputs`` around them)."""
    tensors, layout = [], []
    for a in inputs:
        if isinstance(a, torch.Tensor):
            tensors.append(a)
            layout.append(_TENSOR)
        elif isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            tensors.extend(a)
            layout.append(_TensorList(len(a)))
        else:
            layout.append(a)
    return tensors, layout


def _unflatten(saved, layout) -> list:
    inputs, i = [], 0
    for entry in layout:
        if entry is _TENSOR:
            inputs.append(saved[i])
            i += 1
        elif isinstance(entry, _TensorList):
            inputs.append(list(saved[i:i + entry]))
            i += entry
        else:
            inputs.append(entry)
    return inputs
