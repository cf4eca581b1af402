"""Reference definition of all-pairs linear CKA (PDF's inter-task similarity; the oracle for every backend).

Linear kernel, computed in sample space:
``K_t = X_t X_tᵀ`` (n×n) per task, centred, then ``CKA(t, u) = ⟨K̃_t, K̃_u⟩_F / (‖K̃_t‖_F ‖K̃_u‖_F)``.
"""
import torch

from ..common.cka_args import check_args
from ..common.dtypes import accumulate_dtype

__all__ = ["cka"]


def _centre_biased(gram: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I − 11ᵀ/n``, batched over the leading dimension."""
    row_means = gram.mean(dim=-1, keepdim=True)
    col_means = gram.mean(dim=-2, keepdim=True)
    total_mean = gram.mean(dim=(-2, -1), keepdim=True)
    return gram - row_means - col_means + total_mean


def _centre_debiased(gram: torch.Tensor) -> torch.Tensor:
    """Debiased centring (Song et al. 2012 unbiased HSIC, in Kornblith et al. 2019's Gram form).

    Zero the diagonal; ``μ_i = Σ_j K_ij / (n−2)``; ``μ_i −= Σ_i μ_i / (2(n−1))``;
    ``K̃_ij = K_ij − μ_i − μ_j``; zero the diagonal again. Then ``⟨K̃, L̃⟩_F = n(n−3)·HSIC_unbiased(K, L)``.
    """
    n = gram.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=gram.device)
    k = gram.masked_fill(eye, 0.0)
    means = k.sum(dim=-1) / (n - 2)
    means = means - means.sum(dim=-1, keepdim=True) / (2 * (n - 1))
    k = k - means.unsqueeze(-1) - means.unsqueeze(-2)
    return k.masked_fill(eye, 0.0)


def cka(features: torch.Tensor, *, debiased: bool = True) -> torch.Tensor:
    """All-pairs linear CKA between ``T`` feature sets.

    Args:
        features: (T, n, d) floating tensor: for each of T tasks, n samples (the same inputs, in the same
            order, for every task) of d features each (PDF: the spatially pooled output of a decoder stage).
        debiased: use the debiased (unbiased) HSIC estimator (Song et al.; Kornblith et al.'s form, the one
            PDF uses; needs n > 3). ``False`` gives the classic biased estimator ``K̃ = H K H`` (needs n ≥ 2).

    Returns:
        (T, T) symmetric matrix, float64 for float64 input and float32 otherwise (Gram matrices and the
        reductions accumulate in that dtype whatever the input precision). Pairs where a Gram matrix has zero
        centred norm (constant features) are undefined (0/0); as in the PDF code, an undefined diagonal entry
        is set to 1 and an undefined off-diagonal entry to 0. NaN in the features gives NaN.
    """
    check_args(features, debiased)
    num_tasks, n, _ = features.shape
    x = features.to(accumulate_dtype(features.dtype))
    gram = x @ x.transpose(-1, -2)                                     # (T, n, n)
    centred = _centre_debiased(gram) if debiased else _centre_biased(gram)
    flat = centred.reshape(num_tasks, n * n)
    hsic = flat @ flat.transpose(0, 1)                                 # (T, T): ⟨K̃_t, K̃_u⟩_F
    norms = hsic.diagonal().clamp_min(0).sqrt()
    result = hsic / (norms.unsqueeze(1) * norms.unsqueeze(0))
    # 0/0 where a task's centred Gram has no norm (constant features): 1 on the diagonal, 0 off it. NaN inputs
    # still give NaN (their norm is NaN, not 0).
    zero = norms == 0
    undefined = zero.unsqueeze(1) | zero.unsqueeze(0)
    eye = torch.eye(num_tasks, dtype=torch.bool, device=result.device)
    result = torch.where(undefined & eye, torch.ones_like(result), result)
    return torch.where(undefined & ~eye, torch.zeros_like(result), result)
