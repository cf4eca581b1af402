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
#include "streaming_store.h"
#include "../common/gated_residual_math.h"

namespace mtl_ops::cpu {
namespace {

// Each run is processed in tiles: a plain loop over restrict pointers computes a tile into an aligned stack
// buffer (the compiler vectorises it; `omp simd` lets it reassociate the two gate-gradient sums), then the
// tile is stored, with streaming stores when the output is too large for the cache. Half and bfloat16 are
// widened to float element by element.
constexpr int64_t kTile = 1024;

template <typename scalar_t, typename acc_t>
void forward_run(const scalar_t* __restrict__ r, const scalar_t* __restrict__ b, scalar_t* __restrict__ y,
                 int64_t n, acc_t ge, acc_t gs, bool streaming) {
  alignas(64) scalar_t tile[kTile];
  for (int64_t start = 0; start < n; start += kTile) {
    const int64_t len = std::min(kTile, n - start);
    const scalar_t* __restrict__ rt = r + start;
    const scalar_t* __restrict__ bt = b + start;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      tile[i] = static_cast<scalar_t>(
          gated_residual_forward_value<acc_t>(static_cast<acc_t>(rt[i]), static_cast<acc_t>(bt[i]), ge, gs));
    }
    store_tile(y + start, tile, len * int64_t(sizeof(scalar_t)), streaming);
  }
}

// Writes d_residual and d_branch for n elements and returns the two gate-gradient partial sums.
template <typename scalar_t, typename acc_t>
std::pair<acc_t, acc_t> backward_run(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ r,
                                     const scalar_t* __restrict__ b, scalar_t* __restrict__ dr,
                                     scalar_t* __restrict__ db, int64_t n, acc_t ge, acc_t gs, bool streaming) {
  alignas(64) scalar_t tile_dr[kTile];
  alignas(64) scalar_t tile_db[kTile];
  acc_t sum_exec = 0, sum_skip = 0;
  for (int64_t start = 0; start < n; start += kTile) {
    const int64_t len = std::min(kTile, n - start);
    const scalar_t* __restrict__ dyt = dy + start;
    const scalar_t* __restrict__ rt = r + start;
    const scalar_t* __restrict__ bt = b + start;
#pragma omp simd reduction(+ : sum_exec, sum_skip)
    for (int64_t i = 0; i < len; ++i) {
      const auto g = gated_residual_backward_value<acc_t>(static_cast<acc_t>(dyt[i]), static_cast<acc_t>(rt[i]),
                                                          static_cast<acc_t>(bt[i]), ge, gs);
      tile_dr[i] = static_cast<scalar_t>(g.d_residual);
      tile_db[i] = static_cast<scalar_t>(g.d_branch);
      sum_exec += g.g_exec_term;
      sum_skip += g.g_skip_term;
    }
    store_tile(dr + start, tile_dr, len * int64_t(sizeof(scalar_t)), streaming);
    store_tile(db + start, tile_db, len * int64_t(sizeof(scalar_t)), streaming);
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
    const bool streaming = y.nbytes() > kStreamingThresholdBytes;
    at::parallel_for(0, T * chunks.per_task, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t t = chunks.task(item), off = chunks.begin(item);
        forward_run<scalar_t, acc_t>(rp + off, bp + off, yp + off, chunks.length(item), gp[2 * t], gp[2 * t + 1],
                                     streaming);
      }
      streaming_fence();
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
    const bool streaming = 2 * dr.nbytes() > kStreamingThresholdBytes;
    at::parallel_for(0, T * chunks.per_task, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t t = chunks.task(item), off = chunks.begin(item);
        const auto [s_exec, s_skip] =
            backward_run<scalar_t, acc_t>(dyp + off, rp + off, bp + off, drp + off, dbp + off, chunks.length(item),
                                          gp[2 * t], gp[2 * t + 1], streaming);
        pp[2 * item] = s_exec;
        pp[2 * item + 1] = s_skip;
      }
      streaming_fence();
    });
  });
  return {dr, db, partials.sum(1).to(gates.scalar_type())};
}

TORCH_LIBRARY_IMPL(mtl_ops, CPU, m) {
  m.impl("gated_residual_forward", &gated_residual_forward);
  m.impl("gated_residual_backward", &gated_residual_backward);
}

}  // namespace mtl_ops::cpu
