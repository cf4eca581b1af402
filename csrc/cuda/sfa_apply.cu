// CUDA kernels of sfa_apply: out[t] = sigmoid(mask[t]) * features (csrc/common/sigmoid.h).
//   forward           one thread per pack of output elements.
//   backward features one thread per pack of feature elements, summing the T task terms (one pass, no atomics).
//   backward mask     one thread per pack of mask elements; a spatial mask (M = 1) sums f * g over the C channels.
// A pack is N consecutive pixels of one (row, channel) plane: N = 16 bytes' worth (128-bit loads and stores) when
// P = h*w is a multiple of N and every pointer is 16-byte aligned, else 1. The flat pack index is split into
// (plane, pixel) once per pack, in 32-bit integers whenever every tensor has at most 2^31 - 1 elements (64-bit
// otherwise), so the divisions cost a few instructions per N elements.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../common/sfa_apply_args.h"
#include "../common/sigmoid.h"
#include "vectorized.cuh"

namespace mtl_ops::cuda {
namespace {

constexpr int kThreads = 256;

// Blocks for one thread per pack (1-D grid: gridDim.x may reach 2^31 - 1).
unsigned blocks_for(int64_t packs) {
  const int64_t blocks = (packs + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "sfa_apply (cuda backend): ", packs,
              " packs of elements exceed the grid limit");
  return static_cast<unsigned>(blocks);
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls launch(std::integral_constant<int, N>{}, TypeTag<index_t>{}) with N = kVec or 1 and index_t = int32_t or
// int64_t.
template <int kVec, typename Launch>
void with_pack_and_index(bool vectorize, bool index32, const Launch& launch) {
  using I32 = TypeTag<int32_t>;
  using I64 = TypeTag<int64_t>;
  if (vectorize) {
    if (index32) launch(std::integral_constant<int, kVec>{}, I32{});
    else launch(std::integral_constant<int, kVec>{}, I64{});
  } else {
    if (index32) launch(std::integral_constant<int, 1>{}, I32{});
    else launch(std::integral_constant<int, 1>{}, I64{});
  }
}

bool fits_int32(int64_t numel) { return numel <= std::numeric_limits<int32_t>::max(); }

// out (T, B, C, P), f (B, C, P), m (T, B, M, P). Pack q covers pixels [p, p + N) of plane row = t*B*C + b*C + c.
template <int N, typename index_t, typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ f, const scalar_t* __restrict__ m,
                               scalar_t* __restrict__ out, index_t B, index_t C, index_t P, index_t M,
                               int64_t packs) {
  const int64_t q64 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q64 >= packs) return;
  const index_t q = static_cast<index_t>(q64), PN = P / N;
  const index_t row = q / PN, p = (q - row * PN) * N;
  const index_t tb = row / C, c = row - tb * C, b = tb % B;
  const Pack<scalar_t, N> mv = load_pack<N>(m + (tb * M + (M == 1 ? 0 : c)) * P + p);
  const Pack<scalar_t, N> fv = load_pack<N>(f + (b * C + c) * P + p);
  Pack<scalar_t, N> ov;
#pragma unroll
  for (int j = 0; j < N; ++j)
    ov.v[j] = static_cast<scalar_t>(sigmoid_value<acc_t>(static_cast<acc_t>(mv.v[j])) * static_cast<acc_t>(fv.v[j]));
  store_pack<N>(out + row * P + p, ov);
}

// df (B, C, P): pack q covers pixels [p, p + N) of plane row = b*C + c; sums over the T tasks.
template <int N, typename index_t, typename scalar_t, typename acc_t>
__global__ void features_grad_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ m,
                                     scalar_t* __restrict__ df, index_t T, index_t B, index_t C, index_t P, index_t M,
                                     int64_t packs) {
  const int64_t q64 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q64 >= packs) return;
  const index_t q = static_cast<index_t>(q64), PN = P / N;
  const index_t row = q / PN, p = (q - row * PN) * N;
  const index_t b = row / C, c = row - b * C;
  acc_t acc[N];
#pragma unroll
  for (int j = 0; j < N; ++j) acc[j] = acc_t(0);
  for (index_t t = 0; t < T; ++t) {
    const index_t tb = t * B + b;
    const Pack<scalar_t, N> mv = load_pack<N>(m + (tb * M + (M == 1 ? 0 : c)) * P + p);
    const Pack<scalar_t, N> gv = load_pack<N>(g + (tb * C + c) * P + p);
#pragma unroll
    for (int j = 0; j < N; ++j)
      acc[j] += sigmoid_value<acc_t>(static_cast<acc_t>(mv.v[j])) * static_cast<acc_t>(gv.v[j]);
  }
  Pack<scalar_t, N> dv;
#pragma unroll
  for (int j = 0; j < N; ++j) dv.v[j] = static_cast<scalar_t>(acc[j]);
  store_pack<N>(df + row * P + p, dv);
}

// dm (T, B, M, P): pack q covers pixels [p, p + N) of plane row = t*B*M + b*M + mc; a spatial mask (M = 1) sums
// over the C channels, a per-channel one reads its own channel.
template <int N, typename index_t, typename scalar_t, typename acc_t>
__global__ void mask_grad_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ f,
                                 const scalar_t* __restrict__ m, scalar_t* __restrict__ dm, index_t B, index_t C,
                                 index_t P, index_t M, int64_t packs) {
  const int64_t q64 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q64 >= packs) return;
  const index_t q = static_cast<index_t>(q64), PN = P / N;
  const index_t row = q / PN, p = (q - row * PN) * N;
  const index_t tb = row / M, mc = row - tb * M, b = tb % B;
  acc_t red[N];
#pragma unroll
  for (int j = 0; j < N; ++j) red[j] = acc_t(0);
  const index_t c_begin = M == 1 ? 0 : mc, c_end = M == 1 ? C : mc + 1;
  for (index_t c = c_begin; c < c_end; ++c) {
    const Pack<scalar_t, N> fv = load_pack<N>(f + (b * C + c) * P + p);
    const Pack<scalar_t, N> gv = load_pack<N>(g + (tb * C + c) * P + p);
#pragma unroll
    for (int j = 0; j < N; ++j) red[j] += static_cast<acc_t>(fv.v[j]) * static_cast<acc_t>(gv.v[j]);
  }
  const Pack<scalar_t, N> mv = load_pack<N>(m + row * P + p);
  Pack<scalar_t, N> dv;
#pragma unroll
  for (int j = 0; j < N; ++j)
    dv.v[j] = static_cast<scalar_t>(sigmoid_grad_from_value(sigmoid_value<acc_t>(static_cast<acc_t>(mv.v[j]))) * red[j]);
  store_pack<N>(dm + row * P + p, dv);
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
    constexpr int kVec = pack_width<scalar_t>();
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const auto stream = at::cuda::getCurrentCUDAStream();
    // out is the largest tensor: every index below is < out.numel()
    with_pack_and_index<kVec>(can_vectorize(P, kVec, {fp, mp, op}), fits_int32(out.numel()), [&](auto n, auto idx) {
      constexpr int N = decltype(n)::value;
      using index_t = typename decltype(idx)::type;
      const int64_t packs = out.numel() / N;
      forward_kernel<N, index_t, scalar_t, acc_t><<<blocks_for(packs), kThreads, 0, stream>>>(
          fp, mp, op, index_t(B), index_t(C), index_t(P), index_t(M), packs);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
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
    constexpr int kVec = pack_width<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    scalar_t* dfp = df.mutable_data_ptr<scalar_t>();
    scalar_t* dmp = dm.mutable_data_ptr<scalar_t>();
    const auto stream = at::cuda::getCurrentCUDAStream();
    // g is the largest tensor: every index below is < g.numel()
    with_pack_and_index<kVec>(can_vectorize(P, kVec, {gp, fp, mp, dfp, dmp}), fits_int32(g.numel()),
                              [&](auto n, auto idx) {
      constexpr int N = decltype(n)::value;
      using index_t = typename decltype(idx)::type;
      const int64_t f_packs = df.numel() / N, m_packs = dm.numel() / N;
      features_grad_kernel<N, index_t, scalar_t, acc_t><<<blocks_for(f_packs), kThreads, 0, stream>>>(
          gp, mp, dfp, index_t(T), index_t(B), index_t(C), index_t(P), index_t(M), f_packs);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      mask_grad_kernel<N, index_t, scalar_t, acc_t><<<blocks_for(m_packs), kThreads, 0, stream>>>(
          gp, fp, mp, dmp, index_t(B), index_t(C), index_t(P), index_t(M), m_packs);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {df, dm};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CUDA, m) {
  m.impl("sfa_apply_forward", &sfa_apply_forward);
  m.impl("sfa_apply_backward", &sfa_apply_backward);
}

}  // namespace mtl_ops::cuda
