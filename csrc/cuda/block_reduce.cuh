// Block-wide sum of a pair of values (warp shuffles, then one warp over the warp partials). Deterministic
// for a fixed launch configuration.
#pragma once
#include <cuda_runtime.h>

namespace mtl_ops::cuda {

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Valid in thread 0 only. blockDim.x must be a multiple of 32 and at most 1024; every thread of the block must
// call it (it synchronises the block). Safe to call any number of times in one kernel: the shared partials are
// reused by the next call only after the __syncthreads() that ends this one (every thread has read them).
template <typename T>
__device__ __forceinline__ void block_sum2(T& a, T& b) {
  __shared__ T shared_a[32], shared_b[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    shared_a[warp] = a;
    shared_b[warp] = b;
  }
  __syncthreads();
  const int n_warps = blockDim.x >> 5;
  a = lane < n_warps ? shared_a[lane] : T(0);
  b = lane < n_warps ? shared_b[lane] : T(0);
  __syncthreads();  // all reads of the partials done before a later call overwrites them
  if (warp == 0) {
    a = warp_sum(a);
    b = warp_sum(b);
  }
}

}  // namespace mtl_ops::cuda
