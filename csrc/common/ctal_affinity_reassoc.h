// ctal_affinity by exact reassociation: no tensor with N x N elements.
//
// Per sample, with F = the per-pixel L2-normalised x and V the projected features, both (T*C, N), and a tap
// d = (ky, kx) shifting the key grid with zero fill (S_d):
//   G_d = V S_d(F)^T                                  (T*C x T*C, one GEMM over the pixels per tap)
//   Q_d[(t', c), i] = w[i, t', d] F[(t', c), i]      (the k x k mixing, as a per-pixel weighting)
//   Z = sum_d G_d Q_d + (V 1) bias^T,   r = gamma Z + (1 - gamma) x
// For per-task weights Q_d depends on the output task t: Z_t = sum_d G_d[t rows] Q_{t,d}.
// Shifts are views: F and V are zero-padded by p = k/2 on the grid, and a tap is a flat offset, so each
// GEMM reads a contiguous span of the padded arrays (no shifted copies). The backward is the adjoint:
//   dG_d = dZ Q_d^T,  dQ_d = G_d^T dZ (-> dweight, and dF on the query side),
//   dV += dG_d S_d(F),  dF += S_d^T(dG_d^T V)  (key side),  then the normalisation's backward.
// G (taps, B, T*C, T*C) is returned by the forward and saved for the backward: O(B T^2 C^2 k^2) memory.
// Written with ATen operators (GEMMs via bmm), so the CPU and CUDA backends share it; everything runs in
// the accumulation dtype (fp32, fp64 for fp64 inputs). allow_tf32 = false makes every fp32 GEMM exact IEEE fp32
// whatever PyTorch's global matmul precision; true lets them follow it (fp32_matmul_precision.h).
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <tuple>

#include "ctal_affinity_args.h"
#include "fp32_matmul_precision.h"

namespace mtl_ops::ctal {

constexpr double kNormEps = 1e-12;

// (B, T, C, N) -> (B, T*C, Hp*Wp), zero-padded by p on the grid. (No -1 in the shapes: with B = 0 it would
// be ambiguous.)
inline at::Tensor pad_grid(const at::Tensor& t, const CtalGeometry& g) {
  auto grid = t.reshape({g.B, g.T * g.C, g.H, g.W});
  return at::constant_pad_nd(grid, {g.p, g.p, g.p, g.p}, 0).reshape({g.B, g.T * g.C, g.Npad});
}

// A contiguous span buffer (B, R, span) indexed from the padded position `first` -> a (B, R, H, W) view of its
// H x W interior: pixel (y, x) sits at y * Wp + x of the span (no copy).
inline at::Tensor span_interior(const at::Tensor& span_buf, const CtalGeometry& g) {
  const int64_t R = span_buf.size(1);
  return span_buf.as_strided({g.B, R, g.H, g.W}, {R * g.span, g.span, g.Wp, 1}, span_buf.storage_offset());
}

// weight (N, T, k, k) or (T, N, T, k, k) -> (taps, Tw, T, N) in dtype acc.
inline at::Tensor taps_major(const at::Tensor& weight, const CtalGeometry& g, at::ScalarType acc) {
  return weight.to(acc).reshape({g.Tw, g.N, g.T, g.taps}).permute({3, 0, 2, 1}).contiguous();
}

struct Normalized {
  at::Tensor f, inv, clamped;  // f (B, T, C, N); inv, clamped (B, T, 1, N)
};

inline Normalized normalize(const at::Tensor& xa) {
  auto norm = xa.norm(2, {2}, true);
  auto clamped = norm <= kNormEps;
  auto inv = norm.clamp_min(kNormEps).reciprocal();
  return {xa * inv, inv, clamped};
}

// Q_d for output task group tw: F scaled per (t', pixel) by the tap's weight. (B, T*C, N).
inline at::Tensor weighted(const Normalized& n, const at::Tensor& w_taps, int64_t tap, int64_t tw,
                           const CtalGeometry& g) {
  return (n.f * w_taps.select(0, tap).select(0, tw).reshape({1, g.T, 1, g.N})).reshape({g.B, g.T * g.C, g.N});
}

// The per-tap element-wise step of the backward, for one tap and output-task group:
//   dw_tap[t', i] = sum_{b, c} dQ[b, t', c, i] f[b, t', c, i],   dF[b, t', c, i] += dQ[b, t', c, i] w_tap[t', i]
// dQ, f, dF (B, T, C, N) and w_tap, dw_tap (T, N), all contiguous in the accumulation dtype. A backend may
// pass a fused loop (the CPU one does); this is the ATen version.
using TapReduceFn = void (*)(const at::Tensor& dQ, const at::Tensor& f, const at::Tensor& w_tap, at::Tensor& dw_tap,
                             at::Tensor& dF);

inline void tap_reduce_aten(const at::Tensor& dQ, const at::Tensor& f, const at::Tensor& w_tap, at::Tensor& dw_tap,
                            at::Tensor& dF) {
  dw_tap.copy_((dQ * f).sum(at::IntArrayRef{0, 2}));  // a braced list alone is ambiguous on torch 2.11
  dF.add_(dQ * w_tap.unsqueeze(1));
}

inline std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& v, const at::Tensor& weight,
                                                  const at::Tensor& bias, double gamma,
                                                  bool allow_tf32) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel: the operator's own autograd differentiates it
  const Fp32MatmulPrecisionGuard precision(allow_tf32, x.device().type());
  const CtalGeometry g(x, weight);
  const auto acc = accumulate_type_of(x.scalar_type());
  const int64_t TC = g.T * g.C;
  auto xa = x.to(acc).contiguous().reshape({g.B, g.T, g.C, g.N});
  auto va = v.to(acc).contiguous().reshape({g.B, g.T, g.C, g.N});
  auto nrm = normalize(xa);
  auto Fp = pad_grid(nrm.f, g), Vp = pad_grid(va, g);
  auto w = taps_major(weight, g, acc);
  auto gram = at::empty({g.taps, g.B, TC, TC}, xa.options());
  // The bias term first: Z_t[:, i] = bias_t[i] * sum_j V_t[:, j].
  auto Z = va.sum(3, true) * bias.to(acc).reshape({1, g.Tw, 1, g.N});
  Z = Z.expand({g.B, g.T, g.C, g.N}).contiguous();
  auto Zf = Z.view({g.B, TC, g.N});
  auto Vspan = Vp.narrow(2, g.first, g.span);
  for (int64_t tap = 0; tap < g.taps; ++tap) {
    auto G = gram.select(0, tap);
    at::bmm_out(G, Vspan, Fp.narrow(2, g.first + g.offset(tap), g.span).transpose(1, 2));
    if (!g.per_task) {
      Zf.baddbmm_(G, weighted(nrm, w, tap, 0, g));
    } else {
      for (int64_t t = 0; t < g.T; ++t) {
        auto Zt = Zf.narrow(1, t * g.C, g.C);
        Zt.copy_(at::baddbmm(Zt, G.narrow(1, t * g.C, g.C), weighted(nrm, w, tap, t, g)));
      }
    }
  }
  auto r = Z.mul_(gamma).add_(xa, 1.0 - gamma);
  return {r.reshape(x.sizes()).to(x.scalar_type()), gram};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& v, const at::Tensor& weight,
    const at::Tensor& bias, double gamma, const at::Tensor& gram, bool allow_tf32,
    TapReduceFn tap_reduce = tap_reduce_aten) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Fp32MatmulPrecisionGuard precision(allow_tf32, x.device().type());
  const CtalGeometry g(x, weight);
  const auto acc = accumulate_type_of(x.scalar_type());
  const int64_t TC = g.T * g.C;
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "ctal_affinity_backward: grad_out must match x ", x.sizes(), ", got ",
              grad_out.sizes());
  TORCH_CHECK(gram.dim() == 4 && gram.size(0) == g.taps && gram.size(1) == g.B && gram.size(2) == TC &&
                  gram.size(3) == TC && gram.scalar_type() == acc,
              "ctal_affinity_backward: gram must be the forward's (k*k, B, T*C, T*C) = (", g.taps, ", ", g.B, ", ", TC,
              ", ", TC, ") ", acc, " tensor, got ", gram.sizes(), " ", gram.scalar_type());
  auto xa = x.to(acc).contiguous().reshape({g.B, g.T, g.C, g.N});
  auto va = v.to(acc).contiguous().reshape({g.B, g.T, g.C, g.N});
  // dZ = gamma * dr is never materialised: gamma scales the GEMMs (alpha) and the small bias reductions.
  auto dr = grad_out.to(acc).contiguous().reshape({g.B, g.T, g.C, g.N});
  auto drf = dr.view({g.B, TC, g.N});
  auto nrm = normalize(xa);
  auto Fp = pad_grid(nrm.f, g), Vp = pad_grid(va, g);
  auto w = taps_major(weight, g, acc);
  auto bias_a = bias.to(acc).reshape({g.Tw, g.N, 1});

  auto dF = at::zeros_like(xa);                        // query side, (B, T, C, N)
  auto dV_span = at::zeros({g.B, TC, g.span}, xa.options());
  auto dF_span = at::zeros({g.B, TC, g.span}, xa.options());
  auto dw = at::empty({g.taps, g.Tw, g.T, g.N}, xa.options());
  auto dG = at::empty({g.B, TC, TC}, xa.options());
  auto dQ = at::empty({g.B, TC, g.N}, xa.options());  // one buffer for every tap
  for (int64_t tap = 0; tap < g.taps; ++tap) {
    const int64_t off = g.offset(tap);
    auto G = gram.select(0, tap);
    for (int64_t tw = 0; tw < g.Tw; ++tw) {
      auto Q = weighted(nrm, w, tap, tw, g);
      auto rows = g.per_task ? drf.narrow(1, tw * g.C, g.C) : drf;
      auto Grows = g.per_task ? G.narrow(1, tw * g.C, g.C) : G;
      auto dG_rows = g.per_task ? dG.narrow(1, tw * g.C, g.C) : dG;
      at::baddbmm_out(dG_rows, dG_rows, rows, Q.transpose(1, 2), /*beta=*/0, /*alpha=*/gamma);
      at::baddbmm_out(dQ, dQ, Grows.transpose(1, 2), rows, /*beta=*/0, /*alpha=*/gamma);
      auto dw_tap = dw.select(0, tap).select(0, tw);
      tap_reduce(dQ.view({g.B, g.T, g.C, g.N}), nrm.f, w.select(0, tap).select(0, tw), dw_tap, dF);
    }
    dV_span.baddbmm_(dG, Fp.narrow(2, g.first + off, g.span));
    dF_span.baddbmm_(dG.transpose(1, 2), Vp.narrow(2, g.first - off, g.span));
  }
  dQ.reset();  // release the loop's buffers before the tail allocates its own
  Fp.reset();
  Vp.reset();
  // Bias: Z_t[:, i] += bias_t[i] s_t with s_t = sum_j V_t[:, j]; per sample b, dbias_t += gamma s_bt^T dr_bt and
  // dv_bt += gamma dr_bt bias_t (GEMMs: no (B, T, C, N) temporary).
  auto s = va.sum(3, true);                             // (B, T, C, 1)
  auto dbias = at::zeros({g.T, 1, g.N}, xa.options());
  for (int64_t b = 0; b < g.B; ++b) dbias.baddbmm_(s.select(0, b).transpose(1, 2), dr.select(0, b), 1, gamma);
  dbias = dbias.reshape({g.T, g.N});
  if (!g.per_task) dbias = dbias.sum(0);
  auto dv = span_interior(dV_span, g).reshape({g.B, g.T, g.C, g.N});  // the one copy of the interior
  dV_span.reset();
  dv.add_(at::matmul(dr, bias_a), gamma);               // (B, T, C, 1), broadcast over the pixels
  dF.view({g.B, TC, g.H, g.W}).add_(span_interior(dF_span, g));
  dF_span.reset();
  // Normalisation: f = x / max(|x|, eps); the projection term vanishes where the norm is clamped. In place on
  // dF: dx = (dF - f proj) inv + (1 - gamma) dr.
  auto proj = (nrm.f * dF).sum(2, true).masked_fill_(nrm.clamped, 0);
  auto dx = dF.addcmul_(nrm.f, proj, -1).mul_(nrm.inv).add_(dr, 1.0 - gamma);
  auto dweight = dw.permute({1, 3, 2, 0}).contiguous().reshape(weight.sizes());
  return {dx.reshape(x.sizes()).to(x.scalar_type()), dv.reshape(x.sizes()).to(x.scalar_type()),
          dweight.to(weight.scalar_type()), dbias.reshape(bias.sizes()).to(bias.scalar_type())};
}

}  // namespace mtl_ops::ctal
