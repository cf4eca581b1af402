// CPU operator of cka: the strip algorithm of csrc/common/cka_gram_strips.h on MKL/ATen GEMMs.
#include <torch/library.h>

#include "../common/cka_gram_strips.h"

namespace mtl_ops::cpu {
namespace {

at::Tensor cka_forward(const at::Tensor& features, bool debiased, bool allow_tf32) {
  TORCH_CHECK(features.device().is_cpu(), "cka: the cpp backend runs CPU tensors, got ", features.device());
  return cka_gram_strips(features, debiased, allow_tf32);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CPU, m) { m.impl("cka_forward", &cka_forward); }

}  // namespace mtl_ops::cpu
