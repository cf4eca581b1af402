// Argument checks of sfa_apply, shared by the CPU and CUDA entry points. The Python layer makes the same checks
// (same exception types and messages) only for the reference and Triton backends and its fake kernels;
// tests/op_suite.py checks that both say the same.
#pragma once
#include <ATen/ATen.h>

#include "py_format.h"

namespace mtl_ops {

inline void check_sfa_apply_args(const at::Tensor& features, const at::Tensor& mask_logits) {
  TORCH_CHECK_VALUE(features.dim() == 4, "sfa_apply: features must be 4-d (B, C, h, w), got ", features.dim(), "-d");
  TORCH_CHECK_VALUE(mask_logits.dim() == 5, "sfa_apply: mask_logits must be 5-d (T, B, M, h, w), got ",
                    mask_logits.dim(), "-d");
  const int64_t C = features.size(1);
  const int64_t M = mask_logits.size(2);
  TORCH_CHECK_VALUE(mask_logits.size(1) == features.size(0) && (M == 1 || M == C) &&
                        mask_logits.size(3) == features.size(2) && mask_logits.size(4) == features.size(3),
                    "sfa_apply: mask_logits must have shape (T, B, M, h, w) = (T, ", features.size(0), ", 1 or ", C,
                    ", ", features.size(2), ", ", features.size(3), "), got ", py_shape(mask_logits.sizes()));
  const auto dt = features.scalar_type();
  TORCH_CHECK_TYPE(is_fused_floating(dt), "sfa_apply: features must be float32, float64, float16 or bfloat16, got ",
                   py_dtype(dt));
  TORCH_CHECK_TYPE(mask_logits.scalar_type() == dt, "sfa_apply: mask_logits must have the dtype of features (",
                   py_dtype(dt), "), got ", py_dtype(mask_logits.scalar_type()));
  TORCH_CHECK_VALUE(mask_logits.device() == features.device(),
                    "sfa_apply: features and mask_logits must be on one device, got ", features.device(), " and ",
                    mask_logits.device());
}

}  // namespace mtl_ops
