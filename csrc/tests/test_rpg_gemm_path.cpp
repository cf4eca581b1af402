// ctest: the CUDA routed_primitive_gather's algorithm (csrc/common/rpg_gemm_path.h: the per-thread bodies
// of its kernels and its host-side buffers, shifted views, GEMMs and chunking) run on the CPU by a launcher
// that loops over the kernels' planes and pixels, against the CPU kernel:
// forward and all five gradients, every primitive kind, strides 1 to 3, no shared or no task channels,
// groups, an empty batch, more primitives than one launch takes, the bank in chunks, fp64/fp32/bf16.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "common/rpg_gemm_path.h"
#include "cpu/routed_primitive_gather.h"

namespace {

using namespace mtl_ops;
using rpg_gemm::Geo;
using rpg_gemm::PrimTable;

int failures = 0;

struct CpuLaunch {
  template <typename V>
  void response(const V* xz, const V* xn, const V* fz, const PrimTable& tab, const Geo& g, int n_max, V* R,
                uint8_t* taps, int64_t planes, int64_t pixels) const {
    for (int64_t pl = 0; pl < planes; ++pl)
      for (int64_t m = 0; m < pixels; ++m) rpg_gemm::response_at<V>(xz, xn, fz, tab, g, n_max, R, taps, pl, m);
  }
  template <typename V>
  void input_grad(const V* dR, const uint8_t* taps, const V* dy, const V* fz, const V* wsp, const PrimTable& tab,
                  const Geo& g, int64_t n0, int n_max, bool task, bool accumulate, V* dx, int64_t planes,
                  int64_t pixels) const {
    for (int64_t pl = 0; pl < planes; ++pl)
      for (int64_t q = 0; q < pixels; ++q) {
        if (g.s == 1)
          rpg_gemm::input_grad_at<V, true>(dR, taps, dy, fz, wsp, tab, g, n0, n_max, task, accumulate, dx, pl, q);
        else
          rpg_gemm::input_grad_at<V, false>(dR, taps, dy, fz, wsp, tab, g, n0, n_max, task, accumulate, dx, pl, q);
      }
  }
  template <typename S, typename V>
  void epilogue(const V* ysh, const V* ysp, const V* bsh, const V* bsp, const Geo& g, S* y, int64_t planes,
                int64_t pixels) const {
    for (int64_t pl = 0; pl < planes; ++pl)
      for (int64_t m = 0; m < pixels; ++m) rpg_gemm::epilogue_at<S, V>(ysh, ysp, bsh, bsp, g, y, pl, m);
  }
};

using Prims = std::vector<std::vector<int64_t>>;  // (kind, a, b)

struct Case {
  const char* name;
  Prims prims;
  int64_t T, B, C, H, W, Csh, Csp, stride, groups;
  at::ScalarType dtype = at::kDouble;
  bool neg_inf_corner = false;  // all -inf top-left windows: compare d x only
};

struct Inputs {
  at::Tensor x, ws, bs, wt, bt;
  std::vector<int64_t> kinds, params;
  std::vector<at::Tensor> frozen;
};

Inputs make_inputs(const Case& c) {
  Inputs in;
  const int64_t k = static_cast<int64_t>(c.prims.size());
  const auto opt = at::TensorOptions().dtype(c.dtype);
  for (const auto& p : c.prims) {
    in.kinds.push_back(p[0]);
    in.params.push_back(p[1]);
    in.params.push_back(p[2]);
    if (p[0] == kDwConv)
      in.frozen.push_back(at::randn({c.C, 1, 3, 3}, opt) / 3);
    else if (p[0] == kDenseConv)
      in.frozen.push_back(at::randn({c.C, c.C, 3, 3}, opt) / (3 * std::sqrt(double(c.C))));
    else if (p[0] == kNoise)
      in.frozen.push_back(at::randn({c.C, 3, 5}, opt) * 0.1);
    else
      in.frozen.push_back(at::empty({0}, opt));
  }
  in.x = at::randn({c.T * c.B, c.C, c.H, c.W}, opt);
  if (c.neg_inf_corner && in.x.numel() > 0) in.x.slice(2, 0, 2).slice(3, 0, 2).fill_(-std::numeric_limits<double>::infinity());
  in.ws = at::randn({c.Csh, k * c.C / c.groups, 1, 1}, opt) / std::sqrt(double(k * c.C / c.groups));
  in.bs = at::randn({c.Csh}, opt);
  in.wt = at::randn({c.T, c.Csp, c.C, 3, 3}, opt) / std::sqrt(9.0 * c.C);
  in.bt = at::randn({c.T, c.Csp}, opt);
  return in;
}

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  if (got.sizes() != want.sizes() || got.scalar_type() != want.scalar_type()) {
    std::printf("FAIL %s: shape/dtype %s %s vs %s %s\n", what.c_str(), c10::str(got.sizes()).c_str(),
                c10::toString(got.scalar_type()), c10::str(want.sizes()).c_str(), c10::toString(want.scalar_type()));
    ++failures;
    return;
  }
  if (got.numel() == 0) return;
  const auto g = got.to(at::kDouble), w = want.to(at::kDouble);
  const double scale = std::max(1.0, w.abs().max().item<double>());
  const double err = (g - w).abs().max().item<double>() / scale;
  if (!(err <= tol)) {
    std::printf("FAIL %s: max error %.3g (scaled by %.3g) > %.3g\n", what.c_str(), err, scale, tol);
    ++failures;
  }
}

void check(const Case& c) {
  const Inputs in = make_inputs(c);
  using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  const RpgShape s = check_rpg_args(in.x, in.kinds, in.params, in.frozen, in.ws, in.bs, in.wt, in.bt, c.stride,
                                    c.groups);
  const auto y = rpg_gemm::forward(CpuLaunch{}, in.x, in.kinds, in.params, in.frozen, in.ws, in.bs, in.wt, in.bt, s);
  const auto y_cpu = cpu::routed_primitive_gather_forward(in.x, in.kinds, in.params, in.frozen, in.ws, in.bs, in.wt, in.bt, c.stride, c.groups);
  const double tol = c.dtype == at::kDouble ? 1e-10 : c.dtype == at::kFloat ? 1e-4 : 1.6e-2;
  const std::string name = c.name;
  if (!c.neg_inf_corner) expect_close(y, y_cpu, tol, name + " y");
  const auto dy = at::randn(y_cpu.sizes(), y_cpu.options());
  const Grads got = rpg_gemm::backward(CpuLaunch{}, dy, in.x, in.kinds, in.params, in.frozen, in.ws, in.wt, s);
  const Grads want = cpu::routed_primitive_gather_backward(dy, in.x, in.kinds, in.params, in.frozen, in.ws, in.bs, in.wt, in.bt, c.stride,
                                 c.groups);
  expect_close(std::get<0>(got), std::get<0>(want), tol, name + " d_x");
  if (c.neg_inf_corner) return;
  expect_close(std::get<1>(got), std::get<1>(want), tol, name + " d_w_shared");
  expect_close(std::get<2>(got), std::get<2>(want), tol, name + " d_b_shared");
  expect_close(std::get<3>(got), std::get<3>(want), tol, name + " d_w_task");
  expect_close(std::get<4>(got), std::get<4>(want), tol, name + " d_b_task");
}

}  // namespace

int main() {
  at::manual_seed(0);
  const Prims all = {{kIdentity, 0, 0}, {kAvgPool, 0, 0}, {kMaxPool, 0, 0}, {kShift, -1, 1},
                     {kNoise, 0, 0},    {kDwConv, 2, 0},  {kDenseConv, 1, 0}};
  const Prims default5 = {{kDwConv, 1, 0}, {kDwConv, 2, 0}, {kNoise, 0, 0}, {kAvgPool, 0, 0}, {kMaxPool, 0, 0}};
  Prims many18 = all;
  for (const auto& p : Prims{{kShift, 2, 0}, {kDwConv, 1, 0}, {kMaxPool, 0, 0}, {kAvgPool, 0, 0}, {kNoise, 0, 0},
                             {kDenseConv, 2, 0}, {kIdentity, 0, 0}, {kShift, 0, -2}, {kDwConv, 3, 0},
                             {kMaxPool, 0, 0}, {kDenseConv, 1, 0}})
    many18.push_back(p);
  std::vector<Case> cases;
  for (int64_t stride : {1, 2, 3}) {
    for (int64_t kind = 0; kind < kNumRpgKinds; ++kind) {
      const int64_t a = kind == kShift ? 2 : (kind == kDwConv || kind == kDenseConv) ? 1 : 0;
      const int64_t b = kind == kShift ? -1 : 0;
      cases.push_back({"one kind", {{kind, a, b}}, 2, 2, 4, 7, 9, 4, 3, stride, 2});
    }
    cases.push_back({"dense dilated", {{kDenseConv, 2, 0}, {kDwConv, 3, 0}}, 2, 1, 3, 8, 7, 3, 2, stride, 1});
    cases.push_back({"all", all, 2, 2, 4, 7, 9, 4, 3, stride, 2});
    cases.push_back({"default5", default5, 3, 2, 6, 10, 12, 5, 1, stride, 1});
    cases.push_back({"many18 (two launches)", many18, 2, 1, 4, 6, 7, 4, 2, stride, 2});
    cases.push_back({"no task channels", all, 2, 1, 4, 6, 5, 4, 0, stride, 1});
    cases.push_back({"no shared channels", all, 2, 2, 4, 7, 9, 0, 3, stride, 1});
    cases.push_back({"C_sh > C_in, groups 4", all, 2, 3, 4, 13, 3, 8, 1, stride, 4});
    cases.push_back({"1x1 image", all, 1, 1, 1, 1, 1, 1, 1, stride, 1});
    cases.push_back({"image smaller than the stride", all, 2, 1, 8, 2, 3, 4, 2, stride, 2});
    cases.push_back({"empty batch", all, 2, 0, 4, 5, 6, 4, 2, stride, 2});
    cases.push_back({"fp32", all, 2, 2, 4, 9, 7, 4, 3, stride, 2, at::kFloat});
    cases.push_back({"bf16", default5, 2, 1, 4, 9, 7, 4, 3, stride, 2, at::kBFloat16});
    cases.push_back({"-inf corner", {{kMaxPool, 0, 0}}, 2, 1, 2, 9, 10, 2, 1, stride, 1, at::kDouble, true});
  }
  for (const auto& c : cases) check(c);
  // The bank in chunks of one image, and a bad bound.
  setenv("MTL_OPS_RPG_BANK_BYTES", "1", 1);
  for (int64_t stride : {1, 2}) check({"one image per chunk", many18, 2, 2, 4, 7, 9, 4, 3, stride, 2});
  setenv("MTL_OPS_RPG_BANK_BYTES", "lots", 1);
  bool threw = false;
  try {
    rpg_gemm::bank_bytes_bound();
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("MTL_OPS_RPG_BANK_BYTES must be a positive number of bytes, got 'lots'") !=
            std::string::npos;
  }
  if (!threw) {
    std::printf("FAIL a bad MTL_OPS_RPG_BANK_BYTES is not reported\n");
    ++failures;
  }
  unsetenv("MTL_OPS_RPG_BANK_BYTES");
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("rpg gemm path: all %zu cases passed\n", cases.size() + 2);
  return 0;
}
