"""Reference linear CKA (PDF's inter-task similarity): invariances, direct formulas, estimators, bad input."""
import math

import pytest
import torch

from mtl_ops.reference import cka


def make_features(num_tasks=3, n=12, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(num_tasks, n, d, generator=g, dtype=torch.float64).to(dtype)


def random_orthogonal(d, seed):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


# ---- direct formulas, written out element by element -------------------------------------------------
def gram(x):
    n = len(x)
    return [[sum(x[i][k] * x[j][k] for k in range(len(x[0]))) for j in range(n)] for i in range(n)]


def hsic_biased(k, l):
    """tr(K H L H) / (n−1)², H = I − 11ᵀ/n."""
    n = len(k)
    h = [[(1.0 if i == j else 0.0) - 1.0 / n for j in range(n)] for i in range(n)]
    mm = lambda a, b: [[sum(a[i][m] * b[m][j] for m in range(n)) for j in range(n)] for i in range(n)]
    p = mm(mm(mm(k, h), l), h)
    return sum(p[i][i] for i in range(n)) / (n - 1) ** 2


def hsic_unbiased(k, l):
    """Song et al. (2012): [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)), K̃ = K, zero diagonal."""
    n = len(k)
    kt = [[0.0 if i == j else k[i][j] for j in range(n)] for i in range(n)]
    lt = [[0.0 if i == j else l[i][j] for j in range(n)] for i in range(n)]
    trace = sum(kt[i][j] * lt[j][i] for i in range(n) for j in range(n))
    sum_k = sum(map(sum, kt))
    sum_l = sum(map(sum, lt))
    row_k = [sum(r) for r in kt]
    col_l = [sum(lt[i][j] for i in range(n)) for j in range(n)]
    one_kl_one = sum(row_k[m] * col_l[m] for m in range(n))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * one_kl_one) / (n * (n - 3))


def direct_cka(x, y, hsic):
    k, l = gram(x), gram(y)
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("debiased", [True, False])
@pytest.mark.parametrize("n,d", [(4, 3), (7, 2), (9, 6)])
def test_matches_direct_formula(debiased, n, d):
    feats = make_features(3, n, d, seed=n * 10 + d)
    out = cka(feats, debiased=debiased)
    hsic = hsic_unbiased if debiased else hsic_biased
    lists = feats.tolist()
    for t in range(3):
        for u in range(3):
            assert out[t, u].item() == pytest.approx(direct_cka(lists[t], lists[u], hsic), rel=1e-9, abs=1e-12)


def test_biased_matches_feature_space_formula():
    feats = make_features(2, 15, 4, seed=3)
    x, y = (f - f.mean(0) for f in feats)
    expected = (y.T @ x).square().sum() / ((x.T @ x).norm() * (y.T @ y).norm())
    assert cka(feats, debiased=False)[0, 1].item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("debiased", [True, False])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(debiased):
    feats = make_features(3, 20, 6, seed=1)
    transformed = torch.stack([feats[t] @ random_orthogonal(6, seed=t) * (0.1 + 3.0 * t) for t in range(3)])
    torch.testing.assert_close(cka(transformed, debiased=debiased), cka(feats, debiased=debiased),
                               rtol=1e-10, atol=1e-12)


def test_identical_inputs_give_one():
    feats = make_features(3, 16, 5, seed=2)
    feats[2] = feats[0]
    for debiased in (True, False):
        out = cka(feats, debiased=debiased)
        assert out[0, 2].item() == pytest.approx(1.0, abs=1e-12)
        torch.testing.assert_close(out.diagonal(), torch.ones(3, dtype=torch.float64))


def test_debiased_and_biased_differ_and_are_symmetric():
    feats = make_features(4, 10, 3, seed=4)
    unbiased, biased = cka(feats, debiased=True), cka(feats, debiased=False)
    torch.testing.assert_close(unbiased, unbiased.T, rtol=0, atol=1e-14)
    torch.testing.assert_close(biased, biased.T, rtol=0, atol=1e-14)
    off = ~torch.eye(4, dtype=torch.bool)
    assert (unbiased[off] - biased[off]).abs().max() > 1e-3
    # the biased estimator is inflated for independent features at small n
    assert biased[off].mean() > unbiased[off].mean()


def test_accumulation_dtypes():
    feats = make_features(2, 8, 3, seed=5)
    assert cka(feats).dtype == torch.float64
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = cka(feats.to(dtype))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), cka(feats), rtol=0, atol=3e-2 if dtype != torch.float32 else 1e-5)


def test_constant_features_follow_nan_convention():
    feats = make_features(3, 8, 3, seed=6)
    feats[1] = 0.0
    out = cka(feats)
    assert not torch.isnan(out).any()
    assert out[1, 1].item() == 1.0 and out[0, 1].item() == 0.0 and out[1, 2].item() == 0.0


def test_bad_input():
    with pytest.raises(ValueError, match=r"features must be 3-D"):
        cka(torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"features must be a floating-point tensor"):
        cka(torch.ones(2, 8, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"features must have more than 3 samples \(n > 3\).*n=3"):
        cka(torch.randn(2, 3, 4))
    cka(torch.randn(2, 3, 4), debiased=False)                      # the biased estimator is fine at n = 3
    with pytest.raises(ValueError, match=r"features must have at least 2 samples"):
        cka(torch.randn(2, 1, 4), debiased=False)
    with pytest.raises(TypeError, match=r"features must be a torch.Tensor"):
        cka([[[1.0]]])
