// Per-pixel math of ETR-NLP's non-learnable primitives, shared by the CPU and CUDA kernels of
// routed_primitive_gather (codes as mtl_ops/common/primitive_kinds.py; tests/test_constants.py compares them through
// mtl_ops::_constant).
//
// The kernels read each input channel from a PADDED plane (zeros around it, at least the largest primitive
// radius wide; max pool reads a second copy padded with -inf, so padding never wins), which removes every
// bounds check from the tap loops. `at` points at the input pixel (h0, w0) = (i·s, j·s) of output pixel
// (i, j), `ld` is the padded row stride. The kind is a template parameter: the kernels switch once per
// (channel, primitive) and the per-pixel loops are branch-free (the CPU's vectorise).
//
// Every primitive is defined once here, as its taps; its adjoint comes in two forms from the same taps:
//   scatter (the CPU): each output pixel adds d_response · coefficient into the input pixels it read;
//   gather (the GPU): each input pixel sums, in a fixed order, the output pixels that read it (no atomics,
//     so the CUDA input gradient is the same bit for bit on every run).
// csrc/tests/test_rpg_primitives.cpp checks on the CPU that both forms agree and that the max-pool argmax
// is PyTorch's.
#pragma once
#include <cstdint>
#include <utility>

#include "macros.h"

// The tap loops run at most 9 times: fully unrolled on the GPU, their small arrays stay in registers.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define RPG_UNROLL _Pragma("unroll")
#else
#define RPG_UNROLL
#endif

namespace mtl_ops {

enum RpgKind : int { kIdentity = 0, kAvgPool = 1, kMaxPool = 2, kShift = 3, kNoise = 4, kDwConv = 5, kDenseConv = 6 };
constexpr int kNumRpgKinds = 7;

// The padding a kind needs around the plane (a, b: its parameters).
MTL_HOST_DEVICE int rpg_radius(int kind, int a, int b) {
  if (kind == kAvgPool || kind == kMaxPool) return 1;
  if (kind == kShift) return (a < 0 ? -a : a) > (b < 0 ? -b : b) ? (a < 0 ? -a : a) : (b < 0 ? -b : b);
  if (kind == kDwConv || kind == kDenseConv) return a;
  return 0;
}

// ---- max pool ------------------------------------------------------------------------------------------
// A 3x3 window's taps are numbered t = (u + 1)·3 + (v + 1) for (u, v) in {-1, 0, 1}², in scan order.
MTL_HOST_DEVICE int64_t rpg_tap_offset(int t, int64_t ld) { return (t / 3 - 1) * ld + (t % 3 - 1); }

// The first tap inside the image of the window centred at input pixel (h0, w0). PyTorch's max_pool2d starts
// its running maximum (at -inf) with its index there, so a window whose in-image values are all -inf gives
// its gradient to that tap, never to the padding. The window's centre is always inside the image, so only
// the top row and the left column can lie outside, and the first in-image tap follows from h0 and w0 alone.
MTL_HOST_DEVICE int rpg_max_first_tap(int64_t h0, int64_t w0) { return (h0 > 0 ? 0 : 3) + (w0 > 0 ? 0 : 1); }

// The tap of the 3x3 max on a -inf padded plane: the first maximum in scan order, a NaN wins (a later NaN
// over an earlier one), starting from tap `first` (rpg_max_first_tap): PyTorch's max_pool2d exactly.
// Padding taps are -inf: never greater than the running maximum and never NaN, so they never win.
template <typename V>
MTL_HOST_DEVICE int rpg_max_tap(const V* at, int64_t ld, int first) {
  int best_t = first;
  V best = at[rpg_tap_offset(first, ld)];
  RPG_UNROLL
  for (int t = 0; t < 9; ++t) {
    const V val = at[rpg_tap_offset(t, ld)];
    const bool take = (val > best) | (val != val);  // selects, not branches: random data mispredicts
    best = take ? val : best;
    best_t = take ? t : best_t;
  }
  return best_t;
}

// The value of that maximum (NaN if the window holds one), without tracking where it is.
template <typename V>
MTL_HOST_DEVICE V rpg_max_value(const V* at, int64_t ld) {
  V best = at[-ld - 1];
  for (int u = -1; u <= 1; ++u)
    for (int v = -1; v <= 1; ++v) {
      const V val = at[u * ld + v];
      best = ((val > best) | (val != val)) ? val : best;
    }
  return best;
}

// Gather form of the max-pool adjoint: the gradient of input pixel (h, w) is the sum, over the windows
// (i, j) containing it (i ascending, then j), of g[i, j] where the window's argmax is (h, w). tap_of(i, j)
// gives the window's argmax tap (rpg_max_tap, recomputed or recorded when the responses were computed).
template <typename V, typename TapOf>
MTL_HOST_DEVICE V rpg_max_adjoint_gather(const V* g, int Ho, int Wo, int h, int w, int s, const TapOf& tap_of) {
  const int i_lo = h >= 1 ? (h - 1 + s - 1) / s : 0, i_hi = (h + 1) / s < Ho - 1 ? (h + 1) / s : Ho - 1;
  const int j_lo = w >= 1 ? (w - 1 + s - 1) / s : 0, j_hi = (w + 1) / s < Wo - 1 ? (w + 1) / s : Wo - 1;
  V sum = V(0);
  for (int i = i_lo; i <= i_hi; ++i)
    for (int j = j_lo; j <= j_hi; ++j) {
      const int t = tap_of(i, j);
      if (i * s + t / 3 - 1 == h && j * s + t % 3 - 1 == w) sum += g[int64_t(i) * Wo + j];
    }
  return sum;
}

// ---- linear per-channel primitives ---------------------------------------------------------------------
// Every kind but max_pool and dense_conv is a fixed linear filter: response(i, j) =
// Σ_e coef[e] · x[i·s + du[e], j·s + dv[e]] (+ the noise value). These taps are the one definition of
// those kinds: the responses, the scatter adjoint and the gather adjoint all read them.
template <typename V>
struct RpgTaps2d {
  int n = 0;
  int du[9], dv[9];
  V coef[9];
};

template <int K, typename V>
MTL_HOST_DEVICE RpgTaps2d<V> rpg_taps_2d(int a, int b, const V* w9) {
  RpgTaps2d<V> t;
  if constexpr (K == kIdentity || K == kNoise) {
    t.n = 1, t.du[0] = 0, t.dv[0] = 0, t.coef[0] = V(1);
  } else if constexpr (K == kShift) {  // y[h, w] = x[h - a, w - b]
    t.n = 1, t.du[0] = -a, t.dv[0] = -b, t.coef[0] = V(1);
  } else if constexpr (K == kAvgPool) {
    for (int u = -1; u <= 1; ++u)
      for (int v = -1; v <= 1; ++v) t.du[t.n] = u, t.dv[t.n] = v, t.coef[t.n++] = V(1) / V(9);
  } else if constexpr (K == kDwConv) {
    for (int u = 0; u < 3; ++u)
      for (int v = 0; v < 3; ++v) t.du[t.n] = (u - 1) * a, t.dv[t.n] = (v - 1) * a, t.coef[t.n] = w9[u * 3 + v], ++t.n;
  }
  return t;
}

// The same taps as offsets on a padded plane of row stride ld (the CPU loops over taps outside its pixel
// loops, which then vectorise; its scatter adjoint is the same taps with input and output swapped).
template <typename V>
struct RpgTaps {
  int n = 0;
  int64_t off[9];
  V coef[9];
};

template <int K, typename V>
MTL_HOST_DEVICE RpgTaps<V> rpg_linear_taps(int64_t ld, int a, int b, const V* w9) {
  const RpgTaps2d<V> t2 = rpg_taps_2d<K, V>(a, b, w9);
  RpgTaps<V> t;
  t.n = t2.n;
  RPG_UNROLL
  for (int e = 0; e < 9; ++e)
    if (e < t2.n) t.off[e] = t2.du[e] * ld + t2.dv[e], t.coef[e] = t2.coef[e];
  return t;
}

// Response of a per-channel primitive (every kind but dense_conv):
//   a, b: the kind's two parameters (shift (dh, dw); dw_conv (dilation, 0));
//   w9: the channel's 3x3 depthwise kernel (dw_conv); noise: the mask value at this pixel (noise).
template <int K, typename V>
MTL_HOST_DEVICE V rpg_response(const V* at, int64_t ld, int a, int b, const V* w9, V noise) {
  if constexpr (K == kMaxPool) {
    return rpg_max_value(at, ld);
  } else if constexpr (K == kDenseConv) {
    return V(0);
  } else {
    const RpgTaps<V> t = rpg_linear_taps<K, V>(ld, a, b, w9);
    V sum = V(0);
    RPG_UNROLL
    for (int e = 0; e < 9; ++e)
      if (e < t.n) sum += t.coef[e] * at[t.off[e]];
    return K == kNoise ? sum + noise : sum;
  }
}

// Gather form of a linear per-channel primitive's adjoint: the gradient of input pixel (h, w) is
// Σ_e coef[e] · g[i, j] over the taps e whose output pixel (i, j) = ((h - du[e]) / s, (w - dv[e]) / s) exists
// (divisible, inside the Ho x Wo output), in tap order. g: this channel's response gradient (Ho, Wo).
template <int K, typename V>
MTL_HOST_DEVICE V rpg_linear_adjoint_gather(const V* g, int Ho, int Wo, int h, int w, int s, int a, int b,
                                            const V* w9) {
  const RpgTaps2d<V> t = rpg_taps_2d<K, V>(a, b, w9);
  V sum = V(0);
  RPG_UNROLL
  for (int e = 0; e < 9; ++e) {
    if (e >= t.n) continue;
    const int hh = h - t.du[e], ww = w - t.dv[e];  // = (i·s, j·s) of the output pixel that read (h, w)
    if (hh < 0 || ww < 0 || hh % s != 0 || ww % s != 0 || hh / s >= Ho || ww / s >= Wo) continue;
    sum += t.coef[e] * g[int64_t(hh / s) * Wo + ww / s];
  }
  return sum;
}

// Calls f(std::integral_constant<int, kind>) for a per-channel kind (not dense_conv).
template <typename F>
MTL_HOST_DEVICE void rpg_dispatch_kind(int kind, F&& f) {
  switch (kind) {
    case kIdentity: f(std::integral_constant<int, kIdentity>{}); break;
    case kAvgPool: f(std::integral_constant<int, kAvgPool>{}); break;
    case kMaxPool: f(std::integral_constant<int, kMaxPool>{}); break;
    case kShift: f(std::integral_constant<int, kShift>{}); break;
    case kNoise: f(std::integral_constant<int, kNoise>{}); break;
    case kDwConv: f(std::integral_constant<int, kDwConv>{}); break;
    default: break;
  }
}

// ---- dense 3x3 convolutions (dense_conv primitives and the task branch) -------------------------------
// Gather form of the adjoint of a dense 3x3 convolution (dilation d, padding d, stride s): the gradient of
// input pixel (h, w) of one input channel c is Σ_{u, v} Σ_r w[r, c, u, v] · g[r, i, j] over the output
// pixels (i, j) with i·s + (u - 1)·d = h and j·s + (v - 1)·d = w (taps in order, then output channels r).
//   g: output channel 0's gradient plane (Ho, Wo), output channel r at g + r·g_row;
//   w: the kernel at [0, c, 0, 0] (its 3x3 taps contiguous), output channel r at w + r·w_row.
template <typename V>
MTL_HOST_DEVICE V rpg_dense_adjoint_gather(const V* g, int64_t g_row, int64_t rows, const V* w, int64_t w_row,
                                           int Ho, int Wo, int h, int x, int s, int d) {
  V sum = V(0);
  for (int u = 0; u < 3; ++u) {
    const int hh = h - (u - 1) * d;
    if (hh < 0 || hh % s != 0 || hh / s >= Ho) continue;
    for (int v = 0; v < 3; ++v) {
      const int ww = x - (v - 1) * d;
      if (ww < 0 || ww % s != 0 || ww / s >= Wo) continue;
      const V* gp = g + int64_t(hh / s) * Wo + ww / s;
      const V* wp = w + u * 3 + v;
      for (int64_t r = 0; r < rows; ++r) sum += wp[r * w_row] * gp[r * g_row];
    }
  }
  return sum;
}

}  // namespace mtl_ops
