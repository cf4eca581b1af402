// Bilinear taps with PyTorch's align_corners=False semantics (F.interpolate(mode="bilinear") with an output
// size and no scale factor), shared by the CPU and CUDA kernels:
//   scale = in / out;  src = max((dst + 0.5) * scale - 0.5, 0);  i0 = floor(src);  i1 = min(i0 + 1, in - 1)
//   lambda = src - i0;  value = (1 - lambda) * x[i0] + lambda * x[i1]
// and the inverse map used by the deterministic gather backward: the output positions that read input
// index i form one contiguous range (src is monotone in dst), returned as a superset [lo, hi) whose extra
// positions get weight 0 from tap_weight.
#pragma once
#include <cstdint>

#include "macros.h"

namespace mtl_ops {

template <typename acc_t>
struct LinearTap {
  int64_t i0;
  int64_t i1;
  acc_t lambda;
};

template <typename acc_t>
MTL_HOST_DEVICE acc_t bilinear_scale(int64_t in, int64_t out) {
  return static_cast<acc_t>(in) / static_cast<acc_t>(out);
}

template <typename acc_t>
MTL_HOST_DEVICE LinearTap<acc_t> bilinear_tap(int64_t dst, int64_t in, acc_t scale) {
  acc_t src = scale * (static_cast<acc_t>(dst) + acc_t(0.5)) - acc_t(0.5);
  if (src < acc_t(0)) src = acc_t(0);
  int64_t i0 = static_cast<int64_t>(src);
  if (i0 > in - 1) i0 = in - 1;
  const int64_t i1 = i0 < in - 1 ? i0 + 1 : i0;
  acc_t lambda = src - static_cast<acc_t>(i0);
  if (lambda > acc_t(1)) lambda = acc_t(1);
  return {i0, i1, lambda};
}

// The weight with which output position `tap` reads input index i (0 when it does not).
template <typename acc_t>
MTL_HOST_DEVICE acc_t tap_weight(const LinearTap<acc_t>& tap, int64_t i) {
  acc_t w = acc_t(0);
  if (tap.i0 == i) w += acc_t(1) - tap.lambda;
  if (tap.i1 == i) w += tap.lambda;
  return w;
}

// A range [lo, hi) of output positions containing every position that reads input index i.
struct GatherRange {
  int64_t lo;
  int64_t hi;
};

template <typename acc_t>
MTL_HOST_DEVICE GatherRange gather_range(int64_t i, int64_t out, acc_t scale) {
  // Position dst reads i when src(dst) lies in (i - 1, i + 1), or when it is clamped to 0 (i = 0).
  const acc_t lo_f = (static_cast<acc_t>(i) - acc_t(0.5)) / scale - acc_t(0.5);
  const acc_t hi_f = (static_cast<acc_t>(i) + acc_t(1.5)) / scale - acc_t(0.5);
  int64_t lo = lo_f < acc_t(0) ? 0 : static_cast<int64_t>(lo_f) - 1;
  int64_t hi = static_cast<int64_t>(hi_f) + 2;
  if (lo < 0 || i == 0) lo = 0;
  if (hi > out) hi = out;
  return {lo, hi};
}

// Largest hi - lo over all i (the gather window a kernel must loop over).
template <typename acc_t>
MTL_HOST_DEVICE int64_t gather_window(int64_t out, acc_t scale) {
  const int64_t w = static_cast<int64_t>(acc_t(2) / scale) + 5;
  return w < out ? w : out;
}

// The gather backward splits a range into tiles of at most `len` positions (so the work of one GPU thread is
// bounded whatever the scale: a 1 x 1 map's range is the whole output). Tile t of range r: [lo + t*len, ...)
// clipped to r (empty past its end); gather_tiles(window, len) tiles cover every range of that window.
MTL_HOST_DEVICE GatherRange gather_tile(const GatherRange& r, int64_t tile, int64_t len) {
  int64_t lo = r.lo + tile * len;
  if (lo > r.hi) lo = r.hi;
  const int64_t hi = lo + len < r.hi ? lo + len : r.hi;
  return {lo, hi};
}

MTL_HOST_DEVICE int64_t gather_tiles(int64_t window, int64_t len) { return (window + len - 1) / len; }

// One tile (tile_y, tile_x) of the transposed bilinear resize at input element (i, j) of an (h, w) map resized to
// (H, W): sum over the output positions (yy, xx) of the tile of w_y(yy) * w_x(xx) * value(yy, xx), w_y / w_x the
// weights with which yy / xx read i / j. Summed over all tiles: the gradient of the map at (i, j) for an output
// gradient `value`. `value` is a functor (host and device callable).
template <typename acc_t, typename Value>
MTL_HOST_DEVICE acc_t gather_tile_sum(int64_t i, int64_t j, int64_t h, int64_t w, int64_t H, int64_t W, acc_t sy,
                                      acc_t sx, int64_t tile_y, int64_t tile_x, int64_t len, const Value& value) {
  const GatherRange ry = gather_tile(gather_range<acc_t>(i, H, sy), tile_y, len);
  const GatherRange rx = gather_tile(gather_range<acc_t>(j, W, sx), tile_x, len);
  acc_t acc = acc_t(0);
  for (int64_t yy = ry.lo; yy < ry.hi; ++yy) {
    const acc_t wy = tap_weight(bilinear_tap<acc_t>(yy, h, sy), i);
    if (wy == acc_t(0)) continue;
    for (int64_t xx = rx.lo; xx < rx.hi; ++xx) {
      const acc_t wx = tap_weight(bilinear_tap<acc_t>(xx, w, sx), j);
      if (wx != acc_t(0)) acc += wy * wx * value(yy, xx);
    }
  }
  return acc;
}

// The four taps of output pixel (y, x) of an (h, w) map resized to (H, W) (sy = h / H, sx = w / W): flat offsets
// into the map and bilinear weights, sample = sum_q weight[q] * map[offset[q]]. Computed once per pixel and reused
// for every channel; a tap of weight 0 (lambda = 0) still has an in-bounds offset.
template <typename acc_t, typename index_t>
struct PixelTaps {
  index_t offset[4];
  acc_t weight[4];
};

template <typename acc_t, typename index_t>
MTL_HOST_DEVICE PixelTaps<acc_t, index_t> pixel_taps(int64_t y, int64_t x, int64_t h, int64_t w, acc_t sy, acc_t sx) {
  const LinearTap<acc_t> ty = bilinear_tap<acc_t>(y, h, sy);
  const LinearTap<acc_t> tx = bilinear_tap<acc_t>(x, w, sx);
  const acc_t ly0 = acc_t(1) - ty.lambda, lx0 = acc_t(1) - tx.lambda;
  PixelTaps<acc_t, index_t> t;
  t.offset[0] = static_cast<index_t>(ty.i0 * w + tx.i0);
  t.offset[1] = static_cast<index_t>(ty.i0 * w + tx.i1);
  t.offset[2] = static_cast<index_t>(ty.i1 * w + tx.i0);
  t.offset[3] = static_cast<index_t>(ty.i1 * w + tx.i1);
  t.weight[0] = ly0 * lx0;
  t.weight[1] = ly0 * tx.lambda;
  t.weight[2] = ty.lambda * lx0;
  t.weight[3] = ty.lambda * tx.lambda;
  return t;
}

template <typename acc_t, typename index_t, typename scalar_t>
MTL_HOST_DEVICE acc_t tap_sample(const PixelTaps<acc_t, index_t>& t, const scalar_t* map) {
  return t.weight[0] * static_cast<acc_t>(map[t.offset[0]]) + t.weight[1] * static_cast<acc_t>(map[t.offset[1]]) +
         t.weight[2] * static_cast<acc_t>(map[t.offset[2]]) + t.weight[3] * static_cast<acc_t>(map[t.offset[3]]);
}

}  // namespace mtl_ops
