// Finite-difference gradient checking in double precision, shared by the op and module tests.
// gradcheck(f, inputs): f maps f64 leaf tensors to any tensor; its output is reduced to a scalar with fixed
// random weights, and every input element's analytic gradient is compared with a central difference. Integer
// inputs (ids, targets) are held fixed.
#pragma once
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/autograd/node.h"
#include "core/ops.h"

namespace tally::test {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-7;
  double rtol = 1e-5;
  int64_t max_elements_per_input = 400;  // checks an evenly spaced sample beyond this
  std::vector<size_t> frozen = {};       // inputs held fixed: no gradient is asked of them, and none may appear
};

inline void gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f, std::vector<Tensor> inputs,
                      GradcheckOptions opt = {}) {
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor& t = inputs[k];
    if (!is_floating(t.dtype())) continue;
    REQUIRE(t.dtype() == DType::f64);
    if (std::find(opt.frozen.begin(), opt.frozen.end(), k) == opt.frozen.end()) t.set_requires_grad(true);
  }
  Generator gen(1234);
  Tensor weights;
  auto scalar = [&](const std::vector<Tensor>& in) {
    Tensor out = f(in);
    if (!weights.defined()) weights = randn(out.shape(), gen, {.dtype = DType::f64});
    return sum(out * weights);
  };
  Tensor loss = scalar(inputs);
  loss.backward();
  for (size_t k = 0; k < inputs.size(); ++k) {
    Tensor x = inputs[k];
    if (!x.requires_grad()) {
      CHECK_MESSAGE(!x.grad().defined(), "input ", k, " is frozen but received a gradient");
      continue;
    }
    Tensor analytic = x.grad();
    REQUIRE_MESSAGE(analytic.defined(), "input ", k, " received no gradient");
    std::vector<double> a = analytic.to_vector<double>();
    double* p = x.data<double>();
    REQUIRE(x.is_contiguous());
    int64_t n = x.numel(), step = std::max<int64_t>(1, n / opt.max_elements_per_input);
    for (int64_t i = 0; i < n; i += step) {
      double saved = p[i];
      double plus, minus;
      {
        NoGradGuard no_grad;
        p[i] = saved + opt.eps;
        plus = scalar(inputs).item();
        p[i] = saved - opt.eps;
        minus = scalar(inputs).item();
        p[i] = saved;
      }
      double numeric = (plus - minus) / (2 * opt.eps);
      bool ok = std::abs(numeric - a[i]) <= opt.atol + opt.rtol * std::abs(numeric);
      if (!ok) {
        FAIL_CHECK("gradient mismatch at input ", k, " element ", i, ": analytic ", a[i], ", numeric ", numeric);
        return;
      }
    }
  }
}

// Uniform values in [lo, hi) as an f64 tensor (seeded).
inline Tensor uniform_f64(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Generator g(seed);
  Tensor t = empty(shape, {.dtype = DType::f64});
  uniform_(t, g, lo, hi);
  return t;
}

// |a - b| <= atol + rtol * |b| elementwise; reports the worst element.
inline void check_close(const Tensor& actual, const std::vector<double>& expected, double atol = 1e-6, double rtol = 1e-6) {
  std::vector<double> a = actual.to_vector<double>();
  REQUIRE(a.size() == expected.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(std::abs(a[i] - expected[i]) <= atol + rtol * std::abs(expected[i]))) {
      FAIL_CHECK("element ", i, ": got ", a[i], ", expected ", expected[i]);
      return;
    }
  }
}

}  // namespace tally::test
