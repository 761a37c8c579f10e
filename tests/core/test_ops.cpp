// Every op: values against hand-computed results, and a central finite-difference gradient check in double
// precision, including broadcasting and non-contiguous inputs; error messages name the op and the shapes.
#include <doctest/doctest.h>

#include <cmath>

#include "core/ops.h"
#include "tests/gradcheck.h"

using namespace tally;
using tally::test::check_close;
using tally::test::gradcheck;
using tally::test::uniform_f64;
using Inputs = std::vector<Tensor>;

TEST_SUITE("core") {

// ---- elementwise ----

TEST_CASE("binary ops: values with broadcasting") {
  Tensor a = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = from_vector<double>({10, 20, 30}, {3});
  Tensor c = from_vector<double>({2, 4}, {2, 1});
  check_close(a + b, {11, 22, 33, 14, 25, 36});
  check_close(a - c, {-1, 0, 1, 0, 1, 2});
  check_close(a * c, {2, 4, 6, 16, 20, 24});
  check_close(a / b, {0.1, 0.1, 0.1, 0.4, 0.25, 0.2});
  check_close(b.unsqueeze(0).expand({2, 3}) * a, {10, 40, 90, 40, 100, 180});
  check_close(a.transpose(0, 1) + c.transpose(0, 1), {3, 8, 4, 9, 5, 10});  // strided operands
  check_close(2.0 - a, {1, 0, -1, -2, -3, -4});
  check_close(6.0 / a, {6, 3, 2, 1.5, 1.2, 1});
  check_close(a * 0.5 + 1.0, {1.5, 2, 2.5, 3, 3.5, 4});
}

TEST_CASE("binary ops: gradients with broadcasting and strided inputs") {
  gradcheck([](const Inputs& x) { return x[0] + x[1]; }, {uniform_f64({3, 4}, 1), uniform_f64({4}, 2)});
  gradcheck([](const Inputs& x) { return x[0] - x[1]; }, {uniform_f64({3, 1}, 3), uniform_f64({2, 1, 4}, 4)});
  gradcheck([](const Inputs& x) { return x[0] * x[1]; }, {uniform_f64({3, 4}, 5), uniform_f64({3, 1}, 6)});
  gradcheck([](const Inputs& x) { return x[0] / x[1]; }, {uniform_f64({2, 3}, 7), uniform_f64({3}, 8, 0.5, 2.0)});
  gradcheck([](const Inputs& x) { return x[0].transpose(0, 1) * x[1]; }, {uniform_f64({4, 3}, 9), uniform_f64({3, 4}, 10)});
  gradcheck([](const Inputs& x) { return x[0] * x[0]; }, {uniform_f64({5}, 11)});  // same input twice
}

TEST_CASE("binary op errors name the op and both shapes") {
  CHECK_THROWS_WITH_AS(zeros({2, 3}) + zeros({4}), doctest::Contains("[add] shapes (2, 3) and (4,) do not broadcast"), Error);
  CHECK_THROWS_WITH_AS(zeros({2}) * zeros({2}, {.dtype = DType::f64}), doctest::Contains("[mul] dtype mismatch: f32(2,) cpu vs f64(2,) cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(zeros({2}, {.dtype = DType::i32}) - zeros({2}, {.dtype = DType::i32}),
                       doctest::Contains("[sub] needs an f32 or f64 tensor"), Error);
}

TEST_CASE("unary ops: values") {
  Tensor x = from_vector<double>({0.5, 1.0, 2.0}, {3});
  check_close(exp(x), {std::exp(0.5), std::exp(1.0), std::exp(2.0)});
  check_close(log(x), {std::log(0.5), 0.0, std::log(2.0)});
  check_close(sqrt(x), {std::sqrt(0.5), 1.0, std::sqrt(2.0)});
  check_close(rsqrt(x), {1 / std::sqrt(0.5), 1.0, 1 / std::sqrt(2.0)});
  check_close(tanh(x), {std::tanh(0.5), std::tanh(1.0), std::tanh(2.0)});
  check_close(pow_scalar(x, 3.0), {0.125, 1.0, 8.0});
  check_close(-x, {-0.5, -1.0, -2.0});
  // GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  auto g = [](double v) { return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); };
  check_close(gelu(x), {g(0.5), g(1.0), g(2.0)});
  check_close(gelu(from_vector<double>({-3.0}, {1})), {g(-3.0)});
}

TEST_CASE("unary ops: gradients") {
  gradcheck([](const Inputs& x) { return exp(x[0]); }, {uniform_f64({7}, 1)});
  gradcheck([](const Inputs& x) { return log(x[0]); }, {uniform_f64({7}, 2, 0.2, 3.0)});
  gradcheck([](const Inputs& x) { return sqrt(x[0]); }, {uniform_f64({7}, 3, 0.2, 3.0)});
  gradcheck([](const Inputs& x) { return rsqrt(x[0]); }, {uniform_f64({7}, 4, 0.2, 3.0)});
  gradcheck([](const Inputs& x) { return tanh(x[0]); }, {uniform_f64({7}, 5, -3, 3)});
  gradcheck([](const Inputs& x) { return gelu(x[0]); }, {uniform_f64({4, 5}, 6, -4, 4)});
  gradcheck([](const Inputs& x) { return gelu(x[0].transpose(0, 1)); }, {uniform_f64({4, 5}, 7, -4, 4)});
  gradcheck([](const Inputs& x) { return pow_scalar(x[0], 2.5); }, {uniform_f64({7}, 8, 0.2, 3.0)});
  gradcheck([](const Inputs& x) { return -x[0] + 3.0; }, {uniform_f64({7}, 9)});
  gradcheck([](const Inputs& x) { return 2.0 / x[0] - x[0] * 4.0; }, {uniform_f64({7}, 10, 0.5, 2.0)});
  gradcheck([](const Inputs& x) { return 1.0 - x[0]; }, {uniform_f64({3}, 11)});
}

// ---- reductions ----

TEST_CASE("reductions: values") {
  Tensor a = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  check_close(sum(a), {21});
  check_close(sum(a, {0}), {5, 7, 9});
  check_close(sum(a, {1}), {6, 15});
  CHECK(sum(a, {1}, KeepDim::yes).shape() == Shape{2, 1});
  check_close(sum(a, {0, 1}), {21});
  check_close(mean(a, {0}), {2.5, 3.5, 4.5});
  check_close(mean(a), {3.5});
  check_close(max(from_vector<double>({1, 7, 3, 9, 2, 4}, {2, 3}), 1), {7, 9});
  check_close(max(from_vector<double>({1, 7, 3, 9, 2, 4}, {2, 3}), 0), {9, 7, 4});
  check_close(sum(a.transpose(0, 1), {1}), {5, 7, 9});
  Tensor b = uniform_f64({3, 4, 5}, 3);
  check_close(sum(b, {0, 2}), sum(sum(b, {2}), {0}).to_vector<double>(), 1e-12, 1e-12);
  check_close(sum(b, {-1}), sum(b, {2}).to_vector<double>(), 0, 0);
}

TEST_CASE("reductions: gradients") {
  gradcheck([](const Inputs& x) { return sum(x[0], {1}); }, {uniform_f64({3, 4}, 1)});
  gradcheck([](const Inputs& x) { return sum(x[0], {0, 2}, KeepDim::yes); }, {uniform_f64({2, 3, 4}, 2)});
  gradcheck([](const Inputs& x) { return mean(x[0], {-1}); }, {uniform_f64({3, 4}, 3)});
  gradcheck([](const Inputs& x) { return mean(x[0]); }, {uniform_f64({3, 4}, 4)});
  gradcheck([](const Inputs& x) { return max(x[0], 1); }, {uniform_f64({3, 5}, 5)});
  gradcheck([](const Inputs& x) { return max(x[0], 0, KeepDim::yes); }, {uniform_f64({4, 3}, 6)});
  gradcheck([](const Inputs& x) { return sum(x[0].permute({2, 0, 1}), {0}); }, {uniform_f64({2, 3, 4}, 7)});
}

// ---- matrix products ----

TEST_CASE("matmul: values, batched, broadcast, transposed operands") {
  Tensor a = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = from_vector<double>({1, 0, 0, 1, 1, 1}, {3, 2});
  check_close(matmul(a, b), {4, 5, 10, 11});
  check_close(matmul(a.transpose(0, 1).contiguous().transpose(0, 1), b), {4, 5, 10, 11});  // a as a transposed view
  check_close(matmul(b.transpose(0, 1), a.transpose(0, 1)), {4, 10, 5, 11});
  Tensor batch = cat({a.unsqueeze(0), (a * 2.0).unsqueeze(0)}, 0);  // (2, 2, 3)
  Tensor r = matmul(batch, b);
  CHECK(r.shape() == Shape{2, 2, 2});
  check_close(r, {4, 5, 10, 11, 8, 10, 20, 22});
  CHECK_THROWS_WITH_AS(matmul(a, a), doctest::Contains("[matmul] inner dimensions differ: (2, 3) @ (2, 3)"), Error);
  CHECK_THROWS_WITH_AS(matmul(zeros({3}), zeros({3, 2})), doctest::Contains("[matmul] needs operands of 2+ dims"), Error);
}

TEST_CASE("matmul: gradients") {
  gradcheck([](const Inputs& x) { return matmul(x[0], x[1]); }, {uniform_f64({3, 4}, 1), uniform_f64({4, 5}, 2)});
  gradcheck([](const Inputs& x) { return matmul(x[0], x[1]); }, {uniform_f64({2, 3, 4}, 3), uniform_f64({4, 2}, 4)});
  gradcheck([](const Inputs& x) { return matmul(x[0], x[1]); }, {uniform_f64({3, 4}, 5), uniform_f64({2, 4, 2}, 6)});
  gradcheck([](const Inputs& x) { return matmul(x[0], x[1]); }, {uniform_f64({2, 1, 3, 4}, 7), uniform_f64({3, 4, 2}, 8)});
  gradcheck([](const Inputs& x) { return matmul(x[0].transpose(-1, -2), x[1].transpose(0, 1)); },
            {uniform_f64({2, 4, 3}, 9), uniform_f64({5, 4}, 10)});
}

TEST_CASE("linear: values and gradients") {
  Tensor x = from_vector<double>({1, 2, 3, 4}, {2, 2});
  Tensor w = from_vector<double>({1, 1, 0, 2, -1, 0}, {3, 2});  // (OUT=3, IN=2)
  Tensor b = from_vector<double>({0.5, 0, -1}, {3});
  check_close(linear(x, w, b), {3.5, 4, -2, 7.5, 8, -4});
  check_close(linear(x, w, Tensor()), {3, 4, -1, 7, 8, -3});
  gradcheck([](const Inputs& v) { return linear(v[0], v[1], v[2]); },
            {uniform_f64({2, 3, 4}, 1), uniform_f64({5, 4}, 2), uniform_f64({5}, 3)});
  gradcheck([](const Inputs& v) { return linear(v[0].transpose(0, 1), v[1], Tensor()); },
            {uniform_f64({4, 3}, 4), uniform_f64({2, 4}, 5)});
  CHECK_THROWS_WITH_AS(linear(zeros({2, 3}), zeros({4, 5}), Tensor()),
                       doctest::Contains("[linear] input (2, 3) does not end in IN=5 of weight (4, 5)"), Error);
  CHECK_THROWS_WITH_AS(linear(zeros({2, 5}), zeros({4, 5}), zeros({3})),
                       doctest::Contains("[linear] bias (3,) does not match OUT=4 of weight (4, 5)"), Error);
}

// ---- shape ops ----

TEST_CASE("view and shape ops: gradients") {
  gradcheck([](const Inputs& x) { return x[0].reshape({4, 3}); }, {uniform_f64({3, 4}, 1)});
  gradcheck([](const Inputs& x) { return x[0].transpose(0, 1) * 2.0; }, {uniform_f64({3, 4}, 2)});
  gradcheck([](const Inputs& x) { return x[0].permute({1, 2, 0}) * 2.0; }, {uniform_f64({2, 3, 4}, 3)});
  gradcheck([](const Inputs& x) { return x[0].slice(1, 1, 3) * 2.0; }, {uniform_f64({3, 4}, 4)});
  gradcheck([](const Inputs& x) { return x[0].select(0, 1) * 2.0; }, {uniform_f64({3, 4}, 5)});
  gradcheck([](const Inputs& x) { return x[0].expand({3, 2, 4}) * 2.0; }, {uniform_f64({2, 1}, 6)});
  gradcheck([](const Inputs& x) { return cat({x[0], x[1] * 2.0}, 1); }, {uniform_f64({2, 3}, 7), uniform_f64({2, 2}, 8)});
  gradcheck([](const Inputs& x) { return split(x[0], 2, 1)[1] * 3.0; }, {uniform_f64({2, 5}, 9)});
  gradcheck([](const Inputs& x) { return x[0].unsqueeze(1).squeeze(1).contiguous(); }, {uniform_f64({3}, 10)});
}

// ---- softmax, layer norm ----

TEST_CASE("softmax and log_softmax: values and gradients") {
  Tensor x = from_vector<double>({1, 2, 3, 0, 0, 0}, {2, 3});
  double z = std::exp(1) + std::exp(2) + std::exp(3);
  check_close(softmax(x), {std::exp(1) / z, std::exp(2) / z, std::exp(3) / z, 1. / 3, 1. / 3, 1. / 3});
  check_close(log_softmax(x), {1 - std::log(z), 2 - std::log(z), 3 - std::log(z), -std::log(3.), -std::log(3.), -std::log(3.)});
  // Large values do not overflow.
  check_close(softmax(from_vector<double>({1000, 1000}, {1, 2})), {0.5, 0.5});
  gradcheck([](const Inputs& v) { return softmax(v[0]); }, {uniform_f64({3, 5}, 1, -2, 2)});
  gradcheck([](const Inputs& v) { return log_softmax(v[0]); }, {uniform_f64({3, 5}, 2, -2, 2)});
  gradcheck([](const Inputs& v) { return softmax(v[0].transpose(0, 1)); }, {uniform_f64({4, 3}, 3, -2, 2)});
}

TEST_CASE("layer_norm: values and gradients") {
  Tensor x = from_vector<double>({1, 2, 3, 4, -1, 0, 1, 2}, {2, 4});
  Tensor w = from_vector<double>({1, 1, 2, 1}, {4}), b = from_vector<double>({0, 0, 0, 1}, {4});
  double m = 2.5, var = 1.25, rs = 1 / std::sqrt(var + 1e-5);
  check_close(layer_norm(x, w, b), {(1 - m) * rs, (2 - m) * rs, 2 * (3 - m) * rs, (4 - m) * rs + 1, (-1 - 0.5) * rs,
                                    (0 - 0.5) * rs, 2 * (1 - 0.5) * rs, (2 - 0.5) * rs + 1},
              1e-9, 1e-9);
  gradcheck([](const Inputs& v) { return layer_norm(v[0], v[1], v[2]); },
            {uniform_f64({2, 3, 6}, 1), uniform_f64({6}, 2), uniform_f64({6}, 3)});
  gradcheck([](const Inputs& v) { return layer_norm(v[0].transpose(0, 1), v[1], v[2]); },
            {uniform_f64({3, 5}, 4), uniform_f64({3}, 5), uniform_f64({3}, 6)});
  CHECK_THROWS_WITH_AS(layer_norm(zeros({2, 4}), zeros({3}), zeros({3})),
                       doctest::Contains("[layer_norm] weight (3,) and bias (3,) must be (4) for input (2, 4)"), Error);
}

// ---- embedding, cross-entropy ----

TEST_CASE("embedding: values, gradient with repeated ids, bad ids") {
  Tensor w = from_vector<double>({0, 1, 10, 11, 20, 21}, {3, 2});
  Tensor ids = from_vector<int32_t>({2, 0, 2, 1}, {2, 2});
  Tensor e = embedding(ids, w);
  CHECK(e.shape() == Shape{2, 2, 2});
  check_close(e, {20, 21, 0, 1, 20, 21, 10, 11});
  gradcheck([ids](const Inputs& v) { return embedding(ids, v[0]); }, {uniform_f64({3, 4}, 1)});
  CHECK_THROWS_WITH_AS(embedding(from_vector<int32_t>({0, 3}, {2}), w),
                       doctest::Contains("[embedding] id 3 at position 1 of (2,) is outside [0, 3)"), Error);
  CHECK_THROWS_WITH_AS(embedding(from_vector<int32_t>({-1}, {1}), w), doctest::Contains("id -1"), Error);
  CHECK_THROWS_WITH_AS(embedding(zeros({2}), w), doctest::Contains("[embedding] indices must be i32"), Error);
}

TEST_CASE("cross_entropy: values, gradient, strided rows, bad targets") {
  Tensor logits = from_vector<double>({1, 2, 3, 1, 1, 1}, {2, 3});
  Tensor targets = from_vector<int32_t>({2, 0}, {2});
  double z = std::exp(1) + std::exp(2) + std::exp(3);
  double expected = ((std::log(z) - 3) + std::log(3.0)) / 2;
  check_close(cross_entropy(logits, targets), {expected}, 1e-12, 1e-12);
  // Equals the composed form -mean(log_softmax[target]).
  Tensor composed = -(log_softmax(logits).select(1, 2).select(0, 0) + log_softmax(logits).select(1, 0).select(0, 1)) / 2.0;
  check_close(cross_entropy(logits, targets), composed.to_vector<double>(), 1e-12, 1e-12);
  gradcheck([targets](const Inputs& v) { return cross_entropy(v[0], targets); }, {uniform_f64({2, 5}, 1, -3, 3)});
  // The first V columns of wider (padded-vocabulary) logits, read in place.
  gradcheck([targets](const Inputs& v) { return cross_entropy(v[0].slice(1, 0, 4), targets); }, {uniform_f64({2, 6}, 2)});
  CHECK_THROWS_WITH_AS(cross_entropy(logits, from_vector<int32_t>({3, 0}, {2})),
                       doctest::Contains("[cross_entropy] id 3 at position 0 of (2,) is outside [0, 3)"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, from_vector<int32_t>({0}, {1})),
                       doctest::Contains("[cross_entropy] targets must be i32 (N) for logits (2, 3)"), Error);
}

// ---- attention ----

namespace {
// Reference attention composed from basic ops: softmax(q k^T / sqrt(HS) + causal mask) v.
Tensor reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  int64_t Tq = q.size(2), Tk = k.size(2), HS = q.size(3);
  Tensor s = matmul(q, k.transpose(-1, -2)) * (1.0 / std::sqrt(double(HS)));
  if (causal) {
    std::vector<double> mask(size_t(Tq * Tk));
    for (int64_t i = 0; i < Tq; ++i)
      for (int64_t j = 0; j < Tk; ++j) mask[size_t(i * Tk + j)] = j <= i + (Tk - Tq) ? 0.0 : -1e30;
    s = s + from_vector<double>(mask, {Tq, Tk});
  }
  return matmul(softmax(s), v);
}
}  // namespace

TEST_CASE("scaled_dot_product_attention: equals the composed reference, gradients") {
  Tensor q = uniform_f64({2, 3, 5, 4}, 1), k = uniform_f64({2, 3, 5, 4}, 2), v = uniform_f64({2, 3, 5, 4}, 3);
  check_close(scaled_dot_product_attention(q, k, v, Causal::yes), reference_attention(q, k, v, true).to_vector<double>(),
              1e-12, 1e-10);
  check_close(scaled_dot_product_attention(q, k, v, Causal::no), reference_attention(q, k, v, false).to_vector<double>(),
              1e-12, 1e-10);
  // Fewer queries than keys (a KV cache): the queries are the last positions.
  Tensor q1 = uniform_f64({2, 3, 2, 4}, 4);
  check_close(scaled_dot_product_attention(q1, k, v, Causal::yes), reference_attention(q1, k, v, true).to_vector<double>(),
              1e-12, 1e-10);
  gradcheck([](const Inputs& x) { return scaled_dot_product_attention(x[0], x[1], x[2], Causal::yes); },
            {uniform_f64({1, 2, 4, 3}, 5), uniform_f64({1, 2, 4, 3}, 6), uniform_f64({1, 2, 4, 3}, 7)});
  gradcheck([](const Inputs& x) { return scaled_dot_product_attention(x[0], x[1], x[2], Causal::no); },
            {uniform_f64({2, 1, 3, 2}, 8), uniform_f64({2, 1, 5, 2}, 9), uniform_f64({2, 1, 5, 2}, 10)});
  gradcheck([](const Inputs& x) {  // T = 1
    return scaled_dot_product_attention(x[0], x[1], x[2], Causal::yes);
  }, {uniform_f64({1, 2, 1, 3}, 11), uniform_f64({1, 2, 1, 3}, 12), uniform_f64({1, 2, 1, 3}, 13)});
  CHECK_THROWS_WITH_AS(scaled_dot_product_attention(uniform_f64({1, 1, 4, 2}, 1), uniform_f64({1, 1, 3, 2}, 2),
                                                    uniform_f64({1, 1, 3, 2}, 3), Causal::yes),
                       doctest::Contains("causal attention needs 0 < Tq <= Tk, got Tq=4 Tk=3"), Error);
}

TEST_CASE("causal_self_attention on fused qkv equals split heads + sdpa; gradients") {
  int64_t B = 2, T = 5, C = 6, NH = 2, HS = C / NH;
  Tensor qkv = uniform_f64({B, T, 3 * C}, 1);
  auto heads = [&](const Tensor& t) { return t.reshape({B, T, NH, HS}).permute({0, 2, 1, 3}); };
  Tensor q = heads(qkv.slice(2, 0, C)), k = heads(qkv.slice(2, C, 2 * C)), v = heads(qkv.slice(2, 2 * C, 3 * C));
  Tensor expected = scaled_dot_product_attention(q, k, v, Causal::yes).permute({0, 2, 1, 3}).reshape({B, T, C});
  check_close(causal_self_attention(qkv, NH), expected.to_vector<double>(), 1e-12, 1e-10);
  gradcheck([NH](const Inputs& x) { return causal_self_attention(x[0], NH); }, {uniform_f64({2, 4, 12}, 2)});
  gradcheck([](const Inputs& x) { return causal_self_attention(x[0], 1); }, {uniform_f64({1, 1, 6}, 3)});
  CHECK_THROWS_WITH_AS(causal_self_attention(zeros({2, 3, 12}), 5),
                       doctest::Contains("[causal_self_attention] C=4 is not divisible by 5 heads"), Error);
}

// ---- dropout ----

TEST_CASE("dropout: seeded mask, scaling, gradient uses the same mask") {
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
  // Gradient: with a fixed generator state per evaluation, finite differences see the same mask.
  gradcheck([](const Inputs& in) {
    Generator gen(77);
    return dropout(in[0], 0.5, gen);
  }, {uniform_f64({50}, 1)});
  CHECK_THROWS_WITH_AS(dropout(x, 1.0, g), doctest::Contains("[dropout] p must be in [0, 1)"), Error);
}

}  // TEST_SUITE

TEST_SUITE("core") {
TEST_CASE("cross_entropy over the first K columns (padded vocabulary): equals slicing, pad gradient zero") {
  Tensor targets = from_vector<int32_t>({2, 0, 3}, {3});
  Tensor logits = uniform_f64({3, 6}, 21, -2, 2);
  check_close(cross_entropy(logits, targets, {.classes = 4}), cross_entropy(logits.slice(1, 0, 4), targets).to_vector<double>(),
              0, 1e-14);
  gradcheck([targets](const Inputs& v) { return cross_entropy(v[0], targets, {.classes = 4}); }, {uniform_f64({3, 6}, 22)});
  Tensor x = uniform_f64({3, 6}, 23).set_requires_grad(true);
  cross_entropy(x, targets, {.classes = 4}).backward();
  std::vector<double> g = x.grad().to_vector<double>();
  for (int r = 0; r < 3; ++r)
    for (int c = 4; c < 6; ++c) CHECK(g[size_t(r * 6 + c)] == 0.0);
  CHECK_THROWS_WITH_AS(cross_entropy(x, from_vector<int32_t>({4, 0, 0}, {3}), {.classes = 4}),
                       doctest::Contains("id 4 at position 0 of (3,) is outside [0, 4)"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(x, targets, {.classes = 7}), doctest::Contains("classes 7 exceeds the 6 columns"), Error);
}
}  // TEST_SUITE
