"""routed_primitive_gather: ETR-NLP's block for T routes at once (spec ctal_etrnlp.md §2.2, §2.7).

For route t (the t-th slice of B samples of x):

    y[:, :C_sh]  = Conv1x1_groups(channel_shuffle(concat_p prim_p(x)))    shared by every task
    y[:, C_sh:]  = Conv3x3_t(x, stride)                                  task t's own branch

Operators: ``mtl_ops::routed_primitive_gather_forward`` / ``_backward`` (C++; CPU and CUDA kernels, schemas
in csrc/ops.cpp) and ``..._forward_triton`` / ``..._backward_triton`` (Triton, defined
here). Each has a fake kernel and autograd; the public function applies ``RoutedPrimitiveGatherFunction``, whose forward and
backward call the chosen backend's operators (the reference backend is plain autograd). The CPU and Triton
kernels never materialise the primitive bank (the CUDA kernel holds it in chunks of images, for its GEMMs);
the backward recomputes the responses (max-pool argmax included).
"""
from __future__ import annotations

import math

import torch

from .. import reference
from ..backends import register_op, select_backend
from ..reference.primitive_kinds import DENSE_CONV, DW_CONV, KIND_NAMES, NOISE, output_size
from ._registration import kernel_table

OP = "routed_primitive_gather"
register_op(OP, ("reference", "cpp", "cuda", "triton"))
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_args(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups) -> None:
    """The argument checks of every backend (csrc/common/rpg_args.h says the same in C++)."""
    op = "routed_primitive_gather: "
    for name, t in (("x", x), ("w_shared", w_shared), ("b_shared", b_shared), ("w_task", w_task), ("b_task", b_task)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}x must be (T*B, C_in, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATING:
        raise TypeError(f"{op}x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    k = len(kinds)
    if k < 1:
        raise ValueError(f"{op}kinds must name at least one primitive, got none")
    if len(params) != 2 * k:
        raise ValueError(f"{op}params must hold 2 ints per primitive ({2 * k}), got {len(params)}")
    if len(frozen) != k:
        raise ValueError(f"{op}frozen must hold one tensor per primitive ({k}), got {len(frozen)}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{op}stride must be an int >= 1, got {stride!r}")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{op}groups must be an int >= 1, got {groups!r}")
    if w_task.dim() != 5 or w_task.shape[3:] != (3, 3) or w_task.shape[0] < 1:
        raise ValueError(f"{op}w_task must be (T, C_sp, C_in, 3, 3), got shape {tuple(w_task.shape)}")
    N, C, H, W = x.shape
    T, C_sp = w_task.shape[:2]
    C_sh = w_shared.shape[0] if w_shared.dim() >= 1 else 0
    if min(C, H, W) < 1:
        raise ValueError(f"{op}x must have C_in, H, W >= 1, got shape {tuple(x.shape)}")
    if N % T:
        raise ValueError(f"{op}x's batch ({N}) must be T*B with T = w_task.size(0) = {T}")
    if w_task.shape[2] != C:
        raise ValueError(f"{op}w_task must be (T, C_sp, C_in, 3, 3) with C_in = {C}, got shape {tuple(w_task.shape)}")
    if C % groups or C_sh % groups:
        raise ValueError(f"{op}groups ({groups}) must divide C_in ({C}) and C_sh ({C_sh}); "
                         f"gcd(C_in, C_sh) = {math.gcd(C, C_sh)} and its divisors would work")
    cpg = C // groups
    if w_shared.dim() != 4 or w_shared.shape[1:] != (k * cpg, 1, 1):
        raise ValueError(f"{op}w_shared must be (C_sh, k*C_in/groups, 1, 1) = (C_sh, {k * cpg}, 1, 1), "
                         f"got shape {tuple(w_shared.shape)}")
    if b_shared.shape != (C_sh,):
        raise ValueError(f"{op}b_shared must be (C_sh,) = ({C_sh},), got shape {tuple(b_shared.shape)}")
    if b_task.shape != (T, C_sp):
        raise ValueError(f"{op}b_task must be (T, C_sp) = ({T}, {C_sp}), got shape {tuple(b_task.shape)}")
    for t in (w_shared, b_shared, w_task, b_task):
        if t.dtype != x.dtype:
            raise TypeError(f"{op}weights and biases must have the dtype of x ({x.dtype}), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}all tensors must be on x's device ({x.device}), got {t.device}")
    for p in range(k):
        kind, a, f = kinds[p], params[2 * p], frozen[p]
        if not isinstance(kind, int) or not 0 <= kind < len(KIND_NAMES):
            raise ValueError(f"{op}kinds[{p}] must be a primitive code in [0, {len(KIND_NAMES)}), got {kind!r}")
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"{op}frozen[{p}] must be a torch.Tensor, got {type(f).__name__}")
        if f.device != x.device:
            raise ValueError(f"{op}frozen[{p}] must be on x's device ({x.device}), got {f.device}")
        if kind in (DW_CONV, DENSE_CONV):
            if a < 1:
                raise ValueError(f"{op}params[{2 * p}] (dilation of primitive {p}) must be >= 1, got {a}")
            cin = 1 if kind == DW_CONV else C
            if tuple(f.shape) != (C, cin, 3, 3):
                raise ValueError(f"{op}frozen[{p}] must be a ({C}, {cin}, 3, 3) kernel, got shape {tuple(f.shape)}")
        elif kind == NOISE and (f.dim() != 3 or f.shape[0] != C or min(f.shape[1:]) < 1):
            raise ValueError(f"{op}frozen[{p}] must be a ({C}, Hn, Wn) noise mask, got shape {tuple(f.shape)}")
        if kind in (DW_CONV, DENSE_CONV, NOISE) and f.dtype not in _FLOATING:
            raise TypeError(f"{op}frozen[{p}] must be floating, got {f.dtype}")


def _out_shape(x, w_shared, w_task, stride):
    N, _, H, W = x.shape
    return N, w_shared.shape[0] + w_task.shape[1], output_size(H, stride), output_size(W, stride)


def _forward_fake(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups):
    return x.new_empty(_out_shape(x, w_shared, w_task, stride))


def _backward_fake(grad_out, x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w_shared),
            torch.empty_like(b_shared), torch.empty_like(w_task), torch.empty_like(b_task))


@torch.library.custom_op("mtl_ops::routed_primitive_gather_forward_triton", mutates_args=())
def _triton_forward(x: torch.Tensor, kinds: list[int], params: list[int], frozen: list[torch.Tensor],
                    w_shared: torch.Tensor, b_shared: torch.Tensor, w_task: torch.Tensor, b_task: torch.Tensor,
                    stride: int, groups: int) -> torch.Tensor:
    from ..triton import load

    return load("routed_primitive_gather").forward(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task,
                                                   stride, groups)


@torch.library.custom_op("mtl_ops::routed_primitive_gather_backward_triton", mutates_args=())
def _triton_backward(grad_out: torch.Tensor, x: torch.Tensor, kinds: list[int], params: list[int],
                     frozen: list[torch.Tensor], w_shared: torch.Tensor, b_shared: torch.Tensor,
                     w_task: torch.Tensor, b_task: torch.Tensor, stride: int, groups: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..triton import load

    return load("routed_primitive_gather").backward(grad_out, x, kinds, params, frozen, w_shared, b_shared,
                                                    w_task, b_task, stride, groups)


def _register_autograd(forward_op, backward_op) -> None:
    """Saves the tensors; the fused backward recomputes the primitive responses from them."""

    def setup_context(ctx, inputs, output):
        x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups = inputs
        ctx.save_for_backward(x, w_shared, b_shared, w_task, b_task, *frozen)
        ctx.static = (list(kinds), list(params), stride, groups)

    def backward(ctx, grad_out):
        x, w_shared, b_shared, w_task, b_task, *frozen = ctx.saved_tensors
        kinds, params, stride, groups = ctx.static
        dx, dws, dbs, dwt, dbt = backward_op(grad_out.contiguous(), x, kinds, params, frozen, w_shared, b_shared,
                                             w_task, b_task, stride, groups)
        return dx, None, None, [None] * len(frozen), dws, dbs, dwt, dbt, None, None

    torch.library.register_autograd(forward_op, backward, setup_context=setup_context)


_KERNELS = kernel_table("routed_primitive_gather", _triton_forward, _triton_backward, _forward_fake,
                        _backward_fake, _register_autograd)


class RoutedPrimitiveGatherFunction(torch.autograd.Function):
    """The fused block on one backend: forward and backward are one operator each; the backward recomputes
    the primitive responses from the saved input instead of storing the k·C_in bank."""

    @staticmethod
    def forward(x, w_shared, b_shared, w_task, b_task, meta, backend: str, *frozen):
        kinds, params, stride, groups = meta
        return _KERNELS[backend][0](x, list(kinds), list(params), list(frozen), w_shared, b_shared, w_task, b_task,
                                    stride, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w_shared, b_shared, w_task, b_task, meta, backend, *frozen = inputs
        ctx.save_for_backward(x, w_shared, b_shared, w_task, b_task, *frozen)
        ctx.meta = meta
        ctx.backend = backend

    @staticmethod
    def backward(ctx, grad_out):
        x, w_shared, b_shared, w_task, b_task, *frozen = ctx.saved_tensors
        kinds, params, stride, groups = ctx.meta
        grads = _KERNELS[ctx.backend][1](grad_out.contiguous(), x, list(kinds), list(params), list(frozen), w_shared,
                                         b_shared, w_task, b_task, stride, groups)
        return (*grads, None, None) + (None,) * len(frozen)


def routed_primitive_gather(x: torch.Tensor, kinds, params, frozen, w_shared: torch.Tensor, b_shared: torch.Tensor,
                            w_task: torch.Tensor, b_task: torch.Tensor, *, stride: int = 1, groups: int = 1,
                            backend: str | None = None) -> torch.Tensor:
    """ETR-NLP's shared primitive branch and per-task branches for T routes in one fused op.

    Args:
        x: (T·B, C_in, H, W), route t is rows [t·B, (t+1)·B) (``torch.cat`` of the T routes); float32,
            float64, float16 or bfloat16; any strides (non-contiguous inputs are copied once).
        kinds, params, frozen: the k primitives (codes in ``mtl_ops.reference.primitive_kinds``): kinds[p]
            the code, (params[2p], params[2p+1]) its two ints (shift (dh, dw), conv (dilation, 0), else
            (0, 0)), frozen[p] its frozen tensor (dw_conv (C_in, 1, 3, 3), dense_conv (C_in, C_in, 3, 3),
            noise (C_in, Hn, Wn); any tensor, e.g. an empty one, for the others). They get no gradient.
        w_shared, b_shared: the learnable grouped 1x1 (``nn.Conv2d(k·C_in, C_sh, 1, groups=groups)``'s
            weight (C_sh, k·C_in/groups, 1, 1) and bias (C_sh,)), applied to the primitive bank shuffled to
            channel order c·k + p, so group g combines the k responses of input channels
            [g·C_in/groups, (g+1)·C_in/groups).
        w_task, b_task: (T, C_sp, C_in, 3, 3) and (T, C_sp): task t's 3x3 convolution (padding 1).
        stride: of every primitive and of the task convolutions; H' = (H − 1) // stride + 1.
        groups: of the 1x1; must divide C_in and C_sh.
        backend: None (fastest available; ``MTL_OPS_BACKEND`` overrides), "reference", "cpp", "cuda", "triton".

    Returns (T·B, C_sh + C_sp, H', W') in x's dtype: channels [0, C_sh) shared, [C_sh, C_out) task t's.
    Differentiable in x, w_shared, b_shared, w_task and b_task; accumulation in fp32 (fp64 for fp64).
    """
    kinds, params, frozen = list(kinds), list(params), list(frozen)
    check_args(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups)
    chosen = select_backend(OP, x.device, backend)
    if chosen == "reference":
        return reference.routed_primitive_gather(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task,
                                                 stride, groups)
    return RoutedPrimitiveGatherFunction.apply(x, w_shared, b_shared, w_task, b_task,
                                               (tuple(kinds), tuple(params), stride, groups), chosen, *frozen)
