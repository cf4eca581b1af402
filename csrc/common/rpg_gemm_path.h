// The CUDA routed_primitive_gather, device-agnostic: its per-thread bodies and its host-side orchestration
// (buffers, shifted views, matrix products, chunking). csrc/cuda/routed_primitive_gather.cu instantiates it
// with a launcher that runs the bodies as CUDA kernels; csrc/tests/test_rpg_gemm_path.cpp with one that
// loops on the CPU, so the whole GPU path runs (and is checked against the CPU kernel) without a GPU.
//
// forward
//   1. The input is copied once into padded planes (zeros; a second copy padded with -inf for max pool),
//      so the per-pixel math of rpg_primitives.h runs without bounds checks, as in the CPU kernel.
//   2. response_at writes the primitive bank R (images, C_in·k, Ho·Wo) in the accumulation dtype, one
//      thread per (image, channel, output pixel) evaluating the k responses once (rows c·k + p: the shuffled
//      order, so group g is one block of k·C_in/G rows). dense_conv primitives are 9 accumulated matrix
//      products on shifted views of the padded planes (no im2col).
//   3. Shared channels: one batched GEMM per group, W_g · R_g. Task channels: task t's 3x3 convolution as 9
//      accumulated batched GEMMs, w_task[t, :, :, u, v] · (the planes shifted by tap (u, v)). The shifted
//      views run over whole padded rows (an Ho x Wp output grid); the Wp - Wo extra columns are discarded.
//   4. epilogue_at adds the biases and writes y in x's dtype.
//   Memory: R is k·C_in/C_out times the output, in fp32 (about 5x with the default five primitives), plus
//   two padded copies of x. Images are processed in chunks so that R stays under bank_bytes_bound().
// backward (the responses are recomputed chunk by chunk; the max-pool argmax taps are recorded on the way)
//   d w_shared[g] = Σ_images dY_g · R_gᵀ, then d R_g = W_gᵀ · dY_g into R's buffer (batched GEMMs; the
//   per-image products summed in a fixed order). d w_task[t, :, :, u, v] = Σ_images (dY placed on the
//   input grid, shifted by the tap) · xᵀ, one batched GEMM per tap, summed the same way.
//   d x: input_grad_at, one thread per input pixel, sums in a fixed order the gather form of every adjoint
//   (each primitive's from d R, dense_conv's and the task convolution's from d R and dY). No atomics: d x is
//   the same bit for bit on every run. Biases: ATen sums.
// The primitive table goes to the kernels by value (no host-to-device copy), so a call can be captured in a
// CUDA graph.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "accumulate_type.h"
#include "rpg_args.h"
#include "rpg_primitives.h"

namespace mtl_ops::rpg_gemm {

// Primitives per kernel launch: the table is a by-value kernel argument of fixed size (about 0.5 KB);
// more primitives take more launches.
constexpr int kMaxPrimsPerLaunch = 16;
// Default bound on the primitive bank R (and its per-image companions) held at once.
constexpr int64_t kDefaultBankBytes = int64_t(1) << 30;

struct PrimArg {
  int kind, a, b;
  int max_slot;    // max pool: which of the argmax-tap planes is its own (backward); -1 otherwise
  int64_t frozen;  // offset of its frozen tensor in the flat buffer
  int hn, wn;      // noise mask size
};

struct PrimTable {
  int p0, count;  // primitives p0 .. p0 + count - 1
  PrimArg m[kMaxPrimsPerLaunch];
};

// Geometry: each (image, channel) is one padded plane of Hp x Wp (P on every side), `plane` elements.
struct Geo {
  int C, H, W, Ho, Wo, s, P, Wp, k, Csh, Csp, B;
  int64_t plane, HWo;
};

// ---- per-thread bodies --------------------------------------------------------------------------------
// R[image, c·k + p, m] for output pixel m of plane plane_idx = image·C + c (images counted from the chunk's
// first), for the per-channel primitives of `tab` (dense_conv ones are GEMMs); with `taps`, also each max
// pool's argmax tap, read back by input_grad_at. xz, xn, R and taps start at the chunk's first image.
template <typename V>
MTL_HOST_DEVICE void response_at(const V* xz, const V* xn, const V* fz, const PrimTable& tab, const Geo& g, int n_max,
                                 V* R, uint8_t* taps, int64_t plane_idx, int64_t m) {
  const int c = static_cast<int>(plane_idx % g.C);
  const int64_t nl = plane_idx / g.C;
  const int i = static_cast<int>(m) / g.Wo, j = static_cast<int>(m) % g.Wo;  // 32-bit: HWo < 2^31
  const int h0 = i * g.s, w0 = j * g.s;
  const int64_t centre = plane_idx * g.plane + int64_t(h0 + g.P) * g.Wp + (w0 + g.P);
  for (int e = 0; e < tab.count; ++e) {
    const PrimArg& pr = tab.m[e];
    if (pr.kind == kDenseConv) continue;
    const V* w9 = fz + pr.frozen + c * 9;
    const V noise =
        pr.kind == kNoise ? fz[pr.frozen + (int64_t(c) * pr.hn + h0 % pr.hn) * pr.wn + w0 % pr.wn] : V(0);
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

// d x at input pixel q of plane plane_idx = image·C + c (images counted from n0, where dR, taps and dx
// start): the gather-form adjoints of the primitives of `tab` (from d R) and, with `task`, of task t's
// convolution (from dY, all images), summed in a fixed order; `accumulate` adds to d x (the launches after
// the first, when there are more primitives than one table holds). kUnit: stride 1, so the divisions by
// the stride in the gathers fold away.
template <typename V, bool kUnit>
MTL_HOST_DEVICE void input_grad_at(const V* dR, const uint8_t* taps, const V* dy, const V* fz, const V* wsp,
                                   const PrimTable& tab, const Geo& g, int64_t n0, int n_max, bool task,
                                   bool accumulate, V* dx, int64_t plane_idx, int64_t q) {
  const int c = static_cast<int>(plane_idx % g.C);
  const int64_t nl = plane_idx / g.C, n = n0 + nl, t = n / g.B, HW = int64_t(g.H) * g.W;
  const int s = kUnit ? 1 : g.s;
  const int h = static_cast<int>(q) / g.W, w = static_cast<int>(q) % g.W;  // 32-bit: H·W < 2^31
  V sum = accumulate ? dx[plane_idx * HW + q] : V(0);
  for (int e = 0; e < tab.count; ++e) {
    const PrimArg& pr = tab.m[e];
    const int64_t p = tab.p0 + e;
    if (pr.kind == kDenseConv) {  // Σ over the primitive's C_in output channels c2: rows c2·k + p of d R
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

// y at output pixel m of plane plane_idx = image·C_out + o: the shared part + b_shared, or the task part
// (on the Ho x Wp grid) + b_task[t], in x's dtype.
template <typename S, typename V>
MTL_HOST_DEVICE void epilogue_at(const V* ysh, const V* ysp, const V* bsh, const V* bsp, const Geo& g, S* y,
                                 int64_t plane_idx, int64_t m) {
  const int Cout = g.Csh + g.Csp;
  const int o = static_cast<int>(plane_idx % Cout);
  const int64_t n = plane_idx / Cout, t = n / g.B;
  V v;
  if (o < g.Csh) {
    v = ysh[(n * g.Csh + o) * g.HWo + m] + bsh[o];
  } else {
    const int q = o - g.Csh;
    const int i = static_cast<int>(m) / g.Wo, j = static_cast<int>(m) % g.Wo;
    v = ysp[((n * g.Csp + q) * g.Ho + i) * g.Wp + j] + bsp[t * g.Csp + q];
  }
  y[plane_idx * g.HWo + m] = static_cast<S>(v);
}

// ---- host side -----------------------------------------------------------------------------------------
// Every matrix product of the op goes through these two functions, batched (on the GPU: cuBLAS
// strided-batched GEMMs through ATen, the same bits on every run). Precision: exact fp32 (fp64 for fp64),
// as in the CPU kernel, whatever torch.backends.cuda.matmul.allow_tf32 / set_float32_matmul_precision say:
// NoTF32Guard is thread-local and puts cuBLAS in full fp32 for the call. (It does not reach cuBLASLt, which
// ATen uses for these products only when torch.backends.cuda.preferred_blas_library("cublaslt") or TunableOp
// is chosen.) An opt-in to TF32 would be wired here and nowhere else.
inline void gemm_into(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  const at::NoTF32Guard exact_fp32;
  if (accumulate) {
    out.baddbmm_(a, b);
  } else {
    at::bmm_out(out, a, b);
  }
}

inline at::Tensor gemm(const at::Tensor& a, const at::Tensor& b) {
  const at::NoTF32Guard exact_fp32;
  return at::bmm(a, b);
}

// The bound on R and its per-chunk companions; MTL_OPS_RPG_BANK_BYTES (bytes) changes it, e.g. lowers it to
// exercise the chunking in tests. Read on each call (a host-side getenv: no device work).
inline int64_t bank_bytes_bound() {
  const char* env = std::getenv("MTL_OPS_RPG_BANK_BYTES");
  if (env == nullptr || *env == '\0') return kDefaultBankBytes;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != nullptr && *end == '\0' && v > 0,
              "routed_primitive_gather (cuda backend): MTL_OPS_RPG_BANK_BYTES must be a positive number of bytes, "
              "got '", env, "'");
  return v;
}

inline int64_t images_per_chunk(int64_t bytes_per_image, int64_t N) {
  return std::max<int64_t>(1, std::min<int64_t>(N, bank_bytes_bound() / std::max<int64_t>(1, bytes_per_image)));
}

struct Prepared {
  Geo g;
  at::Tensor xz, xn;  // flat padded planes (zeros / -inf), accumulation dtype
  at::Tensor fz;      // the frozen tensors, flat, accumulation dtype
  std::vector<PrimTable> tables;
  std::vector<int64_t> dense;       // the dense_conv primitives
  std::vector<at::Tensor> dense_w;  // their kernels as (3, 3, C_out, C_in)
  int n_max = 0;                    // max-pool primitives
};

inline Prepared prepare(const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params, at::TensorList frozen,
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
  TORCH_CHECK(Hp < INT_MAX / 4 && Wp < INT_MAX / 4 && (Hp + 3) * Wp < INT_MAX,
              "routed_primitive_gather (cuda backend): planes of 2^31 pixels or more are not supported, got H = ",
              s.H, ", W = ", s.W);
  r.g = Geo{static_cast<int>(s.C), static_cast<int>(s.H), static_cast<int>(s.W), static_cast<int>(s.Ho),
            static_cast<int>(s.Wo), static_cast<int>(s.stride), static_cast<int>(P), static_cast<int>(Wp),
            static_cast<int>(s.k), static_cast<int>(s.Csh), static_cast<int>(s.Csp), static_cast<int>(s.B), plane,
            s.Ho * s.Wo};
  // The shifted views (shifted() below) of the last plane reach past its end by a few rows (the junk
  // columns j >= Wo of the last output rows), which must still lie inside the allocation.
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
// pixel (i·s + (u - 1)·d, j·s + (v - 1)·d) of channel c (zero padding outside the image) for j < Wo;
// columns j >= Wo are junk, multiplied by the GEMMs and never read back.
inline at::Tensor shifted(const Prepared& pr, int64_t n0, int64_t nb, int u, int v, int64_t d) {
  const Geo& g = pr.g;
  const int64_t base = (g.P + (u - 1) * d) * g.Wp + (g.P + (v - 1) * d);
  return pr.xz.as_strided({nb, g.C, int64_t(g.Ho) * g.Wp}, {g.C * g.plane, g.plane, g.s},
                          n0 * g.C * g.plane + base);
}

inline int64_t dense_scratch_bytes(const Prepared& pr, int64_t esize) {
  return pr.dense.empty() ? 0 : int64_t(pr.g.C) * pr.g.Ho * pr.g.Wp * esize;
}

// R (nb, C·k, Ho·Wo) of images n0 .. n0 + nb - 1 (and the max-pool argmax taps when `taps` is defined).
template <typename V, class Launch>
void fill_bank(const Launch& launch, const Prepared& pr, int64_t n0, int64_t nb, const at::Tensor& R,
               const at::Tensor& taps) {
  const Geo& g = pr.g;
  const int64_t offset = n0 * g.C * g.plane;
  for (const PrimTable& tab : pr.tables)
    launch.template response<V>(pr.xz.const_data_ptr<V>() + offset, pr.xn.const_data_ptr<V>() + offset,
                                pr.fz.const_data_ptr<V>(), tab, g, pr.n_max, R.mutable_data_ptr<V>(),
                                taps.defined() ? taps.mutable_data_ptr<uint8_t>() : nullptr, nb * g.C, g.HWo);
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

template <class Launch>
at::Tensor forward(const Launch& launch, const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params,
                   at::TensorList frozen, const at::Tensor& w_shared, const at::Tensor& b_shared,
                   const at::Tensor& w_task, const at::Tensor& b_task, const RpgShape& s) {
  const at::NoGradGuard no_grad;  // the GEMMs write into views of buffers (out= and in-place variants)
  auto y = at::empty({s.N, s.Cout, s.Ho, s.Wo}, x_in.options());
  if (y.numel() == 0) return y;
  const auto acc = accumulate_type_of(x_in.scalar_type());
  const auto opt = x_in.options().dtype(acc);
  const Prepared pr = prepare(x_in, kinds, params, frozen, s, acc);
  const Geo& g = pr.g;
  const int64_t Kg = s.k * s.cpg;
  at::Tensor ysh, ysp, bsh, bsp;
  AT_DISPATCH_FLOATING_TYPES(acc, "rpg_gemm_forward", [&] {
    using V = scalar_t;
    if (s.Csh > 0) {
      bsh = b_shared.detach().to(acc).contiguous();
      const auto wsh = w_shared.detach().to(acc).reshape({s.G, s.opg, Kg});
      ysh = at::empty({s.N, s.Csh, g.HWo}, opt);
      const int64_t nc = images_per_chunk(
          s.k * s.C * g.HWo * int64_t(sizeof(V)) + dense_scratch_bytes(pr, sizeof(V)), s.N);
      const auto R = at::empty({nc, s.k * s.C, g.HWo}, opt);
      for (int64_t n0 = 0; n0 < s.N; n0 += nc) {
        const int64_t nb = std::min(nc, s.N - n0);
        const auto Rv = R.narrow(0, 0, nb);
        fill_bank<V>(launch, pr, n0, nb, Rv, at::Tensor());
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "rpg_gemm_epilogue", [&] {
    using V = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    launch.template epilogue<scalar_t, V>(
        ysh.defined() ? ysh.const_data_ptr<V>() : nullptr, ysp.defined() ? ysp.const_data_ptr<V>() : nullptr,
        bsh.defined() ? bsh.const_data_ptr<V>() : nullptr, bsp.defined() ? bsp.const_data_ptr<V>() : nullptr, g,
        y.mutable_data_ptr<scalar_t>(), s.N * s.Cout, g.HWo);
  });
  return y;
}

// d x of images n0 .. n0 + nb - 1 (d R, taps of those images; no d R: no shared channels).
template <typename V, class Launch>
void input_grad(const Launch& launch, const Prepared& pr, const at::Tensor& dR, const at::Tensor& taps,
                const at::Tensor& dy, const at::Tensor& wsp, int64_t n0, int64_t nb, const at::Tensor& dx) {
  const Geo& g = pr.g;
  const std::vector<PrimTable> none{PrimTable{}};  // nothing reaches the primitives: the task branch alone
  const auto& tables = dR.defined() ? pr.tables : none;
  for (size_t ti = 0; ti < tables.size(); ++ti)
    launch.template input_grad<V>(dR.defined() ? dR.const_data_ptr<V>() : nullptr,
                                  taps.defined() ? taps.const_data_ptr<uint8_t>() : nullptr, dy.const_data_ptr<V>(),
                                  pr.fz.const_data_ptr<V>(), wsp.const_data_ptr<V>(), tables[ti], g, n0, pr.n_max,
                                  /*task=*/ti == 0 && g.Csp > 0, /*accumulate=*/ti > 0,
                                  dx.mutable_data_ptr<V>() + n0 * g.C * g.H * g.W, nb * g.C, int64_t(g.H) * g.W);
}

template <class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const Launch& launch, const at::Tensor& grad_out, const at::Tensor& x_in, at::IntArrayRef kinds,
    at::IntArrayRef params, at::TensorList frozen, const at::Tensor& w_shared, const at::Tensor& w_task,
    const RpgShape& s) {
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
    AT_DISPATCH_FLOATING_TYPES(acc, "rpg_gemm_backward", [&] {
      using V = scalar_t;
      if (s.Csp > 0) {
        // d w_task[t, :, :, u, v] = Σ_{images of t} Σ_{h, w} D[:, h - (u - 1), w - (v - 1)] · x[:, h, w]: D the task
        // rows of dY placed on the input grid (dY[i, j] at (i·s, j·s), zeros elsewhere) and padded by one,
        // both on rows of Wp. x's extra columns are its zero padding, so they add exact zeros (never junk
        // times an inf or NaN of x, which the forward's shifted views could pair).
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
        const int64_t per_image =
            s.k * s.C * HWo * int64_t(sizeof(V)) + pr.n_max * s.C * HWo + dense_scratch_bytes(pr, sizeof(V));
        const int64_t nc = images_per_chunk(per_image, s.N);
        const auto R = at::empty({nc, s.k * s.C, HWo}, opt);
        const auto taps = pr.n_max > 0 ? at::empty({nc, pr.n_max * s.C, HWo}, opt.dtype(at::kByte)) : at::Tensor();
        for (int64_t n0 = 0; n0 < s.N; n0 += nc) {
          const int64_t nb = std::min(nc, s.N - n0);
          const auto Rv = R.narrow(0, 0, nb);
          const auto tv = taps.defined() ? taps.narrow(0, 0, nb) : at::Tensor();
          fill_bank<V>(launch, pr, n0, nb, Rv, tv);
          for (int64_t gi = 0; gi < s.G; ++gi) {
            const auto dyg = dy.narrow(0, n0, nb).narrow(1, gi * s.opg, s.opg);
            const auto Rg = Rv.narrow(1, gi * Kg, Kg);
            dwsh[gi].add_(gemm(dyg, Rg.transpose(1, 2)).sum(0));
            gemm_into(Rg, wsh[gi].t().expand({nb, Kg, s.opg}), dyg, false);  // R_g's rows now hold d R_g
          }
          input_grad<V>(launch, pr, Rv, tv, dy, wsp, n0, nb, dx);
        }
      } else {
        input_grad<V>(launch, pr, at::Tensor(), at::Tensor(), dy, wsp, 0, s.N, dx);
      }
    });
  }
  return {dx.to(dt), dwsh.view(w_shared.sizes()).to(dt), dbsh.to(dt), dwsp.to(dt), dbsp.to(dt)};
}

}  // namespace mtl_ops::rpg_gemm
