// Per-pixel math of ETR-NLP's non-learnable primitives, shared by the CPU and CUDA kernels of
// routed_primitive_gather (codes as mtl_ops/reference/primitive_kinds.py). Every primitive is centred on
// input pixel (h0, w0) = (i·s, j·s) of output pixel (i, j); taps outside the image read zero (max pool
// ignores them). The adjoints add d_response · ∂response/∂x through an `Adder` (plain add on the CPU,
// atomicAdd on the GPU), so both devices run the same arithmetic.
#pragma once
#include <cstdint>

#include "macros.h"

namespace mtl_ops {

enum RpgKind : int { kIdentity = 0, kAvgPool = 1, kMaxPool = 2, kShift = 3, kNoise = 4, kDwConv = 5, kDenseConv = 6 };
constexpr int kNumRpgKinds = 7;

MTL_HOST_DEVICE bool rpg_inside(int64_t h, int64_t w, int64_t H, int64_t W) {
  return h >= 0 && h < H && w >= 0 && w < W;
}

template <typename V>
MTL_HOST_DEVICE V rpg_tap(const V* plane, int64_t H, int64_t W, int64_t h, int64_t w) {
  return rpg_inside(h, w, H, W) ? plane[h * W + w] : V(0);
}

// Index into the plane of the 3x3 max (first maximum in scan order, a NaN wins, as PyTorch's max_pool2d).
template <typename V>
MTL_HOST_DEVICE int64_t rpg_max_index(const V* plane, int64_t H, int64_t W, int64_t h0, int64_t w0) {
  int64_t best_idx = -1;
  V best = V(0);
  for (int u = -1; u <= 1; ++u) {
    for (int v = -1; v <= 1; ++v) {
      const int64_t h = h0 + u, w = w0 + v;
      if (!rpg_inside(h, w, H, W)) continue;
      const V val = plane[h * W + w];
      if (best_idx < 0 || val > best || val != val) {
        best = val;
        best_idx = h * W + w;
      }
    }
  }
  return best_idx;
}

// Response of a per-channel primitive (every kind but dense_conv) on one channel's plane.
//   a, b: the kind's two integer parameters (shift (dh, dw); conv (dilation, 0));
//   w9: that channel's 3x3 depthwise kernel (dw_conv); noise: that channel's (Hn, Wn) mask (noise).
template <typename V>
MTL_HOST_DEVICE V rpg_channel_response(int kind, int a, int b, const V* plane, int64_t H, int64_t W, int64_t h0,
                                       int64_t w0, const V* w9, const V* noise, int64_t Hn, int64_t Wn) {
  switch (kind) {
    case kIdentity:
      return plane[h0 * W + w0];
    case kAvgPool: {
      V sum = V(0);
      for (int u = -1; u <= 1; ++u)
        for (int v = -1; v <= 1; ++v) sum += rpg_tap(plane, H, W, h0 + u, w0 + v);
      return sum / V(9);
    }
    case kMaxPool:
      return plane[rpg_max_index(plane, H, W, h0, w0)];
    case kShift:
      return rpg_tap(plane, H, W, h0 - a, w0 - b);
    case kNoise:
      return plane[h0 * W + w0] + noise[(h0 % Hn) * Wn + (w0 % Wn)];
    case kDwConv: {
      V sum = V(0);
      for (int u = 0; u < 3; ++u)
        for (int v = 0; v < 3; ++v) sum += w9[u * 3 + v] * rpg_tap(plane, H, W, h0 + (u - 1) * a, w0 + (v - 1) * a);
      return sum;
    }
    default:
      return V(0);  // dense_conv mixes channels: rpg_dense_response
  }
}

// Adds g · ∂response/∂plane of a per-channel primitive: add(index into the plane, value).
template <typename V, typename Adder>
MTL_HOST_DEVICE void rpg_channel_adjoint(int kind, int a, int b, const V* plane, int64_t H, int64_t W, int64_t h0,
                                         int64_t w0, const V* w9, V g, const Adder& add) {
  switch (kind) {
    case kIdentity:
    case kNoise:  // the fixed mask is an additive constant
      add(h0 * W + w0, g);
      return;
    case kAvgPool:
      for (int u = -1; u <= 1; ++u)
        for (int v = -1; v <= 1; ++v)
          if (rpg_inside(h0 + u, w0 + v, H, W)) add((h0 + u) * W + (w0 + v), g / V(9));
      return;
    case kMaxPool:
      add(rpg_max_index(plane, H, W, h0, w0), g);
      return;
    case kShift:
      if (rpg_inside(h0 - a, w0 - b, H, W)) add((h0 - a) * W + (w0 - b), g);
      return;
    case kDwConv:
      for (int u = 0; u < 3; ++u)
        for (int v = 0; v < 3; ++v) {
          const int64_t h = h0 + (u - 1) * a, w = w0 + (v - 1) * a;
          if (rpg_inside(h, w, H, W)) add(h * W + w, w9[u * 3 + v] * g);
        }
      return;
    default:
      return;
  }
}

// A dense 3x3 convolution (dilation d, padding d) of one output channel: w is that channel's (C, 3, 3)
// kernel, x the image (C, H, W). Used by dense_conv primitives and by the task branch (d = 1).
template <typename V>
MTL_HOST_DEVICE V rpg_dense_response(const V* x, int64_t C, int64_t H, int64_t W, const V* w, int d, int64_t h0,
                                     int64_t w0) {
  V sum = V(0);
  for (int64_t c = 0; c < C; ++c)
    for (int u = 0; u < 3; ++u)
      for (int v = 0; v < 3; ++v)
        sum += w[(c * 3 + u) * 3 + v] * rpg_tap(x + c * H * W, H, W, h0 + (u - 1) * d, w0 + (v - 1) * d);
  return sum;
}

}  // namespace mtl_ops
