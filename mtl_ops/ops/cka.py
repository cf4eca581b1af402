"""cka: all-pairs linear CKA between T feature sets (PDF's inter-task similarity), forward only.

Operator ``mtl_ops::cka_forward`` (C++; CPU and CUDA, one ATen definition in csrc/common/cka_gram_strips.h).
The fused backends compute the upper-triangle row strips of the T Gram matrices (about half the reference's
Gram FLOPs) and reduce each strip to the T×T inner products at once, so no n×n Gram matrix is ever held; both
centrings are then exact algebra on those inner products, the Gram diagonals and row sums.

Why the features may be centred first: CKA depends on the features only through centred Grams. Translating
every sample by c turns ``K_ij`` into ``K_ij + a_i + a_j + |c|²`` (``a_i = x_i·c``); H·H removes such terms, and
so does the debiased centring (its U-statistic is unchanged by them off the diagonal), so both estimators are
translation invariant — tests/test_cka.py checks it against the reference.

TF32 policy: the fused backends' fp32 GEMMs are exact IEEE fp32 by default, whatever PyTorch's global setting
(``torch.backends.cuda.matmul.allow_tf32``, ``torch.set_float32_matmul_precision("high"/"medium")``): the
debiased estimator subtracts nearly equal moments, so TF32's 10-bit operand rounding is far outside the fp32
tolerance. ``allow_tf32=True`` opts in to tensor cores: the GEMMs then follow the global setting (TF32 where it
enables it). The guard is csrc/common/fp32_matmul_precision.h; the reference backend is plain PyTorch and follows
the global setting.
"""
from __future__ import annotations

import torch

from .. import reference
from ..common.cka_args import check_args
from ..common.dtypes import accumulate_dtype
from ._fused import FusedOp, register


def _parse(features, debiased):
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"cka: features must be a torch.Tensor, got {type(features).__name__}")
    return features, bool(debiased)


def _forward_fake(features, debiased, allow_tf32=False):
    return features.new_empty((features.shape[0], features.shape[0]), dtype=accumulate_dtype(features.dtype))


def _can_run(backend, features, debiased):
    if backend != "reference" and features.requires_grad and torch.is_grad_enabled():
        return (f"the {backend} backend is forward only, but features requires grad; pass features.detach(), run "
                "under torch.no_grad(), or use backend='reference' to differentiate")
    return None


SPEC = FusedOp(
    name="cka",
    backends=("reference", "cpp", "cuda"),
    reference=lambda features, debiased: reference.cka(features, debiased=debiased),
    parse=_parse,
    check=check_args,
    forward_fake=_forward_fake,
    can_run=_can_run,
)
_OP = register(SPEC)


def cka(features: torch.Tensor, *, debiased: bool = True, backend: str | None = None,
        allow_tf32: bool = False) -> torch.Tensor:
    """All-pairs linear CKA (see :func:`mtl_ops.reference.cka` for the definition and conventions).

    Args:
        features: (T, n, d) floating tensor, any strides: n samples (the same inputs for every task) of d
            features for each of T tasks.
        debiased: the debiased HSIC estimator (PDF's; n > 3) or the biased one (n ≥ 2).
        backend: None (fastest available for the device; ``MTL_OPS_BACKEND`` overrides), "reference", "cpp"
            or "cuda".
        allow_tf32: False (default): the fused backends' fp32 GEMMs are exact IEEE fp32 even when PyTorch's
            global TF32 / float32 matmul precision setting is on. True: they follow that global setting (TF32
            tensor cores where it enables them; faster, ~1e-3 relative error per product). No effect on float64
            input or on the reference backend (plain PyTorch, always the global setting).

    Returns:
        (T, T) symmetric, float64 for float64 input and float32 otherwise (the GEMMs and each strip's T×T
        reduction in that dtype; the sum over strips and the centring algebra in float64). Takes any floating
        dtype, so it needs no autocast rule. Forward only: the fused backends cannot run features that require
        grad while grad mode is on; ``backend=None`` then runs the (differentiable) reference, and naming a fused
        backend raises ``BackendUnavailableError``.
    """
    return _OP((features, debiased), backend, (bool(allow_tf32),))
