// The accumulation dtype of every kernel: fp64 for fp64 inputs, fp32 otherwise (half inputs included).
#pragma once
#include <ATen/ATen.h>

namespace mtl_ops {

inline at::ScalarType accumulate_type_of(at::ScalarType dt) {
  return dt == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace mtl_ops
