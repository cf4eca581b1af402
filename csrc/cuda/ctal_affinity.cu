// CUDA entry points of ctal_affinity: the exact reassociation of csrc/common/ctal_affinity_reassoc.h on the
// GPU (cuBLAS GEMMs through ATen's bmm over views of the zero-padded features, element-wise ATen kernels for
// the per-pixel tap weighting and the normalisation); nothing with N x N elements is allocated.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../common/ctal_affinity_args.h"
#include "../common/ctal_affinity_reassoc.h"

namespace mtl_ops::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> ctal_affinity_forward(const at::Tensor& x, const at::Tensor& v,
                                                         const at::Tensor& weight, const at::Tensor& bias,
                                                         double gamma, bool allow_tf32) {
  check_ctal_affinity_args(x, v, weight, bias);
  TORCH_CHECK(x.is_cuda(), "ctal_affinity (cuda backend): tensors must be on a CUDA device, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  return ctal::forward(x, v, weight, bias, gamma, allow_tf32);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ctal_affinity_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& v, const at::Tensor& weight,
    const at::Tensor& bias, double gamma, const at::Tensor& gram, bool allow_tf32) {
  check_ctal_affinity_args(x, v, weight, bias);
  TORCH_CHECK(x.is_cuda(), "ctal_affinity (cuda backend): tensors must be on a CUDA device, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  return ctal::backward(grad_out, x, v, weight, bias, gamma, gram, allow_tf32);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CUDA, m) {
  m.impl("ctal_affinity_forward", &ctal_affinity_forward);
  m.impl("ctal_affinity_backward", &ctal_affinity_backward);
}

}  // namespace mtl_ops::cuda
