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
  // ETR-NLP routed primitive gather over T routes: x (T*B, C_in, H, W); primitives as (kinds[k], params[2k],
  // frozen[k]) (codes in mtl_ops/reference/primitive_kinds.py); w_shared (C_sh, k*C_in/groups, 1, 1), b_shared
  // (C_sh,), w_task (T, C_sp, C_in, 3, 3), b_task (T, C_sp). Returns (T*B, C_sh + C_sp, H', W').
  m.def(
      "routed_primitive_gather_forward(Tensor x, int[] kinds, int[] params, Tensor[] frozen, Tensor w_shared,"
      " Tensor b_shared, Tensor w_task, Tensor b_task, int stride, int groups) -> Tensor");
  // Returns (d_x, d_w_shared, d_b_shared, d_w_task, d_b_task); the frozen primitives get no gradient.
  m.def(
      "routed_primitive_gather_backward(Tensor grad_out, Tensor x, int[] kinds, int[] params, Tensor[] frozen,"
      " Tensor w_shared, Tensor b_shared, Tensor w_task, Tensor b_task, int stride, int groups)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
