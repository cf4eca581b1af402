// CPU kernels of sfa_apply (also callable directly from C++).
#pragma once
#include <ATen/ATen.h>
#include <tuple>

namespace mtl_ops::cpu {

at::Tensor sfa_apply_forward(const at::Tensor& features, const at::Tensor& mask_logits);

std::tuple<at::Tensor, at::Tensor> sfa_apply_backward(const at::Tensor& grad_out, const at::Tensor& features,
                                                      const at::Tensor& mask_logits);

}  // namespace mtl_ops::cpu
