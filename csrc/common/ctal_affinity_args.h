// Argument checks and geometry of ctal_affinity, shared by the CPU and CUDA entry points. The Python layer makes
// the same checks (same exception types and messages) only for the reference and Triton backends and its fake
// kernels; tests/op_suite.py checks that both say the same.
#pragma once
#include <ATen/ATen.h>

#include <vector>

#include "accumulate_type.h"
#include "macros.h"
#include "py_format.h"

namespace mtl_ops {

inline void check_ctal_affinity_args(const at::Tensor& x, const at::Tensor& v, const at::Tensor& weight,
                                     const at::Tensor& bias) {
  TORCH_CHECK_VALUE(x.dim() == 5, "ctal_affinity: x must have shape (B, T, C, H, W), got ", py_shape(x.sizes()));
  TORCH_CHECK_VALUE(v.sizes() == x.sizes(), "ctal_affinity: v must have the shape of x ", py_shape(x.sizes()),
                    ", got ", py_shape(v.sizes()));
  const int64_t T = x.size(1), N = x.size(3) * x.size(4);
  TORCH_CHECK_VALUE(N > 0, "ctal_affinity: x must have H, W >= 1, got shape ", py_shape(x.sizes()));
  TORCH_CHECK_VALUE(weight.dim() == 4 || weight.dim() == 5,
                    "ctal_affinity: weight must have shape (N, T, k, k) or (T, N, T, k, k) with N = H*W = ", N,
                    ", T = ", T, ", got ", py_shape(weight.sizes()));
  const bool per_task = weight.dim() == 5;
  const int64_t k = weight.size(-1);
  const bool shape_ok = per_task ? (weight.size(0) == T && weight.size(1) == N && weight.size(2) == T &&
                                    weight.size(3) == k)
                                 : (weight.size(0) == N && weight.size(1) == T && weight.size(2) == k);
  TORCH_CHECK_VALUE(shape_ok, "ctal_affinity: weight must have shape ", per_task ? "(T, N, T, k, k)" : "(N, T, k, k)",
                    " with N = H*W = ", N, ", T = ", T, ", got ", py_shape(weight.sizes()));
  TORCH_CHECK_VALUE(k >= 1 && k % 2 == 1, "ctal_affinity: the kernel size k must be odd, got k = ", k);
  const std::vector<int64_t> want_bias = per_task ? std::vector<int64_t>{T, N} : std::vector<int64_t>{N};
  TORCH_CHECK_VALUE(bias.sizes() == at::IntArrayRef(want_bias), "ctal_affinity: bias must have shape ",
                    py_shape(want_bias), " for ", per_task ? "per-task" : "shared", " weight, got ",
                    py_shape(bias.sizes()));
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(is_fused_floating(dt), "ctal_affinity: x must be float32, float64, float16 or bfloat16, got ",
                   py_dtype(dt));
  TORCH_CHECK_TYPE(v.scalar_type() == dt, "ctal_affinity: v must have the dtype of x (", py_dtype(dt), "), got ",
                   py_dtype(v.scalar_type()));
  TORCH_CHECK_TYPE(weight.scalar_type() == dt || weight.scalar_type() == at::kFloat,
                   "ctal_affinity: weight must be float32 or the dtype of x (", py_dtype(dt), "), got ",
                   py_dtype(weight.scalar_type()));
  TORCH_CHECK_TYPE(bias.scalar_type() == weight.scalar_type(), "ctal_affinity: bias must have the dtype of weight (",
                   py_dtype(weight.scalar_type()), "), got ", py_dtype(bias.scalar_type()));
  TORCH_CHECK_VALUE(v.device() == x.device() && weight.device() == x.device() && bias.device() == x.device(),
                    "ctal_affinity: x, v, weight and bias must be on one device, got ", x.device(), ", ", v.device(),
                    ", ", weight.device(), " and ", bias.device());
}

// The grid of the reassociated kernels. Features are zero-padded by p = k/2 on every side of the H x W grid
// (row pitch Wp); a tap (ky, kx) is a flat offset on that padded grid, and every pixel pair that a tap
// relates lies in the contiguous range [first, first + span) shifted by at most |offset| (see
// ctal_affinity_reassoc.h).
struct CtalGeometry {
  int64_t B, T, C, H, W, N, k, taps, p, Hp, Wp, Npad, first, span, Tw;
  bool per_task;

  CtalGeometry(const at::Tensor& x, const at::Tensor& weight)
      : B(x.size(0)), T(x.size(1)), C(x.size(2)), H(x.size(3)), W(x.size(4)), N(H * W), k(weight.size(-1)),
        taps(k * k), p(k / 2), Hp(H + 2 * p), Wp(W + 2 * p), Npad(Hp * Wp), first(p * Wp + p),
        span((H - 1) * Wp + W), Tw(weight.dim() == 5 ? x.size(1) : 1), per_task(weight.dim() == 5) {}

  // Flat offset of tap (ky, kx) on the padded grid: key pixel (y + ky - p, x + kx - p) of query (y, x).
  int64_t offset(int64_t tap) const { return (tap / k - p) * Wp + (tap % k - p); }
};

}  // namespace mtl_ops
