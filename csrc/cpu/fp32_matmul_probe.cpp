// Test hook of csrc/common/fp32_matmul_precision.h (no GPU needed): what the precision guard of an operator call on
// `device_type` leaves in force inside its scope, read through the same ATen getters the BLAS paths use.
// Not part of the public API.
#include <ATen/Context.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../common/fp32_matmul_precision.h"

namespace mtl_ops::cpu {
namespace {

// [NoTF32Guard active, allowTF32CuBLAS(), float32MatmulPrecision() as 0 highest / 1 high / 2 medium], a getter
// that throws (a state mixing PyTorch's legacy and new precision APIs) read as -1.
std::vector<int64_t> fp32_matmul_guard_probe(bool allow_tf32, const std::string& device_type) {
  const c10::Device device(device_type);
  const Fp32MatmulPrecisionGuard precision(allow_tf32, device.type());
  std::vector<int64_t> seen{at::NoTF32Guard::should_disable_tf32() ? 1 : 0, -1, -1};
  try {
    seen[1] = at::globalContext().allowTF32CuBLAS() ? 1 : 0;
  } catch (const c10::Error&) {
  }
  try {
    seen[2] = static_cast<int64_t>(at::globalContext().float32MatmulPrecision());
  } catch (const c10::Error&) {
  }
  return seen;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mtl_ops, m) {
  m.def("_fp32_matmul_guard_probe(bool allow_tf32, str device_type) -> int[]", &fp32_matmul_guard_probe);
}

}  // namespace mtl_ops::cpu
