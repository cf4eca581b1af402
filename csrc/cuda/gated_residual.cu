// CUDA kernels of gated_residual. Grid: (blocks over one task's elements, T). The backward writes one
// gate-gradient partial per block and sums them afterwards: deterministic, no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../common/gated_residual_args.h"
#include "../common/gated_residual_math.h"
#include "../common/task_major.h"
#include "block_reduce.cuh"

namespace mtl_ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocksPerTask = 1024;
constexpr int64_t kMaxTasks = 65535;  // gridDim.y

int64_t blocks_per_task(int64_t inner) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxBlocksPerTask, (inner + kThreads * 4 - 1) / (kThreads * 4)));
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ r, const scalar_t* __restrict__ b,
                               const acc_t* __restrict__ gates, scalar_t* __restrict__ y, int64_t inner) {
  const int64_t t = blockIdx.y;
  const acc_t ge = gates[2 * t], gs = gates[2 * t + 1];
  const int64_t base = t * inner;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < inner; i += int64_t(gridDim.x) * blockDim.x) {
    y[base + i] = static_cast<scalar_t>(gated_residual_forward_value<acc_t>(
        static_cast<acc_t>(r[base + i]), static_cast<acc_t>(b[base + i]), ge, gs));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ r,
                                const scalar_t* __restrict__ b, const acc_t* __restrict__ gates,
                                scalar_t* __restrict__ dr, scalar_t* __restrict__ db, acc_t* __restrict__ partials,
                                int64_t inner) {
  const int64_t t = blockIdx.y;
  const acc_t ge = gates[2 * t], gs = gates[2 * t + 1];
  const int64_t base = t * inner;
  acc_t sum_exec = 0, sum_skip = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < inner; i += int64_t(gridDim.x) * blockDim.x) {
    const auto g = gated_residual_backward_value<acc_t>(static_cast<acc_t>(dy[base + i]),
                                                        static_cast<acc_t>(r[base + i]),
                                                        static_cast<acc_t>(b[base + i]), ge, gs);
    dr[base + i] = static_cast<scalar_t>(g.d_residual);
    db[base + i] = static_cast<scalar_t>(g.d_branch);
    sum_exec += g.g_exec_term;
    sum_skip += g.g_skip_term;
  }
  block_sum2(sum_exec, sum_skip);
  if (threadIdx.x == 0) {
    const int64_t slot = (t * gridDim.x + blockIdx.x) * 2;
    partials[slot] = sum_exec;
    partials[slot + 1] = sum_skip;
  }
}

void check_cuda(const at::Tensor& residual) {
  TORCH_CHECK(residual.is_cuda(), "gated_residual (cuda backend): tensors must be on a CUDA device, got ",
              residual.device());
  TORCH_CHECK(residual.size(0) <= kMaxTasks, "gated_residual (cuda backend): at most ", kMaxTasks,
              " tasks, got T = ", residual.size(0));
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
  const dim3 grid(blocks_per_task(inner), T);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "gated_residual_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        r.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), g.const_data_ptr<acc_t>(),
        y.mutable_data_ptr<scalar_t>(), inner);
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
  const dim3 grid(blocks_per_task(inner), T);
  auto partials = at::empty({T, int64_t(grid.x), 2}, gates.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "gated_residual_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    backward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        dy.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        g.const_data_ptr<acc_t>(), dr.mutable_data_ptr<scalar_t>(), db.mutable_data_ptr<scalar_t>(),
        partials.mutable_data_ptr<acc_t>(), inner);
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
