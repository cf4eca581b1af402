// Shapes and dtypes in error messages written as Python writes them ("(3, 2)", "(5,)", "torch.float32"), so
// that an argument check says the same whether the Python layer or the C++ operator makes it
// (tests/op_suite.py compares the two for every op).
#pragma once
#include <ATen/ATen.h>

#include <sstream>
#include <string>

namespace mtl_ops {

inline std::string py_shape(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

inline std::string py_dtype(at::ScalarType dt) { return "torch." + std::string(c10::getDtypeNames(dt).first); }

inline bool is_fused_floating(at::ScalarType dt) {
  return dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16;
}

}  // namespace mtl_ops
