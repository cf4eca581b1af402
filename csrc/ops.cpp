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
}
