"""routed_primitive_gather: ETR-NLP's block for T routes at once.

For route t (the t-th slice of B samples of x):

    y[:, :C_sh]  = Conv1x1_groups(channel_shuffle(concat_p prim_p(x)))    shared by every task
    y[:, C_sh:]  = Conv3x3_t(x, stride)                                  task t's own branch

Operators: ``mtl_ops::routed_primitive_gather_forward`` / ``_backward`` (C++, CPU and CUDA) and
``..._triton``. The CPU and Triton kernels never materialise the primitive bank (the CUDA kernel holds it in
chunks of images, for its GEMMs); the backward saves the tensors and recomputes the responses (max-pool argmax
included); the frozen primitives get no gradient.
"""
from __future__ import annotations

import math

import torch

from .. import reference
from ..common.dtypes import FLOATING, FLOATING_NAMES
from ..common.primitive_kinds import DENSE_CONV, DW_CONV, KIND_NAMES, NOISE, output_size
from ..triton import limits
from ._fused import FusedOp, Promote, register

_TENSORS = ((0, "x"), (4, "w_shared"), (5, "b_shared"), (6, "w_task"), (7, "b_task"))


def parse_args(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups) -> tuple:
    """The argument types, and the primitive sequences as lists (the linear fast path parses the same way)."""
    op = "routed_primitive_gather: "
    args = (x, list(kinds), list(params), list(frozen), w_shared, b_shared, w_task, b_task, stride, groups)
    for i, name in _TENSORS:
        if not isinstance(args[i], torch.Tensor):
            raise TypeError(f"{op}{name} must be a torch.Tensor, got {type(args[i]).__name__}")
    for p, f in enumerate(args[3]):
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"{op}frozen[{p}] must be a torch.Tensor, got {type(f).__name__}")
    for name, n in (("stride", stride), ("groups", groups)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{op}{name} must be an int >= 1, got {n!r}")
    return args


def check_args(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups) -> None:
    """The value rules (csrc/common/rpg_args.h makes the same checks for the C++ operators)."""
    op = "routed_primitive_gather: "
    if x.dim() != 4:
        raise ValueError(f"{op}x must be (T*B, C_in, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOATING:
        raise TypeError(f"{op}x must be {FLOATING_NAMES}, got {x.dtype}")
    k = len(kinds)
    if k < 1:
        raise ValueError(f"{op}kinds must name at least one primitive, got none")
    if len(params) != 2 * k:
        raise ValueError(f"{op}params must hold 2 ints per primitive ({2 * k}), got {len(params)}")
    if len(frozen) != k:
        raise ValueError(f"{op}frozen must hold one tensor per primitive ({k}), got {len(frozen)}")
    if stride < 1:
        raise ValueError(f"{op}stride must be an int >= 1, got {stride!r}")
    if groups < 1:
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
        if kind in (DW_CONV, DENSE_CONV, NOISE) and f.dtype not in FLOATING:
            raise TypeError(f"{op}frozen[{p}] must be floating, got {f.dtype}")


def _forward_fake(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups):
    N, _, H, W = x.shape
    return x.new_empty(N, w_shared.shape[0] + w_task.shape[1], output_size(H, stride), output_size(W, stride))


def _backward_fake(grad_out, x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups):
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w_shared),
            torch.empty_like(b_shared), torch.empty_like(w_task), torch.empty_like(b_task))


def _backward(backward_op, grad_out, inputs, outputs):
    x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups = inputs
    dx, dws, dbs, dwt, dbt = backward_op(grad_out.contiguous(), *inputs)
    return dx, None, None, [None] * len(frozen), dws, dbs, dwt, dbt, None, None


SPEC = FusedOp(
    name="routed_primitive_gather",
    backends=("reference", "cpp", "cuda", "triton"),
    reference=reference.routed_primitive_gather,
    parse=parse_args,
    check=check_args,
    forward_fake=_forward_fake,
    backward_fake=_backward_fake,
    triton_schemas=("(Tensor x, int[] kinds, int[] params, Tensor[] frozen, Tensor w_shared, Tensor b_shared, "
                    "Tensor w_task, Tensor b_task, int stride, int groups) -> Tensor",
                    "(Tensor grad_out, Tensor x, int[] kinds, int[] params, Tensor[] frozen, Tensor w_shared, "
                    "Tensor b_shared, Tensor w_task, Tensor b_task, int stride, int groups) "
                    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"),
    backward=_backward,
    can_run=lambda backend, *args: limits.routed_primitive_gather(*args) if backend == "triton" else None,
    autocast=Promote(same=(0, 4, 5, 6, 7)),
)
_OP = register(SPEC)


def routed_primitive_gather(x: torch.Tensor, kinds, params, frozen, w_shared: torch.Tensor, b_shared: torch.Tensor,
                            w_task: torch.Tensor, b_task: torch.Tensor, *, stride: int = 1, groups: int = 1,
                            backend: str | None = None) -> torch.Tensor:
    """ETR-NLP's shared primitive branch and per-task branches for T routes in one fused op.

    Args:
        x: (T·B, C_in, H, W), route t is rows [t·B, (t+1)·B) (``torch.cat`` of the T routes); float32,
            float64, float16 or bfloat16; any strides (non-contiguous inputs are copied once).
        kinds, params, frozen: the k primitives (codes in ``mtl_ops.common.primitive_kinds``): kinds[p]
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
    Differentiable in x, w_shared, b_shared, w_task and b_task; accumulation in fp32 (fp64 for fp64). Under
    autocast, x and the weights and biases of several floating dtypes all run in the widest one.
    """
    return _OP((x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups), backend)
