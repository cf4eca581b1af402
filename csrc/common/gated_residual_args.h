// Argument checks of gated_residual, shared by the CPU and CUDA entry points. mtl_ops/ops/gated_residual.py
// runs the same checks in Python before any backend (so the reference and Triton paths say the same).
#pragma once
#include <ATen/ATen.h>

#include "accumulate_type.h"

namespace mtl_ops {

inline void check_gated_residual_args(const at::Tensor& residual, const at::Tensor& branch,
                                      const at::Tensor& gates) {
  TORCH_CHECK(residual.dim() >= 1, "gated_residual: residual must have a leading task dimension T, got a 0-d tensor");
  TORCH_CHECK(branch.sizes() == residual.sizes(), "gated_residual: branch must have the shape of residual ",
              residual.sizes(), ", got ", branch.sizes());
  TORCH_CHECK(gates.dim() == 2 && gates.size(0) == residual.size(0) && gates.size(1) == 2,
              "gated_residual: gates must have shape (T, 2) = (", residual.size(0), ", 2), got ", gates.sizes());
  const auto dt = residual.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "gated_residual: residual must be float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK(branch.scalar_type() == dt, "gated_residual: branch must have the dtype of residual (", dt,
              "), got ", branch.scalar_type());
  TORCH_CHECK(gates.scalar_type() == dt || gates.scalar_type() == at::kFloat,
              "gated_residual: gates must be float32 or the dtype of residual (", dt, "), got ",
              gates.scalar_type());
  TORCH_CHECK(branch.device() == residual.device() && gates.device() == residual.device(),
              "gated_residual: residual, branch and gates must be on one device, got ", residual.device(), ", ",
              branch.device(), " and ", gates.device());
}

// The backward's extra argument: grad_out must match residual.
inline void check_gated_residual_backward_args(const at::Tensor& grad_out, const at::Tensor& residual,
                                               const at::Tensor& branch, const at::Tensor& gates) {
  check_gated_residual_args(residual, branch, gates);
  TORCH_CHECK(grad_out.sizes() == residual.sizes() && grad_out.scalar_type() == residual.scalar_type() &&
                  grad_out.device() == residual.device(),
              "gated_residual_backward: grad_out must match residual in shape, dtype and device");
}

}  // namespace mtl_ops
