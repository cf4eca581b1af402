// CPU kernels of gated_residual: one fused pass forward, one fused pass backward with the gate reduction.
#include "gated_residual.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/gated_residual_args.h"
#include "../common/task_major.h"
#include "chunking.h"
#include "../common/gated_residual_math.h"

namespace mtl_ops::cpu {
namespace {

// Each work item is one plain loop over restrict pointers that reads the inputs and writes the outputs
// directly (the compiler vectorises it; `omp simd` lets it reassociate the two gate-gradient sums). Half and
// bfloat16 are widened to float element by element. Outputs are written with ordinary stores: the large
// outputs this op produces are fresh mappings whose pages the OS has just zeroed into the cache on first
// touch, so non-temporal stores (tried before) only forced those lines out again and were slower, as was
// staging each tile in a stack buffer.
template <typename scalar_t, typename acc_t>
void forward_run(const scalar_t* __restrict__ r, const scalar_t* __restrict__ b, scalar_t* __restrict__ y,
                 int64_t n, acc_t ge, acc_t gs) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    y[i] = static_cast<scalar_t>(
        gated_residual_forward_value<acc_t>(static_cast<acc_t>(r[i]), static_cast<acc_t>(b[i]), ge, gs));
  }
}

// Writes d_residual and d_branch for n elements and returns the two gate-gradient partial sums.
template <typename scalar_t, typename acc_t>
std::pair<acc_t, acc_t> backward_run(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ r,
                                     const scalar_t* __restrict__ b, scalar_t* __restrict__ dr,
                                     scalar_t* __restrict__ db, int64_t n, acc_t ge, acc_t gs) {
  acc_t sum_exec = 0, sum_skip = 0;
#pragma omp simd reduction(+ : sum_exec, sum_skip)
  for (int64_t i = 0; i < n; ++i) {
    const auto g = gated_residual_backward_value<acc_t>(static_cast<acc_t>(dy[i]), static_cast<acc_t>(r[i]),
                                                        static_cast<acc_t>(b[i]), ge, gs);
    dr[i] = static_cast<scalar_t>(g.d_residual);
    db[i] = static_cast<scalar_t>(g.d_branch);
    sum_exec += g.g_exec_term;
    sum_skip += g.g_skip_term;
  }
  return {sum_exec, sum_skip};
}

}  // namespace

at::Tensor gated_residual_forward(const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& gates) {
  check_gated_residual_args(residual, branch, gates);
  TORCH_CHECK(residual.device().is_cpu(), "gated_residual (cpp backend): tensors must be on the CPU, got ",
              residual.device());
  auto [r, b] = task_major_pair(residual, branch);
  auto y = at::empty_like(r);
  if (r.numel() == 0) return y;
  const int64_t T = r.size(0);
  const TaskChunks chunks(r.numel() / T);
  const auto g = gates.to(accumulate_type_of(r.scalar_type())).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "gated_residual_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const acc_t* gp = g.const_data_ptr<acc_t>();
    at::parallel_for(0, T * chunks.per_task, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t t = chunks.task(item), off = chunks.begin(item);
        forward_run<scalar_t, acc_t>(rp + off, bp + off, yp + off, chunks.length(item), gp[2 * t], gp[2 * t + 1]);
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gated_residual_backward(const at::Tensor& grad_out,
                                                                       const at::Tensor& residual,
                                                                       const at::Tensor& branch,
                                                                       const at::Tensor& gates) {
  check_gated_residual_backward_args(grad_out, residual, branch, gates);
  TORCH_CHECK(residual.device().is_cpu(), "gated_residual (cpp backend): tensors must be on the CPU, got ",
              residual.device());
  auto [r, b] = task_major_pair(residual, branch);
  const auto dy = with_layout_of(grad_out, r);
  auto dr = at::empty_like(r);
  auto db = at::empty_like(r);
  const auto acc_dtype = accumulate_type_of(r.scalar_type());
  if (r.numel() == 0) return {dr, db, at::zeros({gates.size(0), 2}, gates.options())};
  const int64_t T = r.size(0);
  const TaskChunks chunks(r.numel() / T);
  const auto g = gates.to(acc_dtype).contiguous();
  auto partials = at::empty({T, chunks.per_task, 2}, gates.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, r.scalar_type(), "gated_residual_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* drp = dr.mutable_data_ptr<scalar_t>();
    scalar_t* dbp = db.mutable_data_ptr<scalar_t>();
    const acc_t* gp = g.const_data_ptr<acc_t>();
    acc_t* pp = partials.mutable_data_ptr<acc_t>();
    at::parallel_for(0, T * chunks.per_task, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t t = chunks.task(item), off = chunks.begin(item);
        const auto [s_exec, s_skip] =
            backward_run<scalar_t, acc_t>(dyp + off, rp + off, bp + off, drp + off, dbp + off, chunks.length(item),
                                          gp[2 * t], gp[2 * t + 1]);
        pp[2 * item] = s_exec;
        pp[2 * item + 1] = s_skip;
      }
    });
  });
  return {dr, db, partials.sum(1).to(gates.scalar_type())};
}

TORCH_LIBRARY_IMPL(mtl_ops, CPU, m) {
  m.impl("gated_residual_forward", &gated_residual_forward);
  m.impl("gated_residual_backward", &gated_residual_backward);
}

}  // namespace mtl_ops::cpu
