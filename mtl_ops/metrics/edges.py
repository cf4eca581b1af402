"""Edges: the boundary F-measure of the BSDS / SEISM benchmark (odsF, oisF), computed in Python.

This is the protocol the multi-task dense-prediction papers report edge detection with (SEISM run on the saved
edge-probability maps); nothing here needs MATLAB. Per image of H×W pixels, with s the predicted edge
probability (``sigmoid(pred)`` when ``from_logits``, float32):

1. **Non-maximum suppression** (the structured-edge toolbox's ``edgesNms`` with SEISM's settings: radius 1,
   multiplier 1.01, border 5). The edge orientation is ``O = atan(Oyy·sign(−Oxy) / (Oxx + 1e-5)) mod π`` from
   the second derivatives (central differences, one-sided at the border) of s smoothed by a triangle filter of
   radius 4 (1-D weights ``[1 2 3 4 5 4 3 2 1] / 25``, symmetric padding). A pixel is set to 0 when ``1.01·s``
   is below s bilinearly interpolated one pixel away along ``(cos O, sin O)`` on either side (the 1.01 keeps
   plateaus, so a flat map survives). Then values within ``border`` (5) pixels of the image border are scaled
   by a linear ramp ``d/border`` (d = distance to the border: the outermost ring becomes 0), suppressing
   unreliable responses there.
2. **Binarise and thin**: for each threshold t, ``P_t = thin({x : nms(s)(x) > t})``, where ``thin`` is
   morphological thinning to one-pixel-wide curves, as the benchmark applies it (MATLAB's
   ``bwmorph(·, 'thin', Inf)``: Guo–Hall thinning; here a sparse implementation that the tests check pixel for
   pixel against ``skimage.morphology.thin``). The ground truth is thinned the same way:
   ``G = thin({x : target(x) = 1})``.
3. **One-to-one matching**: a predicted and a ground-truth pixel may match when their Euclidean distance is at
   most ``max_dist · sqrt(H² + W²)`` pixels (the benchmark's ``maxDist``: 0.0075 for PASCAL-Context, 0.011 for
   NYUD). ``m_t`` is the size of a **maximum-cardinality** bipartite matching of P_t and G on the graph of those
   candidate pairs, computed exactly as a unit-capacity maximum flow (Dinic's algorithm,
   ``scipy.sparse.csgraph.maximum_flow``). Why maximum cardinality: the benchmark's ``correspondPixels`` solves
   a min-cost assignment in which leaving a pixel unmatched costs 100× the tolerance and a matched pair costs
   its distance, so adding a pair always pays (any augmenting path of fewer than about 200 pairs lowers the
   cost); it approximates a maximum matching, choosing among maximum matchings one of least total distance. F
   depends only on how many pixels are matched, not on which pairs, so the distance tie-break is not needed.
   (The tests check on random cases that the min-cost assignment with those costs has the same cardinality.)
4. **ODS** ("optimal dataset scale"), over **all images of the split**: ``precision_t = Σ m_t / Σ |P_t|``
   (1 when nothing is predicted, as in SEISM), ``recall_t = Σ m_t / Σ |G|``,
   ``F_t = 2·precision_t·recall_t / (precision_t + recall_t)`` (0 when both are 0), and
   ``F = max_t F_t`` — one threshold for the whole split. **OIS** ("optimal image scale") takes each image at
   the threshold of its own best F and computes F from the counts summed at those thresholds.

The default thresholds are SEISM's set for HED-style probability maps: 0.001, 0.01, 0.02, …, 0.99, 0.999.
F, precision and recall are reported in percent.

Consequences worth knowing. A constant map is a plateau and survives NMS, so at low thresholds the whole image
less its border ring is predicted, and thinning collapses that rectangle to one horizontal segment of
``W − H + 1`` pixels (``W ≥ H``). Its F is therefore at most ``2(W − H + 1) / (W − H + 1 + |G|)`` (every segment
pixel on an edge) and in practice far lower, since the segment lies where thinning puts it, not where the
edges are: the trivial predictor (a constant at the edge rate) scores F = 2.7 on the synthetic 64×84 validation
scenes, whose edge density is 12%. A thick prediction is thinned before matching, and the matching is
one-to-one, so several predicted pixels near one ground-truth pixel count once.

Differences from running SEISM on saved PNGs: probabilities are not quantised to 8 bits; there is one ground
truth per image, given as an edge map (thinned, as SEISM thins the boundaries it derives from a
segmentation); pixels where the target equals ``ignore_index`` or ``mask`` is False are neither predictions nor
ground truth (SEISM has no ignore label); the matching is exact rather than ``correspondPixels``' approximation.

SciPy is imported when a metric is built or used, not when this module is imported.
"""
from __future__ import annotations

import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._validation import as_map, as_mask, check_floating, check_same_device, check_same_shape, check_tensor
from .base import Metric

#: the matching tolerance the multi-task papers use for NYUD, as a fraction of the image diagonal
DEFAULT_MAX_DIST = 0.011
#: SEISM's thresholds for probability-valued edge maps (its HED parameter set)
DEFAULT_THRESHOLDS: Tuple[float, ...] = (0.001,) + tuple(k / 100 for k in range(1, 100)) + (0.999,)
#: the edge-normal NMS constants of the protocol: radius 1 pixel, conservative multiplier 1.01, smoothing radius 4
_NMS_MULTIPLIER = 1.01
_SMOOTH_RADIUS = 4
#: at most this many pixels go into one thinning call (the thresholded maps of several images side by side): the
#: thinning reads and writes them at random, and chunks of 2M pixels (whose tables stay in cache) were the fastest
#: of 0.5M–4M on the 2-core machine this was written on
_MOSAIC_PIXELS = 1 << 21
#: candidate pairs per maximum-flow call (see _GroundTruth.match)
_FLOW_EDGES = 50_000


def _require_scipy():
    try:
        import scipy.ndimage  # noqa: F401
        import scipy.sparse  # noqa: F401
        import scipy.sparse.csgraph  # noqa: F401
    except ImportError as e:  # SciPy is an optional dependency of the package: say what to install
        raise ImportError(
            f"EdgeMetric needs SciPy (pip install 'mtl_ops[train]', or pip install 'scipy>=1.9'): {e}") from e


def _as_stack(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 2:
        return x[None]
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (H, W) or (N, H, W), got {x.shape}")
    return x


def edge_nms(prob: np.ndarray, border: int = 5) -> np.ndarray:
    """Non-maximum suppression of edge probabilities along the edge normal, then the border ramp (step 1 of the
    module docs). ``prob``: (H, W) or (N, H, W) with values in [0, 1], H and W at least 2. Returns float32, same
    shape."""
    _require_scipy()
    from scipy import ndimage

    squeeze = np.ndim(prob) == 2
    e0 = _as_stack(np.asarray(prob, dtype=np.float32), "prob")
    n, h, w = e0.shape
    if h < 2 or w < 2:
        raise ValueError(f"prob must be at least 2×2 pixels per image (the orientation uses gradients), got {h}×{w}")
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise ValueError(f"border must be a non-negative int (pixels), got {border!r}")

    r = _SMOOTH_RADIUS
    tri = np.concatenate([np.arange(1, r + 1), [r + 1], np.arange(r, 0, -1)]).astype(np.float32) / (r + 1) ** 2
    # scipy's "reflect" (d c b a | a b c d) is MATLAB's symmetric padding, which the protocol's smoothing uses
    smooth = ndimage.convolve1d(ndimage.convolve1d(e0, tri, axis=2, mode="reflect"), tri, axis=1, mode="reflect")
    ox, oy = np.gradient(smooth, axis=2), np.gradient(smooth, axis=1)
    oxx, oxy, oyy = np.gradient(ox, axis=2), np.gradient(oy, axis=2), np.gradient(oy, axis=1)
    # The protocol's formula, kept as is: for an exactly axis-aligned ridge Oxy is 0, so O = 0 and the comparison
    # runs along x; a horizontal ridge then survives NMS, and the thinning of step 2 still makes it one pixel wide.
    with np.errstate(divide="ignore", invalid="ignore"):
        orient = np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + np.float32(1e-5))), np.float32(np.pi))
    orient = np.nan_to_num(orient)  # 0/0 (Oxx exactly −1e-5 on a flat patch) would give NaN coordinates below
    cos, sin = np.cos(orient), np.sin(orient)

    bi = np.arange(n)[:, None, None]
    ys = np.arange(h, dtype=np.float32)[None, :, None]
    xs = np.arange(w, dtype=np.float32)[None, None, :]
    strong = e0 * np.float32(_NMS_MULTIPLIER)
    suppress = np.zeros(e0.shape, dtype=bool)
    for d in (-1.0, 1.0):
        # bilinear interpolation with the coordinates clamped inside the image, as the toolbox does
        x = np.clip(xs + np.float32(d) * cos, 0, w - 1.001).astype(np.float32)
        y = np.clip(ys + np.float32(d) * sin, 0, h - 1.001).astype(np.float32)
        x0, y0 = x.astype(np.int64), y.astype(np.int64)
        dx0, dy0 = x - x0, y - y0
        dx1, dy1 = 1 - dx0, 1 - dy0
        near = (e0[bi, y0, x0] * dx1 * dy1 + e0[bi, y0, x0 + 1] * dx0 * dy1
                + e0[bi, y0 + 1, x0] * dx1 * dy0 + e0[bi, y0 + 1, x0 + 1] * dx0 * dy0)
        suppress |= strong < near
    out = np.where(suppress, np.float32(0), e0)

    s = min(border, w // 2, h // 2)
    if s > 0:
        ramp = np.arange(s, dtype=np.float32) / np.float32(s)
        out[:, :, :s] *= ramp
        out[:, :, w - s:] *= ramp[::-1]
        out[:, :s, :] *= ramp[:, None]
        out[:, h - s:, :] *= ramp[::-1, None]
    return out[0] if squeeze else out


def _thinning_luts() -> Tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations of Guo–Hall thinning, indexed by the 8-neighbourhood code.

    Bit i of a code is neighbour i counter-clockwise from east (E, NE, N, NW, W, SW, S, SE: the code
    skimage computes by correlating with [[8, 4, 2], [16, 0, 1], [32, 64, 128]]). A pixel is deleted when its
    crossing number is 1 (it joins exactly one curve), 2 ≤ min(n1, n2) ≤ 3 (n1, n2: occupied pairs of
    neighbours, in the two pairings), and in the first sub-iteration it is not a north-east or east
    boundary point that must stay ((NE ∨ N ∨ ¬SE) ∧ E is false), in the second likewise for south-west or
    west ((SW ∨ S ∨ ¬NW) ∧ W is false)."""
    bits = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)
    crossing = sum((~bits[:, i] & (bits[:, i + 1] | bits[:, (i + 2) % 8])).astype(int) for i in (0, 2, 4, 6))
    n1 = sum((bits[:, k] | bits[:, k - 1]).astype(int) for k in (1, 3, 5, 7))
    n2 = sum((bits[:, k] | bits[:, (k + 1) % 8]).astype(int) for k in (1, 3, 5, 7))
    low = np.minimum(n1, n2)
    common = (crossing == 1) & (low >= 2) & (low <= 3)
    first = ~((bits[:, 1] | bits[:, 2] | ~bits[:, 7]) & bits[:, 0])
    second = ~((bits[:, 5] | bits[:, 6] | ~bits[:, 3]) & bits[:, 4])
    return common & first, common & second


_LUTS = _thinning_luts()


def _thin_in_place(image: np.ndarray) -> np.ndarray:
    """Thin every map of ``image`` ((n, h + 2, w + 2) uint8 of 0/1, zero on the outer ring of each map) in place;
    return the flat indices of the pixels that remain, ascending.

    Sub-iterations alternate between the two deletion tables and stop after a full pass that deletes nothing, as
    skimage's ``thin`` does. Two things differ only in cost: the neighbourhood code of every pixel is kept and
    updated when a neighbour is deleted (instead of being recomputed over the whole image), and a sub-iteration
    only tests the pixels whose code changed since they were last tested with the same table (all pixels the
    first time) — any other pixel would get the same answer as then. Thinned edge maps are sparse and most
    settle in two or three passes while a solid blob takes about half its width, so scanning every pixel of
    every map on every pass made thinning the bulk of an evaluation.
    """
    stride = image.shape[2]
    neighbours = np.array([1, 1 - stride, -stride, -stride - 1, -1, stride - 1, stride, stride + 1])
    flat = image.reshape(-1)
    on = np.flatnonzero(flat)
    code = np.zeros(on.size, dtype=np.uint8)
    for bit, offset in enumerate(neighbours):
        code |= flat[on + offset] << np.uint8(bit)
    codes = np.zeros(flat.size, dtype=np.uint8)
    codes[on] = code
    pending: List[List[np.ndarray]] = [[on], [on]]  # per table: the pixels to test with it (may repeat)
    slot = None  # scratch for removing repeated pixels, made when first needed
    while True:
        deleted_any = False
        for which, lut in enumerate(_LUTS):
            if not pending[which]:
                continue
            cand = np.concatenate(pending[which])
            pending[which] = []
            cand = cand[flat[cand] == 1]
            # a pixel queued twice gets the same answer twice; only the deletions are made unique, which is
            # cheaper than de-duplicating the candidates (several times as many)
            gone = cand[lut[codes[cand]]]
            if gone.size == 0:
                continue
            if gone.size > 1:
                if slot is None:
                    slot = np.empty(flat.size, dtype=np.int32 if flat.size < 2**31 else np.int64)
                order = np.arange(gone.size, dtype=slot.dtype)
                slot[gone] = order
                gone = gone[slot[gone] == order]  # one copy of each pixel (the last write won)
            deleted_any = True
            flat[gone] = 0  # every code of this sub-iteration was read first: deletion is parallel
            for bit, offset in enumerate(neighbours):
                # the deleted pixel is the neighbour in the opposite direction of the pixel at gone + offset;
                # one direction at a time, the targets are distinct, so the fancy-indexed update is exact
                codes[gone + offset] &= np.uint8(~(1 << ((bit + 4) % 8)) & 0xFF)
            touched = (gone[:, None] + neighbours).ravel()
            touched = touched[flat[touched] == 1]
            pending[0].append(touched)
            pending[1].append(touched)
        if not deleted_any:
            return on[flat[on] == 1]


def thin_edges(binary: np.ndarray) -> np.ndarray:
    """Morphological thinning to one-pixel-wide curves of each (H, W) map of an (N, H, W) stack (or of one map).

    Guo–Hall's two-sub-iteration thinning with the deletion tables and stopping rule of
    ``skimage.morphology.thin`` (what MATLAB's ``bwmorph(·, 'thin', Inf)`` computes); the tests check the result
    pixel for pixel against skimage. Returns bool, same shape."""
    squeeze = np.ndim(binary) == 2
    b = _as_stack(np.asarray(binary, dtype=bool), "binary")
    n, h, w = b.shape
    out = np.empty_like(b)
    per_call = max(1, _MOSAIC_PIXELS // ((h + 2) * (w + 2)))
    for start in range(0, n, per_call):
        chunk = b[start:start + per_call]
        # one zero pixel around every map: off-image neighbours read 0, and maps side by side do not touch
        image = np.zeros((chunk.shape[0], h + 2, w + 2), dtype=np.uint8)
        image[:, 1:-1, 1:-1] = chunk
        _thin_in_place(image)
        out[start:start + per_call] = image[:, 1:-1, 1:-1].astype(bool)
    return out[0] if squeeze else out


def tolerance_pixels(max_dist: float, height: int, width: int) -> float:
    """The matching tolerance in pixels: ``max_dist`` times the image diagonal."""
    return float(max_dist) * float(np.hypot(height, width))


def _offsets(radius: float) -> np.ndarray:
    """(dy, dx) of every pixel offset within Euclidean distance ``radius`` (the benchmark's d² ≤ radius² test)."""
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = (dy * dy + dx * dx) <= radius * radius
    return np.stack([dy[keep], dx[keep]], axis=1)


class _GroundTruth:
    """Thinned ground-truth maps (M, H, W) prepared for matching: per map a pixel → node-id table, padded by the
    tolerance so that every offset of an in-image pixel can be looked up without a bounds test, and the pixels
    within the tolerance of some ground-truth pixel."""

    def __init__(self, gt: np.ndarray, radius: float):
        from scipy import ndimage

        m, h, w = gt.shape
        self.offsets = _offsets(radius)
        self.pad = int(np.abs(self.offsets).max())
        self.sizes = gt.reshape(m, -1).sum(1).astype(np.int64)
        p = self.pad
        self.node = np.full((m, h + 2 * p, w + 2 * p), -1, dtype=np.int64)
        inner = self.node[:, p:p + h, p:p + w]
        for k in range(m):
            inner[k][gt[k]] = np.arange(self.sizes[k])
        disk = np.zeros((2 * p + 1, 2 * p + 1), dtype=bool)
        disk[self.offsets[:, 0] + p, self.offsets[:, 1] + p] = True
        self.near = ndimage.binary_dilation(gt, structure=disk[None])

    def match(self, tile: np.ndarray, y: np.ndarray, x: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """Matched counts per prediction map for predicted pixels (tile, y, x); map t is matched with ground
        truth ``owner[t]``. Returns int64 (len(owner),)."""
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import maximum_flow

        n = len(owner)
        # only predicted pixels with a ground-truth pixel within the tolerance can match; the rest (most of a
        # prediction at low thresholds) stay out of the graph
        keep = self.near[owner[tile], y, x]
        tile, y, x = tile[keep], y[keep] + self.pad, x[keep] + self.pad
        if tile.size == 0:
            return np.zeros(n, dtype=np.int64)
        # each prediction map gets its own copy of its ground truth's nodes (column = base[map] + node id): the
        # graph is block-diagonal, so one call can serve several maps (a maximum matching of disjoint blocks is a
        # maximum matching of each block)
        sizes = self.sizes[owner]
        base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        _, hp, wp = self.node.shape
        where = owner[tile] * (hp * wp) + y * wp + x  # flat index into the padded node tables
        node_flat = self.node.reshape(-1)
        rows, cols = [], []
        for dy, dx in self.offsets:
            node = node_flat[where + (dy * wp + dx)]
            hit = np.flatnonzero(node >= 0)
            rows.append(hit)
            cols.append(base[tile[hit]] + node[hit])
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        # The maximum matching as a maximum flow: source → each predicted pixel → each candidate ground-truth pixel
        # → sink, every capacity 1 (Dinic's algorithm, which on such a unit network takes Hopcroft–Karp's O(E√V)).
        # SciPy's maximum_bipartite_matching is not used: its depth-first search does not prune dead ends and takes
        # exponential time on the ladder-shaped graphs that two parallel edges within a few pixels produce (0.8 s
        # against 2 ms for one 1400-pixel map at 288×384).
        # Maps go to the solver in groups of about _FLOW_EDGES candidate pairs: each round of Dinic's algorithm
        # scans the whole graph and the number of rounds is set by the hardest map, so one call for hundreds of
        # large maps was 7× slower than one call per map, while small maps (64×84) gain from sharing a call.
        order = np.argsort(tile[rows], kind="stable")
        rows, cols = rows[order], cols[order]
        pix_start = np.searchsorted(tile, np.arange(n + 1))  # kept pixels are ordered by map
        pair_start = np.searchsorted(tile[rows], np.arange(n + 1))
        matched = []
        first = 0
        while first < n:
            last = int(np.searchsorted(pair_start, pair_start[first] + _FLOW_EDGES, side="right")) - 1
            last = min(max(last, first + 1), n)  # maps first..last-1, at least one
            a, b = pair_start[first], pair_start[last]
            if a < b:
                p0, n_pix = pix_start[first], pix_start[last] - pix_start[first]
                g0, n_gt = base[first], int(sizes[first:last].sum())
                r, c = rows[a:b] - p0, cols[a:b] - g0
                src = np.concatenate([np.zeros(n_pix, dtype=np.int64), 2 + r, 2 + n_pix + np.arange(n_gt)])
                dst = np.concatenate([2 + np.arange(n_pix), 2 + n_pix + c, np.ones(n_gt, dtype=np.int64)])
                nodes = 2 + n_pix + n_gt
                network = csr_matrix((np.ones(src.size, dtype=np.int32), (src, dst)), shape=(nodes, nodes))
                flow = maximum_flow(network, 0, 1, method="dinic").flow
                out_of_source = csr_matrix(flow[[0], :])
                matched.append(p0 + out_of_source.indices[out_of_source.data > 0] - 2)  # pixels carrying flow
            first = last
        if not matched:
            return np.zeros(n, dtype=np.int64)
        return np.bincount(tile[np.concatenate(matched)], minlength=n).astype(np.int64)


def match_counts(pred: np.ndarray, gt: np.ndarray, radius: float, gt_index: Optional[np.ndarray] = None
                 ) -> np.ndarray:
    """Matched-pixel counts of a maximum one-to-one matching, per map (step 3 of the module docs).

    ``pred``: (N, H, W) bool, thinned predictions. ``gt``: (M, H, W) bool, thinned ground truth; map k of
    ``pred`` is matched against ``gt[gt_index[k]]`` (default ``gt_index = arange(N)``, then M = N). A pair
    may match when its Euclidean distance is ≤ ``radius`` pixels. Returns int64 (N,): the size of a maximum
    bipartite matching of each map with its ground truth."""
    _require_scipy()
    pred = _as_stack(np.asarray(pred, dtype=bool), "pred")
    gt = _as_stack(np.asarray(gt, dtype=bool), "gt")
    n = len(pred)
    gt_index = np.arange(n) if gt_index is None else np.asarray(gt_index, dtype=np.int64)
    if gt.shape[1:] != pred.shape[1:]:
        raise ValueError(f"gt maps are {gt.shape[1:]} but pred maps are {pred.shape[1:]}; they must match")
    if gt_index.shape != (n,) or (n and (gt_index.min() < 0 or gt_index.max() >= len(gt))):
        raise ValueError(f"gt_index must hold {n} indices into the {len(gt)} gt maps, got {gt_index.tolist()}")
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not radius >= 0:
        raise ValueError(f"radius must be a non-negative number of pixels, got {radius!r}")
    tile, y, x = np.nonzero(pred)
    return _GroundTruth(gt, radius).match(tile, y, x, gt_index)


def boundary_counts(prob: np.ndarray, gt: np.ndarray, thresholds: Sequence[float], max_dist: float,
                    border: int = 5, valid: Optional[np.ndarray] = None
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and threshold, the counts the F-measure is made of (steps 1–3 of the module docs).

    ``prob``: (N, H, W) probabilities; ``gt``: (N, H, W) bool edge pixels; ``valid``: optional (N, H, W) bool
    (invalid pixels are neither predictions nor ground truth). Returns ``(n_pred, n_matched, n_gt)``: int64
    (N, T), (N, T) and (N,) — predicted pixels after thinning, matched pixels, thinned ground-truth pixels."""
    _require_scipy()
    prob = _as_stack(np.asarray(prob, dtype=np.float32), "prob")
    gt = _as_stack(np.asarray(gt, dtype=bool), "gt")
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    n, h, w = prob.shape
    if gt.shape != prob.shape:
        raise ValueError(f"gt has shape {gt.shape} but prob has shape {prob.shape}; they must match")
    if n == 0:
        return np.zeros((0, thresholds.size), np.int64), np.zeros((0, thresholds.size), np.int64), np.zeros(0, np.int64)
    nms = edge_nms(prob, border)
    if valid is not None:
        valid = _as_stack(np.asarray(valid, dtype=bool), "valid")
        if valid.shape != prob.shape:
            raise ValueError(f"valid has shape {valid.shape} but prob has shape {prob.shape}; they must match")
        nms = np.where(valid, nms, np.float32(0))
        gt = gt & valid
    gt_thin = thin_edges(gt)
    n_gt = gt_thin.reshape(n, -1).sum(1).astype(np.int64)
    truth = _GroundTruth(gt_thin, tolerance_pixels(max_dist, h, w))

    # {nms > t} shrinks as t grows, so two thresholds with the same number of pixels above them give the same
    # map: thin and match each distinct non-empty map once
    ordered = np.sort(nms.reshape(n, -1), axis=1)
    above = h * w - np.stack([np.searchsorted(row, thresholds, side="right") for row in ordered])  # (N, T)
    owner, level, slot = [], [], np.full((n, thresholds.size), -1, dtype=np.int64)
    for i in range(n):
        seen: Dict[int, int] = {}
        for k, count in enumerate(above[i].tolist()):
            if count == 0:
                continue
            if count not in seen:
                seen[count] = len(owner)
                owner.append(i)
                level.append(thresholds[k])
            slot[i, k] = seen[count]
    owner, level = np.asarray(owner, dtype=np.int64), np.asarray(level)
    sizes = np.zeros(len(owner), dtype=np.int64)
    matched = np.zeros(len(owner), dtype=np.int64)
    tile_pixels = (h + 2) * (w + 2)
    per_call = max(1, _MOSAIC_PIXELS // tile_pixels)
    for start in range(0, len(owner), per_call):
        own, lev = owner[start:start + per_call], level[start:start + per_call]
        image = np.zeros((len(own), h + 2, w + 2), dtype=np.uint8)
        image[:, 1:-1, 1:-1] = nms[own] > lev[:, None, None]
        on = _thin_in_place(image)
        tile, rest = np.divmod(on, tile_pixels)
        y, x = np.divmod(rest, w + 2)
        sizes[start:start + per_call] = np.bincount(tile, minlength=len(own))
        matched[start:start + per_call] = truth.match(tile, y - 1, x - 1, own)
    seen_any = slot >= 0
    n_pred = np.zeros(slot.shape, dtype=np.int64)
    n_matched = np.zeros(slot.shape, dtype=np.int64)
    n_pred[seen_any], n_matched[seen_any] = sizes[slot[seen_any]], matched[slot[seen_any]]
    return n_pred, n_matched, n_gt


def f_measure(n_pred, n_matched, n_gt) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F (fractions, float64) from summed counts, with SEISM's conventions: precision 1
    when nothing is predicted, F 0 when precision and recall are both 0."""
    n_pred, n_matched, n_gt = (np.asarray(a, dtype=np.float64) for a in (n_pred, n_matched, n_gt))
    precision = np.where(n_pred > 0, n_matched / np.maximum(n_pred, 1), 1.0)
    recall = np.where(n_gt > 0, n_matched / np.maximum(n_gt, 1), 0.0)
    denom = precision + recall
    f = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return precision, recall, f


class EdgeMetric(Metric):
    """Boundary F-measure of the BSDS / SEISM protocol: NMS, thinning, one-to-one matching within
    ``max_dist`` × the image diagonal, ODS over the split (and OIS). See the module docs for the definition.

    Args:
        max_dist: matching tolerance as a fraction of the image diagonal. Default 0.011, the value the
            multi-task papers use for NYUD (indoor scenes, like the synthetic ones here); they use 0.0075 for
            PASCAL-Context. At 64×84 pixels 0.011 is 1.16 pixels (the 4 direct neighbours match, diagonal ones
            do not); at 288×384 it is 5.3 pixels.
        thresholds: a float or a sequence of thresholds in [0, 1] (a pixel is an edge when its suppressed
            probability is **above** t); default ``DEFAULT_THRESHOLDS`` (0.001, 0.01, …, 0.99, 0.999).
        from_logits: ``pred`` holds logits (sigmoid is applied); otherwise probabilities in [0, 1].
        ignore_index: target value marking pixels to ignore (default 255); ``None`` for none.
        border: width in pixels of the border ramp of the NMS step (5 in the protocol; 0 = none).

    ``update(pred, target, mask=None)``:
        pred: (B, H, W) or (B, 1, H, W), floating, H and W ≥ 2. target: same shape, values in
        {0, 1, ignore_index}. mask: optional bool (B, H, W) or (B, 1, H, W), True = valid.

    ``compute()`` → ``F`` (ODS), ``precision``, ``recall`` (%, at the ODS threshold), ``threshold`` (that t) and
    ``F_ois`` (%).
    """

    task = "edges"

    def __init__(
        self,
        max_dist: float = DEFAULT_MAX_DIST,
        thresholds: Union[float, Sequence[float], None] = None,
        from_logits: bool = True,
        ignore_index: Optional[int] = 255,
        border: int = 5,
    ) -> None:
        if isinstance(max_dist, bool) or not isinstance(max_dist, numbers.Real) or not 0 <= max_dist < 1:
            raise ValueError(f"max_dist must be a fraction of the image diagonal in [0, 1), got {max_dist!r}")
        if isinstance(border, bool) or not isinstance(border, int) or border < 0:
            raise ValueError(f"border must be a non-negative int (pixels), got {border!r}")
        t = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, dtype=np.float64).reshape(-1)
        if t.size == 0 or bool(((t < 0) | (t > 1) | np.isnan(t)).any()):
            raise ValueError(f"thresholds must be a non-empty set of values in [0, 1], got {thresholds!r}")
        self.max_dist = float(max_dist)
        self.thresholds = np.unique(t)  # sorted ascending
        self.from_logits = bool(from_logits)
        self.ignore_index = ignore_index
        self.border = border
        _require_scipy()
        self.reset()

    def reset(self) -> None:
        self._n_pred: List[np.ndarray] = []  # per update: (B, T)
        self._n_matched: List[np.ndarray] = []
        self._n_gt: List[np.ndarray] = []  # per update: (B,)

    def update(self, pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        pred = check_tensor(pred, "pred")
        target = check_tensor(target, "target")
        check_same_device(pred, "pred", target, "target")
        check_floating(pred, "pred")
        pred = as_map(pred, "pred")
        target = as_map(target, "target")
        check_same_shape(pred, "pred", target, "target")
        mask = as_mask(mask, target, "target")
        if pred.shape[-2] < 2 or pred.shape[-1] < 2:
            raise ValueError(f"pred must be at least 2×2 pixels per image, got {tuple(pred.shape[-2:])}")

        # the rest runs on the CPU in NumPy (the matching needs SciPy anyway); the checks are made there too,
        # which also keeps them clear of torch's intra-op threads on a busy machine
        score = pred.float()
        if self.from_logits:
            score = torch.sigmoid(score)
        score = score.cpu().numpy()
        target = target.cpu().numpy()
        valid = np.ones(target.shape, dtype=bool) if self.ignore_index is None else target != self.ignore_index
        if mask is not None:
            valid &= mask.cpu().numpy()
        is_edge = target == 1
        if (valid & ~is_edge & (target != 0)).any():
            raise ValueError(f"target must contain only 0, 1 and ignore_index={self.ignore_index}")
        if np.isnan(score).any():
            raise ValueError("pred contains NaN")
        if not self.from_logits and ((score < 0) | (score > 1)).any():
            raise ValueError("pred must hold probabilities in [0, 1] when from_logits=False")

        n_pred, n_matched, n_gt = boundary_counts(score, is_edge & valid, self.thresholds, self.max_dist, self.border,
                                                  valid)
        self._n_pred.append(n_pred)
        self._n_matched.append(n_matched)
        self._n_gt.append(n_gt)

    def _stacked(self):
        if not self._n_gt or int(sum(g.sum() for g in self._n_gt)) == 0:
            raise RuntimeError("EdgeMetric.compute(): no valid ground-truth edge pixels were accumulated")
        return np.concatenate(self._n_pred), np.concatenate(self._n_matched), np.concatenate(self._n_gt)

    def curve(self) -> Dict[str, torch.Tensor]:
        """Per-threshold ``thresholds``, ``precision``, ``recall`` and ``F`` over the split (fp64, CPU, in %)."""
        n_pred, n_matched, n_gt = self._stacked()
        precision, recall, f = f_measure(n_pred.sum(0), n_matched.sum(0), n_gt.sum())
        return {"thresholds": torch.from_numpy(self.thresholds.copy()), "precision": torch.from_numpy(precision * 100),
                "recall": torch.from_numpy(recall * 100), "F": torch.from_numpy(f * 100)}

    def compute(self) -> Dict[str, float]:
        c = self.curve()
        best = int(torch.argmax(c["F"]))  # first (lowest) threshold among ties, as MATLAB's max
        n_pred, n_matched, n_gt = self._stacked()
        _, _, f_image = f_measure(n_pred, n_matched, n_gt[:, None])
        pick = np.argmax(f_image, axis=1)  # each image at its own best threshold
        rows = np.arange(len(pick))
        _, _, f_ois = f_measure(n_pred[rows, pick].sum(), n_matched[rows, pick].sum(), n_gt.sum())
        return {
            "F": float(c["F"][best]),
            "precision": float(c["precision"][best]),
            "recall": float(c["recall"][best]),
            "threshold": float(c["thresholds"][best]),
            "F_ois": float(f_ois) * 100,
        }
