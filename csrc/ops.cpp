// Every mtl_ops operator schema, in one block. Kernels register per dispatch key in csrc/cpu and
// csrc/cuda; fake kernels and autograd are registered from Python (mtl_ops/ops/_fused.py, from each op's
// spec), after this library loads.
#include <torch/library.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <utility>

#include "common/ms_attention_mix_args.h"
#include "common/rpg_primitives.h"

namespace {

// The constants this library was compiled with, by the names mtl_ops.common gives them: Python holds the
// values the reference and Triton code use, and tests/test_constants.py checks that the C++ ones agree.
int64_t compiled_constant(const std::string& name) {
  using namespace mtl_ops;
  static const std::pair<const char*, int64_t> table[] = {
      {"MAX_SCALES", kMaxScales}, {"NUM_KINDS", kNumRpgKinds}, {"IDENTITY", kIdentity},
      {"AVG_POOL", kAvgPool},     {"MAX_POOL", kMaxPool},       {"SHIFT", kShift},
      {"NOISE", kNoise},          {"DW_CONV", kDwConv},         {"DENSE_CONV", kDenseConv},
  };
  const auto* found = std::find_if(std::begin(table), std::end(table), [&](const auto& e) { return name == e.first; });
  TORCH_CHECK_VALUE(found != std::end(table), "mtl_ops::_constant: no constant named '", name, "'");
  return found->second;
}

}  // namespace

TORCH_LIBRARY(mtl_ops, m) {
  // AdaShare gated residual over T tasks: residual, branch (T, ...); gates (T, 2) = [execute, skip].
  m.def("gated_residual_forward(Tensor residual, Tensor branch, Tensor gates) -> Tensor");
  // Returns (d_residual, d_branch, d_gates); gate gradients are reduced in fp32 (fp64 for fp64 inputs).
  m.def(
      "gated_residual_backward(Tensor grad_out, Tensor residual, Tensor branch, Tensor gates)"
      " -> (Tensor, Tensor, Tensor)");
  // CTAL cross-task affinity (EMA-Net): x, v (B, T, C, H, W); weight (N, T, k, k) or (T, N, T, k, k); bias (N,)
  // or (T, N). Returns (r, gram): gram (k*k, B, T*C, T*C) in the accumulation dtype is saved for the backward.
  // allow_tf32 (ctal_affinity, cka): false = exact fp32 GEMMs whatever PyTorch's global fp32 matmul precision;
  // true = the GEMMs follow it (TF32 tensor cores where torch enables them). csrc/common/fp32_matmul_precision.h.
  m.def(
      "ctal_affinity_forward(Tensor x, Tensor v, Tensor weight, Tensor bias, float gamma, bool allow_tf32=False)"
      " -> (Tensor, Tensor)");
  // Returns (d_x, d_v, d_weight, d_bias); no tensor with N x N elements is allocated.
  m.def(
      "ctal_affinity_backward(Tensor grad_out, Tensor x, Tensor v, Tensor weight, Tensor bias, float gamma,"
      " Tensor gram, bool allow_tf32=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // Medusa multi-scale attention: S value maps (B, K, h_s, w_s) and logit maps (B, 1, h_s, w_s), bilinearly
  // resized (align_corners=False) to size = (H, W), softmax over scales per pixel, weighted sum.
  // Returns (out (B, K, H, W), lse (B, H, W) in fp32 / fp64: the per-pixel log-sum-exp of the logits).
  m.def("ms_attention_mix_forward(Tensor[] values, Tensor[] logits, int[] size) -> (Tensor, Tensor)");
  // Recomputes the attention weights from lse; returns the S value gradients then the S logit gradients.
  m.def("ms_attention_mix_backward(Tensor grad_out, Tensor[] values, Tensor[] logits, Tensor lse) -> Tensor[]");
  // Medusa shared feature attention: features (B, C, h, w), mask_logits (T, B, M, h, w), M = 1 or C;
  // out (T, B, C, h, w) = sigmoid(mask_logits) * features.
  m.def("sfa_apply_forward(Tensor features, Tensor mask_logits) -> Tensor");
  // Returns (d_features summed over the T tasks, d_mask_logits).
  m.def("sfa_apply_backward(Tensor grad_out, Tensor features, Tensor mask_logits) -> (Tensor, Tensor)");
  // ETR-NLP routed primitive gather over T routes: x (T*B, C_in, H, W); primitives as (kinds[k], params[2k],
  // frozen[k]) (codes in mtl_ops/common/primitive_kinds.py); w_shared (C_sh, k*C_in/groups, 1, 1), b_shared
  // (C_sh,), w_task (T, C_sp, C_in, 3, 3), b_task (T, C_sp). Returns (T*B, C_sh + C_sp, H', W').
  m.def(
      "routed_primitive_gather_forward(Tensor x, int[] kinds, int[] params, Tensor[] frozen, Tensor w_shared,"
      " Tensor b_shared, Tensor w_task, Tensor b_task, int stride, int groups) -> Tensor");
  // Returns (d_x, d_w_shared, d_b_shared, d_w_task, d_b_task); the frozen primitives get no gradient.
  m.def(
      "routed_primitive_gather_backward(Tensor grad_out, Tensor x, int[] kinds, int[] params, Tensor[] frozen,"
      " Tensor w_shared, Tensor b_shared, Tensor w_task, Tensor b_task, int stride, int groups)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // PDF all-pairs linear CKA: features (T, n, d); returns (T, T) (float64 for float64 input, else float32).
  // Forward only (task similarity is measured, never differentiated).
  m.def("cka_forward(Tensor features, bool debiased, bool allow_tf32=False) -> Tensor");
  // The value of a constant shared with the Python side (not part of the public API).
  m.def("_constant(str name) -> int", &compiled_constant);
}
