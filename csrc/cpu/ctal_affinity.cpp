// CPU kernels of ctal_affinity: the exact reassociation of csrc/common/ctal_affinity_reassoc.h (GEMMs over
// views of the zero-padded features; nothing with N x N elements), one operator forward, one backward.
#include "ctal_affinity.h"

#include <torch/library.h>

#include "../common/ctal_affinity_args.h"
#include "../common/ctal_affinity_reassoc.h"

namespace mtl_ops::cpu {

std::tuple<at::Tensor, at::Tensor> ctal_affinity_forward(const at::Tensor& x, const at::Tensor& v,
                                                         const at::Tensor& weight, const at::Tensor& bias,
                                                         double gamma) {
  check_ctal_affinity_args(x, v, weight, bias);
  TORCH_CHECK(x.device().is_cpu(), "ctal_affinity (cpp backend): tensors must be on the CPU, got ", x.device());
  return ctal::forward(x, v, weight, bias, gamma);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ctal_affinity_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& v, const at::Tensor& weight,
    const at::Tensor& bias, double gamma, const at::Tensor& gram) {
  check_ctal_affinity_args(x, v, weight, bias);
  TORCH_CHECK(x.device().is_cpu(), "ctal_affinity (cpp backend): tensors must be on the CPU, got ", x.device());
  return ctal::backward(grad_out, x, v, weight, bias, gamma, gram);
}

TORCH_LIBRARY_IMPL(mtl_ops, CPU, m) {
  m.impl("ctal_affinity_forward", &ctal_affinity_forward);
  m.impl("ctal_affinity_backward", &ctal_affinity_backward);
}

}  // namespace mtl_ops::cpu
