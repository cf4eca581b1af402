// SIMD specialisation of mtl_ops::Relu (csrc/common/relu.h) for ATen's Vectorized<T>, same semantics.
#pragma once
#include <ATen/cpu/vec/vec.h>
#include "../common/relu.h"

namespace mtl_ops {

template <typename S>
struct Relu<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V apply(V x) { return V::blendv(x, V(S(0)), x < V(S(0))); }
  static V grad(V s, V dy) { return V::blendv(dy, V(S(0)), s <= V(S(0))); }
};

}  // namespace mtl_ops
