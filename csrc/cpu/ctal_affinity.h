// CPU entry points of ctal_affinity (also callable directly from C++). allow_tf32: see
// csrc/common/fp32_matmul_precision.h (false: exact fp32 GEMMs whatever the global matmul precision).
#pragma once
#include <ATen/ATen.h>
#include <tuple>

namespace mtl_ops::cpu {

std::tuple<at::Tensor, at::Tensor> ctal_affinity_forward(const at::Tensor& x, const at::Tensor& v,
                                                         const at::Tensor& weight, const at::Tensor& bias,
                                                         double gamma, bool allow_tf32 = false);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ctal_affinity_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& v, const at::Tensor& weight,
    const at::Tensor& bias, double gamma, const at::Tensor& gram, bool allow_tf32 = false);

}  // namespace mtl_ops::cpu
