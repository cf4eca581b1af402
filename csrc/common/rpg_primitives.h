// Per-pixel math of ETR-NLP's non-learnable primitives, shared by the CPU and CUDA kernels of
// routed_primitive_gather (codes as mtl_ops/reference/primitive_kinds.py).
//
// The kernels read each input channel from a PADDED plane (zeros around it, at least the largest primitive
// radius wide; max pool reads a second copy padded with -inf, so padding never wins), which removes every
// bounds check from the tap loops. `at` points at the input pixel (h0, w0) = (i·s, j·s) of output pixel
// (i, j), `ld` is the padded row stride. The kind is a template parameter: the kernels switch once per
// (channel, primitive) and the per-pixel loops are branch-free (the CPU's vectorise).
// Adjoints add d_response · ∂response/∂x through `add(offset from at, value)` into a padded gradient plane
// (plain add on the CPU, atomicAdd on the GPU), so both devices run the same arithmetic.
#pragma once
#include <cstdint>
#include <utility>

#include "macros.h"

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

// Offset from `at` of the 3x3 max on a -inf padded plane: first maximum in scan order, a NaN wins (as
// PyTorch's max_pool2d, whose running maximum starts at -inf on the window's first tap).
template <typename V>
MTL_HOST_DEVICE int64_t rpg_max_offset(const V* at, int64_t ld) {
  int64_t best_off = -ld - 1;
  V best = at[best_off];
  for (int u = -1; u <= 1; ++u)
    for (int v = -1; v <= 1; ++v) {
      const int64_t off = u * ld + v;
      const V val = at[off];
      const bool take = (val > best) | (val != val);  // selects, not branches: random data mispredicts
      best = take ? val : best;
      best_off = take ? off : best_off;
    }
  return best_off;
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

// A linear per-channel primitive (every kind but max_pool and dense_conv) as taps: response =
// Σ coef[t] · at[off[t]] (+ the noise value). The CPU loops over taps outside its pixel loops (which then
// vectorise); the adjoint is the same taps with the roles of input and output swapped.
template <typename V>
struct RpgTaps {
  int n = 0;
  int64_t off[9];
  V coef[9];
};

template <int K, typename V>
MTL_HOST_DEVICE RpgTaps<V> rpg_linear_taps(int64_t ld, int a, int b, const V* w9) {
  RpgTaps<V> t;
  if constexpr (K == kIdentity || K == kNoise) {
    t.n = 1, t.off[0] = 0, t.coef[0] = V(1);
  } else if constexpr (K == kShift) {
    t.n = 1, t.off[0] = -a * ld - b, t.coef[0] = V(1);
  } else if constexpr (K == kAvgPool) {
    for (int u = -1; u <= 1; ++u)
      for (int v = -1; v <= 1; ++v) t.off[t.n] = u * ld + v, t.coef[t.n++] = V(1) / V(9);
  } else if constexpr (K == kDwConv) {
    for (int u = 0; u < 3; ++u)
      for (int v = 0; v < 3; ++v) t.off[t.n] = (u - 1) * a * ld + (v - 1) * a, t.coef[t.n++] = w9[u * 3 + v];
  }
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
    for (int e = 0; e < t.n; ++e) sum += t.coef[e] * at[t.off[e]];
    return K == kNoise ? sum + noise : sum;
  }
}

// Adds g · ∂response/∂x of a per-channel primitive: add(offset from the pixel, value). `at` (the -inf
// padded input) is read by max pool only (to recompute its argmax).
template <int K, typename V, typename Adder>
MTL_HOST_DEVICE void rpg_adjoint(const V* at, int64_t ld, int a, int b, const V* w9, V g, const Adder& add) {
  if constexpr (K == kMaxPool) {
    add(rpg_max_offset(at, ld), g);
  } else if constexpr (K != kDenseConv) {
    const RpgTaps<V> t = rpg_linear_taps<K, V>(ld, a, b, w9);
    for (int e = 0; e < t.n; ++e) add(t.off[e], t.coef[e] * g);
  }
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

// One output channel of a dense 3x3 convolution (dilation d) on padded planes: w is that channel's
// (C, 3, 3) kernel, x points at pixel (h0, w0) of channel 0, `plane` the padded plane size. Used by
// dense_conv primitives and by the task branch (d = 1).
template <typename V>
MTL_HOST_DEVICE V rpg_dense_response(const V* x, int64_t plane, int64_t ld, int64_t C, const V* w, int d) {
  V sum = V(0);
  for (int64_t c = 0; c < C; ++c)
    for (int u = 0; u < 3; ++u)
      for (int v = 0; v < 3; ++v) sum += w[(c * 3 + u) * 3 + v] * x[c * plane + (u - 1) * d * ld + (v - 1) * d];
  return sum;
}

}  // namespace mtl_ops
