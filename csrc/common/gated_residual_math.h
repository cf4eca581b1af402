// Per-element math of the gated residual, shared by the CPU (scalar and SIMD) and CUDA kernels, so the
// CPU tests exercise the arithmetic the GPU runs.
//   forward:  y = g_exec * relu(r + b) + g_skip * r
//   backward: d_b = g_exec * dy * [r + b > 0];  d_r = g_skip * dy + d_b
//             d_g_exec = sum(dy * relu(r + b));  d_g_skip = sum(dy * r)
#pragma once
#include "macros.h"
#include "relu.h"

namespace mtl_ops {

template <typename V>
MTL_HOST_DEVICE V gated_residual_forward_value(V r, V b, V g_exec, V g_skip) {
  return g_exec * Relu<V>::apply(r + b) + g_skip * r;
}

template <typename V>
struct GatedResidualGrad {
  V d_residual;
  V d_branch;
  V g_exec_term;  // contribution to d g_exec before the reduction
  V g_skip_term;  // contribution to d g_skip before the reduction
};

template <typename V>
MTL_HOST_DEVICE GatedResidualGrad<V> gated_residual_backward_value(V dy, V r, V b, V g_exec, V g_skip) {
  const V s = r + b;
  const V d_s = g_exec * Relu<V>::grad(s, dy);
  return {g_skip * dy + d_s, d_s, dy * Relu<V>::apply(s), dy * r};
}

}  // namespace mtl_ops
