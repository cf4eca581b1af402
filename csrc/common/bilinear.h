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

}  // namespace mtl_ops
