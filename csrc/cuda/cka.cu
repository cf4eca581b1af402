// CUDA operator of cka: the strip algorithm of csrc/common/cka_gram_strips.h on cuBLAS (through ATen).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/cka_gram_strips.h"

namespace mtl_ops::cuda {
namespace {

at::Tensor cka_forward(const at::Tensor& features, bool debiased, bool allow_tf32) {
  TORCH_CHECK(features.is_cuda(), "cka: the cuda backend runs CUDA tensors, got ", features.device());
  const c10::cuda::CUDAGuard guard(features.device());
  return cka_gram_strips(features, debiased, allow_tf32);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CUDA, m) { m.impl("cka_forward", &cka_forward); }

}  // namespace mtl_ops::cuda
