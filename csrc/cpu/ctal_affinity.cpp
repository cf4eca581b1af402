// CPU kernels of ctal_affinity: the exact reassociation of csrc/common/ctal_affinity_reassoc.h (GEMMs over
// views of the zero-padded features; nothing with N x N elements), one operator forward, one backward.
// allow_tf32: see csrc/common/fp32_matmul_precision.h (false: exact fp32 GEMMs whatever the global setting).
// C++ callers reach these through the dispatcher (torch::ops / c10::Dispatcher), as Python does.
#include <ATen/ATen.h>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/ctal_affinity_args.h"
#include "../common/ctal_affinity_reassoc.h"

namespace mtl_ops::cpu {
namespace {

constexpr int64_t kPixelChunk = 1024;

// dw[i] += sum_rows q*f and d[i] += q*w for one row of len pixels (the compiler vectorises it).
template <typename scalar_t>
void tap_reduce_row(const scalar_t* __restrict__ q, const scalar_t* __restrict__ f, const scalar_t* __restrict__ w,
                    scalar_t* __restrict__ acc, scalar_t* __restrict__ d, int64_t len) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    acc[i] += q[i] * f[i];
    d[i] += q[i] * w[i];
  }
}

template <typename scalar_t>
void tap_reduce_typed(const at::Tensor& dQ, const at::Tensor& f, const at::Tensor& w_tap, at::Tensor& dw_tap,
                      at::Tensor& dF) {
  const int64_t B = dQ.size(0), T = dQ.size(1), C = dQ.size(2), N = dQ.size(3);
  const int64_t chunks = (N + kPixelChunk - 1) / kPixelChunk;
  const scalar_t* q = dQ.const_data_ptr<scalar_t>();
  const scalar_t* fp = f.const_data_ptr<scalar_t>();
  const scalar_t* wp = w_tap.const_data_ptr<scalar_t>();
  scalar_t* dwp = dw_tap.mutable_data_ptr<scalar_t>();
  scalar_t* dfp = dF.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, T * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> acc(kPixelChunk);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / chunks, i0 = (item % chunks) * kPixelChunk;
      const int64_t len = std::min(kPixelChunk, N - i0);
      std::fill(acc.begin(), acc.begin() + len, scalar_t(0));
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t c = 0; c < C; ++c) {
          const int64_t off = ((b * T + t) * C + c) * N + i0;
          tap_reduce_row<scalar_t>(q + off, fp + off, wp + t * N + i0, acc.data(), dfp + off, len);
        }
      }
      std::copy(acc.begin(), acc.begin() + len, dwp + t * N + i0);
    }
  });
}

// One pass over dQ for the tap's weight gradient and the query-side feature gradient (ctal::TapReduceFn).
// Work items are (task t', chunk of pixels); each sums over (b, c) in a fixed order: deterministic.
void tap_reduce_fused(const at::Tensor& dQ, const at::Tensor& f, const at::Tensor& w_tap, at::Tensor& dw_tap,
                      at::Tensor& dF) {
  AT_DISPATCH_FLOATING_TYPES(dQ.scalar_type(), "ctal_tap_reduce_cpu",
                             [&] { tap_reduce_typed<scalar_t>(dQ, f, w_tap, dw_tap, dF); });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ctal_affinity_forward(const at::Tensor& x, const at::Tensor& v,
                                                         const at::Tensor& weight, const at::Tensor& bias,
                                                         double gamma, bool allow_tf32) {
  check_ctal_affinity_args(x, v, weight, bias);
  TORCH_CHECK(x.device().is_cpu(), "ctal_affinity (cpp backend): tensors must be on the CPU, got ", x.device());
  return ctal::forward(x, v, weight, bias, gamma, allow_tf32);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ctal_affinity_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& v, const at::Tensor& weight,
    const at::Tensor& bias, double gamma, const at::Tensor& gram, bool allow_tf32) {
  check_ctal_affinity_args(x, v, weight, bias);
  TORCH_CHECK(x.device().is_cpu(), "ctal_affinity (cpp backend): tensors must be on the CPU, got ", x.device());
  return ctal::backward(grad_out, x, v, weight, bias, gamma, gram, allow_tf32, &tap_reduce_fused);
}

TORCH_LIBRARY_IMPL(mtl_ops, CPU, m) {
  m.impl("ctal_affinity_forward", &ctal_affinity_forward);
  m.impl("ctal_affinity_backward", &ctal_affinity_backward);
}

}  // namespace mtl_ops::cpu
