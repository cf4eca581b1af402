// CPU operator of cka: the strip algorithm of csrc/common/cka_gram_strips.h on MKL/ATen GEMMs.
#include <torch/library.h>

#include "../common/cka_gram_strips.h"

namespace mtl_ops::cpu {
namespace {

at::Tensor cka_forward(const at::Tensor& features, bool debiased) {
  TORCH_CHECK(features.device().is_cpu(), "cka: the cpp backend runs CPU tensors, got ", features.device());
  return cka_gram_strips(features, debiased);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CPU, m) { m.impl("cka_forward", &cka_forward); }

}  // namespace mtl_ops::cpu
