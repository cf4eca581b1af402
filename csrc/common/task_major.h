// Layout handling shared by the element-wise multi-task kernels. Those kernels see a (T, ...) tensor as T
// contiguous runs of numel/T elements in memory ("task-major dense"). Contiguous and channels-last inputs
// already are; anything else (permuted, strided views) is copied once. The output keeps the input's
// strides, as PyTorch's own element-wise ops do. mtl_ops/ops/_layout.py mirrors this rule for the fake
// kernels and the Triton launcher: keep them in step.
#pragma once
#include <ATen/ATen.h>

namespace mtl_ops {

inline bool is_task_major_dense(const at::Tensor& t) {
  if (!t.is_non_overlapping_and_dense()) return false;
  if (t.dim() == 0 || t.size(0) <= 1) return true;
  return t.stride(0) * t.size(0) == t.numel();
}

// Returns `a` and `b` in one shared task-major dense layout (no copy when they already share one).
inline std::pair<at::Tensor, at::Tensor> task_major_pair(const at::Tensor& a, const at::Tensor& b) {
  if (is_task_major_dense(a) && a.strides() == b.strides()) return {a, b};
  return {a.contiguous(), b.contiguous()};
}

// `t` copied (if needed) into the exact strides of `like`, which is task-major dense.
inline at::Tensor with_layout_of(const at::Tensor& t, const at::Tensor& like) {
  if (t.strides() == like.strides()) return t;
  auto out = at::empty_like(like);
  out.copy_(t);
  return out;
}

}  // namespace mtl_ops
