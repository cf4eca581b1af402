// Argument checks of gated_residual, shared by the CPU and CUDA entry points. The Python layer makes the same
// checks (same exception types and messages) only for the reference and Triton backends and its fake kernels;
// tests/op_suite.py checks that both say the same.
#pragma once
#include <ATen/ATen.h>

#include "accumulate_type.h"
#include "py_format.h"

namespace mtl_ops {

inline void check_gated_residual_args(const at::Tensor& residual, const at::Tensor& branch,
                                      const at::Tensor& gates) {
  TORCH_CHECK_VALUE(residual.dim() >= 1,
                    "gated_residual: residual must have a leading task dimension T, got a 0-d tensor");
  TORCH_CHECK_VALUE(branch.sizes() == residual.sizes(), "gated_residual: branch must have the shape of residual ",
                    py_shape(residual.sizes()), ", got ", py_shape(branch.sizes()));
  TORCH_CHECK_VALUE(gates.dim() == 2 && gates.size(0) == residual.size(0) && gates.size(1) == 2,
                    "gated_residual: gates must have shape (T, 2) = (", residual.size(0), ", 2), got ",
                    py_shape(gates.sizes()));
  const auto dt = residual.scalar_type();
  TORCH_CHECK_TYPE(is_fused_floating(dt), "gated_residual: residual must be float32, float64, float16 or bfloat16, got ",
                   py_dtype(dt));
  TORCH_CHECK_TYPE(branch.scalar_type() == dt, "gated_residual: branch must have the dtype of residual (", py_dtype(dt),
                   "), got ", py_dtype(branch.scalar_type()));
  TORCH_CHECK_TYPE(gates.scalar_type() == dt || gates.scalar_type() == at::kFloat,
                   "gated_residual: gates must be float32 or the dtype of residual (", py_dtype(dt), "), got ",
                   py_dtype(gates.scalar_type()));
  TORCH_CHECK_VALUE(branch.device() == residual.device() && gates.device() == residual.device(),
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
