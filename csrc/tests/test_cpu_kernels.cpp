// ctest: the CPU kernels against plain loops, called directly and through the dispatcher.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "common/bilinear.h"
#include "common/cka_gram_strips.h"
#include "cpu/gated_residual.h"
#include "cpu/ms_attention_mix.h"

namespace {

int failures = 0;

void expect_near(double got, double want, double tol, const char* what, int64_t index) {
  if (std::fabs(got - want) > tol * (1.0 + std::fabs(want))) {
    if (failures < 10) std::printf("FAIL %s[%lld]: got %.9g, want %.9g\n", what, (long long)index, got, want);
    ++failures;
  }
}

// Plain loops: y = ge * max(r + b, 0) + gs * r and its gradients, in double.
void check_gated_residual(int64_t T, int64_t inner) {
  auto r = at::randn({T, inner}, at::kFloat), b = at::randn({T, inner}, at::kFloat);
  auto g = at::rand({T, 2}, at::kFloat), dy = at::randn({T, inner}, at::kFloat);
  auto y = mtl_ops::cpu::gated_residual_forward(r, b, g);
  auto [dr, db, dg] = mtl_ops::cpu::gated_residual_backward(dy, r, b, g);
  auto R = r.accessor<float, 2>(), B = b.accessor<float, 2>(), G = g.accessor<float, 2>(), DY = dy.accessor<float, 2>();
  auto Y = y.accessor<float, 2>(), DR = dr.accessor<float, 2>(), DB = db.accessor<float, 2>();
  auto DG = dg.accessor<float, 2>();
  for (int64_t t = 0; t < T; ++t) {
    double sum_exec = 0, sum_skip = 0;
    for (int64_t i = 0; i < inner; ++i) {
      const double s = double(R[t][i]) + B[t][i], relu = s > 0 ? s : 0;
      expect_near(Y[t][i], G[t][0] * relu + G[t][1] * R[t][i], 1e-6, "y", t * inner + i);
      const double d_s = s > 0 ? G[t][0] * DY[t][i] : 0.0;
      expect_near(DB[t][i], d_s, 1e-6, "d_branch", t * inner + i);
      expect_near(DR[t][i], G[t][1] * DY[t][i] + d_s, 1e-6, "d_residual", t * inner + i);
      sum_exec += DY[t][i] * relu;
      sum_skip += DY[t][i] * R[t][i];
    }
    expect_near(DG[t][0], sum_exec, 1e-4, "d_gates_exec", t);
    expect_near(DG[t][1], sum_skip, 1e-4, "d_gates_skip", t);
  }
  // The registered operator gives the same result as the direct call.
  auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mtl_ops::gated_residual_forward", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  if (!at::equal(op.call(r, b, g), y)) {
    std::printf("FAIL dispatcher result differs from the direct call\n");
    ++failures;
  }
}

// The gather ranges of the deterministic bilinear backward (used by the CUDA kernels) must contain every
// output position whose taps read input index i, and the window bound must cover every range.
void check_gather_ranges(int64_t in, int64_t out) {
  const float scale = mtl_ops::bilinear_scale<float>(in, out);
  const int64_t window = mtl_ops::gather_window<float>(out, scale);
  for (int64_t i = 0; i < in; ++i) {
    const auto r = mtl_ops::gather_range<float>(i, out, scale);
    if (r.hi - r.lo > window) {
      std::printf("FAIL gather window %lld < %lld (in %lld, out %lld)\n", (long long)window,
                  (long long)(r.hi - r.lo), (long long)in, (long long)out);
      ++failures;
    }
    for (int64_t dst = 0; dst < out; ++dst) {
      const auto tap = mtl_ops::bilinear_tap<float>(dst, in, scale);
      if (mtl_ops::tap_weight(tap, i) != 0.0f && (dst < r.lo || dst >= r.hi)) {
        std::printf("FAIL gather range of %lld misses %lld (in %lld, out %lld)\n", (long long)i, (long long)dst,
                    (long long)in, (long long)out);
        ++failures;
      }
    }
  }
}

// The CUDA backward's tiled gather (gather_tile_sum over gather_tiles x gather_tiles tiles of `len` positions)
// against the scatter form of the transposed bilinear resize: for a random output gradient G (H x W), every input
// element (i, j) of the (h x w) map must receive sum over output pixels of w_y * w_x * G, whatever the tile length.
struct GridValue {
  const double* g;
  int64_t W;
  double operator()(int64_t yy, int64_t xx) const { return g[yy * W + xx]; }
};

void check_gather_tiles(int64_t h, int64_t w, int64_t H, int64_t W, int64_t len) {
  const auto G = at::randn({H, W}, at::kDouble);
  const double* gp = G.const_data_ptr<double>();
  const double sy = mtl_ops::bilinear_scale<double>(h, H), sx = mtl_ops::bilinear_scale<double>(w, W);
  std::vector<double> want(h * w, 0.0);
  for (int64_t yy = 0; yy < H; ++yy) {
    const auto ty = mtl_ops::bilinear_tap<double>(yy, h, sy);
    for (int64_t xx = 0; xx < W; ++xx) {
      const auto tx = mtl_ops::bilinear_tap<double>(xx, w, sx);
      // each distinct (i, j) the pixel reads, with its weight (tap_weight merges i0 == i1 at the border)
      const int64_t is[2] = {ty.i0, ty.i1}, js[2] = {tx.i0, tx.i1};
      for (int a = 0; a < (ty.i1 != ty.i0 ? 2 : 1); ++a)
        for (int c = 0; c < (tx.i1 != tx.i0 ? 2 : 1); ++c)
          want[is[a] * w + js[c]] += mtl_ops::tap_weight(ty, is[a]) * mtl_ops::tap_weight(tx, js[c]) * gp[yy * W + xx];
    }
  }
  const int64_t tiles_y = mtl_ops::gather_tiles(mtl_ops::gather_window<double>(H, sy), len);
  const int64_t tiles_x = mtl_ops::gather_tiles(mtl_ops::gather_window<double>(W, sx), len);
  const GridValue value{gp, W};
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t j = 0; j < w; ++j) {
      double got = 0;
      for (int64_t a = 0; a < tiles_y; ++a)
        for (int64_t c = 0; c < tiles_x; ++c)
          got += mtl_ops::gather_tile_sum<double>(i, j, h, w, H, W, sy, sx, a, c, len, value);
      expect_near(got, want[i * w + j], 1e-12, "tiled gather vs scatter", ((h * 1000 + H) * 100 + len) * 10000 + i * w + j);
    }
  }
}

// The per-pixel taps of the CUDA kernels (pixel_taps + tap_sample) give PyTorch's bilinear resize.
void check_pixel_taps(int64_t h, int64_t w, int64_t H, int64_t W) {
  const auto v = at::randn({1, 1, h, w}, at::kDouble);
  const auto want = at::upsample_bilinear2d(v, {H, W}, false);
  const double* vp = v.const_data_ptr<double>();
  const auto acc = want.accessor<double, 4>();
  const double sy = mtl_ops::bilinear_scale<double>(h, H), sx = mtl_ops::bilinear_scale<double>(w, W);
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x)
      expect_near(mtl_ops::tap_sample(mtl_ops::pixel_taps<double, int32_t>(y, x, h, w, sy, sx), vp), acc[0][0][y][x],
                  1e-12, "pixel_taps vs upsample_bilinear2d", (h * 1000 + H) * 10000 + y * W + x);
}

// One scale: the attention weight is 1 and ms_attention_mix is PyTorch's bilinear resize.
void check_ms_attention_mix_single_scale(int64_t h, int64_t w, int64_t H, int64_t W) {
  const auto v = at::randn({2, 3, h, w}, at::kDouble);
  const auto a = at::randn({2, 1, h, w}, at::kDouble);
  const auto out = std::get<0>(mtl_ops::cpu::ms_attention_mix_forward({v}, {a}, {H, W}));
  const auto want = at::upsample_bilinear2d(v, {H, W}, false);
  const auto diff = (out - want).abs().max().item<double>();
  expect_near(diff, 0.0, 1e-12, "ms_attention_mix single scale vs upsample_bilinear2d", h * 1000 + H);
}

// cka: every strip height (one row, ragged, the CPU's, the GPU's whole Gram) gives the same CKA in float64, and
// the GPU's rule takes the whole Gram when T·n² fits its scratch budget, tall strips otherwise.
void check_cka_strips(int64_t T, int64_t n, int64_t d) {
  const auto x = at::randn({T, n, d}, at::kDouble).relu_() + 3.0;  // a large common mean, as ReLU features have
  for (bool debiased : {false, true}) {
    const auto want = mtl_ops::cka_gram_strips(x, debiased, false);
    for (int64_t b : {int64_t(1), int64_t(7), int64_t(32), n, mtl_ops::cka_strip_rows(T, n, true)}) {
      const auto got = mtl_ops::cka_gram_strips(x, debiased, false, b);
      for (int64_t i = 0; i < T * T; ++i)
        expect_near(got.view(-1)[i].item<double>(), want.view(-1)[i].item<double>(), 1e-10, "cka strips", i);
    }
  }
}

void check_cka_strip_rows() {
  const std::vector<std::vector<int64_t>> cases = {  // T, n, on CUDA, expected rows
      {5, 800, 1, 800}, {5, 20, 1, 20}, {2, 3000, 1, (int64_t(16) << 20) / 6000}, {5, 100000, 1, 256},
      {5, 800, 0, 100}, {5, 20, 0, 32}, {5, 100000, 0, 256}};
  for (const auto& c : cases)
    expect_near(double(mtl_ops::cka_strip_rows(c[0], c[1], c[2] != 0)), double(c[3]), 0.0, "cka_strip_rows", c[1]);
}

}  // namespace

int main() {
  at::manual_seed(0);
  check_gated_residual(3, 1);
  check_gated_residual(2, 1000);
  check_gated_residual(2, 70001);  // several 32768-element work items per task, ragged tail
  for (int64_t in : {1, 2, 3, 5, 9, 12, 18, 24, 36, 72})
    for (int64_t out : {1, 4, 7, 9, 13, 72, 96}) check_gather_ranges(in, out);
  // 1 x 1 and coarse maps (one range spans the whole output: many tiles), fine and down-sampled ones (one tile),
  // and tile lengths that do not divide the window.
  for (int64_t len : {1, 3, 32}) {
    check_gather_tiles(1, 1, 37, 29, len);
    check_gather_tiles(3, 5, 40, 33, len);
    check_gather_tiles(9, 7, 9, 7, len);
    check_gather_tiles(11, 6, 5, 4, len);
  }
  check_pixel_taps(1, 1, 5, 7);
  check_pixel_taps(4, 6, 16, 24);
  check_pixel_taps(5, 7, 11, 13);
  check_pixel_taps(9, 4, 5, 6);
  check_ms_attention_mix_single_scale(4, 6, 16, 24);
  check_ms_attention_mix_single_scale(5, 7, 11, 13);
  check_ms_attention_mix_single_scale(9, 4, 5, 6);  // down-sampling
  check_cka_strips(3, 5, 4);
  check_cka_strips(3, 70, 40);
  check_cka_strips(2, 300, 17);
  check_cka_strip_rows();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("cpu kernels: all checks passed\n");
  return 0;
}
