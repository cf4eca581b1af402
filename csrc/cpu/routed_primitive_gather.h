// CPU kernels of routed_primitive_gather (also called directly by the C++ tests in csrc/tests).
#pragma once
#include <ATen/ATen.h>
#include <tuple>

namespace mtl_ops::cpu {

at::Tensor routed_primitive_gather_forward(const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params,
                                           at::TensorList frozen, const at::Tensor& w_shared,
                                           const at::Tensor& b_shared, const at::Tensor& w_task,
                                           const at::Tensor& b_task, int64_t stride, int64_t groups);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> routed_primitive_gather_backward(
    const at::Tensor& grad_out, const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params,
    at::TensorList frozen, const at::Tensor& w_shared, const at::Tensor& b_shared, const at::Tensor& w_task,
    const at::Tensor& b_task, int64_t stride, int64_t groups);

}  // namespace mtl_ops::cpu
