// Argument checks of cka, shared by the CPU and CUDA entry points. mtl_ops/common/cka_args.py makes the same checks
// (same exception types and messages) for the reference backend and the fake kernel; tests/op_suite.py checks that
// both say the same.
#pragma once
#include <ATen/ATen.h>

#include "py_format.h"

namespace mtl_ops {

inline void check_cka_args(const at::Tensor& features, bool debiased) {
  TORCH_CHECK_VALUE(features.dim() == 3, "cka: features must be 3-D (T, n, d) (tasks, samples, features), got ",
                    features.dim(), "-D with shape ", py_shape(features.sizes()));
  TORCH_CHECK_VALUE(at::isFloatingType(features.scalar_type()),
                    "cka: features must be a floating-point tensor, got dtype ", py_dtype(features.scalar_type()));
  TORCH_CHECK_VALUE(features.size(0) >= 1 && features.size(2) >= 1,
                    "cka: features must have at least one task and one feature (T ≥ 1, d ≥ 1), got shape ",
                    py_shape(features.sizes()));
  if (debiased) {
    TORCH_CHECK_VALUE(features.size(1) > 3,
                      "cka: features must have more than 3 samples (n > 3) for the debiased estimator, got n=",
                      features.size(1));
  } else {
    TORCH_CHECK_VALUE(features.size(1) >= 2,
                      "cka: features must have at least 2 samples (n ≥ 2) for the biased estimator, got n=",
                      features.size(1));
  }
}

}  // namespace mtl_ops
