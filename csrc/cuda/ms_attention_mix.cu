// CUDA kernels of ms_attention_mix; the bilinear taps and gather ranges are csrc/common/bilinear.h.
//   forward   one thread per output pixel (b, y, x): the S logits -> lse and weights (registers), then for
//             each channel the weighted sum of the S bilinear samples. No resized map is written.
//   backward  1. one thread per output pixel: gv_s = <g, up(v_s)>, go = sum_s w_s gv_s, and the logit
//                gradient at output resolution da_s = w_s (gv_s - go) into an fp32 (B, S, H, W) workspace.
//             2. per scale, one thread per low-res value element: gathers the output pixels that read it
//                (gather_range), recomputing w_s from that scale's logits and lse.
//             3. per scale, one thread per low-res logit element: gathers da_s the same way.
//             Gathers, no atomics: deterministic for any sizes (integer factors or not).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../common/bilinear.h"
#include "../common/accumulate_type.h"
#include "../common/ms_attention_mix_args.h"
#include "../common/tensor_list.h"

namespace mtl_ops::cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
struct Scales {
  const scalar_t* v[kMaxScales];
  const scalar_t* l[kMaxScales];
  int64_t h[kMaxScales];
  int64_t w[kMaxScales];
  int S;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t bilerp(const scalar_t* plane, int64_t w, const LinearTap<acc_t>& ty,
                                        const LinearTap<acc_t>& tx) {
  const acc_t v00 = static_cast<acc_t>(plane[ty.i0 * w + tx.i0]);
  const acc_t v01 = static_cast<acc_t>(plane[ty.i0 * w + tx.i1]);
  const acc_t v10 = static_cast<acc_t>(plane[ty.i1 * w + tx.i0]);
  const acc_t v11 = static_cast<acc_t>(plane[ty.i1 * w + tx.i1]);
  return (acc_t(1) - ty.lambda) * ((acc_t(1) - tx.lambda) * v00 + tx.lambda * v01) +
         ty.lambda * ((acc_t(1) - tx.lambda) * v10 + tx.lambda * v11);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t logit_at(const Scales<scalar_t>& sc, int s, int64_t b, int64_t y, int64_t x,
                                          int64_t H, int64_t W, LinearTap<acc_t>& ty, LinearTap<acc_t>& tx) {
  ty = bilinear_tap<acc_t>(y, sc.h[s], bilinear_scale<acc_t>(sc.h[s], H));
  tx = bilinear_tap<acc_t>(x, sc.w[s], bilinear_scale<acc_t>(sc.w[s], W));
  return bilerp<scalar_t, acc_t>(sc.l[s] + b * sc.h[s] * sc.w[s], sc.w[s], ty, tx);
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(Scales<scalar_t> sc, scalar_t* __restrict__ out, acc_t* __restrict__ lse, int64_t K,
                               int64_t H, int64_t W) {
  const int64_t b = blockIdx.y;
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= H * W) return;
  const int64_t y = p / W, x = p % W;
  acc_t wgt[kMaxScales];
  LinearTap<acc_t> ty[kMaxScales], tx[kMaxScales];
  acc_t m = -INFINITY;
#pragma unroll
  for (int s = 0; s < kMaxScales; ++s) {
    if (s < sc.S) {
      wgt[s] = logit_at<scalar_t, acc_t>(sc, s, b, y, x, H, W, ty[s], tx[s]);
      m = wgt[s] > m ? wgt[s] : m;
    }
  }
  acc_t total = 0;
#pragma unroll
  for (int s = 0; s < kMaxScales; ++s) {
    if (s < sc.S) {
      wgt[s] = exp(wgt[s] - m);
      total += wgt[s];
    }
  }
#pragma unroll
  for (int s = 0; s < kMaxScales; ++s)
    if (s < sc.S) wgt[s] /= total;
  lse[b * H * W + p] = m + log(total);
  for (int64_t k = 0; k < K; ++k) {
    acc_t acc = 0;
#pragma unroll
    for (int s = 0; s < kMaxScales; ++s) {
      if (s < sc.S) {
        const int64_t hw = sc.h[s] * sc.w[s];
        acc += wgt[s] * bilerp<scalar_t, acc_t>(sc.v[s] + (b * K + k) * hw, sc.w[s], ty[s], tx[s]);
      }
    }
    out[(b * K + k) * H * W + p] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void row_terms_kernel(Scales<scalar_t> sc, const scalar_t* __restrict__ g, const acc_t* __restrict__ lse,
                                 acc_t* __restrict__ da, int64_t K, int64_t H, int64_t W) {
  const int64_t b = blockIdx.y;
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= H * W) return;
  const int64_t y = p / W, x = p % W;
  const acc_t l = lse[b * H * W + p];
  acc_t wgt[kMaxScales], gv[kMaxScales];
  LinearTap<acc_t> ty[kMaxScales], tx[kMaxScales];
#pragma unroll
  for (int s = 0; s < kMaxScales; ++s) {
    if (s < sc.S) {
      wgt[s] = exp(logit_at<scalar_t, acc_t>(sc, s, b, y, x, H, W, ty[s], tx[s]) - l);
      gv[s] = 0;
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const acc_t gk = static_cast<acc_t>(g[(b * K + k) * H * W + p]);
#pragma unroll
    for (int s = 0; s < kMaxScales; ++s) {
      if (s < sc.S) {
        const int64_t hw = sc.h[s] * sc.w[s];
        gv[s] += gk * bilerp<scalar_t, acc_t>(sc.v[s] + (b * K + k) * hw, sc.w[s], ty[s], tx[s]);
      }
    }
  }
  acc_t go = 0;
#pragma unroll
  for (int s = 0; s < kMaxScales; ++s)
    if (s < sc.S) go += wgt[s] * gv[s];
#pragma unroll
  for (int s = 0; s < kMaxScales; ++s)
    if (s < sc.S) da[(b * sc.S + s) * H * W + p] = wgt[s] * (gv[s] - go);
}

// One thread per low-res element (b, k, i, j) of scale s.
template <typename scalar_t, typename acc_t>
__global__ void gather_values_kernel(const scalar_t* __restrict__ g, const acc_t* __restrict__ lse,
                                     const scalar_t* __restrict__ logits, acc_t* __restrict__ dv, int64_t B, int64_t K,
                                     int64_t H, int64_t W, int64_t h, int64_t w) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= B * K * h * w) return;
  const int64_t j = n % w, i = (n / w) % h, bk = n / (h * w), b = bk / K;
  const acc_t sy = bilinear_scale<acc_t>(h, H), sx = bilinear_scale<acc_t>(w, W);
  const auto ry = gather_range<acc_t>(i, H, sy);
  const auto rx = gather_range<acc_t>(j, W, sx);
  const scalar_t* lplane = logits + b * h * w;
  acc_t acc = 0;
  for (int64_t yy = ry.lo; yy < ry.hi; ++yy) {
    const auto ty = bilinear_tap<acc_t>(yy, h, sy);
    const acc_t wy = tap_weight(ty, i);
    if (wy == acc_t(0)) continue;
    for (int64_t xx = rx.lo; xx < rx.hi; ++xx) {
      const auto tx = bilinear_tap<acc_t>(xx, w, sx);
      const acc_t wx = tap_weight(tx, j);
      if (wx == acc_t(0)) continue;
      const acc_t wgt = exp(bilerp<scalar_t, acc_t>(lplane, w, ty, tx) - lse[(b * H + yy) * W + xx]);
      acc += wy * wx * wgt * static_cast<acc_t>(g[(bk * H + yy) * W + xx]);
    }
  }
  dv[n] = acc;
}

// One thread per low-res logit element (b, i, j) of scale s.
template <typename acc_t>
__global__ void gather_logits_kernel(const acc_t* __restrict__ da, acc_t* __restrict__ dl, int64_t B, int64_t S,
                                     int64_t s, int64_t H, int64_t W, int64_t h, int64_t w) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= B * h * w) return;
  const int64_t j = n % w, i = (n / w) % h, b = n / (h * w);
  const acc_t sy = bilinear_scale<acc_t>(h, H), sx = bilinear_scale<acc_t>(w, W);
  const auto ry = gather_range<acc_t>(i, H, sy);
  const auto rx = gather_range<acc_t>(j, W, sx);
  const acc_t* plane = da + (b * S + s) * H * W;
  acc_t acc = 0;
  for (int64_t yy = ry.lo; yy < ry.hi; ++yy) {
    const acc_t wy = tap_weight(bilinear_tap<acc_t>(yy, h, sy), i);
    if (wy == acc_t(0)) continue;
    for (int64_t xx = rx.lo; xx < rx.hi; ++xx) {
      const acc_t wx = tap_weight(bilinear_tap<acc_t>(xx, w, sx), j);
      if (wx != acc_t(0)) acc += wy * wx * plane[yy * W + xx];
    }
  }
  dl[n] = acc;
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

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

void check_cuda(const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), "ms_attention_mix (cuda backend): tensors must be on a CUDA device, got ", t.device());
}

std::tuple<at::Tensor, at::Tensor> ms_attention_mix_forward(at::TensorList values_in, at::TensorList logits_in,
                                                            at::IntArrayRef size) {
  check_ms_attention_mix_args(values_in, logits_in, size);
  check_cuda(values_in[0]);
  const c10::cuda::CUDAGuard guard(values_in[0].device());
  const auto values = contiguous_all(values_in);
  const auto logits = contiguous_all(logits_in);
  const int64_t B = values[0].size(0), K = values[0].size(1), H = size[0], W = size[1];
  const auto dt = values[0].scalar_type();
  auto out = at::empty({B, K, H, W}, values[0].options());
  auto lse = at::empty({B, H, W}, values[0].options().dtype(accumulate_type_of(dt)));
  if (B == 0) return {out, lse};
  TORCH_CHECK(B <= 65535, "ms_attention_mix (cuda backend): at most 65535 images, got B = ", B);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "ms_attention_mix_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const dim3 grid(blocks_for(H * W), B);
    forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        make_scales<scalar_t>(values, logits), out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(), K, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::vector<at::Tensor> ms_attention_mix_backward(const at::Tensor& grad_out, at::TensorList values_in,
                                                  at::TensorList logits_in, const at::Tensor& lse_in) {
  check_ms_attention_mix_backward_args(grad_out, values_in, logits_in, lse_in);
  check_cuda(values_in[0]);
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
    TORCH_CHECK(B <= 65535, "ms_attention_mix (cuda backend): at most 65535 images, got B = ", B);
    auto da = at::empty({B, S, H, W}, lse.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "ms_attention_mix_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto stream = at::cuda::getCurrentCUDAStream();
      row_terms_kernel<scalar_t, acc_t><<<dim3(blocks_for(H * W), B), kThreads, 0, stream>>>(
          make_scales<scalar_t>(values, logits), g.const_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t>(),
          da.mutable_data_ptr<acc_t>(), K, H, W);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      for (int64_t s = 0; s < S; ++s) {
        const int64_t h = values[s].size(2), w = values[s].size(3);
        if (K > 0) {
          gather_values_kernel<scalar_t, acc_t><<<blocks_for(B * K * h * w), kThreads, 0, stream>>>(
              g.const_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t>(), logits[s].const_data_ptr<scalar_t>(),
              grads[s].mutable_data_ptr<acc_t>(), B, K, H, W, h, w);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        gather_logits_kernel<acc_t><<<blocks_for(B * h * w), kThreads, 0, stream>>>(
            da.const_data_ptr<acc_t>(), grads[S + s].mutable_data_ptr<acc_t>(), B, S, s, H, W, h, w);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
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
