// Argument checks of ms_attention_mix, shared by the CPU and CUDA entry points. The Python layer makes the same
// checks (same exception types and messages) only for the reference and Triton backends and its fake kernels;
// tests/op_suite.py checks that both say the same.
#pragma once
#include <ATen/ATen.h>

#include "accumulate_type.h"
#include "py_format.h"

namespace mtl_ops {

// mtl_ops/common/limits.py MAX_SCALES (tests/test_constants.py reads this through mtl_ops::_constant).
constexpr int64_t kMaxScales = 8;

inline void check_ms_attention_mix_args(at::TensorList values, at::TensorList logits, at::IntArrayRef size) {
  const auto S = static_cast<int64_t>(values.size());
  TORCH_CHECK_VALUE(S >= 1 && S <= kMaxScales, "ms_attention_mix: values must hold 1 to ", kMaxScales,
              " tensors (one per scale), got ", S);
  TORCH_CHECK_VALUE(static_cast<int64_t>(logits.size()) == S, "ms_attention_mix: logits must hold one tensor per scale (",
              S, "), got ", logits.size());
  TORCH_CHECK_VALUE(size.size() == 2 && size[0] > 0 && size[1] > 0,
              "ms_attention_mix: size must be two positive integers (H, W), got ", size);
  const auto& v0 = values[0];
  TORCH_CHECK_VALUE(v0.dim() == 4, "ms_attention_mix: values[0] must be 4-d (B, K, h, w), got ", v0.dim(), "-d");
  const auto dt = v0.scalar_type();
  TORCH_CHECK_TYPE(is_fused_floating(dt), "ms_attention_mix: values must be float32, float64, float16 or bfloat16, got ",
                   py_dtype(dt));
  for (int64_t s = 0; s < S; ++s) {
    const auto& v = values[s];
    const auto& l = logits[s];
    TORCH_CHECK_VALUE(v.dim() == 4 && v.size(0) == v0.size(0) && v.size(1) == v0.size(1) && v.size(2) > 0 && v.size(3) > 0,
                "ms_attention_mix: values[", s, "] must have shape (B, K, h, w) = (", v0.size(0), ", ", v0.size(1),
                ", h>0, w>0), got ", py_shape(v.sizes()));
    TORCH_CHECK_VALUE(l.dim() == 4 && l.size(0) == v.size(0) && l.size(1) == 1 && l.size(2) == v.size(2) &&
                    l.size(3) == v.size(3),
                "ms_attention_mix: logits[", s, "] must have shape (B, 1, h, w) = (", v.size(0), ", 1, ", v.size(2),
                ", ", v.size(3), "), got ", py_shape(l.sizes()));
    TORCH_CHECK_TYPE(v.scalar_type() == dt && l.scalar_type() == dt, "ms_attention_mix: values[", s, "] and logits[", s,
                     "] must have the dtype of values[0] (", py_dtype(dt), "), got ", py_dtype(v.scalar_type()), " and ",
                     py_dtype(l.scalar_type()));
    TORCH_CHECK_VALUE(v.device() == v0.device() && l.device() == v0.device(),
                "ms_attention_mix: all tensors must be on one device (", v0.device(), "), got values[", s, "] on ",
                v.device(), " and logits[", s, "] on ", l.device());
  }
}

// The backward's checks: the forward's, plus grad_out (B, K, H, W) and lse (B, H, W) in the accumulation dtype.
inline void check_ms_attention_mix_backward_args(const at::Tensor& grad_out, at::TensorList values_in,
                                                 at::TensorList logits_in, const at::Tensor& lse_in) {
  TORCH_CHECK(grad_out.dim() == 4, "ms_attention_mix_backward: grad_out must be 4-d (B, K, H, W), got ",
              grad_out.sizes());
  check_ms_attention_mix_args(values_in, logits_in, {grad_out.size(2), grad_out.size(3)});
  const int64_t B = values_in[0].size(0), K = values_in[0].size(1);
  const int64_t H = grad_out.size(2), W = grad_out.size(3);
  const auto dt = values_in[0].scalar_type();
  const auto acc_dt = accumulate_type_of(dt);
  TORCH_CHECK(grad_out.size(0) == B && grad_out.size(1) == K && grad_out.scalar_type() == dt &&
                  grad_out.device() == values_in[0].device(),
              "ms_attention_mix_backward: grad_out must match the output (B, K, H, W) = (", B, ", ", K,
              ", H, W) in ", dt, ", got ", grad_out.sizes(), " ", grad_out.scalar_type());
  TORCH_CHECK(lse_in.dim() == 3 && lse_in.size(0) == B && lse_in.size(1) == H && lse_in.size(2) == W &&
                  lse_in.scalar_type() == acc_dt && lse_in.device() == values_in[0].device(),
              "ms_attention_mix_backward: lse must be (B, H, W) = (", B, ", ", H, ", ", W, ") in ", acc_dt, ", got ",
              lse_in.sizes(), " ", lse_in.scalar_type());
}

}  // namespace mtl_ops
