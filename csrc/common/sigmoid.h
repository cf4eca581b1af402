// Sigmoid and its derivative, shared by the CPU and CUDA kernels (computed in the accumulation type).
#pragma once
#include <cmath>

#include "macros.h"

namespace mtl_ops {

template <typename V>
MTL_HOST_DEVICE V sigmoid_value(V x) {
  return V(1) / (V(1) + exp(-x));
}

// d sigmoid(x) / dx from s = sigmoid(x).
template <typename V>
MTL_HOST_DEVICE V sigmoid_grad_from_value(V s) {
  return s * (V(1) - s);
}

}  // namespace mtl_ops
