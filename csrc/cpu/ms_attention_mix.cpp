// CPU kernels of ms_attention_mix. Nothing is resized into memory: every output row reads the two low-res
// rows its taps need from each scale.
//   forward:  parallel over output rows (b, y): logits of all scales at the row -> softmax over scales (lse
//             kept) -> for each channel, sum over scales of weight * bilinear(value).
//   backward: pass 1 over output rows recomputes the weights (from lse) and samples and writes the logit
//             gradient at output resolution (fp32, 1/K of the output per scale, for 2 x threads images at a time); pass 2, parallel over (b, s),
//             walks the output rows in order and adds each row's contribution into the two low-res rows it
//             read (transposed bilinear). Each low-res element is written by one task in a fixed order, so the
//             result is deterministic for any sizes (integer factors or not) and any thread count.
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

namespace mtl_ops::cpu {
namespace {

// The x taps of one scale, for every output column.
template <typename acc_t>
struct ColumnTaps {
  std::vector<int64_t> x0, x1;
  std::vector<acc_t> lx;
  ColumnTaps(int64_t in, int64_t W) : x0(W), x1(W), lx(W) {
    const acc_t scale = bilinear_scale<acc_t>(in, W);
    for (int64_t x = 0; x < W; ++x) {
      const auto t = bilinear_tap<acc_t>(x, in, scale);
      x0[x] = t.i0;
      x1[x] = t.i1;
      lx[x] = t.lambda;
    }
  }
};

// row[x] = bilinear sample at output row tap `ty`, column x, of the (h, w) plane `plane`.
template <typename scalar_t, typename acc_t>
inline void sample_row(const scalar_t* plane, int64_t w, const LinearTap<acc_t>& ty, const ColumnTaps<acc_t>& cx,
                       acc_t* yrow, int64_t W, acc_t* row) {
  const scalar_t* r0 = plane + ty.i0 * w;
  const scalar_t* r1 = plane + ty.i1 * w;
  const acc_t ly = ty.lambda;
  for (int64_t j = 0; j < w; ++j)
    yrow[j] = (acc_t(1) - ly) * static_cast<acc_t>(r0[j]) + ly * static_cast<acc_t>(r1[j]);
  for (int64_t x = 0; x < W; ++x)
    row[x] = (acc_t(1) - cx.lx[x]) * yrow[cx.x0[x]] + cx.lx[x] * yrow[cx.x1[x]];
}

// Adds the transposed bilinear of one output row `c` (length W) into the two low-res rows it read.
template <typename acc_t>
inline void scatter_row(const acc_t* c, const LinearTap<acc_t>& ty, const ColumnTaps<acc_t>& cx, int64_t W,
                        acc_t* tmp, int64_t w, acc_t* plane) {
  std::fill(tmp, tmp + w, acc_t(0));
  for (int64_t x = 0; x < W; ++x) {
    tmp[cx.x0[x]] += (acc_t(1) - cx.lx[x]) * c[x];
    tmp[cx.x1[x]] += cx.lx[x] * c[x];
  }
  acc_t* r0 = plane + ty.i0 * w;
  acc_t* r1 = plane + ty.i1 * w;
  const acc_t ly = ty.lambda;
  for (int64_t j = 0; j < w; ++j) r0[j] += (acc_t(1) - ly) * tmp[j];
  for (int64_t j = 0; j < w; ++j) r1[j] += ly * tmp[j];
}

std::vector<at::Tensor> contiguous_all(at::TensorList ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

void check_cpu(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "ms_attention_mix (cpp backend): tensors must be on the CPU, got ", t.device());
}

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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "ms_attention_mix_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<ColumnTaps<acc_t>> cols;
    std::vector<acc_t> sy(S);
    int64_t max_w = 1;
    for (int64_t s = 0; s < S; ++s) {
      cols.emplace_back(values[s].size(3), W);
      sy[s] = bilinear_scale<acc_t>(values[s].size(2), H);
      max_w = std::max(max_w, values[s].size(3));
    }
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    acc_t* lp = lse.mutable_data_ptr<acc_t>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> weights(S * W), yrow(max_w), row(W), acc(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / H, y = r % H;
        // logits of every scale at this row, then the softmax over scales
        for (int64_t s = 0; s < S; ++s) {
          const int64_t h = values[s].size(2), w = values[s].size(3);
          const auto ty = bilinear_tap<acc_t>(y, h, sy[s]);
          sample_row<scalar_t, acc_t>(logits[s].const_data_ptr<scalar_t>() + b * h * w, w, ty, cols[s],
                                      yrow.data(), W, weights.data() + s * W);
        }
        for (int64_t x = 0; x < W; ++x) {
          acc_t m = -std::numeric_limits<acc_t>::infinity();
          for (int64_t s = 0; s < S; ++s) m = std::max(m, weights[s * W + x]);
          acc_t sum = 0;
          for (int64_t s = 0; s < S; ++s) {
            const acc_t e = std::exp(weights[s * W + x] - m);
            weights[s * W + x] = e;
            sum += e;
          }
          for (int64_t s = 0; s < S; ++s) weights[s * W + x] /= sum;
          lp[r * W + x] = m + std::log(sum);
        }
        for (int64_t k = 0; k < K; ++k) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t s = 0; s < S; ++s) {
            const int64_t h = values[s].size(2), w = values[s].size(3);
            const auto ty = bilinear_tap<acc_t>(y, h, sy[s]);
            sample_row<scalar_t, acc_t>(values[s].const_data_ptr<scalar_t>() + (b * K + k) * h * w, w, ty, cols[s],
                                        yrow.data(), W, row.data());
            const acc_t* ws = weights.data() + s * W;
            for (int64_t x = 0; x < W; ++x) acc[x] += ws[x] * row[x];
          }
          scalar_t* o = op + ((b * K + k) * H + y) * W;
          for (int64_t x = 0; x < W; ++x) o[x] = static_cast<scalar_t>(acc[x]);
        }
      }
    });
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
  for (int64_t s = 0; s < S; ++s) {
    d_values_acc.push_back(at::zeros(values[s].sizes(), values[s].options().dtype(acc_dt)));
    d_logits_acc.push_back(at::zeros(logits[s].sizes(), logits[s].options().dtype(acc_dt)));
  }
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "ms_attention_mix_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const acc_t* lp = lse.const_data_ptr<acc_t>();
      std::vector<ColumnTaps<acc_t>> cols;
      std::vector<acc_t> sy(S);
      int64_t max_w = 1;
      for (int64_t s = 0; s < S; ++s) {
        cols.emplace_back(values[s].size(3), W);
        sy[s] = bilinear_scale<acc_t>(values[s].size(2), H);
        max_w = std::max(max_w, values[s].size(3));
      }
      // Pass 1, parallel over output rows: da[b, s, y, x] = w_s (<g, up(v_s)> - sum_s' w_s' <g, up(v_s')>),
      // the logit gradient at output resolution (an fp32 map, 1/K of the output per scale).
      // Images go through both passes in chunks of 2 x threads, so the workspace stays small; every element
      // is still computed by one task in a fixed order (the chunking does not change any result).
      const int64_t chunk = std::min<int64_t>(B, 2 * std::max(1, at::get_num_threads()));
      auto da = at::empty({chunk, S, H, W}, lse.options());
      acc_t* dap = da.mutable_data_ptr<acc_t>();
      for (int64_t b0 = 0; b0 < B; b0 += chunk) {
        const int64_t nb = std::min(chunk, B - b0);
        at::parallel_for(0, nb * H, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> weights(S * W), gv(S * W), yrow(max_w), row(W), go(W);
          for (int64_t r = begin; r < end; ++r) {
            const int64_t b = b0 + r / H, y = r % H;
            const acc_t* l_row = lp + (b * H + y) * W;
            std::fill(gv.begin(), gv.end(), acc_t(0));
            for (int64_t s = 0; s < S; ++s) {
              const int64_t h = values[s].size(2), w = values[s].size(3);
              const auto ty = bilinear_tap<acc_t>(y, h, sy[s]);
              acc_t* ws = weights.data() + s * W;
              sample_row<scalar_t, acc_t>(logits[s].const_data_ptr<scalar_t>() + b * h * w, w, ty, cols[s],
                                          yrow.data(), W, ws);
              for (int64_t x = 0; x < W; ++x) ws[x] = std::exp(ws[x] - l_row[x]);
              for (int64_t k = 0; k < K; ++k) {
                sample_row<scalar_t, acc_t>(values[s].const_data_ptr<scalar_t>() + (b * K + k) * h * w, w, ty,
                                            cols[s], yrow.data(), W, row.data());
                const scalar_t* g_row = gp + ((b * K + k) * H + y) * W;
                acc_t* gvs = gv.data() + s * W;
                for (int64_t x = 0; x < W; ++x) gvs[x] += static_cast<acc_t>(g_row[x]) * row[x];
              }
            }
            std::fill(go.begin(), go.end(), acc_t(0));
            for (int64_t s = 0; s < S; ++s)
              for (int64_t x = 0; x < W; ++x) go[x] += weights[s * W + x] * gv[s * W + x];
            for (int64_t s = 0; s < S; ++s) {
              acc_t* dst = dap + (((b - b0) * S + s) * H + y) * W;
              for (int64_t x = 0; x < W; ++x) dst[x] = weights[s * W + x] * (gv[s * W + x] - go[x]);
            }
          }
        });
        // Pass 2, parallel over (b, s): walk the output rows in order and add each row's contribution into the
        // two low-res rows it read (transposed bilinear).
        at::parallel_for(0, nb * S, 1, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> weights(W), c(W), yrow(max_w), tmp(max_w);
          for (int64_t item = begin; item < end; ++item) {
            const int64_t b = b0 + item / S, s = item % S;
            const int64_t h = values[s].size(2), w = values[s].size(3);
            const scalar_t* lplane = logits[s].const_data_ptr<scalar_t>() + b * h * w;
            acc_t* dl = d_logits_acc[s].mutable_data_ptr<acc_t>() + b * h * w;
            acc_t* dv = d_values_acc[s].mutable_data_ptr<acc_t>();
            for (int64_t y = 0; y < H; ++y) {
              const auto ty = bilinear_tap<acc_t>(y, h, sy[s]);
              sample_row<scalar_t, acc_t>(lplane, w, ty, cols[s], yrow.data(), W, weights.data());
              const acc_t* l_row = lp + (b * H + y) * W;
              for (int64_t x = 0; x < W; ++x) weights[x] = std::exp(weights[x] - l_row[x]);
              for (int64_t k = 0; k < K; ++k) {
                const scalar_t* g_row = gp + ((b * K + k) * H + y) * W;
                for (int64_t x = 0; x < W; ++x) c[x] = weights[x] * static_cast<acc_t>(g_row[x]);
                scatter_row<acc_t>(c.data(), ty, cols[s], W, tmp.data(), w, dv + (b * K + k) * h * w);
              }
              scatter_row<acc_t>(dap + (((b - b0) * S + s) * H + y) * W, ty, cols[s], W, tmp.data(), w, dl);
            }
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
