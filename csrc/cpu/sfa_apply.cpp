// CPU kernels of sfa_apply: out[t] = sigmoid(mask[t]) * features, for T tasks sharing the features.
//   forward:  the sigmoid of a spatial mask (M = 1) once per (t, b, pixel) into a buffer, then parallel over
//             output planes (t, b, c), each one contiguous pass.
//   backward: parallel over (b, pixel chunk), one pass over all tasks and channels:
//             d_features = sum_t sigmoid(m_t) * g_t, d_m_t = sigmoid'(m_t) * (sum over c if M = 1) f * g_t.
//             Each output element is produced by one work item: deterministic.
#include <ATen/ATen.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common/accumulate_type.h"
#include "../common/sfa_apply_args.h"
#include "../common/sigmoid.h"

namespace mtl_ops::cpu {
namespace {

constexpr int64_t kPixelChunk = 1024;

void check_cpu(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "sfa_apply (cpp backend): tensors must be on the CPU, got ", t.device());
}

}  // namespace

at::Tensor sfa_apply_forward(const at::Tensor& features_in, const at::Tensor& mask_in) {
  check_sfa_apply_args(features_in, mask_in);
  check_cpu(features_in);
  const auto f = features_in.contiguous();
  const auto m = mask_in.contiguous();
  const int64_t T = m.size(0), B = f.size(0), C = f.size(1), P = f.size(2) * f.size(3), M = m.size(2);
  auto out = at::empty({T, B, C, f.size(2), f.size(3)}, f.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "sfa_apply_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    // A spatial mask's sigmoid once per (t, b, pixel), into a small buffer (1/C of the output); then every output
    // plane (t, b, c) is one contiguous pass over its pixels, so the writes stream plane by plane.
    std::vector<acc_t> sig(M == 1 ? T * B * P : 0);
    if (M == 1) {
      at::parallel_for(0, T * B * P, kPixelChunk, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) sig[i] = sigmoid_value<acc_t>(static_cast<acc_t>(mp[i]));
      });
    }
    at::parallel_for(0, T * B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t tb = plane / C, b = tb % B, c = plane % C;
        const scalar_t* frow = fp + (b * C + c) * P;
        scalar_t* orow = op + plane * P;
        if (M == 1) {
          const acc_t* srow = sig.data() + tb * P;
          for (int64_t i = 0; i < P; ++i) orow[i] = static_cast<scalar_t>(srow[i] * static_cast<acc_t>(frow[i]));
        } else {
          const scalar_t* mrow = mp + plane * P;
          for (int64_t i = 0; i < P; ++i)
            orow[i] = static_cast<scalar_t>(sigmoid_value<acc_t>(static_cast<acc_t>(mrow[i])) * static_cast<acc_t>(frow[i]));
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sfa_apply_backward(const at::Tensor& grad_out, const at::Tensor& features_in,
                                                      const at::Tensor& mask_in) {
  check_sfa_apply_args(features_in, mask_in);
  check_cpu(features_in);
  const int64_t T = mask_in.size(0), B = features_in.size(0), C = features_in.size(1);
  const int64_t h = features_in.size(2), w = features_in.size(3), P = h * w, M = mask_in.size(2);
  TORCH_CHECK(grad_out.dim() == 5 && grad_out.size(0) == T && grad_out.size(1) == B && grad_out.size(2) == C &&
                  grad_out.size(3) == h && grad_out.size(4) == w && grad_out.scalar_type() == features_in.scalar_type() &&
                  grad_out.device() == features_in.device(),
              "sfa_apply_backward: grad_out must be (T, B, C, h, w) = (", T, ", ", B, ", ", C, ", ", h, ", ", w,
              ") in the dtype and on the device of features, got ", grad_out.sizes(), " ", grad_out.scalar_type());
  const auto f = features_in.contiguous();
  const auto m = mask_in.contiguous();
  const auto g = grad_out.contiguous();
  auto df = at::empty_like(f);
  auto dm = at::empty_like(m);
  if (f.numel() == 0 || T == 0) {
    df.zero_();
    dm.zero_();
    return {df, dm};
  }
  const int64_t chunks = (P + kPixelChunk - 1) / kPixelChunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "sfa_apply_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dfp = df.mutable_data_ptr<scalar_t>();
    scalar_t* dmp = dm.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
      // per task: the sigmoid of the spatial mask and the channel sum of f * g (M = 1)
      std::vector<acc_t> sig(M == 1 ? T * kPixelChunk : 0), red(M == 1 ? T * kPixelChunk : 0), acc(kPixelChunk);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = item / chunks;
        const int64_t p0 = (item % chunks) * kPixelChunk, n = std::min(kPixelChunk, P - p0);
        if (M == 1) {
          for (int64_t t = 0; t < T; ++t) {
            const scalar_t* mrow = mp + (t * B + b) * P + p0;
            for (int64_t i = 0; i < n; ++i) sig[t * kPixelChunk + i] = sigmoid_value<acc_t>(static_cast<acc_t>(mrow[i]));
          }
          std::fill(red.begin(), red.end(), acc_t(0));
        }
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* frow = fp + (b * C + c) * P + p0;
          std::fill(acc.begin(), acc.begin() + n, acc_t(0));
          for (int64_t t = 0; t < T; ++t) {
            const scalar_t* grow = gp + ((t * B + b) * C + c) * P + p0;
            if (M == 1) {
              const acc_t* st = sig.data() + t * kPixelChunk;
              acc_t* rt = red.data() + t * kPixelChunk;
              for (int64_t i = 0; i < n; ++i) {
                const acc_t gi = static_cast<acc_t>(grow[i]);
                acc[i] += st[i] * gi;
                rt[i] += static_cast<acc_t>(frow[i]) * gi;
              }
            } else {
              const scalar_t* mrow = mp + ((t * B + b) * C + c) * P + p0;
              scalar_t* dmrow = dmp + ((t * B + b) * C + c) * P + p0;
              for (int64_t i = 0; i < n; ++i) {
                const acc_t gi = static_cast<acc_t>(grow[i]);
                const acc_t si = sigmoid_value<acc_t>(static_cast<acc_t>(mrow[i]));
                acc[i] += si * gi;
                dmrow[i] = static_cast<scalar_t>(sigmoid_grad_from_value(si) * static_cast<acc_t>(frow[i]) * gi);
              }
            }
          }
          scalar_t* dfrow = dfp + (b * C + c) * P + p0;
          for (int64_t i = 0; i < n; ++i) dfrow[i] = static_cast<scalar_t>(acc[i]);
        }
        if (M == 1) {
          for (int64_t t = 0; t < T; ++t) {
            scalar_t* dmrow = dmp + (t * B + b) * P + p0;
            const acc_t* st = sig.data() + t * kPixelChunk;
            const acc_t* rt = red.data() + t * kPixelChunk;
            for (int64_t i = 0; i < n; ++i) dmrow[i] = static_cast<scalar_t>(sigmoid_grad_from_value(st[i]) * rt[i]);
          }
        }
      }
    });
  });
  return {df, dm};
}

TORCH_LIBRARY_IMPL(mtl_ops, CPU, m) {
  m.impl("sfa_apply_forward", &sfa_apply_forward);
  m.impl("sfa_apply_backward", &sfa_apply_backward);
}

}  // namespace mtl_ops::cpu
