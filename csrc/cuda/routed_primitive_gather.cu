// CUDA kernels of routed_primitive_gather (ETR-NLP): every response computed once, the reductions as
// matrix products, the input gradient in gather form (deterministic), no host-to-device copy per call.
//
// forward
//   1. The input is copied once into padded planes (zeros; a second copy padded with -inf for max pool),
//      so the per-pixel math of csrc/common/rpg_primitives.h runs without bounds checks, as on the CPU.
//   2. response_kernel writes the primitive bank R (images, C_in·k, Ho·Wo) in the accumulation dtype, one
//      thread per (image, channel, output pixel) evaluating the k responses once (rows c·k + p: the shuffled
//      order, so group g is one block of k·C_in/G rows). dense_conv primitives are 9 accumulated matrix
//      products on shifted views of the padded planes (no im2col).
//   3. Shared channels: one batched GEMM per group, W_g · R_g. Task channels: task t's 3x3 convolution as 9
//      accumulated batched GEMMs, w_task[t, :, :, u, v] · (the planes shifted by tap (u, v)). The shifted
//      views run over padded rows (Ho x Wp output grid); the Wp - Wo extra columns are never read back.
//   4. epilogue_kernel adds the biases and writes y in x's dtype.
//   Memory: R is k·C_in/C_out times the output in fp32 (about 5x with the default five primitives), plus
//   the padded copies of x. Images are processed in chunks so that R stays under bank_bytes_bound().
// backward (the responses are recomputed chunk by chunk; the max-pool argmax is recorded on the way)
//   d w_shared[g] = Σ_images dY_g · R_gᵀ, then d R_g = W_gᵀ · dY_g into R's buffer (batched GEMMs; the
//   per-image products are summed in a fixed order). d w_task[t, :, :, u, v] = Σ_images (dY on the input
//   grid, shifted by the tap) · xᵀ, one batched GEMM per tap, the same fixed-order sum.
//   d x: input_grad_kernel, one thread per input pixel, sums in a fixed order the gather form of every
//   adjoint (each primitive's from d R, dense_conv's and the task convolution's from d R and dY). No
//   atomics: d x is the same bit for bit on every run, like the CPU kernel's. Biases: ATen sums.
// The primitive table travels by value as a kernel argument (no host-to-device copy), so a call can be
// captured in a CUDA graph.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/gated_residual_args.h"
#include "../common/rpg_args.h"
#include "../common/rpg_primitives.h"

namespace mtl_ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;
// Primitives per kernel launch: the table is a by-value kernel argument of fixed size (about 0.5 KB);
// more primitives take more launches.
constexpr int kMaxPrimsPerLaunch = 16;
// Default bound on the primitive bank R (and its companions) held at once; MTL_OPS_RPG_BANK_BYTES overrides.
constexpr int64_t kDefaultBankBytes = int64_t(1) << 30;

struct PrimArg {
  int kind, a, b;
  int max_slot;    // max pool: which of the argmax planes holds its taps (backward); -1 otherwise
  int64_t frozen;  // offset of its frozen tensor in the flat buffer
  int hn, wn;      // noise mask size
};

// Passed by value as a __grid_constant__ kernel argument: read in place from the constant bank (indexed by
// the primitive, uniform across the block), no copy into each thread's local memory.
struct PrimTable {
  int p0, count;  // primitives p0 .. p0 + count - 1
  PrimArg m[kMaxPrimsPerLaunch];
};

// Geometry: the padded planes are Hp x Wp (P on every side), each (image, channel) one plane.
struct Geo {
  int C, H, W, Ho, Wo, s, P, Wp, k, Csh, Csp, B;
  int64_t plane, HWo;
};

// One thread per output pixel of one (image, channel) plane: the plane is blockIdx.x, the pixels are strided
// over blockIdx.y (the y grid is capped at 65535 blocks).
__device__ __forceinline__ int64_t first_pixel() { return int64_t(blockIdx.y) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t pixel_step() { return int64_t(gridDim.y) * blockDim.x; }

// R[image, c·k + p, pixel] for the per-channel primitives of `tab` (dense_conv ones are GEMMs); with `taps`,
// also each max pool's argmax tap (backward), read back by input_grad_kernel.
template <typename V>
__global__ void response_kernel(const V* __restrict__ xz, const V* __restrict__ xn, const V* __restrict__ fz,
                                const __grid_constant__ PrimTable tab, Geo g, int n_max, V* __restrict__ R, uint8_t* __restrict__ taps) {
  const int64_t plane_idx = blockIdx.x;  // image · C + c
  const int c = static_cast<int>(plane_idx % g.C);
  const int64_t nl = plane_idx / g.C;
  for (int64_t m = first_pixel(); m < g.HWo; m += pixel_step()) {
    const int i = static_cast<int>(m) / g.Wo, j = static_cast<int>(m) % g.Wo;  // 32-bit: HWo < 2^31
    const int h0 = i * g.s, w0 = j * g.s;
    const int64_t centre = plane_idx * g.plane + int64_t(h0 + g.P) * g.Wp + (w0 + g.P);
    for (int e = 0; e < tab.count; ++e) {
      const PrimArg pr = tab.m[e];
      if (pr.kind == kDenseConv) continue;
      const V* w9 = fz + pr.frozen + c * 9;
      const V noise = pr.kind == kNoise
                          ? fz[pr.frozen + (int64_t(c) * pr.hn + h0 % pr.hn) * pr.wn + w0 % pr.wn]
                          : V(0);
      V r = V(0);
      rpg_dispatch_kind(pr.kind, [&](auto kc) {
        constexpr int K = decltype(kc)::value;
        const V* at = (K == kMaxPool ? xn : xz) + centre;
        r = rpg_response<K, V>(at, g.Wp, pr.a, pr.b, w9, noise);
        if constexpr (K == kMaxPool) {
          if (taps != nullptr)
            taps[((nl * n_max + pr.max_slot) * g.C + c) * g.HWo + m] =
                static_cast<uint8_t>(rpg_max_tap(at, g.Wp, rpg_max_first_tap(h0, w0)));
        }
      });
      R[((nl * g.C + c) * g.k + tab.p0 + e) * g.HWo + m] = r;
    }
  }
}

// d x of one input pixel per thread: the gather-form adjoints of the primitives of `tab` (from d R) and,
// with `task`, of task t's convolution (from dY), summed in a fixed order; `accumulate` adds to d x (the
// launches after the first, when there are more primitives than one table holds). kUnit: stride 1, so that
// the divisions by the stride in the gathers fold away.
template <typename V, bool kUnit>
__global__ void input_grad_kernel(const V* __restrict__ dR, const uint8_t* __restrict__ taps,
                                  const V* __restrict__ dy, const V* __restrict__ fz, const V* __restrict__ wsp,
                                  const __grid_constant__ PrimTable tab, Geo g, int64_t n0, int n_max, bool task, bool accumulate,
                                  V* __restrict__ dx) {
  const int64_t plane_idx = blockIdx.x;  // local image · C + c
  const int c = static_cast<int>(plane_idx % g.C);
  const int64_t nl = plane_idx / g.C, n = n0 + nl, HW = int64_t(g.H) * g.W;
  const int s = kUnit ? 1 : g.s;
  const int64_t t = n / g.B;
  for (int64_t q = first_pixel(); q < HW; q += pixel_step()) {
    const int h = static_cast<int>(q) / g.W, w = static_cast<int>(q) % g.W;  // 32-bit: H·W < 2^31
    V sum = accumulate ? dx[plane_idx * HW + q] : V(0);
    for (int e = 0; e < tab.count; ++e) {
      const PrimArg pr = tab.m[e];
      const int64_t p = tab.p0 + e;
      if (pr.kind == kDenseConv) {  // Σ over the C_in output channels c2 of this primitive: rows c2·k + p
        sum += rpg_dense_adjoint_gather(dR + (nl * g.C * g.k + p) * g.HWo, int64_t(g.k) * g.HWo, g.C,
                                        fz + pr.frozen + c * 9, int64_t(g.C) * 9, g.Ho, g.Wo, h, w, s, pr.a);
        continue;
      }
      const V* gp = dR + ((nl * g.C + c) * g.k + p) * g.HWo;
      rpg_dispatch_kind(pr.kind, [&](auto kc) {
        constexpr int K = decltype(kc)::value;
        if constexpr (K == kMaxPool) {
          const uint8_t* tp = taps + ((nl * n_max + pr.max_slot) * g.C + c) * g.HWo;
          sum += rpg_max_adjoint_gather(gp, g.Ho, g.Wo, h, w, s,
                                        [&](int i, int j) { return static_cast<int>(tp[int64_t(i) * g.Wo + j]); });
        } else {
          sum += rpg_linear_adjoint_gather<K, V>(gp, g.Ho, g.Wo, h, w, s, pr.a, pr.b, fz + pr.frozen + c * 9);
        }
      });
    }
    if (task)  // task t's 3x3 (dilation 1): rows C_sh .. C_out - 1 of dY, weights w_task[t, :, c]
      sum += rpg_dense_adjoint_gather(dy + (n * (g.Csh + g.Csp) + g.Csh) * g.HWo, g.HWo, g.Csp,
                                      wsp + (t * g.Csp * g.C + c) * 9, int64_t(g.C) * 9, g.Ho, g.Wo, h, w, s, 1);
    dx[plane_idx * HW + q] = sum;
  }
}

// y = (shared part + b_shared | task part + b_task[t]) in x's dtype; the task part lies on the Ho x Wp grid.
template <typename scalar_t, typename V>
__global__ void epilogue_kernel(const V* __restrict__ ysh, const V* __restrict__ ysp, const V* __restrict__ bsh,
                                const V* __restrict__ bsp, Geo g, scalar_t* __restrict__ y) {
  const int64_t plane_idx = blockIdx.x;  // image · C_out + o
  const int Cout = g.Csh + g.Csp;
  const int o = static_cast<int>(plane_idx % Cout);
  const int64_t n = plane_idx / Cout, t = n / g.B;
  for (int64_t m = first_pixel(); m < g.HWo; m += pixel_step()) {
    V v;
    if (o < g.Csh) {
      v = ysh[(n * g.Csh + o) * g.HWo + m] + bsh[o];
    } else {
      const int q = o - g.Csh;
      const int i = static_cast<int>(m) / g.Wo, j = static_cast<int>(m) % g.Wo;
      v = ysp[((n * g.Csp + q) * g.Ho + i) * g.Wp + j] + bsp[t * g.Csp + q];
    }
    y[plane_idx * g.HWo + m] = static_cast<scalar_t>(v);
  }
}

dim3 plane_grid(int64_t planes, int64_t pixels) {
  TORCH_CHECK(planes <= INT_MAX, "routed_primitive_gather (cuda backend): too many planes for one launch (", planes,
              ")");
  const int64_t y = std::min<int64_t>(kMaxGridY, std::max<int64_t>(1, (pixels + kThreads - 1) / kThreads));
  return dim3(static_cast<unsigned>(planes), static_cast<unsigned>(y));
}

// ---- matrix products ----------------------------------------------------------------------------------
// Every matrix product of the op goes through these two functions, batched (cuBLAS strided-batched GEMMs
// through ATen, deterministic run to run). Precision: exact fp32 (fp64 for fp64), as on the CPU, whatever
// torch.backends.cuda.matmul.allow_tf32 / torch.set_float32_matmul_precision say: NoTF32Guard is
// thread-local and puts cuBLAS in full fp32 for the call. (It does not reach cuBLASLt, which ATen uses for
// these products only when torch.backends.cuda.preferred_blas_library("cublaslt") or TunableOp is chosen.)
// An opt-in to TF32 would be wired here and nowhere else.
void gemm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const at::NoTF32Guard exact_fp32;
  if (accumulate) {
    out.baddbmm_(a, b);
  } else {
    at::bmm_out(out, a, b);
  }
}

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b) {
  const at::NoTF32Guard exact_fp32;
  return at::bmm(a, b);
}

// ---- preparation ---------------------------------------------------------------------------------------
struct Prepared {
  Geo g;
  at::Tensor xz, xn;  // flat padded planes (zeros / -inf), accumulation dtype
  at::Tensor fz;      // the frozen tensors, flat, accumulation dtype
  std::vector<PrimTable> tables;
  std::vector<int64_t> dense;         // the dense_conv primitives
  std::vector<at::Tensor> dense_w;    // their kernels as (3, 3, C_out, C_in)
  int n_max = 0;                      // max-pool primitives
};

// The bound on R and its per-chunk companions; MTL_OPS_RPG_BANK_BYTES (bytes) lowers it, e.g. to exercise
// the chunking in tests.
int64_t bank_bytes_bound() {
  const char* env = std::getenv("MTL_OPS_RPG_BANK_BYTES");
  if (env == nullptr || *env == '\0') return kDefaultBankBytes;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != nullptr && *end == '\0' && v > 0,
              "routed_primitive_gather (cuda backend): MTL_OPS_RPG_BANK_BYTES must be a positive number of bytes, "
              "got '", env, "'");
  return v;
}

int64_t images_per_chunk(int64_t bytes_per_image, int64_t N) {
  return std::max<int64_t>(1, std::min<int64_t>(N, bank_bytes_bound() / std::max<int64_t>(1, bytes_per_image)));
}

Prepared prepare(const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params, at::TensorList frozen,
                 const RpgShape& s, at::ScalarType acc) {
  Prepared r;
  int64_t P = 1, dmax = 1;
  std::vector<at::Tensor> flat;
  int64_t off = 0;
  for (int64_t p = 0; p < s.k; ++p) {
    if (p % kMaxPrimsPerLaunch == 0) {
      PrimTable t{};
      t.p0 = static_cast<int>(p);
      t.count = static_cast<int>(std::min<int64_t>(kMaxPrimsPerLaunch, s.k - p));
      r.tables.push_back(t);
    }
    PrimArg& a = r.tables.back().m[p % kMaxPrimsPerLaunch];
    a.kind = static_cast<int>(kinds[p]);
    a.a = static_cast<int>(params[2 * p]);
    a.b = static_cast<int>(params[2 * p + 1]);
    a.max_slot = a.kind == kMaxPool ? r.n_max++ : -1;
    a.frozen = off;
    a.hn = a.kind == kNoise ? static_cast<int>(frozen[p].size(1)) : 1;
    a.wn = a.kind == kNoise ? static_cast<int>(frozen[p].size(2)) : 1;
    P = std::max<int64_t>(P, rpg_radius(a.kind, a.a, a.b));
    if (a.kind == kDwConv || a.kind == kDenseConv || a.kind == kNoise) {
      flat.push_back(frozen[p].detach().to(acc).reshape(-1));
      off += flat.back().numel();
    }
    if (a.kind == kDenseConv) {
      r.dense.push_back(p);
      r.dense_w.push_back(frozen[p].detach().to(acc).permute({2, 3, 0, 1}).contiguous());
      dmax = std::max<int64_t>(dmax, a.a);
    }
  }
  const int64_t Wp = s.W + 2 * P, Hp = s.H + 2 * P, plane = Hp * Wp;
  TORCH_CHECK(Hp * Wp < INT_MAX && s.Ho * Wp < INT_MAX && Hp < INT_MAX / 4 && Wp < INT_MAX / 4,
              "routed_primitive_gather (cuda backend): planes above 2^31 pixels are not supported, got H = ", s.H,
              ", W = ", s.W);
  r.g = Geo{static_cast<int>(s.C), static_cast<int>(s.H), static_cast<int>(s.W), static_cast<int>(s.Ho),
            static_cast<int>(s.Wo), static_cast<int>(s.stride), static_cast<int>(P), static_cast<int>(Wp),
            static_cast<int>(s.k), static_cast<int>(s.Csh), static_cast<int>(s.Csp), static_cast<int>(s.B), plane,
            s.Ho * s.Wo};
  // The shifted views (shifted() below) of the last plane reach past its end by up to a few rows: they
  // read junk there (the Wp - Wo extra columns), which must still lie inside the allocation.
  const int64_t planes = s.N * s.C;
  const int64_t reach = (P + dmax) * (Wp + 1) + s.stride * (s.Ho * Wp - 1) + 1;
  const int64_t alloc = std::max<int64_t>(planes * plane, (planes - 1) * plane + reach);
  const auto opt = x_in.options().dtype(acc);
  const auto x = x_in.detach();
  auto interior = [&](const at::Tensor& t) {
    return t.as_strided({s.N, s.C, s.H, s.W}, {s.C * plane, plane, Wp, 1}, P * Wp + P);
  };
  r.xz = at::zeros({alloc}, opt);
  interior(r.xz).copy_(x);
  if (r.n_max > 0) {
    r.xn = at::full({alloc}, -std::numeric_limits<double>::infinity(), opt);
    interior(r.xn).copy_(x);
  } else {
    r.xn = r.xz;  // never read as -inf padded
  }
  r.fz = flat.empty() ? at::zeros({1}, opt) : at::cat(flat).contiguous();
  return r;
}

// (nb, C, Ho·Wp) view of the padded planes of images n0 .. n0 + nb - 1: element (n, c, i·Wp + j) is input
// pixel (i·s + (u - 1)·d, j·s + (v - 1)·d) of channel c for j < Wo (padding outside the image); columns
// j >= Wo are junk, computed by the GEMMs and never read back.
at::Tensor shifted(const Prepared& pr, int64_t n0, int64_t nb, int u, int v, int64_t d) {
  const Geo& g = pr.g;
  const int64_t base = (g.P + (u - 1) * d) * g.Wp + (g.P + (v - 1) * d);
  return pr.xz.as_strided({nb, g.C, int64_t(g.Ho) * g.Wp}, {g.C * g.plane, g.plane, g.s},
                          n0 * g.C * g.plane + base);
}

int64_t dense_scratch_bytes(const Prepared& pr, int64_t esize) {
  return pr.dense.empty() ? 0 : int64_t(pr.g.C) * pr.g.Ho * pr.g.Wp * esize;
}

// R (nb, C·k, Ho·Wo) of images n0 .. n0 + nb - 1 (and the max-pool argmax taps when `taps` is defined).
template <typename V>
void fill_bank(const Prepared& pr, int64_t n0, int64_t nb, at::Tensor& R, const at::Tensor& taps) {
  const Geo& g = pr.g;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t offset = n0 * g.C * g.plane;
  for (const PrimTable& tab : pr.tables) {
    response_kernel<V><<<plane_grid(nb * g.C, g.HWo), kThreads, 0, stream>>>(
        pr.xz.const_data_ptr<V>() + offset, pr.xn.const_data_ptr<V>() + offset, pr.fz.const_data_ptr<V>(), tab, g,
        pr.n_max, R.mutable_data_ptr<V>(), taps.defined() ? taps.mutable_data_ptr<uint8_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  for (size_t e = 0; e < pr.dense.size(); ++e) {  // dense_conv: Σ_taps K[:, :, u, v] · (shifted planes)
    const int64_t p = pr.dense[e];
    const int d = pr.tables[p / kMaxPrimsPerLaunch].m[p % kMaxPrimsPerLaunch].a;
    auto D = at::empty({nb, g.C, int64_t(g.Ho) * g.Wp}, R.options());
    for (int u = 0; u < 3; ++u)
      for (int v = 0; v < 3; ++v)
        gemm_into(D, pr.dense_w[e][u][v].expand({nb, g.C, g.C}), shifted(pr, n0, nb, u, v, d), u + v > 0);
    R.view({nb, g.C, g.k, g.Ho, g.Wo}).select(2, p).copy_(D.view({nb, g.C, g.Ho, g.Wp}).narrow(3, 0, g.Wo));
  }
}

void check_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "routed_primitive_gather (cuda backend): tensors must be on a CUDA device, got ", x.device());
}

at::Tensor routed_primitive_gather_forward(const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params,
                                           at::TensorList frozen, const at::Tensor& w_shared,
                                           const at::Tensor& b_shared, const at::Tensor& w_task,
                                           const at::Tensor& b_task, int64_t stride, int64_t groups) {
  const RpgShape s = check_rpg_args(x_in, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups);
  check_cuda(x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::NoGradGuard no_grad;  // the GEMMs write into views of buffers (out= and in-place variants)
  auto y = at::empty({s.N, s.Cout, s.Ho, s.Wo}, x_in.options());
  if (y.numel() == 0) return y;
  const auto acc = accumulate_type_of(x_in.scalar_type());
  const auto opt = x_in.options().dtype(acc);
  const Prepared pr = prepare(x_in, kinds, params, frozen, s, acc);
  const Geo& g = pr.g;
  const int64_t Kg = s.k * s.cpg;
  at::Tensor ysh, ysp, bsh, bsp;
  AT_DISPATCH_FLOATING_TYPES(acc, "rpg_forward_cuda", [&] {
    using V = scalar_t;
    if (s.Csh > 0) {
      bsh = b_shared.detach().to(acc).contiguous();
      const auto wsh = w_shared.detach().to(acc).reshape({s.G, s.opg, Kg});
      ysh = at::empty({s.N, s.Csh, g.HWo}, opt);
      const int64_t nc = images_per_chunk(s.k * s.C * g.HWo * int64_t(sizeof(V)) + dense_scratch_bytes(pr, sizeof(V)), s.N);
      auto R = at::empty({nc, s.k * s.C, g.HWo}, opt);
      for (int64_t n0 = 0; n0 < s.N; n0 += nc) {
        const int64_t nb = std::min(nc, s.N - n0);
        auto Rv = R.narrow(0, 0, nb);
        fill_bank<V>(pr, n0, nb, Rv, at::Tensor());
        for (int64_t gi = 0; gi < s.G; ++gi)
          gemm_into(ysh.narrow(0, n0, nb).narrow(1, gi * s.opg, s.opg), wsh[gi].expand({nb, s.opg, Kg}),
                    Rv.narrow(1, gi * Kg, Kg), false);
      }
    }
    if (s.Csp > 0) {
      bsp = b_task.detach().to(acc).contiguous();
      const auto wt = w_task.detach().to(acc).permute({3, 4, 0, 1, 2}).contiguous();  // (3, 3, T, C_sp, C_in)
      ysp = at::empty({s.N, s.Csp, int64_t(g.Ho) * g.Wp}, opt);
      for (int u = 0; u < 3; ++u)
        for (int v = 0; v < 3; ++v) {
          const auto a = wt[u][v].unsqueeze(1).expand({s.T, s.B, s.Csp, s.C}).reshape({s.N, s.Csp, s.C});
          gemm_into(ysp, a, shifted(pr, 0, s.N, u, v, 1), u + v > 0);
        }
    }
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "rpg_epilogue_cuda", [&] {
    using V = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    epilogue_kernel<scalar_t, V><<<plane_grid(s.N * s.Cout, g.HWo), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        ysh.defined() ? ysh.const_data_ptr<V>() : nullptr, ysp.defined() ? ysp.const_data_ptr<V>() : nullptr,
        bsh.defined() ? bsh.const_data_ptr<V>() : nullptr, bsp.defined() ? bsp.const_data_ptr<V>() : nullptr, g,
        y.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

template <typename V>
void launch_input_grad(const Prepared& pr, const at::Tensor& dR, const at::Tensor& taps, const at::Tensor& dy,
                       const at::Tensor& wsp, int64_t n0, int64_t nb, const at::Tensor& dx) {
  const Geo& g = pr.g;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid = plane_grid(nb * g.C, int64_t(g.H) * g.W);
  // Without shared channels nothing reaches the primitives: one launch with an empty table.
  const std::vector<PrimTable> none{PrimTable{0, 0, {}}};
  const auto& tables = dR.defined() ? pr.tables : none;
  for (size_t ti = 0; ti < tables.size(); ++ti) {
    const bool task = ti == 0 && g.Csp > 0, accumulate = ti > 0;
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, stream>>>(
          dR.defined() ? dR.const_data_ptr<V>() : nullptr, taps.defined() ? taps.const_data_ptr<uint8_t>() : nullptr,
          dy.const_data_ptr<V>(), pr.fz.const_data_ptr<V>(), wsp.const_data_ptr<V>(), tables[ti], g, n0, pr.n_max,
          task, accumulate, dx.mutable_data_ptr<V>() + n0 * g.C * g.H * g.W);
    };
    if (g.s == 1) {
      launch(input_grad_kernel<V, true>);
    } else {
      launch(input_grad_kernel<V, false>);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
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
  const auto opt = x_in.options().dtype(acc);
  const auto dt = x_in.scalar_type();
  const int64_t Kg = s.k * s.cpg, HWo = s.Ho * s.Wo;
  const auto dy = grad_out.detach().to(acc).contiguous().view({s.N, s.Cout, HWo});
  auto dx = at::empty({s.N, s.C, s.H, s.W}, opt);
  auto dwsh = at::zeros({s.G, s.opg, Kg}, opt);
  auto dwsp = at::zeros({s.T, s.Csp, s.C, 3, 3}, opt);
  auto dbsh = dy.narrow(1, 0, s.Csh).sum(at::IntArrayRef{0, 2});
  auto dbsp = dy.narrow(1, s.Csh, s.Csp).reshape({s.T, s.B, s.Csp, HWo}).sum(at::IntArrayRef{1, 3});
  if (s.N > 0) {
    const Prepared pr = prepare(x_in, kinds, params, frozen, s, acc);
    const Geo& g = pr.g;
    const auto wsp = w_task.detach().to(acc).contiguous();
    AT_DISPATCH_FLOATING_TYPES(acc, "rpg_backward_cuda", [&] {
      using V = scalar_t;
      if (s.Csp > 0) {
        // d w_task[t, :, :, u, v] = Σ_{images of t} Σ_{h, w} D[:, h - (u - 1), w - (v - 1)] · x[:, h, w], D the
        // task rows of dY placed on the input grid (dY[i, j] at (i·s, j·s), zeros elsewhere) and padded by one,
        // both on rows of Wp: x's extra columns are its zero padding, so they add exact zeros whatever D holds.
        const int64_t Hd = s.H + 3, planeD = Hd * g.Wp, L = s.H * g.Wp;
        auto D = at::zeros({s.N, s.Csp, Hd, g.Wp}, opt);
        D.slice(2, 1, 1 + s.stride * (s.Ho - 1) + 1, s.stride)
            .slice(3, 1, 1 + s.stride * (s.Wo - 1) + 1, s.stride)
            .copy_(dy.narrow(1, s.Csh, s.Csp).view({s.N, s.Csp, s.Ho, s.Wo}));
        const auto xt = pr.xz.as_strided({s.N, s.C, L}, {s.C * g.plane, g.plane, 1}, int64_t(g.P) * g.Wp + g.P)
                            .transpose(1, 2);
        for (int u = 0; u < 3; ++u)
          for (int v = 0; v < 3; ++v) {
            const auto Duv = D.as_strided({s.N, s.Csp, L}, {s.Csp * planeD, planeD, 1}, (2 - u) * g.Wp + (2 - v));
            dwsp.select(4, v).select(3, u).copy_(gemm(Duv, xt).view({s.T, s.B, s.Csp, s.C}).sum(1));
          }
      }
      if (s.Csh > 0) {
        const auto wsh = w_shared.detach().to(acc).reshape({s.G, s.opg, Kg});
        const int64_t per_image = s.k * s.C * HWo * int64_t(sizeof(V)) + pr.n_max * s.C * HWo +
                                  dense_scratch_bytes(pr, sizeof(V));
        const int64_t nc = images_per_chunk(per_image, s.N);
        auto R = at::empty({nc, s.k * s.C, HWo}, opt);
        auto taps = pr.n_max > 0 ? at::empty({nc, pr.n_max * s.C, HWo}, opt.dtype(at::kByte)) : at::Tensor();
        for (int64_t n0 = 0; n0 < s.N; n0 += nc) {
          const int64_t nb = std::min(nc, s.N - n0);
          auto Rv = R.narrow(0, 0, nb);
          const auto tv = taps.defined() ? taps.narrow(0, 0, nb) : at::Tensor();
          fill_bank<V>(pr, n0, nb, Rv, tv);
          for (int64_t gi = 0; gi < s.G; ++gi) {
            const auto dyg = dy.narrow(0, n0, nb).narrow(1, gi * s.opg, s.opg);
            auto Rg = Rv.narrow(1, gi * Kg, Kg);
            dwsh[gi].add_(gemm(dyg, Rg.transpose(1, 2)).sum(0));
            gemm_into(Rg, wsh[gi].t().expand({nb, Kg, s.opg}), dyg, false);  // R_g's rows now hold d R_g
          }
          launch_input_grad<V>(pr, Rv, tv, dy, wsp, n0, nb, dx);
        }
      } else {
        launch_input_grad<V>(pr, at::Tensor(), at::Tensor(), dy, wsp, 0, s.N, dx);
      }
    });
  }
  return {dx.to(dt), dwsh.view(w_shared.sizes()).to(dt), dbsh.to(dt), dwsp.to(dt), dbsp.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(mtl_ops, CUDA, m) {
  m.impl("routed_primitive_gather_forward", &routed_primitive_gather_forward);
  m.impl("routed_primitive_gather_backward", &routed_primitive_gather_backward);
}

}  // namespace mtl_ops::cuda
