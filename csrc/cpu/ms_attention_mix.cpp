// CPU kernels of ms_attention_mix. The low-res maps are resized along x only (h_s x W per plane, in a per-thread
// buffer); the y direction is then a contiguous two-row blend per output row, so every inner loop over x is a
// plain vectorisable loop and the x taps (an indexed gather) are paid once per low-res row, not per output row.
//   forward:  pass 1, parallel over output rows (b, y): logits of all scales at the row -> softmax over scales
//             (weights to a workspace, lse kept). Pass 2, parallel over planes (b, k): resize each scale of the
//             plane along x, then every output row is sum over scales of weight * y-blend.
//   backward: pass 1 recomputes the weights (from lse). Pass 2, parallel over (b, block of kChannelBlock
//             channels): for each channel, resize its values along x, then per output row add g * up(v) into
//             the block's partial <g, up(v_s)> map and scatter w_s * g into the two low-res rows it read (the y
//             transpose, rows in order), then the x transpose gives the value gradient of the plane. Pass 3,
//             parallel over rows: sum the blocks' partial maps in block order -> logit gradient at output
//             resolution. Pass 4, parallel over (b, s): its transposed bilinear, rows in order.
//             Every element is written by one task in a fixed order and the channel blocks do not depend on
//             the thread count, so the result is deterministic for any sizes and any thread count.
#include "ms_attention_mix.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/bilinear.h"
#include "../common/accumulate_type.h"
#include "../common/ms_attention_mix_args.h"
#include "../common/tensor_list.h"

namespace mtl_ops::cpu {
namespace {

// Channels per task of the backward's pass 2: fixed (not derived from the thread count), so the partial sums
// over channels, and hence the logit gradient, do not depend on how the work is split.
constexpr int64_t kChannelBlock = 8;

// The x taps of one scale, for every output column (weights l0 = 1 - lambda and l1 = lambda), and the same
// map transposed: for low-res column j, the (column, weight) pairs [tstart[j], tstart[j + 1]) that read it, in
// the order x ascending, x0's tap before x1's (the transposed resize is then a gather, with no
// read-after-write through memory). identity: w == W, where the taps are x itself with weight 1.
template <typename acc_t>
struct ColumnTaps {
  std::vector<int64_t> x0, x1;
  std::vector<acc_t> l0, l1;
  std::vector<int64_t> tstart, tcol;
  std::vector<acc_t> tweight;
  bool identity;
  ColumnTaps(int64_t in, int64_t W) : x0(W), x1(W), l0(W), l1(W), tstart(in + 1, 0), identity(in == W) {
    const acc_t scale = bilinear_scale<acc_t>(in, W);
    for (int64_t x = 0; x < W; ++x) {
      const auto t = bilinear_tap<acc_t>(x, in, scale);
      x0[x] = t.i0;
      x1[x] = t.i1;
      l0[x] = acc_t(1) - t.lambda;
      l1[x] = t.lambda;
      ++tstart[t.i0 + 1];
      ++tstart[t.i1 + 1];
    }
    for (int64_t j = 0; j < in; ++j) tstart[j + 1] += tstart[j];
    tcol.resize(2 * W);
    tweight.resize(2 * W);
    std::vector<int64_t> fill(tstart.begin(), tstart.end() - 1);
    for (int64_t x = 0; x < W; ++x) {
      tcol[fill[x0[x]]] = x;
      tweight[fill[x0[x]]++] = l0[x];
      tcol[fill[x1[x]]] = x;
      tweight[fill[x1[x]]++] = l1[x];
    }
  }
};

// The per-scale geometry: y taps of every output row and x taps of every column.
template <typename acc_t>
struct ScaleTaps {
  int64_t h, w;
  std::vector<LinearTap<acc_t>> ty;
  ColumnTaps<acc_t> cx;
  ScaleTaps(int64_t h_, int64_t w_, int64_t H, int64_t W) : h(h_), w(w_), ty(H), cx(w_, W) {
    const acc_t sy = bilinear_scale<acc_t>(h, H);
    for (int64_t y = 0; y < H; ++y) ty[y] = bilinear_tap<acc_t>(y, h, sy);
  }
};

// dst (h x W) = the (h x w) plane resized along x.
template <typename scalar_t, typename acc_t>
inline void resize_x(const scalar_t* plane, const ScaleTaps<acc_t>& st, int64_t W, acc_t* dst) {
  const auto& cx = st.cx;
  for (int64_t i = 0; i < st.h; ++i) {
    const scalar_t* src = plane + i * st.w;
    acc_t* d = dst + i * W;
    if (cx.identity) {
      for (int64_t x = 0; x < W; ++x) d[x] = static_cast<acc_t>(src[x]);
    } else {
      for (int64_t x = 0; x < W; ++x)
        d[x] = cx.l0[x] * static_cast<acc_t>(src[cx.x0[x]]) + cx.l1[x] * static_cast<acc_t>(src[cx.x1[x]]);
    }
  }
}

// plane (h x w) = src (h x W) transposed-resized along x (each low-res column sums the columns that read it).
template <typename acc_t>
inline void resize_x_transposed(const acc_t* src, const ScaleTaps<acc_t>& st, int64_t W, acc_t* plane) {
  const auto& cx = st.cx;
  for (int64_t i = 0; i < st.h; ++i) {
    const acc_t* s = src + i * W;
    acc_t* d = plane + i * st.w;
    if (cx.identity) {
      for (int64_t x = 0; x < W; ++x) d[x] = s[x];
    } else {
      for (int64_t j = 0; j < st.w; ++j) {
        acc_t sum = 0;
        for (int64_t e = cx.tstart[j]; e < cx.tstart[j + 1]; ++e) sum += cx.tweight[e] * s[cx.tcol[e]];
        d[j] = sum;
      }
    }
  }
}

// rows (h x W) += the y transpose of the output row c at row tap ty (c's two contributions, in this order; a
// tap with lambda = 0, e.g. every row of a scale at output resolution, has only the first).
template <typename acc_t>
inline void scatter_y(const acc_t* c, const LinearTap<acc_t>& ty, int64_t W, acc_t* rows) {
  acc_t* r0 = rows + ty.i0 * W;
  acc_t* r1 = rows + ty.i1 * W;
  const acc_t l0 = acc_t(1) - ty.lambda, l1 = ty.lambda;
  for (int64_t x = 0; x < W; ++x) r0[x] += l0 * c[x];
  if (l1 != acc_t(0))
    for (int64_t x = 0; x < W; ++x) r1[x] += l1 * c[x];
}

// row[x] = bilinear sample at output row y, column x, of the (h, w) plane `plane` (used for the logits).
template <typename scalar_t, typename acc_t>
inline void sample_row(const scalar_t* plane, const ScaleTaps<acc_t>& st, int64_t y, acc_t* yrow, int64_t W,
                       acc_t* row) {
  const auto& ty = st.ty[y];
  const auto& cx = st.cx;
  const scalar_t* r0 = plane + ty.i0 * st.w;
  const scalar_t* r1 = plane + ty.i1 * st.w;
  const acc_t ly = ty.lambda;
  for (int64_t j = 0; j < st.w; ++j)
    yrow[j] = (acc_t(1) - ly) * static_cast<acc_t>(r0[j]) + ly * static_cast<acc_t>(r1[j]);
  for (int64_t x = 0; x < W; ++x) row[x] = cx.l0[x] * yrow[cx.x0[x]] + cx.l1[x] * yrow[cx.x1[x]];
}

void check_cpu(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "ms_attention_mix (cpp backend): tensors must be on the CPU, got ", t.device());
}

template <typename acc_t>
std::vector<ScaleTaps<acc_t>> scale_taps(const std::vector<at::Tensor>& values, int64_t H, int64_t W,
                                         int64_t* sum_h, int64_t* max_w) {
  std::vector<ScaleTaps<acc_t>> taps;
  *sum_h = 0;
  *max_w = 1;
  for (const auto& v : values) {
    taps.emplace_back(v.size(2), v.size(3), H, W);
    *sum_h += v.size(2);
    *max_w = std::max(*max_w, v.size(3));
  }
  return taps;
}

// Softmax weights over scales of output rows [0, nb*H) of images b0.. : wts[((b - b0) * S + s) * H + y][x].
// With lse == nullptr they are computed from the logits and lse_out gets the log-sum-exp; otherwise they are
// exp(logit - lse) (the backward's recomputation).
template <typename scalar_t, typename acc_t>
void softmax_weights(const std::vector<at::Tensor>& logits, const std::vector<ScaleTaps<acc_t>>& taps, int64_t b0,
                     int64_t nb, int64_t H, int64_t W, int64_t max_w, const acc_t* lse, acc_t* lse_out, acc_t* wts) {
  const int64_t S = taps.size();
  at::parallel_for(0, nb * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> yrow(max_w);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bl = r / H, b = b0 + bl, y = r % H;
      for (int64_t s = 0; s < S; ++s)
        sample_row<scalar_t, acc_t>(logits[s].const_data_ptr<scalar_t>() + b * taps[s].h * taps[s].w, taps[s], y,
                                    yrow.data(), W, wts + ((bl * S + s) * H + y) * W);
      auto ws = [&](int64_t s) { return wts + ((bl * S + s) * H + y) * W; };
      if (lse != nullptr) {
        const acc_t* l_row = lse + (b * H + y) * W;
        for (int64_t s = 0; s < S; ++s)
          for (int64_t x = 0; x < W; ++x) ws(s)[x] = std::exp(ws(s)[x] - l_row[x]);
        continue;
      }
      for (int64_t x = 0; x < W; ++x) {
        acc_t m = -std::numeric_limits<acc_t>::infinity();
        for (int64_t s = 0; s < S; ++s) m = std::max(m, ws(s)[x]);
        acc_t sum = 0;
        for (int64_t s = 0; s < S; ++s) {
          const acc_t e = std::exp(ws(s)[x] - m);
          ws(s)[x] = e;
          sum += e;
        }
        for (int64_t s = 0; s < S; ++s) ws(s)[x] /= sum;
        lse_out[(b * H + y) * W + x] = m + std::log(sum);
      }
    }
  });
}

// Images go through the passes in chunks of 2 x threads, so the workspaces stay small; the chunking does not
// change any result.
int64_t image_chunk(int64_t B) { return std::max<int64_t>(1, std::min<int64_t>(B, 2 * std::max(1, at::get_num_threads()))); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> ms_attention_mix_forward(at::TensorList values_in, at::TensorList logits_in,
                                                            at::IntArrayRef size) {
  check_ms_attention_mix_args(values_in, logits_in, size);
  check_cpu(values_in[0]);
  const auto values = contiguous_all(values_in);
  const auto logits = contiguous_all(logits_in);
  const int64_t S = values.size(), B = values[0].size(0), K = values[0].size(1), H = size[0], W = size[1];
  const auto dt = values[0].scalar_type();
  auto out = at::empty({B, K, H, W}, values[0].options());
  auto lse = at::empty({B, H, W}, values[0].options().dtype(accumulate_type_of(dt)));
  if (B == 0) return {out, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "ms_attention_mix_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    int64_t sum_h, max_w;
    const auto taps = scale_taps<acc_t>(values, H, W, &sum_h, &max_w);
    const int64_t chunk = image_chunk(B);
    auto wts_t = at::empty({chunk, S, H, W}, lse.options());
    acc_t* wts = wts_t.mutable_data_ptr<acc_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for (int64_t b0 = 0; b0 < B; b0 += chunk) {
      const int64_t nb = std::min(chunk, B - b0);
      softmax_weights<scalar_t, acc_t>(logits, taps, b0, nb, H, W, max_w, nullptr, lse.mutable_data_ptr<acc_t>(),
                                       wts);
      if (K == 0) continue;
      at::parallel_for(0, nb * K, 1, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> hres(sum_h * W), acc(W);
        for (int64_t item = begin; item < end; ++item) {
          const int64_t bl = item / K, b = b0 + bl, k = item % K;
          // each scale of the plane resized along x: hres rows [off_s, off_s + h_s)
          for (int64_t s = 0, off = 0; s < S; off += taps[s].h, ++s)
            resize_x<scalar_t, acc_t>(values[s].const_data_ptr<scalar_t>() + (b * K + k) * taps[s].h * taps[s].w,
                                      taps[s], W, hres.data() + off * W);
          scalar_t* o = op + (b * K + k) * H * W;
          for (int64_t y = 0; y < H; ++y) {
            std::fill(acc.begin(), acc.end(), acc_t(0));
            acc_t* a = acc.data();
            for (int64_t s = 0, off = 0; s < S; off += taps[s].h, ++s) {
              const auto& ty = taps[s].ty[y];
              const acc_t* r0 = hres.data() + (off + ty.i0) * W;
              const acc_t* r1 = hres.data() + (off + ty.i1) * W;
              const acc_t* ws = wts + ((bl * S + s) * H + y) * W;
              const acc_t l0 = acc_t(1) - ty.lambda, l1 = ty.lambda;
              if (l1 == acc_t(0))  // the row itself (l0 = 1), e.g. at output resolution
                for (int64_t x = 0; x < W; ++x) a[x] += ws[x] * r0[x];
              else
                for (int64_t x = 0; x < W; ++x) a[x] += ws[x] * (l0 * r0[x] + l1 * r1[x]);
            }
            for (int64_t x = 0; x < W; ++x) o[y * W + x] = static_cast<scalar_t>(a[x]);
          }
        }
      });
    }
  });
  return {out, lse};
}

std::vector<at::Tensor> ms_attention_mix_backward(const at::Tensor& grad_out, at::TensorList values_in,
                                                  at::TensorList logits_in, const at::Tensor& lse_in) {
  check_ms_attention_mix_backward_args(grad_out, values_in, logits_in, lse_in);
  check_cpu(values_in[0]);
  const int64_t S = values_in.size(), B = values_in[0].size(0), K = values_in[0].size(1);
  const int64_t H = grad_out.size(2), W = grad_out.size(3);
  const auto dt = values_in[0].scalar_type();
  const auto acc_dt = accumulate_type_of(dt);
  const auto values = contiguous_all(values_in);
  const auto logits = contiguous_all(logits_in);
  const auto g = grad_out.contiguous();
  const auto lse = lse_in.contiguous();
  std::vector<at::Tensor> d_values_acc, d_logits_acc;
  // Every element of both is written below (the x transpose fills each low-res row; with B = 0 they are empty).
  for (int64_t s = 0; s < S; ++s) {
    d_values_acc.push_back(at::empty(values[s].sizes(), values[s].options().dtype(acc_dt)));
    d_logits_acc.push_back(at::empty(logits[s].sizes(), logits[s].options().dtype(acc_dt)));
  }
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "ms_attention_mix_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const acc_t* lp = lse.const_data_ptr<acc_t>();
      int64_t sum_h, max_w;
      const auto taps = scale_taps<acc_t>(values, H, W, &sum_h, &max_w);
      const int64_t chunk = image_chunk(B);
      const int64_t n_kb = (K + kChannelBlock - 1) / kChannelBlock;
      // workspaces: weights (later the logit gradient at output resolution) and the per-block partial
      // <g, up(v_s)> maps, all at output resolution in the accumulation type
      auto wts_t = at::empty({chunk, S, H, W}, lse.options());
      auto gvp_t = at::empty({chunk, std::max<int64_t>(n_kb, 1), S, H, W}, lse.options());
      acc_t* wts = wts_t.mutable_data_ptr<acc_t>();
      acc_t* gvp = gvp_t.mutable_data_ptr<acc_t>();
      for (int64_t b0 = 0; b0 < B; b0 += chunk) {
        const int64_t nb = std::min(chunk, B - b0);
        // Pass 1: weights w_s = exp(logit_s - lse).
        softmax_weights<scalar_t, acc_t>(logits, taps, b0, nb, H, W, max_w, lp, nullptr, wts);
        // Pass 2, parallel over (b, channel block): value gradients and the block's partial <g, up(v_s)>.
        at::parallel_for(0, nb * n_kb, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> hres(sum_h * W), trows(sum_h * W), gr(W), c(W);
          for (int64_t item = begin; item < end; ++item) {
            const int64_t bl = item / n_kb, b = b0 + bl, kb = item % n_kb;
            acc_t* part = gvp + (bl * n_kb + kb) * S * H * W;
            std::fill(part, part + S * H * W, acc_t(0));
            for (int64_t k = kb * kChannelBlock; k < std::min(K, (kb + 1) * kChannelBlock); ++k) {
              for (int64_t s = 0, off = 0; s < S; off += taps[s].h, ++s)
                resize_x<scalar_t, acc_t>(values[s].const_data_ptr<scalar_t>() + (b * K + k) * taps[s].h * taps[s].w,
                                          taps[s], W, hres.data() + off * W);
              std::fill(trows.begin(), trows.end(), acc_t(0));
              for (int64_t y = 0; y < H; ++y) {
                const scalar_t* g_row = gp + ((b * K + k) * H + y) * W;
                for (int64_t x = 0; x < W; ++x) gr[x] = static_cast<acc_t>(g_row[x]);
                for (int64_t s = 0, off = 0; s < S; off += taps[s].h, ++s) {
                  const auto& ty = taps[s].ty[y];
                  const acc_t* r0 = hres.data() + (off + ty.i0) * W;
                  const acc_t* r1 = hres.data() + (off + ty.i1) * W;
                  const acc_t* ws = wts + ((bl * S + s) * H + y) * W;
                  acc_t* pv = part + (s * H + y) * W;
                  const acc_t l0 = acc_t(1) - ty.lambda, l1 = ty.lambda;
                  if (l1 == acc_t(0))  // the row itself (l0 = 1), e.g. at output resolution
                    for (int64_t x = 0; x < W; ++x) pv[x] += gr[x] * r0[x];
                  else
                    for (int64_t x = 0; x < W; ++x) pv[x] += gr[x] * (l0 * r0[x] + l1 * r1[x]);
                  for (int64_t x = 0; x < W; ++x) c[x] = ws[x] * gr[x];
                  scatter_y<acc_t>(c.data(), ty, W, trows.data() + off * W);
                }
              }
              for (int64_t s = 0, off = 0; s < S; off += taps[s].h, ++s)
                resize_x_transposed<acc_t>(trows.data() + off * W, taps[s], W,
                                           d_values_acc[s].mutable_data_ptr<acc_t>() +
                                               (b * K + k) * taps[s].h * taps[s].w);
            }
          }
        });
        // Pass 3, parallel over rows: gv_s = sum of the blocks' partials (block order), then the logit gradient
        // at output resolution da_s = w_s (gv_s - sum_s' w_s' gv_s'), written over the weights.
        at::parallel_for(0, nb * H, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> gv(S * W), go(W);
          for (int64_t r = begin; r < end; ++r) {
            const int64_t bl = r / H, y = r % H;
            std::fill(gv.begin(), gv.end(), acc_t(0));
            for (int64_t kb = 0; kb < n_kb; ++kb)
              for (int64_t s = 0; s < S; ++s) {
                const acc_t* pv = gvp + (((bl * n_kb + kb) * S + s) * H + y) * W;
                for (int64_t x = 0; x < W; ++x) gv[s * W + x] += pv[x];
              }
            std::fill(go.begin(), go.end(), acc_t(0));
            for (int64_t s = 0; s < S; ++s) {
              const acc_t* ws = wts + ((bl * S + s) * H + y) * W;
              for (int64_t x = 0; x < W; ++x) go[x] += ws[x] * gv[s * W + x];
            }
            for (int64_t s = 0; s < S; ++s) {
              acc_t* ws = wts + ((bl * S + s) * H + y) * W;
              for (int64_t x = 0; x < W; ++x) ws[x] = ws[x] * (gv[s * W + x] - go[x]);
            }
          }
        });
        // Pass 4, parallel over (b, s): the logit gradient's transposed bilinear, output rows in order.
        at::parallel_for(0, nb * S, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> trows(sum_h * W);
          for (int64_t item = begin; item < end; ++item) {
            const int64_t bl = item / S, b = b0 + bl, s = item % S;
            std::fill(trows.begin(), trows.begin() + taps[s].h * W, acc_t(0));
            for (int64_t y = 0; y < H; ++y)
              scatter_y<acc_t>(wts + ((bl * S + s) * H + y) * W, taps[s].ty[y], W, trows.data());
            resize_x_transposed<acc_t>(trows.data(), taps[s], W,
                                       d_logits_acc[s].mutable_data_ptr<acc_t>() + b * taps[s].h * taps[s].w);
          }
        });
      }
    });
  }
  std::vector<at::Tensor> grads;
  for (int64_t s = 0; s < S; ++s) grads.push_back(d_values_acc[s].to(dt));
  for (int64_t s = 0; s < S; ++s) grads.push_back(d_logits_acc[s].to(dt));
  return grads;
}

TORCH_LIBRARY_IMPL(mtl_ops, CPU, m) {
  m.impl("ms_attention_mix_forward", &ms_attention_mix_forward);
  m.impl("ms_attention_mix_backward", &ms_attention_mix_backward);
}

}  // namespace mtl_ops::cpu
