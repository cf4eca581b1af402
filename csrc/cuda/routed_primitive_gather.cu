// CUDA kernels of routed_primitive_gather (ETR-NLP). The algorithm and its host-side orchestration live in
// csrc/common/rpg_gemm_path.h (which the CPU ctest also runs, with a looping launcher): every response
// computed once into a bank, the 1x1 mix, the task convolutions and the weight gradients as exact-fp32
// GEMMs, the input gradient in gather form (deterministic, no atomics). Here: the three kernels, each one
// thread per pixel of one plane, and their launcher.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <tuple>

#include "../common/rpg_args.h"
#include "../common/rpg_gemm_path.h"

namespace mtl_ops::cuda {
namespace {

using rpg_gemm::Geo;
using rpg_gemm::PrimTable;

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;

// Grid: blockIdx.x is the plane (image·channels + channel), the plane's pixels are strided over blockIdx.y
// (capped at 65535 blocks). The primitive table is a __grid_constant__ argument: read in place from the
// constant bank (indexed by the primitive, uniform across the block), no copy into local memory, no
// host-to-device copy.
__device__ __forceinline__ int64_t first_pixel() { return int64_t(blockIdx.y) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t pixel_step() { return int64_t(gridDim.y) * blockDim.x; }

template <typename V>
__global__ void response_kernel(const V* __restrict__ xz, const V* __restrict__ xn, const V* __restrict__ fz,
                                const __grid_constant__ PrimTable tab, const Geo g, int n_max, V* __restrict__ R,
                                uint8_t* __restrict__ taps) {
  for (int64_t m = first_pixel(); m < g.HWo; m += pixel_step())
    rpg_gemm::response_at<V>(xz, xn, fz, tab, g, n_max, R, taps, blockIdx.x, m);
}

template <typename V, bool kUnit>
__global__ void input_grad_kernel(const V* __restrict__ dR, const uint8_t* __restrict__ taps,
                                  const V* __restrict__ dy, const V* __restrict__ fz, const V* __restrict__ wsp,
                                  const __grid_constant__ PrimTable tab, const Geo g, int64_t n0, int n_max,
                                  bool task, bool accumulate, V* __restrict__ dx) {
  const int64_t HW = int64_t(g.H) * g.W;
  for (int64_t q = first_pixel(); q < HW; q += pixel_step())
    rpg_gemm::input_grad_at<V, kUnit>(dR, taps, dy, fz, wsp, tab, g, n0, n_max, task, accumulate, dx, blockIdx.x, q);
}

template <typename S, typename V>
__global__ void epilogue_kernel(const V* __restrict__ ysh, const V* __restrict__ ysp, const V* __restrict__ bsh,
                                const V* __restrict__ bsp, const Geo g, S* __restrict__ y) {
  for (int64_t m = first_pixel(); m < g.HWo; m += pixel_step())
    rpg_gemm::epilogue_at<S, V>(ysh, ysp, bsh, bsp, g, y, blockIdx.x, m);
}

dim3 plane_grid(int64_t planes, int64_t pixels) {
  TORCH_CHECK(planes <= INT_MAX, "routed_primitive_gather (cuda backend): too many planes for one launch (", planes,
              ")");
  const int64_t y = std::min<int64_t>(kMaxGridY, std::max<int64_t>(1, (pixels + kThreads - 1) / kThreads));
  return dim3(static_cast<unsigned>(planes), static_cast<unsigned>(y));
}

// Launches on the current stream (the caller holds the device guard).
struct CudaLaunch {
  template <typename V>
  void response(const V* xz, const V* xn, const V* fz, const PrimTable& tab, const Geo& g, int n_max, V* R,
                uint8_t* taps, int64_t planes, int64_t pixels) const {
    response_kernel<V><<<plane_grid(planes, pixels), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        xz, xn, fz, tab, g, n_max, R, taps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename V>
  void input_grad(const V* dR, const uint8_t* taps, const V* dy, const V* fz, const V* wsp, const PrimTable& tab,
                  const Geo& g, int64_t n0, int n_max, bool task, bool accumulate, V* dx, int64_t planes,
                  int64_t pixels) const {
    const dim3 grid = plane_grid(planes, pixels);
    const auto stream = at::cuda::getCurrentCUDAStream();
    if (g.s == 1) {
      input_grad_kernel<V, true><<<grid, kThreads, 0, stream>>>(dR, taps, dy, fz, wsp, tab, g, n0, n_max, task,
                                                                accumulate, dx);
    } else {
      input_grad_kernel<V, false><<<grid, kThreads, 0, stream>>>(dR, taps, dy, fz, wsp, tab, g, n0, n_max, task,
                                                                 accumulate, dx);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  template <typename S, typename V>
  void epilogue(const V* ysh, const V* ysp, const V* bsh, const V* bsp, const Geo& g, S* y, int64_t planes,
                int64_t pixels) const {
    epilogue_kernel<S, V><<<plane_grid(planes, pixels), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        ysh, ysp, bsh, bsp, g, y);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "routed_primitive_gather (cuda backend): tensors must be on a CUDA device, got ", x.device());
}

at::Tensor routed_primitive_gather_forward(const at::Tensor& x, at::IntArrayRef kinds, at::IntArrayRef params,
                                           at::TensorList frozen, const at::Tensor& w_shared,
                                           const at::Tensor& b_shared, const at::Tensor& w_task,
                                           const at::Tensor& b_task, int64_t stride, int64_t groups) {
  const RpgShape s = check_rpg_args(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups);
  check_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  return rpg_gemm::forward(CudaLaunch{}, x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, s);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> routed_primitive_gather_backward(
    const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kinds, at::IntArrayRef params,
    at::TensorList frozen, const at::Tensor& w_shared, const at::Tensor& b_shared, const at::Tensor& w_task,
    const at::Tensor& b_task, int64_t stride, int64_t groups) {
  const RpgShape s = check_rpg_args(x, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups);
  check_cuda(x);
  check_rpg_grad_out(grad_out, x, s);
  const c10::cuda::CUDAGuard guard(x.device());
  return rpg_gemm::backward(CudaLaunch{}, grad_out, x, kinds, params, frozen, w_shared, w_task, s);
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CUDA, m) {
  m.impl("routed_primitive_gather_forward", &routed_primitive_gather_forward);
  m.impl("routed_primitive_gather_backward", &routed_primitive_gather_backward);
}

}  // namespace mtl_ops::cuda
