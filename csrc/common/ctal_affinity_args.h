// Argument checks and geometry of ctal_affinity, shared by the CPU and CUDA entry points.
// mtl_ops/ops/ctal_affinity.py runs the same checks in Python before any backend.
#pragma once
#include <ATen/ATen.h>

#include "macros.h"

namespace mtl_ops {

inline bool ctal_is_floating(at::ScalarType dt) {
  return dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16;
}

inline void check_ctal_affinity_args(const at::Tensor& x, const at::Tensor& v, const at::Tensor& weight,
                                     const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 5, "ctal_affinity: x must have shape (B, T, C, H, W), got ", x.sizes());
  TORCH_CHECK(v.sizes() == x.sizes(), "ctal_affinity: v must have the shape of x ", x.sizes(), ", got ", v.sizes());
  const int64_t T = x.size(1), N = x.size(3) * x.size(4);
  TORCH_CHECK(ctal_is_floating(x.scalar_type()), "ctal_affinity: x must be float32, float64, float16 or bfloat16, got ",
              x.scalar_type());
  TORCH_CHECK(v.scalar_type() == x.scalar_type(), "ctal_affinity: v must have the dtype of x (", x.scalar_type(),
              "), got ", v.scalar_type());
  TORCH_CHECK(weight.dim() == 4 || weight.dim() == 5,
              "ctal_affinity: weight must have shape (N, T, k, k) or (T, N, T, k, k) with N = H*W = ", N,
              ", T = ", T, ", got ", weight.sizes());
  const bool per_task = weight.dim() == 5;
  const int64_t k = weight.size(-1);
  const bool shape_ok = per_task ? (weight.size(0) == T && weight.size(1) == N && weight.size(2) == T &&
                                    weight.size(3) == k)
                                 : (weight.size(0) == N && weight.size(1) == T && weight.size(2) == k);
  TORCH_CHECK(shape_ok, "ctal_affinity: weight must have shape ", per_task ? "(T, N, T, k, k)" : "(N, T, k, k)",
              " with N = H*W = ", N, ", T = ", T, ", got ", weight.sizes());
  TORCH_CHECK(k >= 1 && k % 2 == 1, "ctal_affinity: the kernel size k must be odd, got k = ", k);
  if (per_task) {
    TORCH_CHECK(bias.dim() == 2 && bias.size(0) == T && bias.size(1) == N,
                "ctal_affinity: bias must have shape (T, N) = (", T, ", ", N, ") for per-task weight, got ",
                bias.sizes());
  } else {
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == N, "ctal_affinity: bias must have shape (N,) = (", N,
                ",) for shared weight, got ", bias.sizes());
  }
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() || weight.scalar_type() == at::kFloat,
              "ctal_affinity: weight must be float32 or the dtype of x (", x.scalar_type(), "), got ",
              weight.scalar_type());
  TORCH_CHECK(bias.scalar_type() == weight.scalar_type(), "ctal_affinity: bias must have the dtype of weight (",
              weight.scalar_type(), "), got ", bias.scalar_type());
  TORCH_CHECK(v.device() == x.device() && weight.device() == x.device() && bias.device() == x.device(),
              "ctal_affinity: x, v, weight and bias must be on one device, got ", x.device(), ", ", v.device(), ", ",
              weight.device(), " and ", bias.device());
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

// The accumulation dtype: fp64 for fp64 inputs, fp32 otherwise.
inline at::ScalarType ctal_accumulate_type(at::ScalarType dt) { return dt == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace mtl_ops
