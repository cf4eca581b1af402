// Every mtl_ops operator schema, in one block. Kernels register per dispatch key in csrc/cpu and
// csrc/cuda; fake kernels and autograd are registered from Python (mtl_ops/ops/), after this library loads.
#include <torch/library.h>

TORCH_LIBRARY(mtl_ops, m) {
  // AdaShare gated residual over T tasks: residual, branch (T, ...); gates (T, 2) = [execute, skip].
  m.def("gated_residual_forward(Tensor residual, Tensor branch, Tensor gates) -> Tensor");
  // Returns (d_residual, d_branch, d_gates); gate gradients are reduced in fp32 (fp64 for fp64 inputs).
  m.def(
      "gated_residual_backward(Tensor grad_out, Tensor residual, Tensor branch, Tensor gates)"
      " -> (Tensor, Tensor, Tensor)");
  // CTAL cross-task affinity (EMA-Net): x, v (B, T, C, H, W); weight (N, T, k, k) or (T, N, T, k, k); bias (N,)
  // or (T, N). Returns (r, gram): gram (k*k, B, T*C, T*C) in the accumulation dtype is saved for the backward.
  m.def("ctal_affinity_forward(Tensor x, Tensor v, Tensor weight, Tensor bias, float gamma) -> (Tensor, Tensor)");
  // Returns (d_x, d_v, d_weight, d_bias); no tensor with N x N elements is allocated.
  m.def(
      "ctal_affinity_backward(Tensor grad_out, Tensor x, Tensor v, Tensor weight, Tensor bias, float gamma,"
      " Tensor gram) -> (Tensor, Tensor, Tensor, Tensor)");
}
