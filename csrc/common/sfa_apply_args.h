// Argument checks of sfa_apply, shared by the CPU and CUDA entry points. mtl_ops/ops/sfa_apply.py runs the
// same checks in Python before any backend.
#pragma once
#include <ATen/ATen.h>

namespace mtl_ops {

inline void check_sfa_apply_args(const at::Tensor& features, const at::Tensor& mask_logits) {
  TORCH_CHECK(features.dim() == 4, "sfa_apply: features must be 4-d (B, C, h, w), got ", features.dim(), "-d");
  TORCH_CHECK(mask_logits.dim() == 5, "sfa_apply: mask_logits must be 5-d (T, B, M, h, w), got ", mask_logits.dim(),
              "-d");
  const int64_t C = features.size(1);
  const int64_t M = mask_logits.size(2);
  TORCH_CHECK(mask_logits.size(1) == features.size(0) && (M == 1 || M == C) &&
                  mask_logits.size(3) == features.size(2) && mask_logits.size(4) == features.size(3),
              "sfa_apply: mask_logits must have shape (T, B, M, h, w) = (T, ", features.size(0), ", 1 or ", C, ", ",
              features.size(2), ", ", features.size(3), "), got ", mask_logits.sizes());
  const auto dt = features.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              "sfa_apply: features must be float32, float64, float16 or bfloat16, got ", dt);
  TORCH_CHECK(mask_logits.scalar_type() == dt, "sfa_apply: mask_logits must have the dtype of features (", dt,
              "), got ", mask_logits.scalar_type());
  TORCH_CHECK(mask_logits.device() == features.device(), "sfa_apply: features and mask_logits must be on one device, got ",
              features.device(), " and ", mask_logits.device());
}

}  // namespace mtl_ops
