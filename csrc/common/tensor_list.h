// Helpers for operators that take a list of tensors, shared by the CPU and CUDA entry points.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace mtl_ops {

// Every tensor of the list as a contiguous tensor (copied only where it is not already contiguous).
inline std::vector<at::Tensor> contiguous_all(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

}  // namespace mtl_ops
