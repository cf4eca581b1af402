// CPU kernels of routed_primitive_gather (ETR-NLP). A work item is an image (one route slice of one sample)
// processed in tiles of output rows, or, for small maps, a few whole images of one route packed into one tile
// (Items below). Per tile, the k·C_in primitive responses are computed into a small buffer (shuffled order
// c·k + p, so group g is a contiguous block of rows; each image its own block of columns), the grouped 1x1 and
// the task's 3x3 (through a per-tile im2col) are two GEMMs, and both write their channel slots of the
// output. The full primitive bank, its shuffle, the branches and the concatenation never exist. The
// backward recomputes each tile's responses (max-pool argmax included) and accumulates the weight
// gradients in one partial per work item, summed in a fixed order afterwards (deterministic; the items
// depend on the shapes only, not on the thread count).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../common/gated_residual_args.h"
#include "../common/rpg_args.h"
#include "../common/rpg_primitives.h"
#include "routed_primitive_gather.h"

namespace mtl_ops::cpu {
namespace {

constexpr int64_t kTilePixels = 512;  // output pixels per tile (whole rows)
constexpr int64_t kMaxTileImages = 8;  // images packed into one tile at most

// The work items. An image with at least kTilePixels output pixels is one item, in tiles of whole rows; smaller
// images are packed whole into one tile, up to kMaxTileImages of them or kTilePixels pixels, consecutive
// images of one route (they share the task's weights). Packing makes the GEMMs of small deep maps (2×3 pixels
// at the end of a ResNet-18 at 64×84) run over several images' pixels instead of one image's six: per image,
// those layers' forward+backward took 3× the reference's batched convolutions on a 2-core CPU.
struct Items {
  int64_t imgs, per_route, count, rows, cap;  // images per item, items per route, items, rows per tile, columns

  explicit Items(const RpgShape& s) {
    imgs = std::max<int64_t>(1, std::min({s.B, kMaxTileImages, kTilePixels / (s.Ho * s.Wo)}));
    per_route = (s.B + imgs - 1) / imgs;
    count = s.T * per_route;
    rows = imgs > 1 ? s.Ho : std::min(s.Ho, std::max<int64_t>(1, kTilePixels / s.Wo));
    cap = imgs * rows * s.Wo;
  }
  int64_t task(int64_t q) const { return q / per_route; }
  int64_t first(const RpgShape& s, int64_t q) const { return task(q) * s.B + (q % per_route) * imgs; }
  int64_t size(const RpgShape& s, int64_t q) const { return std::min(imgs, s.B - (q % per_route) * imgs); }
};

struct Prims {
  std::vector<int> kind, a, b;
  std::vector<at::Tensor> frozen;  // accumulation dtype, contiguous (undefined where the kind has none)
};

Prims make_prims(at::IntArrayRef kinds, at::IntArrayRef params, at::TensorList frozen, at::ScalarType acc) {
  Prims p;
  for (size_t i = 0; i < kinds.size(); ++i) {
    p.kind.push_back(static_cast<int>(kinds[i]));
    p.a.push_back(static_cast<int>(params[2 * i]));
    p.b.push_back(static_cast<int>(params[2 * i + 1]));
    const bool has = kinds[i] == kDwConv || kinds[i] == kDenseConv || kinds[i] == kNoise;
    p.frozen.push_back(has ? frozen[i].detach().to(acc).contiguous() : at::Tensor());
  }
  return p;
}

// Each image's channels copied into planes padded by P (zeros; a second copy padded with -inf for max
// pool), so that no tap loop needs a bounds check (see rpg_primitives.h).
template <typename V>
struct Padded {
  int64_t P, Hp, Wp, plane;
  at::Tensor zero, neg;  // (C, Hp, Wp)
  V *zp = nullptr, *np = nullptr;  // their data (the tap loops ask per row: no tensor accessor there)

  Padded(const RpgShape& s, const Prims& prims, at::ScalarType acc) {
    P = 1;
    bool has_max = false;
    for (int64_t p = 0; p < s.k; ++p) {
      P = std::max<int64_t>(P, rpg_radius(prims.kind[p], prims.a[p], prims.b[p]));
      has_max = has_max || prims.kind[p] == kMaxPool;
    }
    Hp = s.H + 2 * P, Wp = s.W + 2 * P, plane = Hp * Wp;
    zero = at::zeros({s.C, Hp, Wp}, at::TensorOptions().dtype(acc));
    if (has_max) neg = at::full({s.C, Hp, Wp}, -std::numeric_limits<V>::infinity(), at::TensorOptions().dtype(acc));
    zp = zero.template mutable_data_ptr<V>();
    if (has_max) np = neg.template mutable_data_ptr<V>();
  }
  void load(const V* x, const RpgShape& s) {
    for (V* d : {zp, np}) {
      if (d == nullptr) continue;
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t h = 0; h < s.H; ++h)
          std::copy(x + (c * s.H + h) * s.W, x + (c * s.H + h + 1) * s.W, d + c * plane + (h + P) * Wp + P);
    }
  }
  // Pointer to input pixel (h, w) of channel c in the planes at base (zp or np).
  const V* at(const V* base, int64_t c, int64_t h, int64_t w) const {
    return base + c * plane + (h + P) * Wp + (w + P);
  }
};

// col[(c·9 + u·3 + v), q] = x[c, i·s + (u−1)·d, j·s + (v−1)·d] for the tile's pixels q = (i − i0)·Wo + j; ld:
// col's row stride (the tile's columns, several images' when packed).
template <typename V>
void im2col(const Padded<V>& xp, const RpgShape& s, int d, int64_t i0, int64_t i1, V* col, int64_t ld) {
  const int64_t st = s.stride;
  for (int64_t c = 0; c < s.C; ++c)
    for (int u = 0; u < 3; ++u)
      for (int v = 0; v < 3; ++v) {
        V* row = col + ((c * 3 + u) * 3 + v) * ld;
        for (int64_t i = i0; i < i1; ++i) {
          const V* src = xp.at(xp.zp, c, i * st + (u - 1) * d, (v - 1) * d);
          V* dst = row + (i - i0) * s.Wo;
#pragma omp simd
          for (int64_t j = 0; j < s.Wo; ++j) dst[j] = src[j * st];
        }
      }
}

// The adjoint of im2col into a padded gradient plane set: dxp[c, tap] += dcol[(c·9 + u·3 + v), q].
template <typename V>
void col2im_add(const V* dcol, int64_t ld, const Padded<V>& xp, const RpgShape& s, int d, int64_t i0, int64_t i1,
                V* dxp) {
  const int64_t st = s.stride;
  for (int64_t c = 0; c < s.C; ++c)
    for (int u = 0; u < 3; ++u)
      for (int v = 0; v < 3; ++v) {
        const V* row = dcol + ((c * 3 + u) * 3 + v) * ld;
        for (int64_t i = i0; i < i1; ++i) {
          V* dst = dxp + c * xp.plane + (i * st + (u - 1) * d + xp.P) * xp.Wp + (v - 1) * d + xp.P;
          const V* src = row + (i - i0) * s.Wo;
          for (int64_t j = 0; j < s.Wo; ++j) dst[j * st] += src[j];
        }
      }
}

at::Tensor mat(void* ptr, int64_t rows, int64_t cols, int64_t row_stride, at::ScalarType dt) {
  return at::from_blob(ptr, {rows, cols}, {row_stride, 1}, at::TensorOptions().dtype(dt));
}

// A work item's tile buffers (cap columns) and the responses of the tile's primitive bank (rows c·k + p).
template <typename V>
struct TileBank {
  const RpgShape& s;
  const Prims& prims;
  at::ScalarType acc;
  Padded<V> xp;  // the image being filled
  at::Tensor bank, col1, cold, dense_out;

  TileBank(const RpgShape& s_, const Prims& p_, at::ScalarType acc_, int64_t cap)
      : s(s_), prims(p_), acc(acc_), xp(s_, p_, acc_) {
    const auto opt = at::TensorOptions().dtype(acc);
    bank = at::empty({s.k * s.C, cap}, opt);
    col1 = at::empty({s.C * 9, cap}, opt);
    cold = at::empty({s.C * 9, cap}, opt);
    dense_out = at::empty({s.C, cap}, opt);
  }

  // Fills the columns [off, off + (i1 − i0)·Wo) of bank (k·C rows) and col1 (the dilation-1 im2col of the task
  // branch), both of row stride ld, with xp's image's output rows [i0, i1).
  void fill(int64_t i0, int64_t i1, int64_t off, int64_t ld) {
    const int64_t n = (i1 - i0) * s.Wo, st = s.stride;
    V* bk = bank.template mutable_data_ptr<V>() + off;
    V* c1 = col1.template mutable_data_ptr<V>() + off;
    im2col(xp, s, 1, i0, i1, c1, ld);
    for (int64_t p = 0; p < s.k; ++p) {
      const int kind = prims.kind[p], a = prims.a[p], b = prims.b[p];
      if (kind == kDenseConv) {
        V* cd = c1;
        if (a != 1) {
          cd = cold.template mutable_data_ptr<V>() + off;
          im2col(xp, s, a, i0, i1, cd, ld);
        }
        auto out = mat(dense_out.template mutable_data_ptr<V>(), s.C, n, n, acc);
        at::mm_out(out, prims.frozen[p].view({s.C, s.C * 9}), mat(cd, s.C * 9, n, ld, acc));
        const V* r = dense_out.template const_data_ptr<V>();
        for (int64_t c = 0; c < s.C; ++c) std::copy(r + c * n, r + (c + 1) * n, bk + (c * s.k + p) * ld);
        continue;
      }
      const V* fz = prims.frozen[p].defined() ? prims.frozen[p].template const_data_ptr<V>() : nullptr;
      const int64_t Hn = kind == kNoise ? prims.frozen[p].size(1) : 1, Wn = kind == kNoise ? prims.frozen[p].size(2) : 1;
      rpg_dispatch_kind(kind, [&](auto kc) {
        constexpr int K = decltype(kc)::value;
        const V* src = K == kMaxPool ? xp.np : xp.zp;
        for (int64_t c = 0; c < s.C; ++c) {
          const V* w9 = K == kDwConv ? fz + c * 9 : nullptr;
          V* row = bk + (c * s.k + p) * ld;
          for (int64_t i = i0; i < i1; ++i) {
            const V* at0 = xp.at(src, c, i * st, 0);
            V* dst = row + (i - i0) * s.Wo;
            if constexpr (K == kMaxPool) {
              for (int64_t j = 0; j < s.Wo; ++j) dst[j] = rpg_max_value(at0 + j * st, xp.Wp);
            } else {  // linear: tap-outer loops
              const RpgTaps<V> taps = rpg_linear_taps<K, V>(xp.Wp, a, b, w9);
              std::fill(dst, dst + s.Wo, V(0));
              for (int e = 0; e < taps.n; ++e) {
                const V* sp = at0 + taps.off[e];
                const V cf = taps.coef[e];
#pragma omp simd
                for (int64_t j = 0; j < s.Wo; ++j) dst[j] += cf * sp[j * st];
              }
              if constexpr (K == kNoise) {
                const V* nrow = fz + (c * Hn + (i * st) % Hn) * Wn;
                for (int64_t j = 0; j < s.Wo; ++j) dst[j] += nrow[(j * st) % Wn];
              }
            }
          }
        }
      });
    }
  }
};

}  // namespace

at::Tensor routed_primitive_gather_forward(const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params,
                                           at::TensorList frozen, const at::Tensor& w_shared,
                                           const at::Tensor& b_shared, const at::Tensor& w_task,
                                           const at::Tensor& b_task, int64_t stride, int64_t groups) {
  const RpgShape s = check_rpg_args(x_in, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups);
  TORCH_CHECK(x_in.device().is_cpu(), "routed_primitive_gather (cpp backend): tensors must be on the CPU, got ",
              x_in.device());
  const at::NoGradGuard no_grad;  // the internal GEMMs write into buffers (out= variants)
  const auto acc = accumulate_type_of(x_in.scalar_type());
  const auto x = x_in.detach().to(acc).contiguous();
  const auto wsh = w_shared.detach().to(acc).contiguous().view({s.Csh, s.k * s.cpg});
  const auto bsh = b_shared.to(acc).contiguous();
  const auto wsp = w_task.detach().to(acc).contiguous().view({s.T, s.Csp, s.C * 9});
  const auto bsp = b_task.to(acc).contiguous();
  const Prims prims = make_prims(kinds, params, frozen, acc);
  auto y = at::empty({s.N, s.Cout, s.Ho, s.Wo}, x_in.options());
  if (s.N == 0) return y;
  const Items it(s);
  const int64_t HWo = s.Ho * s.Wo;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "rpg_forward_cpu", [&] {
    using V = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    at::parallel_for(0, it.count, 1, [&](int64_t begin, int64_t end) {
      const at::NoGradGuard no_grad_worker;  // grad mode is thread-local
      TileBank<V> tb(s, prims, acc, it.cap);
      auto ytile = at::empty({s.Cout, it.cap}, at::TensorOptions().dtype(acc));
      const V* bshp = bsh.const_data_ptr<V>();
      const V* bspp = bsp.const_data_ptr<V>();
      for (int64_t q = begin; q < end; ++q) {
        const int64_t t = it.task(q), j0 = it.first(s, q), m = it.size(s, q);
        for (int64_t i0 = 0; i0 < s.Ho; i0 += it.rows) {
          const int64_t i1 = std::min(s.Ho, i0 + it.rows), ni = (i1 - i0) * s.Wo, n = m * ni;
          for (int64_t jj = 0; jj < m; ++jj) {  // (one image in several row tiles is loaded once)
            if (m > 1 || i0 == 0) tb.xp.load(x.const_data_ptr<V>() + (j0 + jj) * s.C * s.H * s.W, s);
            tb.fill(i0, i1, jj * ni, n);
          }
          V* yt = ytile.mutable_data_ptr<V>();
          V* bk = tb.bank.template mutable_data_ptr<V>();
          for (int64_t g = 0; g < s.G && s.opg > 0; ++g) {
            auto out = mat(yt + g * s.opg * n, s.opg, n, n, acc);
            at::mm_out(out, wsh.narrow(0, g * s.opg, s.opg), mat(bk + g * s.k * s.cpg * n, s.k * s.cpg, n, n, acc));
          }
          if (s.Csp > 0) {
            auto out = mat(yt + s.Csh * n, s.Csp, n, n, acc);
            at::mm_out(out, wsp[t], mat(tb.col1.template mutable_data_ptr<V>(), s.C * 9, n, n, acc));
          }
          for (int64_t jj = 0; jj < m; ++jj) {
            scalar_t* yo = y.mutable_data_ptr<scalar_t>() + (j0 + jj) * s.Cout * HWo + i0 * s.Wo;
            for (int64_t o = 0; o < s.Cout; ++o) {
              const V bias = o < s.Csh ? bshp[o] : bspp[t * s.Csp + o - s.Csh];
              const V* yr = yt + o * n + jj * ni;
              for (int64_t e = 0; e < ni; ++e) yo[o * HWo + e] = static_cast<scalar_t>(yr[e] + bias);
            }
          }
        }
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> routed_primitive_gather_backward(
    const at::Tensor& grad_out, const at::Tensor& x_in, at::IntArrayRef kinds, at::IntArrayRef params,
    at::TensorList frozen, const at::Tensor& w_shared, const at::Tensor& b_shared, const at::Tensor& w_task,
    const at::Tensor& b_task, int64_t stride, int64_t groups) {
  const RpgShape s = check_rpg_args(x_in, kinds, params, frozen, w_shared, b_shared, w_task, b_task, stride, groups);
  TORCH_CHECK(x_in.device().is_cpu(), "routed_primitive_gather (cpp backend): tensors must be on the CPU, got ",
              x_in.device());
  check_rpg_grad_out(grad_out, x_in, s);
  const at::NoGradGuard no_grad;
  const auto acc = accumulate_type_of(x_in.scalar_type());
  const auto opt = at::TensorOptions().dtype(acc);
  const auto x = x_in.detach().to(acc).contiguous();
  const auto dy = grad_out.to(acc).contiguous();
  const auto wsh = w_shared.detach().to(acc).contiguous().view({s.Csh, s.k * s.cpg});
  const auto wsp = w_task.detach().to(acc).contiguous().view({s.T, s.Csp, s.C * 9});
  const Prims prims = make_prims(kinds, params, frozen, acc);
  const Items it(s);
  const int64_t HWo = s.Ho * s.Wo;
  auto dx = at::empty({s.N, s.C, s.H, s.W}, opt);
  auto p_wsh = at::zeros({it.count, s.Csh, s.k * s.cpg}, opt);
  auto p_bsh = at::zeros({it.count, s.Csh}, opt);
  auto p_wsp = at::zeros({it.count, s.Csp, s.C * 9}, opt);
  auto p_bsp = at::zeros({it.count, s.Csp}, opt);
  const bool has_dense = std::find(prims.kind.begin(), prims.kind.end(), kDenseConv) != prims.kind.end();
  if (s.N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_in.scalar_type(), "rpg_backward_cpu", [&] {
      using V = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      at::parallel_for(0, it.count, 1, [&](int64_t begin, int64_t end) {
        const at::NoGradGuard no_grad_worker;  // grad mode is thread-local
        TileBank<V> tb(s, prims, acc, it.cap);
        auto dytile = at::empty({s.Cout, it.cap}, opt);  // the tile's output gradient, images side by side
        auto dbank = at::empty({s.k * s.C, it.cap}, opt);
        auto dcol = at::empty({s.C * 9, it.cap}, opt);
        auto dcol_dense = has_dense ? at::empty({s.C * 9, it.cap}, opt) : at::Tensor();
        auto dxpad = at::empty({s.C, tb.xp.Hp, tb.xp.Wp}, opt);  // d x on the padded planes, one image
        V* dxp = dxpad.mutable_data_ptr<V>();
        V* dyt = dytile.mutable_data_ptr<V>();
        V* db = dbank.mutable_data_ptr<V>();
        for (int64_t q = begin; q < end; ++q) {
          const int64_t t = it.task(q), j0 = it.first(s, q), m = it.size(s, q);
          auto pw = p_wsh[q];
          auto pws = p_wsp[q];
          V* pb = p_bsh.mutable_data_ptr<V>() + q * s.Csh;
          V* pbs = p_bsp.mutable_data_ptr<V>() + q * s.Csp;
          for (int64_t i0 = 0; i0 < s.Ho; i0 += it.rows) {
            const int64_t i1 = std::min(s.Ho, i0 + it.rows), ni = (i1 - i0) * s.Wo, n = m * ni;
            for (int64_t jj = 0; jj < m; ++jj) {
              if (m > 1 || i0 == 0) tb.xp.load(x.const_data_ptr<V>() + (j0 + jj) * s.C * s.H * s.W, s);
              tb.fill(i0, i1, jj * ni, n);
              const V* dyi = dy.const_data_ptr<V>() + (j0 + jj) * s.Cout * HWo + i0 * s.Wo;
              for (int64_t o = 0; o < s.Cout; ++o) std::copy(dyi + o * HWo, dyi + o * HWo + ni, dyt + o * n + jj * ni);
            }
            V* bk = tb.bank.template mutable_data_ptr<V>();
            for (int64_t g = 0; g < s.G && s.opg > 0; ++g) {
              auto dy_g = mat(dyt + g * s.opg * n, s.opg, n, n, acc);
              auto bank_g = mat(bk + g * s.k * s.cpg * n, s.k * s.cpg, n, n, acc);
              pw.narrow(0, g * s.opg, s.opg).addmm_(dy_g, bank_g.t());
              auto dbank_g = mat(db + g * s.k * s.cpg * n, s.k * s.cpg, n, n, acc);
              at::mm_out(dbank_g, wsh.narrow(0, g * s.opg, s.opg).t(), dy_g);
            }
            for (int64_t o = 0; o < s.Cout; ++o) {
              V sum = 0;
              for (int64_t e = 0; e < n; ++e) sum += dyt[o * n + e];
              if (o < s.Csh) pb[o] += sum; else pbs[o - s.Csh] += sum;
            }
            if (s.Csp > 0) {
              auto dy_sp = mat(dyt + s.Csh * n, s.Csp, n, n, acc);
              pws.addmm_(dy_sp, mat(tb.col1.template mutable_data_ptr<V>(), s.C * 9, n, n, acc).t());
              auto dc = mat(dcol.mutable_data_ptr<V>(), s.C * 9, n, n, acc);
              at::mm_out(dc, wsp[t].t(), dy_sp);
            }
            for (int64_t jj = 0; jj < m; ++jj) {  // d x, image by image
              if (m > 1 && tb.xp.np != nullptr)  // max pool's argmax reads the image (one image: still loaded)
                tb.xp.load(x.const_data_ptr<V>() + (j0 + jj) * s.C * s.H * s.W, s);
              if (i0 == 0) dxpad.zero_();
              if (s.Csp > 0) col2im_add(dcol.const_data_ptr<V>() + jj * ni, n, tb.xp, s, 1, i0, i1, dxp);
              for (int64_t p = 0; p < s.k && s.Csh > 0; ++p) {
                const int kind = prims.kind[p], a = prims.a[p], b = prims.b[p];
                if (kind == kDenseConv) {  // dx += conv3x3ᵀ(dP_p): rows c·k + p of the bank gradient
                  auto dc = mat(dcol_dense.mutable_data_ptr<V>(), s.C * 9, ni, ni, acc);
                  at::mm_out(dc, prims.frozen[p].view({s.C, s.C * 9}).t(), mat(db + p * n + jj * ni, s.C, ni, s.k * n, acc));
                  col2im_add(dcol_dense.const_data_ptr<V>(), ni, tb.xp, s, a, i0, i1, dxp);
                  continue;
                }
                const V* fz = prims.frozen[p].defined() ? prims.frozen[p].template const_data_ptr<V>() : nullptr;
                rpg_dispatch_kind(kind, [&](auto kc) {
                  constexpr int K = decltype(kc)::value;
                  const int64_t st = s.stride;
                  for (int64_t c = 0; c < s.C; ++c) {
                    const V* w9 = K == kDwConv ? fz + c * 9 : nullptr;
                    const V* row = db + (c * s.k + p) * n + jj * ni;
                    for (int64_t i = i0; i < i1; ++i) {
                      V* d0 = dxp + c * tb.xp.plane + (i * st + tb.xp.P) * tb.xp.Wp + tb.xp.P;
                      const V* g = row + (i - i0) * s.Wo;
                      if constexpr (K == kMaxPool) {  // to the argmax, PyTorch's (first in-image maximum)
                        const V* at0 = tb.xp.at(tb.xp.np, c, i * st, 0);
                        for (int64_t j = 0; j < s.Wo; ++j) {
                          const int tap = rpg_max_tap(at0 + j * st, tb.xp.Wp, rpg_max_first_tap(i * st, j * st));
                          d0[j * st + rpg_tap_offset(tap, tb.xp.Wp)] += g[j];
                        }
                      } else {  // linear: the transposed taps, tap-outer
                        const RpgTaps<V> taps = rpg_linear_taps<K, V>(tb.xp.Wp, a, b, w9);
                        for (int e = 0; e < taps.n; ++e) {
                          V* dp = d0 + taps.off[e];
                          const V cf = taps.coef[e];
                          if (st == 1) {
                            _Pragma("omp simd")  // (inside the dispatch macro: #pragma is not allowed)
                            for (int64_t j = 0; j < s.Wo; ++j) dp[j] += cf * g[j];
                          } else {
                            for (int64_t j = 0; j < s.Wo; ++j) dp[j * st] += cf * g[j];
                          }
                        }
                      }
                    }
                  }
                });
              }
              if (i1 < s.Ho) continue;  // the image's last tile: crop the padded gradient into d x
              V* dxi = dx.mutable_data_ptr<V>() + (j0 + jj) * s.C * s.H * s.W;
              for (int64_t c = 0; c < s.C; ++c)
                for (int64_t h = 0; h < s.H; ++h) {
                  const V* src = dxp + c * tb.xp.plane + (h + tb.xp.P) * tb.xp.Wp + tb.xp.P;
                  std::copy(src, src + s.W, dxi + (c * s.H + h) * s.W);
                }
            }
          }
        }
      });
    });
  }
  const auto dt = x_in.scalar_type();
  return {dx.to(dt), p_wsh.sum(0).view(w_shared.sizes()).to(dt), p_bsh.sum(0).to(dt),
          p_wsp.view({s.T, it.per_route, s.Csp, s.C, 3, 3}).sum(1).to(dt),
          p_bsp.view({s.T, it.per_route, s.Csp}).sum(1).to(dt)};
}

TORCH_LIBRARY_IMPL(mtl_ops, CPU, m) {
  m.impl("routed_primitive_gather_forward", &routed_primitive_gather_forward);
  m.impl("routed_primitive_gather_backward", &routed_primitive_gather_backward);
}

}  // namespace mtl_ops::cpu
