// Mixed precision in the optimizers, on the CPU (the optimizer path is backend-neutral; bf16 model compute is
// CUDA-only and is tested in tests/cuda/test_cuda_bf16.cpp): a bf16 parameter's state ends with its f32 master
// (bytes predicted = measured), the master steps exactly as an f32 parameter would, updates below bf16's
// resolution accumulate in the master while stochastic rounding moves the parameter on average, the rounding is
// unbiased and reproducible, state round-trips through save/load, and gradient-norm clipping reads bf16 gradients.
#include <doctest/doctest.h>

#include <cstring>

#include "tests/optim/optim_test_util.h"

using namespace tally;
using namespace tally::test;

namespace {

// A named bf16 parameter (values rounded to nearest even) that requires grad.
Tensor make_bf16_param(const std::string& name, const std::vector<float>& values, const Shape& shape) {
  Tensor p = from_vector(values, shape).to(DType::bf16);
  p.set_requires_grad(true);
  p.set_name(name);
  return p;
}

std::vector<uint16_t> bits_of(const Tensor& bf16_tensor) {
  std::vector<uint16_t> out(size_t(bf16_tensor.numel()));
  std::memcpy(out.data(), bf16_tensor.contiguous().data<bf16>(), out.size() * 2);
  return out;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  std::vector<float> x = a.to_vector<float>(), y = b.to_vector<float>();
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * 4) == 0;
}

using Make = std::function<std::unique_ptr<optim::Optimizer>(const std::vector<Tensor>&)>;

// Every optimizer in the registry at its defaults, lr 1e-2 (momentum on for SGD, its default).
std::vector<std::pair<std::string, Make>> registered() {
  std::vector<std::pair<std::string, Make>> out;
  for (const optim::OptimizerEntry& e : optim::optimizers())
    out.emplace_back(e.name, [name = e.name](const std::vector<Tensor>& p) {
      return optim::make_optimizer(name, p, {{"lr", 1e-2}});
    });
  return out;
}

}  // namespace

TEST_SUITE("optim") {

TEST_CASE("mixed precision: a bf16 parameter's state ends with its f32 master; predicted bytes equal measured") {
  const Shape shapes[] = {{37, 20}, {50}};
  for (const auto& entry : registered()) {  // no structured binding: clang 14 cannot capture one in INFO
    const std::string& name = entry.first;
    const Make& make = entry.second;
    INFO(name);
    std::vector<Tensor> params;
    std::vector<NamedShape> named;
    for (size_t s = 0; s < 2; ++s) {
      params.push_back(make_bf16_param(cat("p", s), normal_values(numel(shapes[s]), s + 1), shapes[s]));
      named.push_back({.name = cat("p", s), .shape = shapes[s], .dtype = DType::bf16});
    }
    auto opt = make(params);
    const auto predicted = opt->predict_state_bytes();
    opt->init_state();
    const auto measured = opt->state_bytes();
    REQUIRE(measured.size() == 2);
    for (size_t s = 0; s < 2; ++s) {
      const auto& st = measured[s].states;
      REQUIRE(!st.empty());
      CHECK(st.back().name == "master");
      CHECK(st.back().dtype == DType::f32);
      CHECK(st.back().shape == shapes[s]);
      CHECK(measured[s].bytes() == predicted[s].bytes());
      // The master starts as the parameter, exactly, and is recorded as optimizer state under "<param>:master".
      CHECK(same_bits(opt->state(cat("p", s), "master"), params[s].to(DType::f32)));
      CHECK(ledger(Device::cpu()).owner(cat("p", s, ":master")).live_requested == numel(shapes[s]) * 4);
    }
    // The static prediction from names, shapes and dtypes agrees; f32 parameters have no master.
    const std::vector<TensorState> from_shapes = optim::predict_optimizer_state(name, named, {{"lr", 1e-2}});
    CHECK(total_bytes(from_shapes) == opt->total_state_bytes());
    for (auto& n : named) n.dtype = DType::f32;
    CHECK(total_bytes(optim::predict_optimizer_state(name, named, {{"lr", 1e-2}})) ==
          opt->total_state_bytes() - (37 * 20 + 50) * 4);
  }
}

TEST_CASE("mixed precision: the master steps exactly as an f32 parameter; the bf16 parameter is its rounding") {
  const Shape shape{33, 24};
  const int64_t n = numel(shape);
  for (const auto& entry : registered()) {  // no structured binding: clang 14 cannot capture one in INFO
    const std::string& name = entry.first;
    const Make& make = entry.second;
    INFO(name);
    Tensor pb = make_bf16_param("w", normal_values(n, 7), shape);
    Tensor pf = make_param("w", pb.to(DType::f32).to_vector<float>(), shape);
    auto ob = make({pb}), of = make({pf});
    for (int step = 1; step <= 3; ++step) {
      Tensor g = from_vector(normal_values(n, 100 + step), shape).to(DType::bf16);  // bf16 gradient values
      pb.set_grad(g.clone());
      pf.set_grad(g.to(DType::f32));
      ob->step({.grad_scale = 0.5});
      of->step({.grad_scale = 0.5});
      CHECK(same_bits(ob->state("w", "master"), pf));  // bit for bit: the f32 path's arithmetic on the master
      // Each bf16 value is one of the two bf16 neighbours of its master value.
      std::vector<float> m = ob->state("w", "master").to_vector<float>(), p = pb.to_vector<float>();
      int64_t off = 0;
      for (int64_t i = 0; i < n; ++i) {
        const float down = bf16_to_float(float_to_bf16_stochastic(m[size_t(i)], 0));
        const float up = bf16_to_float(float_to_bf16_stochastic(m[size_t(i)], 0xffff));
        off += p[size_t(i)] != down && p[size_t(i)] != up;
      }
      CHECK(off == 0);
    }
  }
}

TEST_CASE("mixed precision: updates below bf16's resolution accumulate in the master; rounding moves p on average") {
  const int64_t n = 8192;
  Tensor p = make_bf16_param("w", std::vector<float>(size_t(n), 1.0f), {n});
  Tensor ref = make_param("w", std::vector<float>(size_t(n), 1.0f), {n});
  Sgd opt({p}, SgdConfig{.lr = 1e-4}), opt_ref({ref}, SgdConfig{.lr = 1e-4});
  for (int step = 0; step < 10; ++step) {
    p.set_grad(ones({n}, {.dtype = DType::bf16}));
    ref.set_grad(ones({n}));
    opt.step();
    opt_ref.step();
  }
  // 10 steps of 1e-4 below 1.0, where bf16 values are 2^-8 apart: round to nearest would never leave 1.0.
  Tensor master = opt.state("w", "master");
  CHECK(same_bits(master, ref));
  const double m = master.to_vector<float>()[0];
  CHECK(std::fabs(m - (1.0 - 1e-3)) < 1e-6);
  CHECK(float_to_bf16(float(m)).bits == float_to_bf16(1.0f).bits);
  // Stochastic rounding: each value is 1 or 1 - 2^-8, the mean is the master (std of the mean ~ 2e-5).
  std::vector<float> v = p.to_vector<float>();
  double mean = 0;
  for (float x : v) {
    CHECK((x == 1.0f || x == 1.0f - 1.0f / 256));
    mean += x;
  }
  mean /= double(n);
  CHECK(std::fabs(mean - m) < 1.5e-4);
  CHECK(mean < 1.0 - 5e-4);  // moved: round to nearest would have kept 1.0
}

TEST_CASE("mixed precision: stochastic rounding is unbiased, keeps exact values, Inf and NaN, and is reproducible") {
  const int64_t n = 1 << 16;
  // Values a quarter and three quarters of the way between bf16 neighbours, and exactly representable ones.
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float base = 1.5f + float(i % 7) * 0.25f;  // exactly representable
    const int kind = int(i % 3);
    x[size_t(i)] = kind == 0 ? base : base + (kind == 1 ? 0.25f : 0.75f) * (1.0f / 128);
  }
  std::vector<bf16> a(static_cast<size_t>(n)), b(static_cast<size_t>(n)), c(static_cast<size_t>(n));
  optim::kernels::cpu::round_to_bf16(x.data(), a.data(), n, 42, 1000);
  optim::kernels::cpu::round_to_bf16(x.data(), b.data(), n, 42, 1000);
  optim::kernels::cpu::round_to_bf16(x.data(), c.data(), n, 42, 1000 + optim::kernels::round_to_bf16_blocks(n));
  CHECK(std::memcmp(a.data(), b.data(), size_t(n) * 2) == 0);  // same key and counters: same bits
  CHECK(std::memcmp(a.data(), c.data(), size_t(n) * 2) != 0);  // the next step's counters: other bits
  double err[3] = {0, 0, 0};
  int64_t count[3] = {0, 0, 0}, off = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int kind = int(i % 3);
    const double got = bf16_to_float(a[size_t(i)]);
    if (kind == 0) off += got != double(x[size_t(i)]);
    err[kind] += got - double(x[size_t(i)]);
    count[kind] += 1;
  }
  CHECK(off == 0);
  // Mean error of the in-between values: 0 in expectation; spacing 2^-7 around 1.5..3 (2^-6 above 2), so the
  // standard deviation of the mean is below 2^-6 * 0.5 / sqrt(21845) ~ 5e-5.
  CHECK(std::fabs(err[1] / double(count[1])) < 3e-4);
  CHECK(std::fabs(err[2] / double(count[2])) < 3e-4);
  const float special[4] = {INFINITY, -INFINITY, NAN, 65504.123f};
  bf16 out[4];
  optim::kernels::cpu::round_to_bf16(special, out, 4, 1, 0);
  CHECK(std::isinf(bf16_to_float(out[0])));
  CHECK(bf16_to_float(out[0]) > 0);
  CHECK(std::isinf(bf16_to_float(out[1])));
  CHECK(std::isnan(bf16_to_float(out[2])));
  CHECK(std::fabs(bf16_to_float(out[3]) - 65504.123) < 512);
}

TEST_CASE("mixed precision: master weights save and load; a reloaded run steps bit for bit like the original") {
  const Shape shape{12, 9};
  const int64_t n = numel(shape);
  for (const auto& entry : registered()) {  // no structured binding: clang 14 cannot capture one in INFO
    const std::string& name = entry.first;
    const Make& make = entry.second;
    INFO(name);
    Tensor p1 = make_bf16_param("w", normal_values(n, 3), shape);
    auto o1 = make({p1});
    p1.set_grad(from_vector(normal_values(n, 4), shape).to(DType::bf16));
    o1->step();
    optim::OptimizerState saved = o1->state_dict();
    REQUIRE(saved.tensors.count("w:master") == 1);
    CHECK(saved.tensors.at("w:master").dtype() == DType::f32);
    Tensor p2 = make_bf16_param("w", p1.to_vector<float>(), shape);  // the model file keeps the bf16 values
    auto o2 = make({p2});
    o2->load_state_dict(saved);
    Tensor g = from_vector(normal_values(n, 5), shape).to(DType::bf16);
    p1.set_grad(g.clone());
    p2.set_grad(g.clone());
    o1->step();
    o2->step();
    CHECK(bits_of(p1) == bits_of(p2));  // same master, same step count: the same stochastic rounding
    CHECK(same_bits(o1->state("w", "master"), o2->state("w", "master")));
  }
}

TEST_CASE("mixed precision: gradient-norm clipping reads and scales bf16 gradients") {
  Tensor a = make_bf16_param("a", normal_values(300, 1), {300});
  Tensor b = make_param("b", normal_values(70, 2), {70});
  Tensor ga = from_vector(normal_values(300, 3), {300}).to(DType::bf16);
  a.set_grad(ga.clone());
  b.set_grad(from_vector(normal_values(70, 4), {70}));
  double want = 0;
  for (float v : ga.to_vector<float>()) want += double(v) * v;
  for (float v : b.grad().to_vector<float>()) want += double(v) * v;
  const double norm = optim::grad_norm({a, b});
  CHECK(std::fabs(norm - std::sqrt(want)) <= 1e-12 * std::sqrt(want));
  optim::clip_grad_norm({a, b}, norm / 4);
  std::vector<float> scaled = a.grad().to_vector<float>(), orig = ga.to_vector<float>();
  for (size_t i = 0; i < scaled.size(); ++i)
    CHECK(scaled[i] == bf16_to_float(float_to_bf16(orig[i] * float(1.0 / 4 * norm / (norm + 1e-6)))));
}

TEST_CASE("mixed precision: a bf16 gradient for an f32 parameter (or the reverse) is refused by name") {
  Tensor p = make_bf16_param("w", normal_values(10, 1), {10});
  AdamW opt({p}, AdamWConfig{});
  p.set_grad(from_vector(normal_values(10, 2), {10}));  // f32 gradient for a bf16 parameter
  CHECK_THROWS_WITH_AS(opt.step(), doctest::Contains("gradient of 'w'"), Error);
}

// The fused bf16 steps (FusedBf16) exist on CUDA only: the CPU kernels refuse one by name instead of reading a null
// f32 gradient.
TEST_CASE("mixed precision: the CPU kernels refuse a fused bf16 step, naming the kernel") {
  std::vector<float> param(64, 1.0f), state(64, 0.0f), rows(8, 0.0f), cols(8, 0.0f);
  std::vector<bf16> grad16(64), param16(64);
  const optim::kernels::FusedBf16 fused{.grad = grad16.data(), .param = param16.data()};
  namespace k = optim::kernels;
  const k::FactoredLayout layout{.P = 1, .n = 8, .Q = 1, .m = 8, .S = 1};
  const auto refused = [](const char* op) { return doctest::Contains(cat("[", op, "] a fused bf16 step").c_str()); };
  CHECK_THROWS_WITH_AS(k::cpu::adamw_step({.n = 64, .param = param.data(), .exp_avg = state.data(),
                                           .exp_avg_sq = state.data(), .bf16_param = fused}),
                       refused("adamw_step"), Error);
  CHECK_THROWS_WITH_AS(k::cpu::came_dense_step({.n = 64, .param = param.data(), .exp_avg = state.data(),
                                                .exp_avg_sq = state.data(), .bf16_param = fused}),
                       refused("came_dense_step"), Error);
  CHECK_THROWS_WITH_AS(k::cpu::came_factored_step({.layout = layout, .param = param.data(), .exp_avg = state.data(),
                                                   .exp_avg_sq_row = rows.data(), .exp_avg_sq_col = cols.data(),
                                                   .bf16_param = fused}),
                       refused("came_factored_step"), Error);
  CHECK_THROWS_WITH_AS(k::cpu::adafactor_dense_step({.n = 64, .param = param.data(), .exp_avg_sq = state.data(),
                                                     .bf16_param = fused}),
                       refused("adafactor_dense_step"), Error);
  CHECK_THROWS_WITH_AS(k::cpu::adafactor_factored_step({.layout = layout, .param = param.data(),
                                                        .exp_avg_sq_row = rows.data(),
                                                        .exp_avg_sq_col = cols.data(), .bf16_param = fused}),
                       refused("adafactor_factored_step"), Error);
  CHECK_THROWS_WITH_AS(k::cpu::sgd_step({.n = 64, .param = param.data(), .lr = 1e-2, .bf16_param = fused}),
                       refused("sgd_step"), Error);
  CHECK_THROWS_WITH_AS(k::cpu::lamb_step({.n = 64, .param = param.data(), .exp_avg = state.data(),
                                          .exp_avg_sq = state.data(), .bf16_param = fused}),
                       refused("lamb_step"), Error);
  CHECK(param == std::vector<float>(64, 1.0f));  // nothing was stepped
}

}  // TEST_SUITE
