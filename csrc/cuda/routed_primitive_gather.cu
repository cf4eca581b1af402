// CUDA kernels of routed_primitive_gather: a direct loop over output elements (spec §2.7, first version).
// The input is copied once into padded planes (zeros, and -inf for max pool) so the shared per-pixel math
// of csrc/common/rpg_primitives.h runs without bounds checks, exactly as on the CPU.
//   forward: one thread per output element (n, o, i, j): shared channels recompute the k responses of the
//            C_in/G channels of their group and combine them; task channels run task t's 3x3.
//   backward: d x by one thread per (n, c, i, j) scattering each primitive's adjoint and the task conv's
//            (atomicAdd into padded fp32/fp64 planes); d w_shared and d w_task by one block per weight
//            element reducing over pixels (block_reduce.cuh); biases by ATen reductions in fp32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "../common/gated_residual_args.h"
#include "../common/rpg_args.h"
#include "../common/rpg_primitives.h"
#include "block_reduce.cuh"

namespace mtl_ops::cuda {
namespace {

constexpr int kThreads = 256;

// Per primitive: kind, a, b, offset into the flat frozen buffer, Hn, Wn.
struct Meta {
  const int64_t* m;
  MTL_HOST_DEVICE int kind(int p) const { return static_cast<int>(m[p * 6]); }
  MTL_HOST_DEVICE int a(int p) const { return static_cast<int>(m[p * 6 + 1]); }
  MTL_HOST_DEVICE int b(int p) const { return static_cast<int>(m[p * 6 + 2]); }
  MTL_HOST_DEVICE int64_t off(int p) const { return m[p * 6 + 3]; }
  MTL_HOST_DEVICE int64_t hn(int p) const { return m[p * 6 + 4]; }
  MTL_HOST_DEVICE int64_t wn(int p) const { return m[p * 6 + 5]; }
};

struct Dims {
  int64_t C, H, W, Ho, Wo, B, Csh, Csp, k, cpg, opg, stride, P, Hp, Wp;
};

// Response of primitive p on channel c of image n at output pixel (i, j).
template <typename V>
__device__ V response(const V* xz, const V* xn, const V* fz, Meta meta, const Dims& d, int p, int64_t n, int64_t c,
                      int64_t i, int64_t j) {
  const int64_t plane = d.Hp * d.Wp, h0 = i * d.stride, w0 = j * d.stride;
  const int64_t centre = (h0 + d.P) * d.Wp + (w0 + d.P);
  const int kind = meta.kind(p), a = meta.a(p), b = meta.b(p);
  if (kind == kDenseConv)
    return rpg_dense_response(xz + n * d.C * plane + centre, plane, d.Wp, d.C, fz + meta.off(p) + c * d.C * 9, a);
  V r = V(0);
  const V* at = (kind == kMaxPool ? xn : xz) + (n * d.C + c) * plane + centre;
  const V* w9 = fz + meta.off(p) + c * 9;
  const V noise = kind == kNoise ? fz[meta.off(p) + (c * meta.hn(p) + h0 % meta.hn(p)) * meta.wn(p) + w0 % meta.wn(p)]
                                 : V(0);
  rpg_dispatch_kind(kind, [&](auto kc) { r = rpg_response<decltype(kc)::value, V>(at, d.Wp, a, b, w9, noise); });
  return r;
}

template <typename scalar_t, typename V>
__global__ void forward_kernel(const V* xz, const V* xn, const V* fz, Meta meta, Dims d, const V* wsh, const V* bsh,
                               const V* wsp, const V* bsp, scalar_t* y, int64_t total) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t HWo = d.Ho * d.Wo, Cout = d.Csh + d.Csp;
  const int64_t pix = idx % HWo, o = (idx / HWo) % Cout, n = idx / (HWo * Cout);
  const int64_t i = pix / d.Wo, j = pix % d.Wo, t = n / d.B;
  V sum;
  if (o < d.Csh) {
    sum = bsh[o];
    const int64_t g = o / d.opg;
    for (int64_t cl = 0; cl < d.cpg; ++cl)
      for (int p = 0; p < d.k; ++p)
        sum += wsh[(o * d.cpg + cl) * d.k + p] * response(xz, xn, fz, meta, d, p, n, g * d.cpg + cl, i, j);
  } else {
    const int64_t q = o - d.Csh, plane = d.Hp * d.Wp;
    const V* at = xz + n * d.C * plane + (i * d.stride + d.P) * d.Wp + (j * d.stride + d.P);
    sum = bsp[t * d.Csp + q] + rpg_dense_response(at, plane, d.Wp, d.C, wsp + (t * d.Csp + q) * d.C * 9, 1);
  }
  y[idx] = static_cast<scalar_t>(sum);
}

template <typename V>
struct AtomicAdder {
  V* base;
  __device__ void operator()(int64_t off, V v) const { atomicAdd(base + off, v); }
};

template <typename V>
__global__ void input_grad_kernel(const V* dy, const V* xn, const V* fz, Meta meta, Dims d, const V* wsh,
                                  const V* wsp, V* dxp, int64_t total) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t HWo = d.Ho * d.Wo, Cout = d.Csh + d.Csp, plane = d.Hp * d.Wp;
  const int64_t pix = idx % HWo, c = (idx / HWo) % d.C, n = idx / (HWo * d.C);
  const int64_t i = pix / d.Wo, j = pix % d.Wo, t = n / d.B, g = c / d.cpg, cl = c % d.cpg;
  const int64_t centre = (i * d.stride + d.P) * d.Wp + (j * d.stride + d.P);
  const V* dyn = dy + n * Cout * HWo + pix;
  for (int p = 0; p < d.k && d.Csh > 0; ++p) {  // no shared channels: nothing reaches the primitives
    V gp = V(0);
    for (int64_t o = g * d.opg; o < (g + 1) * d.opg; ++o) gp += wsh[(o * d.cpg + cl) * d.k + p] * dyn[o * HWo];
    const int kind = meta.kind(p), a = meta.a(p), b = meta.b(p);
    if (kind == kDenseConv) {
      const V* w = fz + meta.off(p) + c * d.C * 9;
      for (int64_t c2 = 0; c2 < d.C; ++c2)
        for (int u = 0; u < 3; ++u)
          for (int v = 0; v < 3; ++v)
            atomicAdd(dxp + (n * d.C + c2) * plane + centre + (u - 1) * a * d.Wp + (v - 1) * a,
                      w[(c2 * 3 + u) * 3 + v] * gp);
      continue;
    }
    const V* at = xn + (n * d.C + c) * plane + centre;
    const AtomicAdder<V> add{dxp + (n * d.C + c) * plane + centre};
    const V* w9 = fz + meta.off(p) + c * 9;
    rpg_dispatch_kind(kind, [&](auto kc) { rpg_adjoint<decltype(kc)::value, V>(at, d.Wp, a, b, w9, gp, add); });
  }
  for (int u = 0; u < 3; ++u)
    for (int v = 0; v < 3; ++v) {
      V s = V(0);
      for (int64_t q = 0; q < d.Csp; ++q) s += wsp[((t * d.Csp + q) * d.C + c) * 9 + u * 3 + v] * dyn[(d.Csh + q) * HWo];
      atomicAdd(dxp + (n * d.C + c) * plane + centre + (u - 1) * d.Wp + (v - 1), s);
    }
}

// One block per w_shared element (o, cl·k + p): Σ over images and pixels of dy[n, o] · response.
template <typename V>
__global__ void shared_weight_grad_kernel(const V* dy, const V* xz, const V* xn, const V* fz, Meta meta, Dims d,
                                          int64_t N, V* dwsh) {
  const int64_t e = blockIdx.x, o = e / (d.cpg * d.k), cl = (e / d.k) % d.cpg, p = e % d.k;
  const int64_t c = (o / d.opg) * d.cpg + cl, HWo = d.Ho * d.Wo, Cout = d.Csh + d.Csp;
  V sum = V(0), unused = V(0);
  for (int64_t r = threadIdx.x; r < N * HWo; r += blockDim.x) {
    const int64_t n = r / HWo, pix = r % HWo;
    sum += dy[(n * Cout + o) * HWo + pix] *
           response(xz, xn, fz, meta, d, static_cast<int>(p), n, c, pix / d.Wo, pix % d.Wo);
  }
  block_sum2(sum, unused);
  if (threadIdx.x == 0) dwsh[e] = sum;
}

// One block per w_task element (t, q, c, u, v): Σ over task t's images and pixels of dy[n, C_sh + q] · tap.
template <typename V>
__global__ void task_weight_grad_kernel(const V* dy, const V* xz, Dims d, V* dwsp) {
  const int64_t e = blockIdx.x, uv = e % 9, c = (e / 9) % d.C, q = (e / (9 * d.C)) % d.Csp, t = e / (9 * d.C * d.Csp);
  const int64_t HWo = d.Ho * d.Wo, Cout = d.Csh + d.Csp, plane = d.Hp * d.Wp;
  const int64_t u = uv / 3, v = uv % 3;
  V sum = V(0), unused = V(0);
  for (int64_t r = threadIdx.x; r < d.B * HWo; r += blockDim.x) {
    const int64_t n = t * d.B + r / HWo, pix = r % HWo, i = pix / d.Wo, j = pix % d.Wo;
    sum += dy[(n * Cout + d.Csh + q) * HWo + pix] *
           xz[(n * d.C + c) * plane + (i * d.stride + d.P + u - 1) * d.Wp + (j * d.stride + d.P + v - 1)];
  }
  block_sum2(sum, unused);
  if (threadIdx.x == 0) dwsp[e] = sum;
}

struct Prepared {
  at::Tensor xz, xn, fz, meta;
  Dims d;
};

Prepared prepare(const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params, at::TensorList frozen,
                 const RpgShape& s, at::ScalarType acc) {
  int64_t P = 1;
  bool has_max = false;
  std::vector<int64_t> meta;
  std::vector<at::Tensor> flat;
  int64_t off = 0;
  for (int64_t p = 0; p < s.k; ++p) {
    const int kind = static_cast<int>(kinds[p]), a = static_cast<int>(params[2 * p]), b = static_cast<int>(params[2 * p + 1]);
    P = std::max<int64_t>(P, rpg_radius(kind, a, b));
    has_max = has_max || kind == kMaxPool;
    const bool has = kind == kDwConv || kind == kDenseConv || kind == kNoise;
    meta.insert(meta.end(), {kind, a, b, off, kind == kNoise ? frozen[p].size(1) : 1, kind == kNoise ? frozen[p].size(2) : 1});
    if (has) {
      flat.push_back(frozen[p].detach().to(acc).reshape(-1));
      off += flat.back().numel();
    }
  }
  Prepared r;
  const auto x = x_in.detach().to(acc);
  r.xz = at::constant_pad_nd(x, {P, P, P, P}, 0).contiguous();
  r.xn = has_max ? at::constant_pad_nd(x, {P, P, P, P}, -std::numeric_limits<double>::infinity()).contiguous() : r.xz;
  r.fz = flat.empty() ? at::zeros({1}, x.options()) : at::cat(flat).contiguous();
  r.meta = at::tensor(meta, at::TensorOptions().dtype(at::kLong)).to(x.device());
  r.d = Dims{s.C, s.H, s.W, s.Ho, s.Wo, s.B, s.Csh, s.Csp, s.k, s.cpg, std::max<int64_t>(s.opg, 1), s.stride, P,
             s.H + 2 * P, s.W + 2 * P};
  return r;
}

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "routed_primitive_gather (cuda backend): tensors must be on a CUDA device, got ", x.device());
}

int blocks_for(int64_t total) { return static_cast<int>((total + kThreads - 1) / kThreads); }

at::Tensor routed_primitive_gather_forward(const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params,
                                           at::TensorList frozen, const at::Tensor& w_shared,
                                           const at::Tensor& b_shared, const at::Tensor& w_task,
                                           const at::Tensor& b_task, int64_t stride, int64_t groups) {
  const RpgShape s = check_rpg_args(x_in, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups);
  check_cuda(x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::NoGradGuard no_grad;
  auto y = at::empty({s.N, s.Cout, s.Ho, s.Wo}, x_in.options());
  const int64_t total = y.numel();
  if (total == 0) return y;
  const auto acc = accumulate_type_of(x_in.scalar_type());
  const auto pr = prepare(x_in, kinds, params, frozen, s, acc);
  const auto wsh = w_shared.detach().to(acc).contiguous(), bsh = b_shared.detach().to(acc).contiguous();
  const auto wsp = w_task.detach().to(acc).contiguous(), bsp = b_task.detach().to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "rpg_forward_cuda", [&] {
    using V = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    forward_kernel<scalar_t, V><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        pr.xz.const_data_ptr<V>(), pr.xn.const_data_ptr<V>(), pr.fz.const_data_ptr<V>(),
        Meta{pr.meta.const_data_ptr<int64_t>()}, pr.d, wsh.const_data_ptr<V>(), bsh.const_data_ptr<V>(),
        wsp.const_data_ptr<V>(), bsp.const_data_ptr<V>(), y.mutable_data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> routed_primitive_gather_backward(
    const at::Tensor& grad_out, const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params,
    at::TensorList frozen, const at::Tensor& w_shared, const at::Tensor& b_shared, const at::Tensor& w_task,
    const at::Tensor& b_task, int64_t stride, int64_t groups) {
  const RpgShape s = check_rpg_args(x_in, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups);
  check_cuda(x_in);
  check_rpg_grad_out(grad_out, x_in, s);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::NoGradGuard no_grad;
  const auto acc = accumulate_type_of(x_in.scalar_type());
  const auto pr = prepare(x_in, kinds, params, frozen, s, acc);
  const auto dy = grad_out.detach().to(acc).contiguous();
  const auto wsh = w_shared.detach().to(acc).contiguous(), wsp = w_task.detach().to(acc).contiguous();
  auto dxp = at::zeros_like(pr.xz);
  auto dwsh = at::zeros({s.Csh, s.k * s.cpg}, dy.options());
  auto dwsp = at::zeros({s.T, s.Csp, s.C * 9}, dy.options());
  const int64_t total = s.N * s.C * s.Ho * s.Wo;
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES(acc, "rpg_backward_cuda", [&] {
      using V = scalar_t;
      const auto stream = at::cuda::getCurrentCUDAStream();
      const Meta meta{pr.meta.const_data_ptr<int64_t>()};
      input_grad_kernel<V><<<blocks_for(total), kThreads, 0, stream>>>(
          dy.const_data_ptr<V>(), pr.xn.const_data_ptr<V>(), pr.fz.const_data_ptr<V>(), meta, pr.d,
          wsh.const_data_ptr<V>(), wsp.const_data_ptr<V>(), dxp.mutable_data_ptr<V>(), total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (dwsh.numel() > 0) {
        shared_weight_grad_kernel<V><<<dwsh.numel(), kThreads, 0, stream>>>(
            dy.const_data_ptr<V>(), pr.xz.const_data_ptr<V>(), pr.xn.const_data_ptr<V>(), pr.fz.const_data_ptr<V>(),
            meta, pr.d, s.N, dwsh.mutable_data_ptr<V>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (dwsp.numel() > 0) {
        task_weight_grad_kernel<V><<<dwsp.numel(), kThreads, 0, stream>>>(dy.const_data_ptr<V>(),
                                                                          pr.xz.const_data_ptr<V>(), pr.d,
                                                                          dwsp.mutable_data_ptr<V>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  const auto dt = x_in.scalar_type();
  const int64_t P = pr.d.P;
  auto dx = dxp.narrow(2, P, s.H).narrow(3, P, s.W).contiguous().to(dt);
  auto dbsh = dy.narrow(1, 0, s.Csh).sum(at::IntArrayRef{0, 2, 3}).to(dt);
  auto dbsp = dy.narrow(1, s.Csh, s.Csp).reshape({s.T, s.B, s.Csp, s.Ho * s.Wo}).sum(at::IntArrayRef{1, 3}).to(dt);
  return {dx, dwsh.view(w_shared.sizes()).to(dt), dbsh, dwsp.view({s.T, s.Csp, s.C, 3, 3}).to(dt), dbsp};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CUDA, m) {
  m.impl("routed_primitive_gather_forward", &routed_primitive_gather_forward);
  m.impl("routed_primitive_gather_backward", &routed_primitive_gather_backward);
}

}  // namespace mtl_ops::cuda
