// CUDA kernels of sfa_apply: out[t] = sigmoid(mask[t]) * features (csrc/common/sigmoid.h).
//   forward           one thread per output element.
//   backward features one thread per feature element, summing the T task terms (one pass, no atomics).
//   backward mask     one thread per mask element; a spatial mask (M = 1) sums f * g over the C channels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../common/sfa_apply_args.h"
#include "../common/sigmoid.h"

namespace mtl_ops::cuda {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

// Index of the mask element that gates feature element (t*B + b, c, p).
__device__ __forceinline__ int64_t mask_index(int64_t tb, int64_t c, int64_t p, int64_t M, int64_t P) {
  return (tb * M + (M == 1 ? 0 : c)) * P + p;
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ f, const scalar_t* __restrict__ m,
                               scalar_t* __restrict__ out, int64_t T, int64_t B, int64_t C, int64_t P, int64_t M) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= T * B * C * P) return;
  const int64_t p = n % P, c = (n / P) % C, tb = n / (C * P), b = tb % B;
  const acc_t s = sigmoid_value<acc_t>(static_cast<acc_t>(m[mask_index(tb, c, p, M, P)]));
  out[n] = static_cast<scalar_t>(s * static_cast<acc_t>(f[(b * C + c) * P + p]));
}

template <typename scalar_t, typename acc_t>
__global__ void features_grad_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ m,
                                     scalar_t* __restrict__ df, int64_t T, int64_t B, int64_t C, int64_t P, int64_t M) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= B * C * P) return;
  const int64_t p = n % P, c = (n / P) % C, b = n / (C * P);
  acc_t acc = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t tb = t * B + b;
    acc += sigmoid_value<acc_t>(static_cast<acc_t>(m[mask_index(tb, c, p, M, P)])) *
           static_cast<acc_t>(g[(tb * C + c) * P + p]);
  }
  df[n] = static_cast<scalar_t>(acc);
}

template <typename scalar_t, typename acc_t>
__global__ void mask_grad_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ f,
                                 const scalar_t* __restrict__ m, scalar_t* __restrict__ dm, int64_t T, int64_t B,
                                 int64_t C, int64_t P, int64_t M) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= T * B * M * P) return;
  const int64_t p = n % P, mc = (n / P) % M, tb = n / (M * P), b = tb % B;
  const acc_t s = sigmoid_value<acc_t>(static_cast<acc_t>(m[n]));
  acc_t red = 0;
  const int64_t c_begin = M == 1 ? 0 : mc, c_end = M == 1 ? C : mc + 1;
  for (int64_t c = c_begin; c < c_end; ++c)
    red += static_cast<acc_t>(f[(b * C + c) * P + p]) * static_cast<acc_t>(g[(tb * C + c) * P + p]);
  dm[n] = static_cast<scalar_t>(sigmoid_grad_from_value(s) * red);
}

void check_cuda(const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), "sfa_apply (cuda backend): tensors must be on a CUDA device, got ", t.device());
}

at::Tensor sfa_apply_forward(const at::Tensor& features, const at::Tensor& mask_logits) {
  check_sfa_apply_args(features, mask_logits);
  check_cuda(features);
  const c10::cuda::CUDAGuard guard(features.device());
  const auto f = features.contiguous();
  const auto m = mask_logits.contiguous();
  const int64_t T = m.size(0), B = f.size(0), C = f.size(1), P = f.size(2) * f.size(3), M = m.size(2);
  auto out = at::empty({T, B, C, f.size(2), f.size(3)}, f.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "sfa_apply_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        f.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), T, B, C, P, M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sfa_apply_backward(const at::Tensor& grad_out, const at::Tensor& features,
                                                      const at::Tensor& mask_logits) {
  check_sfa_apply_args(features, mask_logits);
  check_cuda(features);
  const int64_t T = mask_logits.size(0), B = features.size(0), C = features.size(1);
  const int64_t h = features.size(2), w = features.size(3), P = h * w, M = mask_logits.size(2);
  TORCH_CHECK(grad_out.dim() == 5 && grad_out.size(0) == T && grad_out.size(1) == B && grad_out.size(2) == C &&
                  grad_out.size(3) == h && grad_out.size(4) == w && grad_out.scalar_type() == features.scalar_type() &&
                  grad_out.device() == features.device(),
              "sfa_apply_backward: grad_out must be (T, B, C, h, w) = (", T, ", ", B, ", ", C, ", ", h, ", ", w,
              ") in the dtype and on the device of features, got ", grad_out.sizes(), " ", grad_out.scalar_type());
  const c10::cuda::CUDAGuard guard(features.device());
  const auto f = features.contiguous();
  const auto m = mask_logits.contiguous();
  const auto g = grad_out.contiguous();
  auto df = at::empty_like(f);
  auto dm = at::empty_like(m);
  if (f.numel() == 0 || T == 0) return {df.zero_(), dm.zero_()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "sfa_apply_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto stream = at::cuda::getCurrentCUDAStream();
    features_grad_kernel<scalar_t, acc_t><<<blocks_for(df.numel()), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(), df.mutable_data_ptr<scalar_t>(), T, B, C, P, M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    mask_grad_kernel<scalar_t, acc_t><<<blocks_for(dm.numel()), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(), m.const_data_ptr<scalar_t>(),
        dm.mutable_data_ptr<scalar_t>(), T, B, C, P, M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {df, dm};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CUDA, m) {
  m.impl("sfa_apply_forward", &sfa_apply_forward);
  m.impl("sfa_apply_backward", &sfa_apply_backward);
}

}  // namespace mtl_ops::cuda
