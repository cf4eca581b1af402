// ctest: the CPU kernels against plain loops, called directly and through the dispatcher.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>

#include "cpu/gated_residual.h"

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

}  // namespace

int main() {
  at::manual_seed(0);
  check_gated_residual(3, 1);
  check_gated_residual(2, 1000);
  check_gated_residual(2, 70001);  // several 32768-element work items per task, ragged tail
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("cpu kernels: all checks passed\n");
  return 0;
}
