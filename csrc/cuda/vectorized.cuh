// 16-byte vector access for the element-wise kernels (gated_residual, sfa_apply): a Pack of N elements is read
// and written with one 128-bit instruction when N * sizeof(T) = 16. The host picks N = kPackBytes / sizeof(T)
// when every pointer is 16-byte aligned and every run of elements the kernel indexes by packs has a length that
// is a multiple of N (so each run starts aligned), and N = 1 (scalar access) otherwise.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

namespace mtl_ops::cuda {

constexpr int kPackBytes = 16;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

// Elements per 16-byte pack of T.
template <typename T>
constexpr int pack_width() {
  return kPackBytes / sizeof(T) > 0 ? int(kPackBytes / sizeof(T)) : 1;
}

// Whether the kernels may use packs of `width` elements: every pointer 16-byte aligned and `run` (the length of
// the contiguous runs that are indexed by packs) a multiple of width.
inline bool can_vectorize(int64_t run, int width, std::initializer_list<const void*> ptrs) {
  if (width <= 1 || run % width != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<std::uintptr_t>(p) % kPackBytes != 0) return false;
  return true;
}

}  // namespace mtl_ops::cuda
