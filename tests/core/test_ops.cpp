// Every op of the table (tests/core/op_cases.h) in f64 on the CPU: its values against given results or an
// independent computation, and its gradients against central finite differences. Then what a table cannot say:
// error messages that name the op and the shapes, the operators on tensors and scalars, an input used twice, the
// padded vocabulary's zero gradient, and dropout's mask.
#include <doctest/doctest.h>

#include <cmath>

#include "core/ops.h"
#include "tests/core/op_cases.h"
#include "tests/gradcheck.h"

using namespace tally;
using namespace tally::test;

TEST_SUITE("core") {

// ---- the table ----

TEST_CASE("op table: every op has variants; a differentiable op has some small enough for finite differences") {
  for (const OpCase& c : op_cases()) {
    INFO(c.op);
    CHECK(!c.variants.empty());
    bool gradient = false;
    for (const Variant& v : c.variants) gradient = gradient || has(checks_of(c, v), Check::gradient);
    CHECK(gradient == (c.backward == Backward::yes));
  }
}

TEST_CASE("op table: values against given results or an independent computation (f64)") {
  for_each_variant(Check::none, [](const OpCase& c, const Variant& v, size_t i) {
    const Expect& e = expect_of(c, v);
    if (!e.defined()) return;
    Inputs leaves = make_leaves(v, i, DType::f64);
    Tensor out = run(c, v, leaves);
    if (e.shape) CHECK(out.shape() == *e.shape);
    if (!e.values.empty()) check_close(out, e.values, e.atol, e.rtol);
    if (e.reference) check_close(out, e.reference(views_of(v, leaves)).to_vector<double>(), e.atol, e.rtol);
  });
}

TEST_CASE("op table: gradients match central finite differences (f64)") {
  for_each_variant(Check::gradient, [](const OpCase& c, const Variant& v, size_t i) {
    GradcheckOptions options = c.gradcheck;
    options.frozen = frozen_inputs(v);
    gradcheck([&](const Inputs& leaves) { return run(c, v, leaves); }, make_leaves(v, i, DType::f64), options);
  });
}

// ---- beyond the table ----

TEST_CASE("operators on tensors and scalars; an input used twice gets the sum of both gradients") {
  Tensor a = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  check_close(-a, {-1, -2, -3, -4, -5, -6});
  check_close(2.0 - a, {1, 0, -1, -2, -3, -4});
  check_close(6.0 / a, {6, 3, 2, 1.5, 1.2, 1});
  check_close(a * 0.5 + 1.0, {1.5, 2, 2.5, 3, 3.5, 4});
  check_close(a / 2.0 - 1.0, {-0.5, 0, 0.5, 1, 1.5, 2});
  gradcheck([](const Inputs& x) { return -x[0] + 3.0; }, {uniform_f64({7}, 9)});
  gradcheck([](const Inputs& x) { return 2.0 / x[0] - x[0] * 4.0; }, {uniform_f64({7}, 10, 0.5, 2.0)});
  gradcheck([](const Inputs& x) { return 1.0 - x[0]; }, {uniform_f64({3}, 11)});
  gradcheck([](const Inputs& x) { return x[0] * x[0]; }, {uniform_f64({5}, 11)});
}

TEST_CASE("add_layer_norm equals add then layer_norm bit for bit, gradients included (f64, f32)") {
  check_add_layer_norm_as_composed(Device::cpu(), DType::f64);
  check_add_layer_norm_as_composed(Device::cpu(), DType::f32);
}

TEST_CASE("binary ops over a few long rows (each split among the threads) equal the same op element by element") {
  // One row, three rows, a broadcast scalar, and a strided operand: every branch of the CPU loop, beyond the size
  // from which it runs in parallel.
  Generator gen(21);
  const Tensor a = randn({3, 70001}, gen, {.dtype = DType::f64}), b = randn({70001}, gen, {.dtype = DType::f64});
  const Tensor s = randn({1}, gen, {.dtype = DType::f64}), t = randn({70001, 3}, gen, {.dtype = DType::f64});
  const std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>(), tv = t.to_vector<double>();
  const double sv = s.item();
  const int64_t n = 70001;
  std::vector<double> sum_ab(static_cast<size_t>(3 * n)), strided(static_cast<size_t>(3 * n));
  std::vector<double> one_row(static_cast<size_t>(n)), scaled(static_cast<size_t>(n));
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t i = 0; i < n; ++i) {
      sum_ab[size_t(r * n + i)] = av[size_t(r * n + i)] + bv[size_t(i)];
      strided[size_t(r * n + i)] = tv[size_t(i * 3 + r)] * bv[size_t(i)];
    }
  for (int64_t i = 0; i < n; ++i) {
    one_row[size_t(i)] = av[size_t(i)] - bv[size_t(i)];
    scaled[size_t(i)] = bv[size_t(i)] * sv;
  }
  check_close(add(a, b), sum_ab, 0, 0);
  check_close(sub(a.select(0, 0), b), one_row, 0, 0);
  check_close(mul(b, s), scaled, 0, 0);
  check_close(mul(t.transpose(0, 1), b), strided, 0, 0);
}

TEST_CASE("op errors name the op and the shapes") {
  CHECK_THROWS_WITH_AS(zeros({2, 3}) + zeros({4}), doctest::Contains("[add] shapes (2, 3) and (4,) do not broadcast"), Error);
  CHECK_THROWS_WITH_AS(zeros({2}) * zeros({2}, {.dtype = DType::f64}),
                       doctest::Contains("[mul] dtype mismatch: a f32(2,) cpu vs b f64(2,) cpu"), Error);
  CHECK_THROWS_WITH_AS(zeros({2}, {.dtype = DType::i32}) - zeros({2}, {.dtype = DType::i32}),
                       doctest::Contains("[sub] needs an f32 or f64 tensor"), Error);

  Tensor a = zeros({2, 3}, {.dtype = DType::f64});
  CHECK_THROWS_WITH_AS(matmul(a, a), doctest::Contains("[matmul] inner dimensions differ: (2, 3) @ (2, 3)"), Error);
  CHECK_THROWS_WITH_AS(matmul(zeros({3}), zeros({3, 2})), doctest::Contains("[matmul] needs operands of 2+ dims"), Error);
  CHECK_THROWS_WITH_AS(linear(zeros({2, 3}), zeros({4, 5}), Tensor()),
                       doctest::Contains("[linear] input (2, 3) does not end in IN=5 of weight (4, 5)"), Error);
  CHECK_THROWS_WITH_AS(linear(zeros({2, 5}), zeros({4, 5}), zeros({3})),
                       doctest::Contains("[linear] bias (3,) does not match OUT=4 of weight (4, 5)"), Error);

  CHECK_THROWS_WITH_AS(layer_norm(zeros({2, 4}), zeros({3}), zeros({3})),
                       doctest::Contains("[layer_norm] weight (3,) and bias (3,) must be (4) for input (2, 4)"), Error);
  CHECK_THROWS_WITH_AS(add_layer_norm(zeros({2, 4}), zeros({4}), zeros({4}), zeros({4})),
                       doctest::Contains("[add_layer_norm] residual (4,) must have the input's shape (2, 4)"), Error);
  CHECK_THROWS_WITH_AS(add_layer_norm(zeros({2, 4}), zeros({2, 4}), zeros({3}), zeros({4})),
                       doctest::Contains("[add_layer_norm] weight (3,) and bias (4,) must be (4) for input (2, 4)"), Error);
  CHECK_THROWS_WITH_AS(add_layer_norm(zeros({2, 4}), zeros({2, 4}, {.dtype = DType::f64}), zeros({4}), zeros({4})),
                       doctest::Contains("[add_layer_norm] dtype mismatch"), Error);

  Tensor w = from_vector<double>({0, 1, 10, 11, 20, 21}, {3, 2});
  CHECK_THROWS_WITH_AS(embedding(from_vector<int32_t>({0, 3}, {2}), w),
                       doctest::Contains("[embedding] id 3 at position 1 of (2,) is outside [0, 3)"), Error);
  CHECK_THROWS_WITH_AS(embedding(from_vector<int32_t>({-1}, {1}), w), doctest::Contains("id -1"), Error);
  CHECK_THROWS_WITH_AS(embedding(zeros({2}), w), doctest::Contains("[embedding] indices must be i32"), Error);

  Tensor logits = from_vector<double>({1, 2, 3, 1, 1, 1}, {2, 3});
  CHECK_THROWS_WITH_AS(cross_entropy(logits, from_vector<int32_t>({3, 0}, {2})),
                       doctest::Contains("[cross_entropy] id 3 at position 0 of (2,) is outside [0, 3)"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, from_vector<int32_t>({0}, {1})),
                       doctest::Contains("[cross_entropy] targets must be i32 (N) for logits (2, 3)"), Error);

  CHECK_THROWS_WITH_AS(scaled_dot_product_attention(uniform_f64({1, 1, 4, 2}, 1), uniform_f64({1, 1, 3, 2}, 2),
                                                    uniform_f64({1, 1, 3, 2}, 3), Causal::yes),
                       doctest::Contains("causal attention needs Tq <= Tk (the queries are the last Tq positions), got "
                                         "q (1, 1, 4, 2), k (1, 1, 3, 2)"),
                       Error);
  CHECK_THROWS_WITH_AS(causal_self_attention(zeros({2, 3, 12}), 5),
                       doctest::Contains("[causal_self_attention] C=4 is not divisible by 5 heads"), Error);

  Generator g(5);
  CHECK_THROWS_WITH_AS(dropout(ones({4}), 1.0, g), doctest::Contains("[dropout] p must be in [0, 1)"), Error);
}

TEST_CASE("cross_entropy over the first K columns (padded vocabulary): the pad gets a zero gradient; bad K, bad ids") {
  Tensor targets = from_vector<int32_t>({2, 0, 3}, {3});
  Tensor x = uniform_f64({3, 6}, 23).set_requires_grad(true);
  cross_entropy(x, targets, {.classes = 4}).backward();
  std::vector<double> g = x.grad().to_vector<double>();
  for (int r = 0; r < 3; ++r)
    for (int c = 4; c < 6; ++c) CHECK(g[size_t(r * 6 + c)] == 0.0);
  CHECK_THROWS_WITH_AS(cross_entropy(x, from_vector<int32_t>({4, 0, 0}, {3}), {.classes = 4}),
                       doctest::Contains("id 4 at position 0 of (3,) is outside [0, 4)"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(x, targets, {.classes = 7}), doctest::Contains("classes 7 exceeds the 6 columns"), Error);
}

TEST_CASE("linear_cross_entropy: errors name the op and the shapes; ids are checked; no gradient, no buffers") {
  Tensor x = uniform_f64({3, 4}, 31), w = uniform_f64({6, 4}, 32);
  Tensor targets = from_vector<int32_t>({2, 0, 3}, {3});
  CHECK_THROWS_WITH_AS(linear_cross_entropy(x, uniform_f64({6, 5}, 1), targets),
                       doctest::Contains("[linear_cross_entropy] x must be (N, C) and weight (V, C), got x (3, 4) and "
                                         "weight (6, 5)"),
                       Error);
  CHECK_THROWS_WITH_AS(linear_cross_entropy(x, w, from_vector<int32_t>({0, 1}, {2})),
                       doctest::Contains("targets must be i32 (N) for x (3, 4)"), Error);
  CHECK_THROWS_WITH_AS(linear_cross_entropy(x, w, targets, {.classes = 7}),
                       doctest::Contains("classes 7 exceeds the 6 rows of weight (6, 4)"), Error);
  CHECK_THROWS_WITH_AS(linear_cross_entropy(x, w, targets, {.classes = 3}),
                       doctest::Contains("[linear_cross_entropy] id 3 at position 2 of (3,) is outside [0, 3)"), Error);
  CHECK_THROWS_WITH_AS(linear_cross_entropy(x, w, targets, {.chunk_rows = -2}),
                       doctest::Contains("chunk_rows must be >= 0"), Error);
  CHECK_THROWS_WITH_AS(linear_cross_entropy(x, w.to(DType::f32), targets), doctest::Contains("dtype mismatch"), Error);
  // Inputs that need no gradient: the loss only (one chunk's logits as workspace, nothing kept).
  Ledger& led = ledger();
  const int64_t live = led.total().live_requested;
  Tensor loss = linear_cross_entropy(x, w, targets, {.chunk_rows = 2});
  CHECK(led.total().live_requested - live == 8);  // the loss alone
  CHECK(loss.item() == doctest::Approx(cross_entropy(linear(x, w, Tensor()), targets).item()).epsilon(1e-12));
}

TEST_CASE("dropout: seeded mask, scaling, p = 0 is the identity") {
  Generator g(5);
  Tensor x = ones({10000}, {.dtype = DType::f64});
  Tensor y = dropout(x, 0.25, g);
  std::vector<double> v = y.to_vector<double>();
  int64_t kept = 0;
  for (double e : v) {
    CHECK((e == 0.0 || std::abs(e - 1.0 / 0.75) < 1e-12));
    kept += e != 0.0;
  }
  CHECK(std::abs(double(kept) / 10000 - 0.75) < 0.02);
  Generator g2(5);
  CHECK(dropout(x, 0.25, g2).to_vector<double>() == v);  // same seed, same mask
  CHECK(dropout(x, 0.0, g2).to_vector<double>() == x.to_vector<double>());
}

}  // TEST_SUITE
