// CUDA kernels of ms_attention_mix; the bilinear taps, gather ranges and tiles are csrc/common/bilinear.h.
//   forward   one thread per output pixel (y, x), looping over the images b = blockIdx.y, + gridDim.y, ...: the
//             taps of the S scales (offsets and bilinear weights, pixel_taps), the S logits -> lse and softmax
//             weights, folded into the taps once (coefficient = weight * bilinear weight); then each channel is
//             4 loads and 4 FMAs per scale. No resized map is written.
//   backward  1. one thread per output pixel: w_s (from lse), gv_s = <g, up(v_s)>, go = sum_s w_s gv_s, and the
//                logit gradient at output resolution da_s = w_s (gv_s - go), plus w_s itself, into fp32 (B, S, H, W)
//                workspaces (the weights are computed once, not once per channel).
//             2. per scale, one thread per (tile, low-res value element): gathers w_s * g over the output pixels of
//                its tile of the element's gather range (gather_tile_sum).
//             3. per scale, one thread per (tile, low-res logit element): gathers da_s the same way.
//             Tiles are kGatherTile x kGatherTile output pixels, so a thread's work is bounded whatever the scale
//             (a 1 x 1 map's range is the whole output); with more than one tile the per-tile partials are summed
//             over the tiles afterwards. Gathers, no atomics: deterministic for any sizes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "../common/bilinear.h"
#include "../common/accumulate_type.h"
#include "../common/ms_attention_mix_args.h"
#include "../common/tensor_list.h"

namespace mtl_ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = 65535;  // gridDim.y limit: more images are looped over
constexpr int64_t kGatherTile = 32;   // output rows / columns per gather tile: <= 32 x 32 taps per thread

template <typename scalar_t>
struct Scales {
  const scalar_t* v[kMaxScales];
  const scalar_t* l[kMaxScales];
  int64_t h[kMaxScales];
  int64_t w[kMaxScales];
  int S;
};

// The taps of output pixel (y, x) in scale s (offsets within one (h_s, w_s) plane: int32, checked on the host).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ PixelTaps<acc_t, int32_t> scale_taps(const Scales<scalar_t>& sc, int s, int64_t y,
                                                                 int64_t x, int64_t H, int64_t W) {
  return pixel_taps<acc_t, int32_t>(y, x, sc.h[s], sc.w[s], bilinear_scale<acc_t>(sc.h[s], H),
                                    bilinear_scale<acc_t>(sc.w[s], W));
}

// kS: the most scales this instantiation handles (4 or 8; per-scale state lives in registers, so the S <= 4 one
// needs about half of them).
template <int kS, typename scalar_t, typename acc_t>
__global__ void forward_kernel(Scales<scalar_t> sc, scalar_t* __restrict__ out, acc_t* __restrict__ lse, int64_t B,
                               int64_t K, int64_t H, int64_t W) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= H * W) return;
  const int64_t y = p / W, x = p % W, HW = H * W;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    PixelTaps<acc_t, int32_t> taps[kS];
    acc_t wgt[kS];
    acc_t m = -INFINITY;
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      if (s < sc.S) {
        taps[s] = scale_taps<scalar_t, acc_t>(sc, s, y, x, H, W);
        wgt[s] = tap_sample(taps[s], sc.l[s] + b * sc.h[s] * sc.w[s]);
        m = wgt[s] > m ? wgt[s] : m;
      }
    }
    acc_t total = 0;
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      if (s < sc.S) {
        wgt[s] = exp(wgt[s] - m);
        total += wgt[s];
      }
    }
    lse[b * HW + p] = m + log(total);
    // Fold the softmax weight into the bilinear weights: a channel is then sum_s sum_q coef * v_s[offset].
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      if (s < sc.S) {
        const acc_t ws = wgt[s] / total;
#pragma unroll
        for (int q = 0; q < 4; ++q) taps[s].weight[q] *= ws;
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      acc_t acc = 0;
#pragma unroll
      for (int s = 0; s < kS; ++s)
        if (s < sc.S) acc += tap_sample(taps[s], sc.v[s] + (b * K + k) * sc.h[s] * sc.w[s]);
      out[(b * K + k) * HW + p] = static_cast<scalar_t>(acc);
    }
  }
}

// Backward pass 1: per output pixel, wts[b, s] = w_s and da[b, s] = w_s (gv_s - go).
template <int kS, typename scalar_t, typename acc_t>
__global__ void row_terms_kernel(Scales<scalar_t> sc, const scalar_t* __restrict__ g, const acc_t* __restrict__ lse,
                                 acc_t* __restrict__ wts, acc_t* __restrict__ da, int64_t B, int64_t K, int64_t H,
                                 int64_t W) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= H * W) return;
  const int64_t y = p / W, x = p % W, HW = H * W;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const acc_t l = lse[b * HW + p];
    PixelTaps<acc_t, int32_t> taps[kS];
    acc_t wgt[kS], gv[kS];
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      if (s < sc.S) {
        taps[s] = scale_taps<scalar_t, acc_t>(sc, s, y, x, H, W);
        wgt[s] = exp(tap_sample(taps[s], sc.l[s] + b * sc.h[s] * sc.w[s]) - l);
        gv[s] = 0;
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      const acc_t gk = static_cast<acc_t>(g[(b * K + k) * HW + p]);
#pragma unroll
      for (int s = 0; s < kS; ++s)
        if (s < sc.S) gv[s] += gk * tap_sample(taps[s], sc.v[s] + (b * K + k) * sc.h[s] * sc.w[s]);
    }
    acc_t go = 0;
#pragma unroll
    for (int s = 0; s < kS; ++s)
      if (s < sc.S) go += wgt[s] * gv[s];
#pragma unroll
    for (int s = 0; s < kS; ++s) {
      if (s < sc.S) {
        wts[(b * sc.S + s) * HW + p] = wgt[s];
        da[(b * sc.S + s) * HW + p] = wgt[s] * (gv[s] - go);
      }
    }
  }
}

// value(yy, xx) = w_s * g at one output pixel of one channel (gather_tile_sum's functor).
template <typename scalar_t, typename acc_t>
struct WeightedGrad {
  const acc_t* w;      // (H, W) plane of wts for (b, s)
  const scalar_t* g;   // (H, W) plane of grad_out for (b, k)
  int64_t W;
  MTL_HOST_DEVICE acc_t operator()(int64_t yy, int64_t xx) const {
    return w[yy * W + xx] * static_cast<acc_t>(g[yy * W + xx]);
  }
};

template <typename acc_t>
struct PlaneValue {
  const acc_t* plane;  // (H, W)
  int64_t W;
  MTL_HOST_DEVICE acc_t operator()(int64_t yy, int64_t xx) const { return plane[yy * W + xx]; }
};

// Gather geometry of one scale: tiles per gather range in y and x.
struct GatherTiles {
  int64_t ty, tx;
  int64_t count() const { return ty * tx; }
};

template <typename acc_t>
GatherTiles gather_tiles_of(int64_t h, int64_t w, int64_t H, int64_t W) {
  return {gather_tiles(gather_window<acc_t>(H, bilinear_scale<acc_t>(h, H)), kGatherTile),
          gather_tiles(gather_window<acc_t>(W, bilinear_scale<acc_t>(w, W)), kGatherTile)};
}

// Backward pass 2, scale s: thread n = tile * E + e, e a low-res value element (b, k, i, j), E = B*K*h*w; writes
// the tile's partial into dv[n] ((tiles, B, K, h, w); the gradient itself when there is one tile).
template <typename scalar_t, typename acc_t>
__global__ void gather_values_kernel(const scalar_t* __restrict__ g, const acc_t* __restrict__ wts,
                                     acc_t* __restrict__ dv, int64_t B, int64_t K, int64_t S, int64_t s, int64_t H,
                                     int64_t W, int64_t h, int64_t w, int64_t tiles_x, int64_t n_total) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= n_total) return;
  const int64_t E = B * K * h * w;
  const int64_t tile = n / E, e = n % E;
  const int64_t j = e % w, i = (e / w) % h, bk = e / (h * w), b = bk / K;
  const WeightedGrad<scalar_t, acc_t> value{wts + (b * S + s) * H * W, g + bk * H * W, W};
  dv[n] = gather_tile_sum<acc_t>(i, j, h, w, H, W, bilinear_scale<acc_t>(h, H), bilinear_scale<acc_t>(w, W),
                                 tile / tiles_x, tile % tiles_x, kGatherTile, value);
}

// Backward pass 3, scale s: thread n = tile * E + e, e a low-res logit element (b, i, j), E = B*h*w.
template <typename acc_t>
__global__ void gather_logits_kernel(const acc_t* __restrict__ da, acc_t* __restrict__ dl, int64_t B, int64_t S,
                                     int64_t s, int64_t H, int64_t W, int64_t h, int64_t w, int64_t tiles_x,
                                     int64_t n_total) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= n_total) return;
  const int64_t E = B * h * w;
  const int64_t tile = n / E, e = n % E;
  const int64_t j = e % w, i = (e / w) % h, b = e / (h * w);
  const PlaneValue<acc_t> value{da + (b * S + s) * H * W, W};
  dl[n] = gather_tile_sum<acc_t>(i, j, h, w, H, W, bilinear_scale<acc_t>(h, H), bilinear_scale<acc_t>(w, W),
                                 tile / tiles_x, tile % tiles_x, kGatherTile, value);
}

template <typename scalar_t>
Scales<scalar_t> make_scales(const std::vector<at::Tensor>& values, const std::vector<at::Tensor>& logits) {
  Scales<scalar_t> sc{};
  sc.S = static_cast<int>(values.size());
  for (int s = 0; s < sc.S; ++s) {
    sc.v[s] = values[s].const_data_ptr<scalar_t>();
    sc.l[s] = logits[s].const_data_ptr<scalar_t>();
    sc.h[s] = values[s].size(2);
    sc.w[s] = values[s].size(3);
  }
  return sc;
}

unsigned blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "ms_attention_mix (cuda backend): ", n,
              " threads exceed the grid limit");
  return static_cast<unsigned>(blocks);
}

// Grid of the per-output-pixel kernels: (pixels, images up to the gridDim.y limit; the kernels loop over the rest).
dim3 pixel_grid(int64_t B, int64_t H, int64_t W) {
  return dim3(blocks_for(H * W), static_cast<unsigned>(std::min(B, kMaxGridY)));
}

void check_cuda(at::TensorList values) {
  TORCH_CHECK(values[0].is_cuda(), "ms_attention_mix (cuda backend): tensors must be on a CUDA device, got ",
              values[0].device());
  for (const auto& v : values)  // the per-pixel taps hold offsets within one low-res plane in int32
    TORCH_CHECK(v.size(2) * v.size(3) <= std::numeric_limits<int32_t>::max(),
                "ms_attention_mix (cuda backend): a low-res map has more than 2^31 - 1 pixels: ", v.sizes());
}

std::tuple<at::Tensor, at::Tensor> ms_attention_mix_forward(at::TensorList values_in, at::TensorList logits_in,
                                                            at::IntArrayRef size) {
  check_ms_attention_mix_args(values_in, logits_in, size);
  check_cuda(values_in);
  const c10::cuda::CUDAGuard guard(values_in[0].device());
  const auto values = contiguous_all(values_in);
  const auto logits = contiguous_all(logits_in);
  const int64_t B = values[0].size(0), K = values[0].size(1), H = size[0], W = size[1];
  const auto dt = values[0].scalar_type();
  auto out = at::empty({B, K, H, W}, values[0].options());
  auto lse = at::empty({B, H, W}, values[0].options().dtype(accumulate_type_of(dt)));
  if (B == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "ms_attention_mix_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto sc = make_scales<scalar_t>(values, logits);
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (sc.S <= 4) {
      forward_kernel<4, scalar_t, acc_t><<<pixel_grid(B, H, W), kThreads, 0, stream>>>(
          sc, out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(), B, K, H, W);
    } else {
      forward_kernel<kMaxScales, scalar_t, acc_t><<<pixel_grid(B, H, W), kThreads, 0, stream>>>(
          sc, out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(), B, K, H, W);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::vector<at::Tensor> ms_attention_mix_backward(const at::Tensor& grad_out, at::TensorList values_in,
                                                  at::TensorList logits_in, const at::Tensor& lse_in) {
  check_ms_attention_mix_backward_args(grad_out, values_in, logits_in, lse_in);
  check_cuda(values_in);
  const int64_t S = values_in.size(), B = values_in[0].size(0), K = values_in[0].size(1);
  const int64_t H = grad_out.size(2), W = grad_out.size(3);
  const auto dt = values_in[0].scalar_type();
  const auto acc_dt = accumulate_type_of(dt);
  const c10::cuda::CUDAGuard guard(values_in[0].device());
  const auto values = contiguous_all(values_in);
  const auto logits = contiguous_all(logits_in);
  const auto g = grad_out.contiguous();
  const auto lse = lse_in.contiguous();
  std::vector<at::Tensor> grads(2 * S);
  for (int64_t s = 0; s < S; ++s) {
    grads[s] = at::zeros(values[s].sizes(), values[s].options().dtype(acc_dt));
    grads[S + s] = at::zeros(logits[s].sizes(), logits[s].options().dtype(acc_dt));
  }
  if (B > 0) {
    auto wts = at::empty({B, S, H, W}, lse.options());
    auto da = at::empty({B, S, H, W}, lse.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "ms_attention_mix_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto stream = at::cuda::getCurrentCUDAStream();
      const auto sc = make_scales<scalar_t>(values, logits);
      if (sc.S <= 4) {
        row_terms_kernel<4, scalar_t, acc_t><<<pixel_grid(B, H, W), kThreads, 0, stream>>>(
            sc, g.const_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t>(), wts.mutable_data_ptr<acc_t>(),
            da.mutable_data_ptr<acc_t>(), B, K, H, W);
      } else {
        row_terms_kernel<kMaxScales, scalar_t, acc_t><<<pixel_grid(B, H, W), kThreads, 0, stream>>>(
            sc, g.const_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t>(), wts.mutable_data_ptr<acc_t>(),
            da.mutable_data_ptr<acc_t>(), B, K, H, W);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      for (int64_t s = 0; s < S; ++s) {
        const int64_t h = values[s].size(2), w = values[s].size(3);
        const GatherTiles tiles = gather_tiles_of<acc_t>(h, w, H, W);
        // One tile: the kernels write the gradient; several: per-tile partials, summed over the tiles (in order).
        auto gather_into = [&](at::Tensor& grad, auto&& launch) {
          const int64_t E = grad.numel();
          if (tiles.count() == 1) {
            launch(grad.mutable_data_ptr<acc_t>(), E);
            return;
          }
          auto partials = at::empty({tiles.count(), E}, grad.options());
          launch(partials.mutable_data_ptr<acc_t>(), tiles.count() * E);
          grad = partials.sum(0).view(grad.sizes());
        };
        if (K > 0) {
          gather_into(grads[s], [&](acc_t* dst, int64_t n_total) {
            gather_values_kernel<scalar_t, acc_t><<<blocks_for(n_total), kThreads, 0, stream>>>(
                g.const_data_ptr<scalar_t>(), wts.const_data_ptr<acc_t>(), dst, B, K, S, s, H, W, h, w, tiles.tx,
                n_total);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        }
        gather_into(grads[S + s], [&](acc_t* dst, int64_t n_total) {
          gather_logits_kernel<acc_t><<<blocks_for(n_total), kThreads, 0, stream>>>(
              da.const_data_ptr<acc_t>(), dst, B, S, s, H, W, h, w, tiles.tx, n_total);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    });
  }
  for (auto& t : grads) t = t.to(dt);
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CUDA, m) {
  m.impl("ms_attention_mix_forward", &ms_attention_mix_forward);
  m.impl("ms_attention_mix_backward", &ms_attention_mix_backward);
}

}  // namespace mtl_ops::cuda
