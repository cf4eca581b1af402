// All-pairs linear CKA (PDF's task similarity) in strips of the T Gram matrices, shared by the CPU and CUDA
// operators (ATen calls only, so one definition serves both devices).
//
// HSIC needs, per pair of tasks, G_tu = <K_t, K_u>_F with K_t = X_t X_tᵀ, plus per task the diagonal s_t and the
// row sums r_t of K_t; both centrings of mtl_ops/reference/cka.py are then exact algebra on these (derivation
// in the comments of hsic_from_gram_moments). K is symmetric, so only its upper triangle is computed: row
// strips K[i0:i1, i0:n] of b rows, one GEMM each, reduced to T×T at once — about half the reference's Gram
// FLOPs, and T·b·n floats of scratch instead of several T·n² buffers. A GPU takes strips as tall as 64 MiB of
// scratch allows, the whole Gram when it fits (cka_strip_rows).
//
// The features are centred first (CKA is invariant to translating the features; see the proof in the Python
// docstring): Gram entries then hold only the part that survives centring, so the fp32 GEMMs lose no digits to
// a large common mean, and the leftover column sums δ (rounding) are kept exactly in r_i = x_i·δ.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>

#include "cka_args.h"
#include "fp32_matmul_precision.h"

namespace mtl_ops {

// Scratch a CUDA strip may take (floats over the T tasks): 64 MiB.
constexpr int64_t kCudaStripFloats = int64_t(16) << 20;

// Rows per strip. CPU: ~1/8 of n (so the lower triangle's waste stays ~1/16 of the Gram), bounded so small n
// still gets GEMMs of useful size and large n a bounded scratch (T·256·n floats). CUDA: as many rows as the
// scratch budget allows (the whole Gram when T·n² fits, as for n = 800, T = 5), because thin strips make
// cuBLAS pick small SIMT tiles: with n/8-row strips the op ran at 0.34× torch.compile(reference) on an H200,
// whose one full Gram GEMM ran 128×128 tiles. The whole Gram costs twice the triangle's FLOPs at full speed.
inline int64_t cka_strip_rows(int64_t T, int64_t n, bool cuda) {
  if (cuda) return std::min(n, std::max<int64_t>(256, kCudaStripFloats / std::max<int64_t>(1, T * n)));
  return std::clamp<int64_t>((n + 7) / 8, 32, 256);
}

// hsic (T×T, float64) from G = <K_t, K_u>, s = diag K_t, r = row sums of K_t (float64).
inline at::Tensor hsic_from_gram_moments(const at::Tensor& G, const at::Tensor& s, const at::Tensor& r, int64_t n,
                                         bool debiased) {
  if (!debiased) {
    // <HK_tH, HK_uH> = <K_t, HK_uH> = G − (2/n)·r_t·r_u + S_t S_u / n²   (S = Σ_i r_i = 1ᵀK1)
    const at::Tensor S = r.sum(1, /*keepdim=*/true);
    return G - (2.0 / n) * at::mm(r, r.t()) + at::mm(S, S.t()) / (double(n) * n);
  }
  // Z = K with a zero diagonal: <Z_t, Z_u> = G − s_t·s_u, row sums ρ = r − s.
  // μ = ρ/(n−2) − Σρ/(2(n−1)(n−2)); K̃_ij = Z_ij − μ_i − μ_j off the diagonal, 0 on it. Expanding the sum over
  // i ≠ j:  <K̃_t, K̃_u> = <Z_t, Z_u> − 2 ρ_t·μ_u − 2 μ_t·ρ_u + (2n−4) μ_t·μ_u + 2 (Σμ_t)(Σμ_u).
  const at::Tensor rho = r - s;
  at::Tensor mu = rho / double(n - 2);
  mu = mu - mu.sum(1, /*keepdim=*/true) / double(2 * (n - 1));
  const at::Tensor m = mu.sum(1, /*keepdim=*/true);
  return G - at::mm(s, s.t()) - 2.0 * at::mm(rho, mu.t()) - 2.0 * at::mm(mu, rho.t()) +
         double(2 * n - 4) * at::mm(mu, mu.t()) + 2.0 * at::mm(m, m.t());
}

// CKA = hsic_tu / sqrt(hsic_tt hsic_uu); a task with zero centred norm (constant features) makes its pairs 0/0,
// defined as 1 on the diagonal and 0 off it (the PDF code's convention, as in the reference).
inline at::Tensor cka_from_hsic(const at::Tensor& hsic) {
  const at::Tensor norms = hsic.diagonal().clamp_min(0).sqrt();
  at::Tensor result = hsic / at::outer(norms, norms);
  const at::Tensor zero = norms == 0;
  const at::Tensor undefined = at::logical_or(zero.unsqueeze(1), zero.unsqueeze(0));
  const at::Tensor eye = at::eye(hsic.size(0), hsic.options().dtype(at::kBool));
  result = at::where(at::logical_and(undefined, eye), at::ones_like(result), result);
  return at::where(at::logical_and(undefined, at::logical_not(eye)), at::zeros_like(result), result);
}

// Strip GEMMs: one per task on CPU (MKL parallelises inside each GEMM; measured faster than one bmm over
// strided task slices, and one GEMM per strip faster than separate diagonal and off-diagonal blocks), one bmm
// over the tasks on CUDA (fewer launches).
inline void cka_strip_gemm(const at::Tensor& rows, const at::Tensor& cols, at::Tensor& out) {
  if (rows.is_cuda()) {
    at::bmm_out(out, rows, cols.transpose(1, 2));
    return;
  }
  for (int64_t t = 0; t < rows.size(0); ++t) {
    at::Tensor out_t = out.select(0, t);
    at::mm_out(out_t, rows.select(0, t), cols.select(0, t).t());
  }
}

// <A_t, A_u> over the trailing dims of a (T, …) contiguous block, in float64.
inline at::Tensor pairwise_inner(const at::Tensor& block) {
  const at::Tensor flat = block.reshape({block.size(0), -1});
  return at::mm(flat, flat.t()).to(at::kDouble);
}

// allow_tf32: false = exact fp32 GEMMs whatever PyTorch's global matmul precision (fp32_matmul_precision.h).
// strip_rows: 0 = cka_strip_rows's choice for the device (others: the C++ test runs every height on the CPU).
inline at::Tensor cka_gram_strips(const at::Tensor& features, bool debiased, bool allow_tf32,
                                  int64_t strip_rows = 0) {
  check_cka_args(features, debiased);
  const Fp32MatmulPrecisionGuard precision(allow_tf32, features.device().type());
  const int64_t T = features.size(0), n = features.size(1);
  const auto acc = features.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x = features.to(acc);
  // Column sums as GEMVs (bmm with a ones row): measured ~3× faster than sum over the middle dimension.
  const at::Tensor ones = at::ones({T, 1, n}, x.options());
  const at::Tensor xc = at::sub(x, at::bmm(ones, x), 1.0 / double(n)).contiguous();   // x − column means
  const at::Tensor delta = at::bmm(ones, xc);                         // (T, 1, d): what centring left over

  at::Tensor G = at::zeros({T, T}, xc.options().dtype(at::kDouble));
  at::Tensor s = at::empty({T, n}, xc.options());
  const int64_t b = strip_rows > 0 ? strip_rows : cka_strip_rows(T, n, xc.is_cuda());
  for (int64_t i0 = 0; i0 < n; i0 += b) {
    const int64_t i1 = std::min(n, i0 + b);
    // Strip K[i0:i1, i0:n] = diagonal block | block right of it. The right block stands for itself and its
    // mirror image below the diagonal, so G += 2·<strip> − <diagonal block>.
    at::Tensor strip = at::empty({T, i1 - i0, n - i0}, xc.options());
    cka_strip_gemm(xc.slice(1, i0, i1), xc.slice(1, i0, n), strip);
    const at::Tensor diag = strip.narrow(2, 0, i1 - i0);
    s.slice(1, i0, i1).copy_(diag.diagonal(0, 1, 2));
    G += i1 - i0 == n ? pairwise_inner(strip)  // one strip: the whole Gram
                      : 2.0 * pairwise_inner(strip) - pairwise_inner(diag.contiguous());
  }
  const at::Tensor r = at::bmm(xc, delta.transpose(1, 2)).squeeze(2).to(at::kDouble);  // r_i = x_i·Σ_j x_j
  const at::Tensor hsic = hsic_from_gram_moments(G, s.to(at::kDouble), r, n, debiased);
  return cka_from_hsic(hsic).to(acc);
}

}  // namespace mtl_ops
