// ReLU and its derivative with PyTorch's exact semantics, shared by the CPU and CUDA kernels.
#pragma once
#include "macros.h"

namespace mtl_ops {

template <typename V>
struct Relu {
  // relu(NaN) = NaN, as torch.relu.
  MTL_HOST_DEVICE static V apply(V x) { return x < V(0) ? V(0) : x; }
  // threshold_backward(dy, s, 0): the gradient passes where s > 0 (and where s is NaN), as autograd.
  MTL_HOST_DEVICE static V grad(V s, V dy) { return s <= V(0) ? V(0) : dy; }
};

}  // namespace mtl_ops
