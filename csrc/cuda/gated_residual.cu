// CUDA kernels of gated_residual. Grid: (blocks over one task's elements, min(T, 65535)); a block loops over
// the tasks blockIdx.y, blockIdx.y + gridDim.y, ... (any T). Each thread handles packs of N elements: N = 16
// bytes' worth (one 128-bit load / store per tensor) when the pointers are 16-byte aligned and the per-task
// length is a multiple of N, else N = 1. The backward writes one gate-gradient partial per (task, block) and
// sums them afterwards: deterministic, no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../common/gated_residual_args.h"
#include "../common/gated_residual_math.h"
#include "../common/task_major.h"
#include "block_reduce.cuh"
#include "vectorized.cuh"

namespace mtl_ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocksPerTask = 1024;
constexpr int64_t kMaxGridY = 65535;  // gridDim.y limit: more tasks are looped over

int64_t blocks_per_task(int64_t packs) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxBlocksPerTask, (packs + kThreads * 4 - 1) / (kThreads * 4)));
}

dim3 grid_for(int64_t T, int64_t packs) {
  return dim3(static_cast<unsigned>(blocks_per_task(packs)), static_cast<unsigned>(std::min(T, kMaxGridY)));
}

template <int N, typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ r, const scalar_t* __restrict__ b,
                               const acc_t* __restrict__ gates, scalar_t* __restrict__ y, int64_t T,
                               int64_t inner) {
  const int64_t packs = inner / N;  // inner % N == 0
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    const acc_t ge = gates[2 * t], gs = gates[2 * t + 1];
    const int64_t base = t * inner;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < packs; i += int64_t(gridDim.x) * blockDim.x) {
      const int64_t e = base + i * N;
      const Pack<scalar_t, N> rv = load_pack<N>(r + e), bv = load_pack<N>(b + e);
      Pack<scalar_t, N> yv;
#pragma unroll
      for (int j = 0; j < N; ++j)
        yv.v[j] = static_cast<scalar_t>(gated_residual_forward_value<acc_t>(
            static_cast<acc_t>(rv.v[j]), static_cast<acc_t>(bv.v[j]), ge, gs));
      store_pack<N>(y + e, yv);
    }
  }
}

template <int N, typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ r,
                                const scalar_t* __restrict__ b, const acc_t* __restrict__ gates,
                                scalar_t* __restrict__ dr, scalar_t* __restrict__ db, acc_t* __restrict__ partials,
                                int64_t T, int64_t inner) {
  const int64_t packs = inner / N;  // inner % N == 0
  for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
    const acc_t ge = gates[2 * t], gs = gates[2 * t + 1];
    const int64_t base = t * inner;
    acc_t sum_exec = 0, sum_skip = 0;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < packs; i += int64_t(gridDim.x) * blockDim.x) {
      const int64_t e = base + i * N;
      const Pack<scalar_t, N> dyv = load_pack<N>(dy + e), rv = load_pack<N>(r + e), bv = load_pack<N>(b + e);
      Pack<scalar_t, N> drv, dbv;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const auto g = gated_residual_backward_value<acc_t>(static_cast<acc_t>(dyv.v[j]), static_cast<acc_t>(rv.v[j]),
                                                            static_cast<acc_t>(bv.v[j]), ge, gs);
        drv.v[j] = static_cast<scalar_t>(g.d_residual);
        dbv.v[j] = static_cast<scalar_t>(g.d_branch);
        sum_exec += g.g_exec_term;
        sum_skip += g.g_skip_term;
      }
      store_pack<N>(dr + e, drv);
      store_pack<N>(db + e, dbv);
    }
    block_sum2(sum_exec, sum_skip);  // once per task of this block: block_sum2 is safe to call repeatedly
    if (threadIdx.x == 0) {
      const int64_t slot = (t * gridDim.x + blockIdx.x) * 2;
      partials[slot] = sum_exec;
      partials[slot + 1] = sum_skip;
    }
  }
}

void check_cuda(const at::Tensor& residual) {
  TORCH_CHECK(residual.is_cuda(), "gated_residual (cuda backend): tensors must be on a CUDA device, got ",
              residual.device());
}

at::Tensor gated_residual_forward(const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& gates) {
  check_gated_residual_args(residual, branch, gates);
  check_cuda(residual);
  const c10::cuda::CUDAGuard guard(residual.device());
  auto [r, b] = task_major_pair(residual, branch);
  auto y = at::empty_like(r);
  if (r.numel() == 0) return y;
  const int64_t T = r.size(0), inner = r.numel() / T;
  const auto g = gates.to(accumulate_type_of(r.scalar_type())).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "gated_residual_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = pack_width<scalar_t>();
    const auto stream = at::cuda::getCurrentCUDAStream();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (can_vectorize(inner, kVec, {rp, bp, yp})) {
      forward_kernel<kVec, scalar_t, acc_t><<<grid_for(T, inner / kVec), kThreads, 0, stream>>>(
          rp, bp, g.const_data_ptr<acc_t>(), yp, T, inner);
    } else {
      forward_kernel<1, scalar_t, acc_t><<<grid_for(T, inner), kThreads, 0, stream>>>(
          rp, bp, g.const_data_ptr<acc_t>(), yp, T, inner);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gated_residual_backward(const at::Tensor& grad_out,
                                                                       const at::Tensor& residual,
                                                                       const at::Tensor& branch,
                                                                       const at::Tensor& gates) {
  check_gated_residual_backward_args(grad_out, residual, branch, gates);
  check_cuda(residual);
  const c10::cuda::CUDAGuard guard(residual.device());
  auto [r, b] = task_major_pair(residual, branch);
  const auto dy = with_layout_of(grad_out, r);
  auto dr = at::empty_like(r);
  auto db = at::empty_like(r);
  if (r.numel() == 0) return {dr, db, at::zeros({gates.size(0), 2}, gates.options())};
  const auto acc_dtype = accumulate_type_of(r.scalar_type());
  const int64_t T = r.size(0), inner = r.numel() / T;
  const auto g = gates.to(acc_dtype).contiguous();
  at::Tensor partials;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "gated_residual_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = pack_width<scalar_t>();
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* drp = dr.mutable_data_ptr<scalar_t>();
    scalar_t* dbp = db.mutable_data_ptr<scalar_t>();
    const bool vec = can_vectorize(inner, kVec, {dyp, rp, bp, drp, dbp});
    const dim3 grid = grid_for(T, vec ? inner / kVec : inner);
    partials = at::empty({T, int64_t(grid.x), 2}, gates.options().dtype(acc_dtype));
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (vec) {
      backward_kernel<kVec, scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          dyp, rp, bp, g.const_data_ptr<acc_t>(), drp, dbp, partials.mutable_data_ptr<acc_t>(), T, inner);
    } else {
      backward_kernel<1, scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          dyp, rp, bp, g.const_data_ptr<acc_t>(), drp, dbp, partials.mutable_data_ptr<acc_t>(), T, inner);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dr, db, partials.sum(1).to(gates.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CUDA, m) {
  m.impl("gated_residual_forward", &gated_residual_forward);
  m.impl("gated_residual_backward", &gated_residual_backward);
}

}  // namespace mtl_ops::cuda
