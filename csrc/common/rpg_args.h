// Argument checks of routed_primitive_gather, shared by the CPU and CUDA entry points. The Python layer makes the
// same checks (same exception types and messages) only for the reference and Triton backends and its fake kernels;
// tests/op_suite.py checks that both say the same.
#pragma once
#include <ATen/ATen.h>

#include <numeric>

#include "py_format.h"
#include "rpg_primitives.h"

namespace mtl_ops {

struct RpgShape {
  int64_t N, C, H, W, Ho, Wo, T, B, Csh, Csp, Cout, k, G, cpg, opg, stride;
};

inline RpgShape check_rpg_args(const at::Tensor& x, at::IntArrayRef kinds, at::IntArrayRef params,
                               at::TensorList frozen, const at::Tensor& w_shared, const at::Tensor& b_shared,
                               const at::Tensor& w_task, const at::Tensor& b_task, int64_t stride, int64_t groups) {
  const char* op = "routed_primitive_gather: ";
  TORCH_CHECK_VALUE(x.dim() == 4, op, "x must be (T*B, C_in, H, W), got shape ", py_shape(x.sizes()));
  TORCH_CHECK_TYPE(is_fused_floating(x.scalar_type()), op, "x must be float32, float64, float16 or bfloat16, got ",
                   py_dtype(x.scalar_type()));
  const int64_t k = static_cast<int64_t>(kinds.size());
  TORCH_CHECK_VALUE(k >= 1, op, "kinds must name at least one primitive, got none");
  TORCH_CHECK_VALUE(static_cast<int64_t>(params.size()) == 2 * k, op, "params must hold 2 ints per primitive (", 2 * k,
              "), got ", params.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(frozen.size()) == k, op, "frozen must hold one tensor per primitive (", k,
              "), got ", frozen.size());
  TORCH_CHECK_VALUE(stride >= 1, op, "stride must be an int >= 1, got ", stride);
  TORCH_CHECK_VALUE(groups >= 1, op, "groups must be an int >= 1, got ", groups);
  TORCH_CHECK_VALUE(w_task.dim() == 5 && w_task.size(3) == 3 && w_task.size(4) == 3 && w_task.size(0) >= 1, op,
              "w_task must be (T, C_sp, C_in, 3, 3), got shape ", py_shape(w_task.sizes()));
  RpgShape s{};
  s.N = x.size(0), s.C = x.size(1), s.H = x.size(2), s.W = x.size(3);
  s.T = w_task.size(0), s.Csp = w_task.size(1), s.Csh = w_shared.dim() >= 1 ? w_shared.size(0) : 0;
  s.k = k, s.G = groups, s.stride = stride;
  TORCH_CHECK_VALUE(s.H >= 1 && s.W >= 1 && s.C >= 1, op, "x must have C_in, H, W >= 1, got shape ", py_shape(x.sizes()));
  TORCH_CHECK_VALUE(s.N % s.T == 0, op, "x's batch (", s.N, ") must be T*B with T = w_task.size(0) = ", s.T);
  TORCH_CHECK_VALUE(w_task.size(2) == s.C, op, "w_task must be (T, C_sp, C_in, 3, 3) with C_in = ", s.C, ", got shape ",
              py_shape(w_task.sizes()));
  TORCH_CHECK_VALUE(s.C % groups == 0 && s.Csh % groups == 0, op, "groups (", groups, ") must divide C_in (", s.C,
              ") and C_sh (", s.Csh, "); gcd(C_in, C_sh) = ", std::gcd(s.C, s.Csh), " and its divisors would work");
  s.cpg = s.C / groups, s.opg = s.Csh / groups;
  TORCH_CHECK_VALUE(w_shared.dim() == 4 && w_shared.size(1) == k * s.cpg && w_shared.size(2) == 1 && w_shared.size(3) == 1,
              op, "w_shared must be (C_sh, k*C_in/groups, 1, 1) = (C_sh, ", k * s.cpg, ", 1, 1), got shape ",
              py_shape(w_shared.sizes()));
  TORCH_CHECK_VALUE(b_shared.dim() == 1 && b_shared.size(0) == s.Csh, op, "b_shared must be (C_sh,) = (", s.Csh,
              ",), got shape ", py_shape(b_shared.sizes()));
  TORCH_CHECK_VALUE(b_task.dim() == 2 && b_task.size(0) == s.T && b_task.size(1) == s.Csp, op,
              "b_task must be (T, C_sp) = (", s.T, ", ", s.Csp, "), got shape ", py_shape(b_task.sizes()));
  for (const auto* t : {&w_shared, &b_shared, &w_task, &b_task}) {
    TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), op, "weights and biases must have the dtype of x (",
                     py_dtype(x.scalar_type()), "), got ", py_dtype(t->scalar_type()));
    TORCH_CHECK_VALUE(t->device() == x.device(), op, "all tensors must be on x's device (", x.device(), "), got ",
                t->device());
  }
  for (int64_t p = 0; p < k; ++p) {
    const int64_t kind = kinds[p], a = params[2 * p];
    const auto& f = frozen[p];
    TORCH_CHECK_VALUE(kind >= 0 && kind < kNumRpgKinds, op, "kinds[", p, "] must be a primitive code in [0, ",
                kNumRpgKinds, "), got ", kind);
    TORCH_CHECK_VALUE(f.device() == x.device(), op, "frozen[", p, "] must be on x's device (", x.device(), "), got ",
                f.device());
    if (kind == kDwConv || kind == kDenseConv) {
      TORCH_CHECK_VALUE(a >= 1, op, "params[", 2 * p, "] (dilation of primitive ", p, ") must be >= 1, got ", a);
      const int64_t cin = kind == kDwConv ? 1 : s.C;
      TORCH_CHECK_VALUE(f.dim() == 4 && f.size(0) == s.C && f.size(1) == cin && f.size(2) == 3 && f.size(3) == 3, op,
                  "frozen[", p, "] must be a (", s.C, ", ", cin, ", 3, 3) kernel, got shape ", py_shape(f.sizes()));
    } else if (kind == kNoise) {
      TORCH_CHECK_VALUE(f.dim() == 3 && f.size(0) == s.C && f.size(1) >= 1 && f.size(2) >= 1, op, "frozen[", p,
                  "] must be a (", s.C, ", Hn, Wn) noise mask, got shape ", py_shape(f.sizes()));
    }
    if (kind == kDwConv || kind == kDenseConv || kind == kNoise) {
      TORCH_CHECK_TYPE(is_fused_floating(f.scalar_type()), op, "frozen[", p, "] must be floating, got ",
                       py_dtype(f.scalar_type()));
    }
  }
  s.B = s.N / s.T;
  s.Cout = s.Csh + s.Csp;
  s.Ho = (s.H - 1) / stride + 1;
  s.Wo = (s.W - 1) / stride + 1;
  return s;
}

// The backward's grad_out: the forward output's shape, in x's dtype and on its device.
inline void check_rpg_grad_out(const at::Tensor& grad_out, const at::Tensor& x_in, const RpgShape& s) {
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == s.N && grad_out.size(1) == s.Cout &&
                  grad_out.size(2) == s.Ho && grad_out.size(3) == s.Wo && grad_out.scalar_type() == x_in.scalar_type() &&
                  grad_out.device() == x_in.device(),
              "routed_primitive_gather_backward: grad_out must be (", s.N, ", ", s.Cout, ", ", s.Ho, ", ", s.Wo,
              ") in x's dtype and device, got ", grad_out.sizes(), " ", grad_out.scalar_type());
}

}  // namespace mtl_ops
