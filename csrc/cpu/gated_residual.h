// CPU kernels of gated_residual (also called directly by the C++ tests in csrc/tests).
#pragma once
#include <ATen/ATen.h>
#include <tuple>

namespace mtl_ops::cpu {

at::Tensor gated_residual_forward(const at::Tensor& residual, const at::Tensor& branch, const at::Tensor& gates);

std::tuple<at::Tensor, at::Tensor, at::Tensor> gated_residual_backward(const at::Tensor& grad_out,
                                                                       const at::Tensor& residual,
                                                                       const at::Tensor& branch,
                                                                       const at::Tensor& gates);

}  // namespace mtl_ops::cpu
