// CPU kernels of ms_attention_mix (also callable directly from C++).
#pragma once
#include <ATen/ATen.h>
#include <tuple>
#include <vector>

namespace mtl_ops::cpu {

std::tuple<at::Tensor, at::Tensor> ms_attention_mix_forward(at::TensorList values, at::TensorList logits,
                                                            at::IntArrayRef size);

std::vector<at::Tensor> ms_attention_mix_backward(const at::Tensor& grad_out, at::TensorList values,
                                                  at::TensorList logits, const at::Tensor& lse);

}  // namespace mtl_ops::cpu
