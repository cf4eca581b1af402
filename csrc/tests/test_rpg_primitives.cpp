// ctest: the per-pixel math of routed_primitive_gather (csrc/common/rpg_primitives.h) on the CPU. The CUDA
// kernel runs the gather form of every adjoint and the CPU kernel the scatter form; both must give the same
// input gradient, and the max-pool argmax must be PyTorch's (at::max_pool2d_with_indices), borders, ties,
// -inf windows and NaNs included.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/rpg_primitives.h"

namespace {

using namespace mtl_ops;
int failures = 0;
int checks = 0;

void expect(bool ok, const char* what, int64_t a, int64_t b, int64_t c) {
  ++checks;
  if (!ok) {
    if (failures < 20) std::printf("FAIL %s (%lld, %lld, %lld)\n", what, (long long)a, (long long)b, (long long)c);
    ++failures;
  }
}

bool near(double got, double want) {
  if (std::isnan(want)) return std::isnan(got);
  if (got == want) return true;  // infinities
  return std::fabs(got - want) <= 1e-12 * (1.0 + std::fabs(want));
}

int64_t out_size(int64_t n, int64_t s) { return (n - 1) / s + 1; }

// A (H, W) plane copied into the middle of a buffer padded by P on every side with `fill`.
struct Plane {
  int64_t H, W, P, ld;
  std::vector<double> v;
  Plane(const at::Tensor& x, int64_t P_, double fill) : H(x.size(0)), W(x.size(1)), P(P_), ld(x.size(1) + 2 * P_) {
    v.assign((H + 2 * P) * ld, fill);
    auto a = x.accessor<double, 2>();
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) v[(h + P) * ld + w + P] = a[h][w];
  }
  const double* at(int64_t h, int64_t w) const { return v.data() + (h + P) * ld + (w + P); }
  double* at(int64_t h, int64_t w) { return v.data() + (h + P) * ld + (w + P); }
};

// Values that make ties likely, -inf blocks on the borders and inside, and (optionally) NaNs.
at::Tensor hard_plane(int64_t H, int64_t W, bool nans) {
  auto x = at::randint(0, 3, {H, W}, at::kDouble);
  const double ninf = -std::numeric_limits<double>::infinity();
  x.slice(0, 0, std::min<int64_t>(H, 2)).slice(1, 0, std::min<int64_t>(W, 2)).fill_(ninf);  // top-left corner
  if (H > 4) x.select(0, H - 1).fill_(ninf);                                                // bottom row
  if (W > 5) x.slice(0, 0, std::min<int64_t>(H, 3)).slice(1, W - 2, W).fill_(ninf);           // top-right corner
  if (H > 6 && W > 6) x.slice(0, 3, 6).slice(1, 3, 6).fill_(ninf);                           // interior window
  if (nans && H * W > 12) {
    auto flat = x.view(-1);
    flat[7] = std::nan("");
    flat[H * W / 2] = std::nan("");
    flat[H * W / 2 + 1] = std::nan("");  // two NaNs in one window: the later one wins
  }
  return x;
}

// rpg_max_tap and rpg_max_value against PyTorch's max_pool2d (kernel 3, padding 1, stride s).
void check_max_pool_matches_pytorch(int64_t H, int64_t W, int64_t s, bool nans) {
  const auto x = hard_plane(H, W, nans);
  const auto [out, idx] = at::max_pool2d_with_indices(x.view({1, 1, H, W}), {3, 3}, {s, s}, {1, 1});
  const Plane xn(x, 1, -std::numeric_limits<double>::infinity());
  const int64_t Ho = out_size(H, s), Wo = out_size(W, s);
  const auto out2 = out.view({Ho, Wo}), idx2 = idx.view({Ho, Wo});
  auto O = out2.accessor<double, 2>();
  auto I = idx2.accessor<int64_t, 2>();
  for (int64_t i = 0; i < Ho; ++i)
    for (int64_t j = 0; j < Wo; ++j) {
      const int t = rpg_max_tap(xn.at(i * s, j * s), xn.ld, rpg_max_first_tap(i * s, j * s));
      const int64_t h = i * s + t / 3 - 1, w = j * s + t % 3 - 1;
      expect(h >= 0 && h < H && w >= 0 && w < W && h * W + w == I[i][j], "max_pool argmax vs PyTorch", H * 100 + W,
             s, i * Wo + j);
      expect(near(rpg_max_value(xn.at(i * s, j * s), xn.ld), O[i][j]), "max_pool value vs PyTorch", H * 100 + W, s,
             i * Wo + j);
    }
}

// Scatter (the CPU kernel's) and gather (the CUDA kernel's) adjoints of one per-channel primitive.
template <int K>
void check_linear_adjoint(int64_t H, int64_t W, int64_t s, int a, int b) {
  const int64_t Ho = out_size(H, s), Wo = out_size(W, s), P = std::max(1, rpg_radius(K, a, b));
  const auto g = at::randn({Ho, Wo}, at::kDouble).contiguous();
  const auto w9t = at::randn({9}, at::kDouble).contiguous();
  const double* gp = g.const_data_ptr<double>();
  const double* w9 = w9t.const_data_ptr<double>();
  Plane d(at::zeros({H, W}, at::kDouble), P, 0.0);
  const auto taps = rpg_linear_taps<K, double>(d.ld, a, b, w9);
  for (int64_t i = 0; i < Ho; ++i)
    for (int64_t j = 0; j < Wo; ++j)
      for (int e = 0; e < taps.n; ++e) d.at(i * s, j * s)[taps.off[e]] += taps.coef[e] * gp[i * Wo + j];
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w)
      expect(near(rpg_linear_adjoint_gather<K, double>(gp, Ho, Wo, h, w, s, a, b, w9), *d.at(h, w)),
             "linear adjoint gather vs scatter", K * 1000 + a * 10 + b, s, h * W + w);
}

void check_max_adjoint(int64_t H, int64_t W, int64_t s, bool nans) {
  const auto x = hard_plane(H, W, nans);
  const Plane xn(x, 1, -std::numeric_limits<double>::infinity());
  const int64_t Ho = out_size(H, s), Wo = out_size(W, s);
  const auto g = at::randn({Ho, Wo}, at::kDouble).contiguous();
  const double* gp = g.const_data_ptr<double>();
  Plane d(at::zeros({H, W}, at::kDouble), 1, 0.0);
  auto tap_of = [&](int i, int j) { return rpg_max_tap(xn.at(i * s, j * s), xn.ld, rpg_max_first_tap(i * s, j * s)); };
  for (int64_t i = 0; i < Ho; ++i)
    for (int64_t j = 0; j < Wo; ++j) d.at(i * s, j * s)[rpg_tap_offset(tap_of(i, j), d.ld)] += gp[i * Wo + j];
  double padding_sum = 0;  // nothing may reach the padding
  for (int64_t h = -1; h <= H; ++h)
    for (int64_t w = -1; w <= W; ++w)
      if (h < 0 || h >= H || w < 0 || w >= W) padding_sum += std::fabs(*d.at(h, w));
  expect(padding_sum == 0, "max_pool scatter reaches the padding", H * 100 + W, s, 0);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w)
      expect(near(rpg_max_adjoint_gather(gp, Ho, Wo, h, w, s, tap_of), *d.at(h, w)), "max_pool adjoint gather vs scatter",
             H * 100 + W, s, h * W + w);
}

// A dense 3x3 convolution (rows output channels, C input channels, dilation dl, stride s).
void check_dense_adjoint(int64_t H, int64_t W, int64_t s, int64_t dl, int64_t rows, int64_t C) {
  const int64_t Ho = out_size(H, s), Wo = out_size(W, s);
  const auto g = at::randn({rows, Ho, Wo}, at::kDouble).contiguous();
  const auto wt = at::randn({rows, C, 3, 3}, at::kDouble).contiguous();
  auto G = g.accessor<double, 3>();
  auto Wt = wt.accessor<double, 4>();
  auto dx = at::zeros({C, H, W}, at::kDouble);
  auto D = dx.accessor<double, 3>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < Ho; ++i)
        for (int64_t j = 0; j < Wo; ++j)
          for (int u = 0; u < 3; ++u)
            for (int v = 0; v < 3; ++v) {
              const int64_t h = i * s + (u - 1) * dl, w = j * s + (v - 1) * dl;
              if (h >= 0 && h < H && w >= 0 && w < W) D[c][h][w] += Wt[r][c][u][v] * G[r][i][j];
            }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) {
        const double got = rpg_dense_adjoint_gather(g.const_data_ptr<double>(), Ho * Wo, rows,
                                                    wt.const_data_ptr<double>() + c * 9, C * 9, Ho, Wo, h, w, s, dl);
        expect(near(got, D[c][h][w]), "dense adjoint gather vs scatter", dl * 10 + s, c, h * W + w);
      }
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int64_t sizes[][2] = {{1, 1}, {1, 4}, {2, 3}, {5, 7}, {8, 6}, {9, 11}, {12, 13}};
  for (const auto& hw : sizes)
    for (int64_t s : {1, 2, 3}) {
      const int64_t H = hw[0], W = hw[1];
      for (bool nans : {false, true}) {
        check_max_pool_matches_pytorch(H, W, s, nans);
        check_max_adjoint(H, W, s, nans);
      }
      check_linear_adjoint<kIdentity>(H, W, s, 0, 0);
      check_linear_adjoint<kNoise>(H, W, s, 0, 0);
      check_linear_adjoint<kAvgPool>(H, W, s, 0, 0);
      for (int a : {-2, 0, 1, 3})
        for (int b : {-1, 0, 2}) check_linear_adjoint<kShift>(H, W, s, a, b);
      for (int dl : {1, 2, 3}) check_linear_adjoint<kDwConv>(H, W, s, dl, 0);
      for (int64_t dl : {1, 2}) check_dense_adjoint(H, W, s, dl, 3, 2);
    }
  if (failures) {
    std::printf("%d of %d checks failed\n", failures, checks);
    return 1;
  }
  std::printf("rpg primitives: all %d checks passed\n", checks);
  return 0;
}
