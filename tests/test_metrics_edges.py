"""Tests for the boundary F-measure (mtl_ops.metrics.edges): hand-built cases with known answers, and each step
(NMS, thinning, matching) against an independent reference."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from mtl_ops.metrics import EdgeMetric
from mtl_ops.metrics.edges import (
    DEFAULT_THRESHOLDS,
    boundary_counts,
    edge_nms,
    match_counts,
    thin_edges,
    tolerance_pixels,
)

approx = pytest.approx


def metric_for_radius(radius: float, size, **kwargs) -> EdgeMetric:
    """An EdgeMetric whose tolerance is ``radius`` pixels on images of ``size`` (max_dist = radius / diagonal)."""
    return EdgeMetric(max_dist=radius / math.hypot(*size), from_logits=False, **kwargs)


def evaluate(metric: EdgeMetric, prob: np.ndarray, gt: np.ndarray) -> dict:
    metric.update(torch.as_tensor(prob, dtype=torch.float32)[None], torch.as_tensor(gt, dtype=torch.long)[None])
    return metric.compute()


def horizontal_lines(size, rows, cols) -> np.ndarray:
    m = np.zeros(size, dtype=np.float32)
    for r in rows:
        m[r, cols[0]:cols[1]] = 1
    return m


# ------------------------------------------------------------------------------------------------ known answers
def test_perfect_prediction_scores_100():
    size = (40, 60)
    gt = np.zeros(size, dtype=np.float32)
    gt[10, 8:52] = 1  # a horizontal, a vertical and a diagonal edge, all away from the suppressed border
    gt[12:34, 30] = 1
    for k in range(20):
        gt[14 + k, 8 + k] = 1
    for prob in (gt, gt * 0.7):  # a binary map, and a plateau below 1: every threshold under it sees the edges
        out = evaluate(EdgeMetric(from_logits=False), prob, gt)
        assert out["F"] == 100 and out["precision"] == 100 and out["recall"] == 100 and out["F_ois"] == 100
    logits = torch.as_tensor(gt * 20 - 10)[None, None]
    m = EdgeMetric()
    m.update(logits, torch.as_tensor(gt).long()[None, None])
    assert m.compute()["F"] == 100


def test_all_zero_prediction_scores_0():
    # nothing is above any threshold: no predictions, recall 0, F 0; precision is 1 (SEISM's convention)
    gt = horizontal_lines((30, 40), [15], (8, 32))
    out = evaluate(EdgeMetric(from_logits=False), np.zeros_like(gt), gt)
    assert out == {"F": 0.0, "precision": 100.0, "recall": 0.0, "threshold": DEFAULT_THRESHOLDS[0], "F_ois": 0.0}


def test_constant_prediction_exact_value():
    # A constant map is a plateau: NMS keeps every pixel (1.01·s > s), so below its value the whole 20×30 image is
    # predicted (border=0: no ramp), and thinning collapses the rectangle to one horizontal segment of
    # W − H + 1 = 11 pixels. Ground truth: full-height vertical lines in every even column (already thin),
    # |G| = 20 · 15 = 300. With a tolerance of 1.2 px every segment pixel has a distinct match (even columns:
    # the edge pixel above or below; odd columns: the pixel beside), so precision = 1, recall = 11/300 and
    # F = 2·11 / (11 + 300) = 22/311, whatever the row of the segment. Above the constant nothing is predicted.
    size = (20, 30)
    gt = np.zeros(size, dtype=np.float32)
    gt[:, 0::2] = 1
    assert np.array_equal(thin_edges(gt > 0), gt > 0)
    const = np.full(size, 0.405, dtype=np.float32)  # between two thresholds of the default set
    segment = thin_edges(edge_nms(const, border=0) > 0.3)
    rows, cols = np.nonzero(segment)
    assert len(set(rows.tolist())) == 1 and cols.tolist() == list(range(cols[0], cols[0] + 11))
    m = metric_for_radius(1.2, size, border=0)
    out = evaluate(m, const, gt)
    assert out["F"] == approx(100 * 22 / 311) and out["precision"] == 100 and out["recall"] == approx(100 * 11 / 300)
    curve = m.curve()
    below = curve["thresholds"] < 0.405
    assert curve["F"][below].tolist() == approx([100 * 22 / 311] * int(below.sum()))
    assert curve["F"][~below].tolist() == [0.0] * int((~below).sum())
    # edge density 0.5 here: the old lenient measure (every predicted pixel within 2 px of an edge counts) gave
    # precision 1 and recall 1 for this constant; the boundary F-measure gives 7%


def test_shift_within_tolerance_scores_100_beyond_scores_0():
    size = (40, 60)
    gt = horizontal_lines(size, [10, 25], (8, 52))
    down1 = horizontal_lines(size, [11, 26], (8, 52))
    down2 = horizontal_lines(size, [12, 27], (8, 52))
    assert evaluate(metric_for_radius(1.5, size), down1, gt)["F"] == 100
    assert evaluate(metric_for_radius(1.5, size), down2, gt)["F"] == 0
    assert evaluate(metric_for_radius(2.0, size), down2, gt)["F"] == 100  # distance = tolerance still matches
    # isolated points shifted diagonally by one pixel (√2 away): within 1.5 px, not within 1.2 px
    dots = np.zeros(size, dtype=np.float32)
    dots[10:31:10, 10:51:10] = 1
    shifted = np.roll(dots, (1, 1), axis=(0, 1))
    assert evaluate(metric_for_radius(1.5, size), shifted, dots)["F"] == 100
    assert evaluate(metric_for_radius(1.2, size), shifted, dots)["F"] == 0
    # the tolerance is max_dist times the image diagonal: 0.011 is 1.16 px at 64×84 and 5.28 px at 288×384
    assert tolerance_pixels(0.011, 64, 84) == approx(1.1616, abs=1e-4)
    assert tolerance_pixels(0.011, 288, 384) == approx(5.28)


def test_thick_prediction_is_thinned_to_precision_1():
    # a 3-pixel band over a 1-pixel edge: the band thins to the 49 middle pixels of the 51-pixel edge, which all
    # match, so precision = 49/49 and F = 2·49 / (49 + 51) = 98%, where counting every band pixel near an edge
    # would give precision 1 for 3× the pixels
    size = (40, 60)
    gt = horizontal_lines(size, [20], (5, 56))
    band = horizontal_lines(size, [19, 20, 21], (5, 56))
    out = evaluate(metric_for_radius(1.5, size, border=0), band, gt)
    assert out["precision"] == 100 and out["recall"] == approx(100 * 49 / 51) and out["F"] == approx(98.0)
    # a soft vertical ridge (0.5, 1, 0.5): NMS keeps only its crest
    ridge = np.zeros(size, dtype=np.float32)
    ridge[8:32, 29], ridge[8:32, 30], ridge[8:32, 31] = 0.5, 1.0, 0.5
    crest = np.zeros(size, dtype=np.float32)
    crest[8:32, 30] = 1
    assert np.array_equal(edge_nms(ridge, border=0) > 0, crest > 0)
    assert evaluate(metric_for_radius(1.5, size), ridge, crest)["F"] == 100


def test_matching_is_one_to_one():
    # two predicted pixels one pixel either side of one ground-truth pixel: one match, precision 1/2, recall 1
    size = (12, 12)
    gt = np.zeros(size, dtype=np.float32)
    gt[5, 6] = 1
    pred = np.zeros(size, dtype=np.float32)
    pred[5, 5] = pred[5, 7] = 1
    assert match_counts(pred > 0, gt > 0, 1.5).tolist() == [1]
    out = evaluate(metric_for_radius(1.5, size, border=0), pred, gt)
    assert out["precision"] == 50 and out["recall"] == 100 and out["F"] == approx(200 / 3)


def test_ods_picks_one_threshold_for_the_dataset_and_ois_one_per_image():
    # image A: its edge at 0.9 and a false edge 12 rows away at 0.6; image B: its edge at 0.3 only (40 px each)
    #   t = 0.2: predicted 40 + 40 + 40, matched 80 of 80 → P = 2/3, R = 1 → F = 80%   ← ODS
    #   t = 0.5: predicted 40 + 40 (A's two edges), matched 40 → P = 1/2, R = 1/2 → F = 50%
    #   t = 0.8: predicted 40 (A's edge), matched 40 → P = 1, R = 1/2 → F = 2/3
    # per image: A is best at 0.8 (F = 1), B at 0.2 (F = 1) → OIS sums 40 + 40 predicted, all matched → 100%
    size = (30, 60)
    gt_a = horizontal_lines(size, [10], (10, 50))
    pred_a = 0.9 * gt_a + 0.6 * horizontal_lines(size, [22], (10, 50))
    gt_b = horizontal_lines(size, [15], (10, 50))
    pred_b = 0.3 * gt_b
    m = EdgeMetric(thresholds=[0.2, 0.5, 0.8], from_logits=False)
    m.update(torch.as_tensor(np.stack([pred_a, pred_b])), torch.as_tensor(np.stack([gt_a, gt_b])).long())
    assert m.curve()["F"].tolist() == approx([80.0, 50.0, 200 / 3])
    assert m.compute() == approx({"F": 80.0, "precision": 200 / 3, "recall": 100.0, "threshold": 0.2,
                                  "F_ois": 100.0})
    # image by image the counts are the same as in one update
    parts = EdgeMetric(thresholds=[0.2, 0.5, 0.8], from_logits=False)
    for p, g in ((pred_a, gt_a), (pred_b, gt_b)):
        parts.update(torch.as_tensor(p)[None], torch.as_tensor(g).long()[None])
    assert parts.compute() == approx(m.compute())


def test_ignored_pixels_are_neither_predictions_nor_ground_truth():
    size = (30, 60)
    gt = horizontal_lines(size, [10], (10, 50))
    pred = 0.9 * gt + 0.6 * horizontal_lines(size, [22], (10, 50))
    target = torch.as_tensor(gt).long()
    target[22, 10:50] = 255  # the false edge lies on ignored pixels
    m = EdgeMetric(thresholds=[0.2], from_logits=False)
    m.update(torch.as_tensor(pred)[None], target[None])
    assert m.compute()["F"] == 100
    masked = EdgeMetric(thresholds=[0.2], from_logits=False)
    masked.update(torch.as_tensor(pred)[None], torch.as_tensor(gt).long()[None], mask=(target != 255)[None])
    assert masked.compute()["F"] == 100
    # an ignored ground-truth pixel is not a miss
    target = torch.as_tensor(gt).long()
    target[10, 30:50] = 255
    m = EdgeMetric(thresholds=[0.2], from_logits=False)
    m.update(torch.as_tensor(0.9 * horizontal_lines(size, [10], (10, 30)))[None], target[None])
    assert m.compute()["recall"] == 100


def test_border_ramp_suppresses_edges_at_the_image_border():
    size = (30, 40)
    gt = np.zeros(size, dtype=np.float32)
    gt[:, 0] = 1  # an edge on the first column: the ramp makes its scores 0
    assert evaluate(EdgeMetric(from_logits=False), gt, gt)["F"] == 0
    assert evaluate(EdgeMetric(from_logits=False, border=0), gt, gt)["F"] == 100
    ramp = edge_nms(np.full(size, 0.5, dtype=np.float32), border=5)
    assert ramp[15, :6].tolist() == approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert ramp[0, 20] == 0 and ramp[2, 2] == approx(0.5 * 0.4 * 0.4)


def test_trivial_constant_on_synthetic_scenes_scores_below_edge_density():
    # the issue this metric replaces: a constant at the edge rate scored F ≈ 52–65 against 12% edge density
    from mtl_ops.data import SyntheticScenes

    from train_helpers import CACHE

    data = SyntheticScenes("val", n=8, size=(64, 84), tasks=("edges",), cache_dir=CACHE)
    edges = torch.stack([data[i]["edges"] for i in range(len(data))])
    density = float(edges.mean())
    m = EdgeMetric()
    m.update(torch.full_like(edges, math.log(density / (1 - density))), edges.long())
    assert m.compute()["F"] < 100 * density / 2


# ------------------------------------------------------------------------------------------------ each step
def nms_reference(prob: np.ndarray, border: int) -> np.ndarray:
    """The toolbox's edgesNms loops and convTri / gradient2, transcribed pixel by pixel."""
    h, w = prob.shape
    f = np.array([1, 2, 3, 4, 5, 4, 3, 2, 1], dtype=np.float64) / 25
    padded = np.pad(prob.astype(np.float64), 4, mode="symmetric")
    rows = np.array([[np.dot(padded[y, x:x + 9], f) for x in range(w)] for y in range(h + 8)])
    smooth = np.array([[np.dot(rows[y:y + 9, x], f) for x in range(w)] for y in range(h)])

    def grad(a, axis):
        out = np.empty_like(a)
        n = a.shape[axis]
        for i in range(n):
            lo, hi = max(i - 1, 0), min(i + 1, n - 1)
            take = (lambda k: a[:, k]) if axis == 1 else (lambda k: a[k, :])
            val = (take(hi) - take(lo)) / (hi - lo)
            if axis == 1:
                out[:, i] = val
            else:
                out[i, :] = val
        return out

    ox, oy = grad(smooth, 1), grad(smooth, 0)
    oxx, oxy, oyy = grad(ox, 1), grad(oy, 1), grad(oy, 0)
    out = prob.astype(np.float64).copy()

    def interp(xf, yf):
        xf = 0 if xf < 0 else (w - 1.001 if xf > w - 1.001 else xf)
        yf = 0 if yf < 0 else (h - 1.001 if yf > h - 1.001 else yf)
        x0, y0 = int(xf), int(yf)
        dx0, dy0 = xf - x0, yf - y0
        return (prob[y0, x0] * (1 - dx0) * (1 - dy0) + prob[y0, x0 + 1] * dx0 * (1 - dy0)
                + prob[y0 + 1, x0] * (1 - dx0) * dy0 + prob[y0 + 1, x0 + 1] * dx0 * dy0)

    for y in range(h):
        for x in range(w):
            e = prob[y, x]
            if not e:
                continue
            o = math.atan(oyy[y, x] * np.sign(-oxy[y, x]) / (oxx[y, x] + 1e-5)) % math.pi
            if any(e * 1.01 < interp(x + d * math.cos(o), y + d * math.sin(o)) for d in (-1, 1)):
                out[y, x] = 0
    s = min(border, w // 2, h // 2)
    for k in range(s):
        out[:, k] *= k / s
        out[:, w - 1 - k] *= k / s
        out[k, :] *= k / s
        out[h - 1 - k, :] *= k / s
    return out


def test_nms_matches_the_toolbox_loops():
    g = np.random.default_rng(0)
    smooth_noise = np.clip(np.cumsum(np.cumsum(g.random((17, 23)), 0), 1) / 60 % 1.0, 0, 1)
    for prob in (g.random((17, 23)).astype(np.float32), smooth_noise.astype(np.float32)):
        for border in (0, 5):
            ours = edge_nms(prob, border)
            ref = nms_reference(prob, border)
            # float32 here, float64 in the reference: the same pixels survive, with values equal to rounding
            assert np.array_equal(ours > 0, ref > 0)
            assert np.allclose(ours, ref, rtol=1e-6, atol=1e-7)
    batch = np.random.default_rng(1).random((3, 9, 11)).astype(np.float32)
    assert np.array_equal(edge_nms(batch), np.stack([edge_nms(b) for b in batch]))


def test_thinning_equals_skimage():
    from skimage.morphology import thin

    g = np.random.default_rng(0)
    maps = [g.random((23, 31)) < p for p in (0.05, 0.2, 0.5, 0.8, 0.95)]
    blob = np.zeros((40, 60), dtype=bool)
    blob[5:30, 3:50] = True
    blob[10:20, 20:40] = False  # a ring: thinning must keep the hole
    maps.append(blob[:23, :31])
    nms = edge_nms(g.random((23, 31)).astype(np.float32))
    maps += [nms > t for t in (0.05, 0.3, 0.6)]
    stack = np.stack(maps)
    assert np.array_equal(thin_edges(stack), np.stack([thin(m) for m in stack]))
    assert np.array_equal(thin_edges(blob), thin(blob))
    assert thin_edges(np.zeros((0, 4, 5), dtype=bool)).shape == (0, 4, 5)


def max_matching_reference(pred: np.ndarray, gt: np.ndarray, radius: float) -> tuple:
    """Cardinality of a maximum matching (dense assignment maximising the number of candidate pairs), and of the
    min-cost assignment with the benchmark's costs: a pair costs its distance, an unmatched pixel 100× the
    tolerance."""
    from scipy.optimize import linear_sum_assignment

    p, q = np.argwhere(pred), np.argwhere(gt)
    if len(p) == 0 or len(q) == 0:
        return 0, 0
    dist = np.sqrt(((p[:, None, :] - q[None, :, :]) ** 2).sum(-1))
    ok = dist <= radius
    r, c = linear_sum_assignment(ok.astype(float), maximize=True)
    maximum = int(ok[r, c].sum())
    # square (P + G) problem: pred i ↔ gt j (distance), pred i ↔ its own outlier node, gt j ↔ its own outlier
    # node (100 × tolerance each), outlier ↔ outlier free; impossible pairs cost more than all outliers together
    n_p, n_g = len(p), len(q)
    outlier = 100 * max(radius, 1.0)  # the benchmark's cost is 100 × the tolerance; keep it positive at 0
    big = outlier * (n_p + n_g + 1) * 10
    cost = np.full((n_p + n_g, n_g + n_p), big)
    cost[:n_p, :n_g] = np.where(ok, dist, big)
    cost[np.arange(n_p), n_g + np.arange(n_p)] = outlier
    cost[n_p + np.arange(n_g), np.arange(n_g)] = outlier
    cost[n_p:, n_g:] = 0
    r, c = linear_sum_assignment(cost)
    min_cost = int(((r < n_p) & (c < n_g)).sum())
    return maximum, min_cost


def test_matching_is_maximum_and_equals_the_min_cost_assignment_cardinality():
    g = np.random.default_rng(3)
    for trial in range(30):
        size = (int(g.integers(6, 14)), int(g.integers(6, 14)))
        pred = g.random(size) < g.uniform(0.05, 0.4)
        gt = g.random(size) < g.uniform(0.05, 0.4)
        radius = float(g.choice([0.0, 1.0, 1.2, 1.5, 2.3]))
        maximum, min_cost = max_matching_reference(pred, gt, radius)
        assert maximum == min_cost
        assert match_counts(pred, gt, radius).tolist() == [maximum], (trial, radius)
    # several maps against their own ground truth in one call
    preds = g.random((5, 9, 10)) < 0.3
    gts = g.random((2, 9, 10)) < 0.3
    owner = np.array([0, 1, 1, 0, 1])
    expected = [max_matching_reference(preds[k], gts[owner[k]], 1.5)[0] for k in range(5)]
    assert match_counts(preds, gts, 1.5, owner).tolist() == expected


def test_large_images_with_a_wide_tolerance_evaluate_in_seconds():
    # At 288×384 the tolerance is 5.3 px and a prediction next to every edge makes long ladder-shaped candidate
    # graphs; SciPy's maximum_bipartite_matching did not finish these two images in 2 minutes (its depth-first
    # search does not prune dead ends); the maximum flow takes under a second.
    import time

    import torch.nn.functional as F
    from mtl_ops.data import SyntheticScenes

    from train_helpers import CACHE

    data = SyntheticScenes("val", n=2, size=(288, 384), tasks=("edges",), cache_dir=CACHE)
    edges = torch.stack([data[i]["edges"] for i in range(len(data))])
    noise = torch.rand(edges.shape, generator=torch.Generator().manual_seed(0))
    prob = 0.8 * F.avg_pool2d(edges, 3, 1, 1) + 0.2 * noise
    start = time.perf_counter()
    m = EdgeMetric(from_logits=False)
    m.update(prob, edges.long())
    assert m.compute()["F"] > 95
    assert time.perf_counter() - start < 30


def test_boundary_counts_per_threshold():
    # thresholds between the same two probability values give the same map (thinned and matched once)
    prob = np.zeros((1, 20, 30), dtype=np.float32)
    prob[0, 10, 5:25] = 0.5
    gt = prob > 0
    n_pred, n_matched, n_gt = boundary_counts(prob, gt, [0.1, 0.2, 0.6], 0.011, border=0)
    assert n_pred.tolist() == [[20, 20, 0]] and n_matched.tolist() == [[20, 20, 0]] and n_gt.tolist() == [20]


# ------------------------------------------------------------------------------------------------ interface
def test_accumulation_and_precision_of_the_input():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 1, 19, 23, generator=g)
    target = (torch.rand(4, 1, 19, 23, generator=g) < 0.2).long()
    target[:, :, 0, :] = 255
    whole, parts = EdgeMetric(), EdgeMetric()
    whole.update(logits, target)
    for i in range(4):
        parts.update(logits[i:i + 1], target[i:i + 1])
    assert parts.compute() == approx(whole.compute())
    half = EdgeMetric()
    half.update(logits.bfloat16(), target)
    assert 0 < half.compute()["F"] <= 100
    assert set(whole.compute()) == {"F", "precision", "recall", "threshold", "F_ois"}
    assert whole.compute()["F_ois"] >= whole.compute()["F"]


def test_bad_input_is_named():
    m = EdgeMetric(from_logits=False)
    p = torch.zeros(1, 6, 7)
    t = torch.zeros(1, 6, 7, dtype=torch.long)
    with pytest.raises(ValueError, match=r"target must contain only 0, 1 and ignore_index=255"):
        m.update(p, t + 2)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        m.update(p + 3, t)
    with pytest.raises(ValueError, match="pred contains NaN"):
        m.update(p * float("nan"), t)
    with pytest.raises(ValueError, match="pred has shape .* but target has shape"):
        m.update(p[..., :5], t)
    with pytest.raises(ValueError, match=r"pred must be at least 2×2 pixels per image, got \(1, 7\)"):
        m.update(p[:, :1], t[:, :1])
    with pytest.raises(ValueError, match=r"max_dist must be a fraction of the image diagonal in \[0, 1\), got 2"):
        EdgeMetric(max_dist=2)
    with pytest.raises(ValueError, match=r"border must be a non-negative int \(pixels\), got -1"):
        EdgeMetric(border=-1)
    with pytest.raises(ValueError, match="thresholds must be a non-empty set of values in"):
        EdgeMetric(thresholds=[0.5, 1.5])
    with pytest.raises(ValueError, match=r"radius must be a non-negative number of pixels, got -1"):
        match_counts(np.zeros((1, 3, 3), bool), np.zeros((1, 3, 3), bool), -1)
    with pytest.raises(RuntimeError, match="no valid ground-truth edge"):
        m.compute()
    m.update(p, t)  # no edges at all
    with pytest.raises(RuntimeError, match="no valid ground-truth edge"):
        m.compute()


def test_scipy_is_imported_only_by_the_metric():
    code = ("import sys, mtl_ops, mtl_ops.ops, mtl_ops.nn, mtl_ops.metrics; "
            "assert 'scipy' not in sys.modules and 'skimage' not in sys.modules, 'imported early'; "
            "mtl_ops.metrics.EdgeMetric(); assert 'scipy' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
