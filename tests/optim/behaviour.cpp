// Optimizer behaviour beyond the golden steps: save/load (dtypes kept, errors named), the internals a step
// reports (checked against brute-force recomputation from the state), the options beyond the references,
// fused gradient scaling, determinism across thread counts, groups, zero_grad, and argument validation.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <numbers>

#include "core/ledger.h"
#include "tests/core/io_test_helpers.h"
#include "tests/optim/optim_test_util.h"

using namespace tally;
using namespace tally::test;

namespace {

// Runs `steps` steps of opt on param p with gradients from seeds seed0, seed0+1, ...
void run_steps(optim::Optimizer& opt, Tensor& p, int steps, uint64_t seed0, double grad_std = 1.0) {
  for (int k = 0; k < steps; ++k) {
    p.set_grad(make_grad(normal_values(p.numel(), seed0 + uint64_t(k), grad_std), p.shape()));
    opt.step();
  }
}

bool same(const Tensor& a, const Tensor& b) {
  if (a.dtype() == DType::bf16 || b.dtype() == DType::bf16) return a.to(DType::f32).to_vector<float>() == b.to(DType::f32).to_vector<float>();
  return a.to_vector<float>() == b.to_vector<float>();
}

}  // namespace

TEST_SUITE("optim") {

TEST_CASE("save/load: a restored optimizer continues bit for bit, bf16 state stays bf16") {
  for (DType moment : {DType::f32, DType::bf16}) {
    INFO(std::string(dtype_name(moment)));
    const CameConfig cfg{.lr = 1e-2, .weight_decay = 0.1, .exp_avg_dtype = moment};
    const std::vector<float> init = normal_values(48 * 40, 7);
    Tensor a = make_param("sl.w", init, {48, 40});
    Tensor v = make_param("sl.b", normal_values(40, 8), {40});
    Came first({a, v}, cfg);
    for (int k = 0; k < 3; ++k) {
      a.set_grad(make_grad(normal_values(48 * 40, 100 + uint64_t(k)), {48, 40}));
      v.set_grad(make_grad(normal_values(40, 200 + uint64_t(k)), {40}));
      first.step();
    }
    const optim::OptimizerState saved = first.state_dict();
    CHECK(saved.kind == "came");
    CHECK(saved.steps == 3);
    CHECK(saved.param_steps.at("sl.w") == 3);
    CHECK(saved.tensors.at("sl.w:exp_avg").dtype() == moment);
    CHECK(saved.tensors.at("sl.w:exp_avg_res_col").shape() == Shape{40});
    // A second optimizer over copies of the parameters, loaded from the saved state.
    Tensor a2 = make_param("sl.w", a.to_vector<float>(), {48, 40});
    Tensor v2 = make_param("sl.b", v.to_vector<float>(), {40});
    Came second({a2, v2}, cfg);
    // Deep copies, as a checkpoint would hand them over.
    optim::OptimizerState copy = saved;
    for (auto& [k, t] : copy.tensors) t = t.clone();
    second.load_state_dict(copy);
    CHECK(second.param_step("sl.w") == 3);
    CHECK(second.state("sl.w", "exp_avg").dtype() == moment);
    for (int k = 3; k < 6; ++k) {
      for (Tensor* p : {&a, &a2}) p->set_grad(make_grad(normal_values(48 * 40, 100 + uint64_t(k)), {48, 40}));
      for (Tensor* p : {&v, &v2}) p->set_grad(make_grad(normal_values(40, 200 + uint64_t(k)), {40}));
      first.step();
      second.step();
    }
    CHECK(same(a, a2));
    CHECK(same(v, v2));
    for (const char* st : {"exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row", "exp_avg_res_col"})
      CHECK(same(first.state("sl.w", st), second.state("sl.w", st)));
  }
}

TEST_CASE("save/load: mismatches throw and name the problem") {
  Tensor a = make_param("le.w", normal_values(16 * 8, 1), {16, 8});
  Came bf({a}, {.lr = 1e-3, .exp_avg_dtype = DType::bf16});
  run_steps(bf, a, 1, 5);
  const optim::OptimizerState saved = bf.state_dict();

  Tensor b = make_param("le.w", normal_values(16 * 8, 1), {16, 8});
  Came f32({b}, {.lr = 1e-3});
  std::string msg = error_message([&] { f32.load_state_dict(saved); });
  CHECK(contains(msg, "le.w:exp_avg"));
  CHECK(contains(msg, "bf16"));
  CHECK(contains(msg, "f32"));
  CHECK(f32.total_state_bytes() == 0);  // nothing was changed by the failed load

  AdamW adamw({b}, {});
  CHECK(contains(error_message([&] { adamw.load_state_dict(saved); }), "'came'"));

  Tensor c = make_param("other", normal_values(16 * 8, 1), {16, 8});
  Came other({c}, {.lr = 1e-3, .exp_avg_dtype = DType::bf16});
  CHECK(contains(error_message([&] { other.load_state_dict(saved); }), "le.w"));

  Tensor d = make_param("le.w", normal_values(8 * 16, 1), {8, 16});
  Came shaped({d}, {.lr = 1e-3, .exp_avg_dtype = DType::bf16});
  msg = error_message([&] { shaped.load_state_dict(saved); });
  CHECK(contains(msg, "(16, 8)"));
  CHECK(contains(msg, "(8, 16)"));
}

TEST_CASE("internals: off by default; CAME clip, RMS and confidence factors match a recomputation from state") {
  const Shape shape = {24, 36};
  Tensor p = make_param("in.w", normal_values(24 * 36, 3), shape);
  Came opt({p}, {.lr = 1e-2});
  run_steps(opt, p, 1, 40);
  CHECK(opt.internals()[0].step == 0);  // nothing recorded while off
  CHECK(std::isnan(opt.internals()[0].update_rms));

  opt.set_inspect(optim::Inspect::summary);
  const std::vector<float> before = p.to_vector<float>();
  const std::vector<float> m_before = opt.state("in.w", "exp_avg").to_vector<float>();
  run_steps(opt, p, 1, 41);
  const optim::TensorInternals in = opt.internals()[0];
  CHECK(in.param == "in.w");
  CHECK(in.step == 2);
  // Step 2 of CAME without bias correction: the normalised update is large, the RMS clip fires.
  CHECK(in.update_rms > 1.0);
  CHECK(in.clipped);
  CHECK(in.clipped_update_rms == doctest::Approx(1.0).epsilon(1e-6));
  // First moment RMS, from the state.
  const std::vector<float> m = opt.state("in.w", "exp_avg").to_vector<float>();
  double msq = 0;
  for (float x : m) msq += double(x) * x;
  CHECK(in.exp_avg_rms == doctest::Approx(std::sqrt(msq / double(m.size()))).epsilon(1e-9));
  // Confidence factors, recomputed from R and C: row = rsqrt(R / mean(R)), col = rsqrt(C).
  const std::vector<float> R = opt.state("in.w", "exp_avg_res_row").to_vector<float>();
  const std::vector<float> C = opt.state("in.w", "exp_avg_res_col").to_vector<float>();
  double rmean = 0;
  for (float x : R) rmean += x;
  rmean /= double(R.size());
  std::vector<double> rf, cf;
  for (float x : R) rf.push_back(1.0 / std::sqrt(x / rmean));
  for (float x : C) cf.push_back(1.0 / std::sqrt(double(x)));
  auto mn = [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); };
  auto mx = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  CHECK(in.has_confidence);
  CHECK(in.confidence_row.min == doctest::Approx(mn(rf)).epsilon(1e-6));
  CHECK(in.confidence_row.max == doctest::Approx(mx(rf)).epsilon(1e-6));
  CHECK(in.confidence_col.max == doctest::Approx(mx(cf)).epsilon(1e-6));
  double smin = INFINITY, smax = 0, ssum = 0;
  for (double r : rf)
    for (double c : cf) smin = std::min(smin, r * c), smax = std::max(smax, r * c), ssum += r * c;
  CHECK(in.confidence_scale.min == doctest::Approx(smin).epsilon(1e-6));
  CHECK(in.confidence_scale.max == doctest::Approx(smax).epsilon(1e-6));
  CHECK(in.confidence_scale.mean == doctest::Approx(ssum / double(rf.size() * cf.size())).epsilon(1e-6));
  // The applied change: RMS of (p_before - p_after) without weight decay (wd = 0 here).
  const std::vector<float> after = p.to_vector<float>();
  double dsq = 0;
  for (size_t i = 0; i < after.size(); ++i) dsq += (double(before[i]) - after[i]) * (double(before[i]) - after[i]);
  CHECK(in.applied_rms == doctest::Approx(std::sqrt(dsq / double(after.size()))).epsilon(1e-4).scale(0));
  (void)m_before;
}

TEST_CASE("internals: inspection does not change the step (bitwise), for every optimizer") {
  const Shape shape = {40, 30};
  for (const OptimizerCase& c : every_optimizer({{"lr", 1e-2}, {"weight-decay", 0.1}})) {
    INFO(c.label());
    Tensor a = make_param("bit.a", normal_values(1200, 9), shape);
    Tensor b = make_param("bit.a", normal_values(1200, 9), shape);
    auto oa = optim::make_optimizer(c.name, {a}, c.settings), ob = optim::make_optimizer(c.name, {b}, c.settings);
    ob->set_inspect(optim::Inspect::factored_error);
    run_steps(*oa, a, 4, 77);
    run_steps(*ob, b, 4, 77);
    CHECK(same(a, b));
    CHECK(ob->internals()[0].step == 4);
    CHECK(std::isfinite(ob->internals()[0].update_rms));
    CHECK(ob->internals()[0].applied_rms > 0);
  }
}

TEST_CASE("internals: factored error against a brute-force exact EMA; its buffer is named, accounted and freed") {
  const Shape shape = {32, 20};
  const CameConfig cfg{.lr = 1e-3, .betas = {0.9, 0.9, 0.99}};
  Tensor p = make_param("fe.w", normal_values(640, 11), shape);
  Came opt({p}, cfg);
  opt.set_inspect(optim::Inspect::factored_error);
  std::vector<double> exact(640, 0.0);
  for (int k = 0; k < 5; ++k) {
    // Gradients with structure (row and column scales) plus noise, so the factoring is good but not exact.
    std::vector<float> g = normal_values(640, 300 + uint64_t(k));
    for (int i = 0; i < 32; ++i)
      for (int j = 0; j < 20; ++j) g[size_t(i * 20 + j)] *= float((1 + i % 4) * (1 + j % 3));
    for (size_t x = 0; x < 640; ++x) exact[x] = 0.9 * exact[x] + 0.1 * (double(g[x]) * g[x] + cfg.eps[0]);
    p.set_grad(make_grad(g, shape));
    opt.step();
  }
  const std::vector<float> r = opt.state("fe.w", "exp_avg_sq_row").to_vector<float>();
  const std::vector<float> c = opt.state("fe.w", "exp_avg_sq_col").to_vector<float>();
  double rmean = 0;
  for (float x : r) rmean += x;
  rmean /= 32;
  double err = 0, ref = 0;
  for (int i = 0; i < 32; ++i)
    for (int j = 0; j < 20; ++j) {
      const double est = double(r[size_t(i)]) * c[size_t(j)] / rmean;
      err += (est - exact[size_t(i * 20 + j)]) * (est - exact[size_t(i * 20 + j)]);
      ref += exact[size_t(i * 20 + j)] * exact[size_t(i * 20 + j)];
    }
  const optim::TensorInternals in = opt.internals()[0];
  CHECK(in.exact_since_step == 1);
  CHECK(in.factored_rel_error > 0.01);  // noise makes it inexact
  CHECK(in.factored_rel_error == doctest::Approx(std::sqrt(err / ref)).epsilon(1e-4));
  // The exact-EMA buffer: one f32 copy of the parameter, Category::other, under its own owner.
  CHECK(ledger().owner("fe.w:inspect.exact_exp_avg_sq").live_requested == 640 * 4);
  CHECK(opt.inspect_bytes() == 640 * 4);
  CHECK(opt.total_state_bytes() == 4 * 640 + 8 * (32 + 20));  // not counted as optimizer state
  opt.set_inspect(optim::Inspect::summary);
  CHECK(ledger().owner("fe.w:inspect.exact_exp_avg_sq").live_requested == 0);
  CHECK(opt.inspect_bytes() == 0);
}

TEST_CASE("options: two_largest_dims factors the two largest dims (as optax), whole tensors below the threshold") {
  // (130, 2, 128): the two largest dims are 0 and 2. Same as factoring the last two of the (2, 130, 128) copy.
  const Shape shape = {130, 2, 128};
  const std::vector<float> init = normal_values(130 * 2 * 128, 21);
  Tensor a = make_param("tl.a", init, shape);
  Came big({a}, {.lr = 1e-2, .factoring = optim::Factoring::two_largest_dims});
  auto permute = [&](const std::vector<float>& v) {  // (130, 2, 128) -> (2, 130, 128)
    std::vector<float> out(v.size());
    for (int i = 0; i < 130; ++i)
      for (int q = 0; q < 2; ++q)
        for (int j = 0; j < 128; ++j) out[size_t((q * 130 + i) * 128 + j)] = v[size_t((i * 2 + q) * 128 + j)];
    return out;
  };
  Tensor b = make_param("tl.b", permute(init), {2, 130, 128});
  Came last({b}, {.lr = 1e-2});
  for (int k = 0; k < 4; ++k) {
    const std::vector<float> g = normal_values(130 * 2 * 128, 500 + uint64_t(k));
    a.set_grad(make_grad(g, shape));
    b.set_grad(make_grad(permute(g), {2, 130, 128}));
    big.step();
    last.step();
  }
  CHECK(big.state("tl.a", "exp_avg_sq_row").shape() == Shape{130, 2});
  CHECK(big.state("tl.a", "exp_avg_sq_col").shape() == Shape{2, 128});
  const Mismatch mm = compare(permute(a.to_vector<float>()), b.to_vector<float>(), 1e-6, 1e-6);
  CHECK_MESSAGE(mm.ok(), "worst ", mm.worst_ratio, " at ", mm.index);
  CHECK(compare(big.state("tl.a", "exp_avg_sq_col").to_vector<float>(),
                last.state("tl.b", "exp_avg_sq_col").to_vector<float>(), 1e-6, 0)
            .ok());

  // (5, 7) with the default threshold 128: not factored, i.e. exactly the dense (vector) step on its elements.
  const std::vector<float> init2 = normal_values(35, 22);
  Tensor c = make_param("tl.c", init2, {5, 7});
  Tensor d = make_param("tl.d", init2, {35});
  Came small({c}, {.lr = 1e-2, .factoring = optim::Factoring::two_largest_dims});
  Came flat({d}, {.lr = 1e-2});
  for (int k = 0; k < 4; ++k) {
    const std::vector<float> g = normal_values(35, 600 + uint64_t(k));
    c.set_grad(make_grad(g, {5, 7}));
    d.set_grad(make_grad(g, {35}));
    small.step();
    flat.step();
  }
  CHECK(small.state("tl.c", "exp_avg_sq").shape() == Shape{5, 7});
  CHECK(c.to_vector<float>() == d.to_vector<float>());
  CHECK(total_bytes(small.state_bytes()) == 8 * 35);
}

TEST_CASE("options: bf16 first moment is stored rounded to nearest even and tracks the f32 run") {
  const Shape shape = {64, 48};
  const std::vector<float> init = normal_values(64 * 48, 31);
  Tensor a = make_param("bf.a", init, shape);
  Tensor b = make_param("bf.b", init, shape);
  Came full({a}, {.lr = 1e-3});
  Came half({b}, {.lr = 1e-3, .exp_avg_dtype = DType::bf16});
  for (int k = 0; k < 5; ++k) {
    if (k == 1) {
      // After step 1 (m was zero) the f32 moment is the exact f32 value; bf16 must hold it rounded to nearest even.
      const std::vector<float> f = full.state("bf.a", "exp_avg").to_vector<float>();
      const std::vector<float> h = half.state("bf.b", "exp_avg").to(DType::f32).to_vector<float>();
      int64_t wrong = 0;
      for (size_t i = 0; i < f.size(); ++i) wrong += bf16_to_float(float_to_bf16(f[i])) != h[i];
      CHECK(wrong == 0);
    }
    const std::vector<float> g = normal_values(64 * 48, 700 + uint64_t(k));
    a.set_grad(make_grad(g, shape));
    b.set_grad(make_grad(g, shape));
    full.step();
    half.step();
  }
  const Tensor m16 = half.state("bf.b", "exp_avg");
  CHECK(m16.dtype() == DType::bf16);
  const std::vector<float> m32 = full.state("bf.a", "exp_avg").to_vector<float>();
  const std::vector<float> mb = m16.to(DType::f32).to_vector<float>();
  // bf16 keeps 8 significant bits (ulp 2^-8 relative): after 5 steps the moments agree to about two bf16 ulps
  // of the tensor's scale.
  double scale = 0;
  for (float x : m32) scale = std::max(scale, double(std::fabs(x)));
  const Mismatch bm = compare(mb, m32, 1e-2, 1e-2 * scale);
  CHECK_MESSAGE(bm.ok(), "worst ", bm.worst_ratio, " at ", bm.index, ": ", bm.a, " vs ", bm.b, " max abs ", bm.max_abs);
  // Parameters moved by ~5 * lr; their difference is a small fraction of that.
  double dmax = 0;
  const std::vector<float> pa = a.to_vector<float>(), pb = b.to_vector<float>();
  for (size_t i = 0; i < pa.size(); ++i) dmax = std::max(dmax, std::fabs(double(pa[i]) - pb[i]));
  CHECK(dmax > 0.0);
  CHECK(dmax < 0.1 * 5 * 1e-3 * 12);
}

TEST_CASE("options: grad_scale fused into the step equals scaling the gradients first") {
  const Shape shape = {50, 60};
  for (const OptimizerCase& c : every_optimizer()) {
    INFO(c.label());
    Tensor a = make_param("gs.a", normal_values(3000, 41), shape);
    Tensor b = make_param("gs.a", normal_values(3000, 41), shape);
    auto oa = optim::make_optimizer(c.name, {a}, c.settings), ob = optim::make_optimizer(c.name, {b}, c.settings);
    for (int k = 0; k < 3; ++k) {
      const std::vector<float> g = normal_values(3000, 800 + uint64_t(k), 5.0);
      a.set_grad(make_grad(g, shape));
      b.set_grad(make_grad(g, shape));
      const double norm = optim::grad_norm({a});
      const double coef = optim::clip_coefficient(norm, 1.0);
      CHECK(coef < 1.0);
      optim::clip_grad_norm({a}, 1.0);
      oa->step();
      ob->step({.grad_scale = coef});
    }
    CHECK(same(a, b));
  }
}

TEST_CASE("options: a clip threshold so small that RMS / threshold overflows gives a zero update, as the package") {
  // came-pytorch and transformers' Adafactor divide u by clamp(RMS(u) / threshold, min=1): inf in float, and u / inf
  // is 0, so the parameters stay (no weight decay). The fast division of the factored steps must not make NaN of it.
  for (int kind = 0; kind < 4; ++kind) {
    INFO("kind ", kind, kind % 2 ? " (dense)" : " (factored)");
    const Shape shape = kind % 2 ? Shape{60} : Shape{50, 60};
    const std::vector<float> init = normal_values(numel(shape), 43);
    Tensor p = make_param("tiny.clip", init, shape);
    std::unique_ptr<optim::Optimizer> opt;
    if (kind < 2)
      opt = std::make_unique<Came>(std::vector<Tensor>{p}, CameConfig{.lr = 1e-2, .clip_threshold = 1e-40});
    else
      opt = std::make_unique<Adafactor>(std::vector<Tensor>{p}, AdafactorConfig{.lr = 1e-2, .clip_threshold = 1e-40});
    run_steps(*opt, p, 2, 900);
    CHECK(p.to_vector<float>() == init);
  }
}

TEST_CASE("determinism: results do not depend on the number of threads, nor on inspection, for every optimizer") {
  // A matrix of several row blocks above the parallel threshold, a 3-d tensor and a long vector.
  const std::vector<Shape> shapes = {{512, 96}, {64, 8, 40}, {30000}};
  for (const OptimizerCase& c : every_optimizer({{"lr", 1e-2}, {"weight-decay", 0.1}})) {
    std::vector<std::vector<float>> results;
    for (int run = 0; run < 3; ++run) {  // 1 thread, 2 threads, 2 threads with inspection
      INFO(c.label(), ", run ", run);
      omp_set_num_threads(run == 0 ? 1 : 2);
      std::vector<Tensor> params;
      for (size_t i = 0; i < shapes.size(); ++i)
        params.push_back(make_param(cat("det.", i), normal_values(numel(shapes[i]), 51 + i), shapes[i]));
      auto opt = optim::make_optimizer(c.name, params, c.settings);
      if (run == 2) opt->set_inspect(optim::Inspect::summary);
      for (int k = 0; k < 3; ++k) {
        for (size_t i = 0; i < shapes.size(); ++i)
          params[i].set_grad(make_grad(normal_values(params[i].numel(), 900 + 50 * i + uint64_t(k)), shapes[i]));
        opt->step();
      }
      std::vector<float> all;
      for (const Tensor& p : params) {
        const std::vector<float> v = p.to_vector<float>();
        all.insert(all.end(), v.begin(), v.end());
      }
      results.push_back(all);
      if (run == 2)
        for (const optim::TensorInternals& in : opt->internals()) {
          INFO(in.param);
          CHECK(in.step == 3);
          CHECK(std::isfinite(in.update_rms));
          CHECK(in.applied_rms > 0);
        }
    }
    omp_set_num_threads(omp_get_num_procs());
    CHECK(results[0] == results[1]);
    CHECK(results[1] == results[2]);
  }
}

TEST_CASE("save/load: a restored optimizer continues bit for bit, for every optimizer") {
  for (const OptimizerCase& c : every_optimizer({{"lr", 1e-2}, {"weight-decay", 0.1}})) {
    INFO(c.label());
    Tensor a = make_param("sl.w", normal_values(48 * 40, 7), {48, 40});
    Tensor v = make_param("sl.b", normal_values(40, 8), {40});
    auto first = optim::make_optimizer(c.name, {a, v}, c.settings);
    auto grads = [&](int k) {
      a.set_grad(make_grad(normal_values(48 * 40, 100 + uint64_t(k)), {48, 40}));
      v.set_grad(make_grad(normal_values(40, 200 + uint64_t(k)), {40}));
    };
    for (int k = 0; k < 3; ++k) {
      grads(k);
      first->step();
    }
    optim::OptimizerState saved = first->state_dict();
    CHECK(saved.kind == c.name);
    CHECK(saved.steps == 3);
    for (auto& [k, t] : saved.tensors) t = t.clone();  // deep copies, as a checkpoint hands them over
    Tensor a2 = make_param("sl.w", a.to_vector<float>(), {48, 40});
    Tensor v2 = make_param("sl.b", v.to_vector<float>(), {40});
    auto second = optim::make_optimizer(c.name, {a2, v2}, c.settings);
    second->load_state_dict(saved);
    for (int k = 3; k < 5; ++k) {
      grads(k);
      first->step();
      a2.set_grad(a.grad());
      v2.set_grad(v.grad());
      second->step();
    }
    CHECK(same(a, a2));
    CHECK(same(v, v2));
    const optim::OptimizerState after = first->state_dict(), after2 = second->state_dict();
    for (const auto& entry : after.tensors) {  // no structured binding: clang 14 cannot capture one in INFO
      INFO(entry.first);
      CHECK(same(entry.second, after2.tensors.at(entry.first)));
    }
  }
}

TEST_CASE("clipping: global norm in double, torch's coefficient, pre-clip norm returned") {
  Tensor a = make_param("cl.a", normal_values(1000, 61, 3.0), {10, 100});
  Tensor b = make_param("cl.b", normal_values(77, 62, 3.0), {77});
  Tensor c = make_param("cl.c", normal_values(5, 63), {5});  // no gradient: skipped
  const std::vector<float> ga = normal_values(1000, 64, 3.0), gb = normal_values(77, 65, 3.0);
  a.set_grad(make_grad(ga, {10, 100}));
  b.set_grad(make_grad(gb, {77}));
  double sq = 0;
  for (float x : ga) sq += double(x) * x;
  for (float x : gb) sq += double(x) * x;
  CHECK(optim::grad_norm({a, b, c}) == doctest::Approx(std::sqrt(sq)).epsilon(1e-14));
  const double norm = optim::clip_grad_norm({a, b, c}, 1.0);
  CHECK(norm == doctest::Approx(std::sqrt(sq)).epsilon(1e-14));
  CHECK(optim::grad_norm({a, b}) == doctest::Approx(1.0).epsilon(1e-5));
  // Below the threshold nothing changes.
  const std::vector<float> before = a.grad().to_vector<float>();
  optim::clip_grad_norm({a, b}, 10.0);
  CHECK(a.grad().to_vector<float>() == before);
  CHECK(optim::clip_coefficient(0.5, 1.0) == 1.0);
  CHECK(optim::clip_coefficient(4.0, 1.0) == doctest::Approx(1.0 / (4.0 + 1e-6)));
}

TEST_CASE("schedule: linear warmup, cosine to the floor, constant") {
  const optim::LrSchedule s = optim::LrSchedule::warmup_cosine({.peak_lr = 6e-4, .warmup_steps = 10, .total_steps = 110, .min_lr = 6e-5});
  // Relative tolerances (scale 0): doctest's default scale would allow ~1.2e-5 absolute, 2-20% of these values.
  auto near = [](double want) { return doctest::Approx(want).epsilon(1e-12).scale(0); };
  CHECK(s.lr(0) == near(6e-4 / 10));
  CHECK(s.lr(4) == near(6e-4 * 5 / 10));
  CHECK(s.lr(9) == near(6e-4));
  CHECK(s.lr(10) == near(6e-4));
  CHECK(s.lr(60) == near((6e-4 + 6e-5) / 2));
  CHECK(s.lr(110) == near(6e-5));
  CHECK(s.lr(1000) == near(6e-5));
  // Cosine, not any monotone curve through those points: every step of the decay against the closed form
  // min + (peak - min) (1 + cos(pi (k - warmup) / (total - warmup))) / 2.
  for (int64_t k = 10; k < 110; ++k) {
    const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * double(k - 10) / 100.0));
    CHECK(s.lr(k) == near(6e-5 + (6e-4 - 6e-5) * cosine));
    CHECK(s.lr(k + 1) <= s.lr(k));
  }
  CHECK(s.factor(9) == near(1.0));
  CHECK(optim::LrSchedule::constant(3e-4).lr(12345) == 3e-4);
  CHECK_THROWS_AS(optim::LrSchedule::warmup_cosine({.peak_lr = 1e-3, .warmup_steps = 10, .total_steps = 5}), Error);
}

TEST_CASE("groups: decay only for 2+ dim tensors by default, per-group lr, lr factor, zero_grad") {
  Tensor w = make_param("g.w", normal_values(12, 1), {3, 4});
  Tensor bias = make_param("g.b", normal_values(4, 2), {4});
  Tensor gain = make_param("g.ln", normal_values(4, 3), {4});
  auto groups = optim::decay_groups<CameConfig>({w, bias, gain}, {.lr = 1e-3, .weight_decay = 0.1});
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].params.size() == 1);
  CHECK(groups[0].params[0].name() == "g.w");
  CHECK(groups[0].config.weight_decay == 0.1);
  CHECK(groups[1].params.size() == 2);
  CHECK(groups[1].config.weight_decay == 0.0);
  CHECK(optim::decay_groups<CameConfig>({w, bias}, {.lr = 1e-3, .weight_decay = 0.1}, optim::DecayRule::all).size() == 1);
  groups[1].config.lr = 2e-3;
  Came opt(groups);
  CHECK(opt.num_groups() == 2);
  CHECK(opt.lr(1) == 2e-3);
  opt.set_lr_factor(0.5);
  CHECK(opt.lr(0) == doctest::Approx(5e-4).scale(0));
  CHECK(opt.lr(1) == doctest::Approx(1e-3).scale(0));
  opt.set_lr(7e-4);
  CHECK(opt.lr(1) == 7e-4);
  CHECK(opt.config(1).lr == 7e-4);
  w.set_grad(make_grad(std::vector<float>(12, 1.0f), {3, 4}));
  opt.zero_grad(optim::ZeroGrad::fill_zeros);
  REQUIRE(w.grad().defined());
  for (float x : w.grad().to_vector<float>()) CHECK(x == 0.0f);
  opt.zero_grad();
  CHECK(!w.grad().defined());
}

TEST_CASE("validation: bad parameters and configurations throw naming what is wrong") {
  Tensor unnamed = from_vector<float>({1, 2}, {2});
  unnamed.set_requires_grad(true);
  CHECK(contains(error_message([&] { Came({unnamed}, {.lr = 1e-3}); }), "has no name"));
  Tensor a = make_param("v.a", {1, 2}, {2});
  Tensor a2 = make_param("v.a", {1, 2}, {2});
  CHECK(contains(error_message([&] { AdamW({a, a2}, {}); }), "two parameters are named 'v.a'"));
  CHECK(contains(error_message([&] { Came({a}, {}); }), "lr is required"));
  CHECK(contains(error_message([&] { Came({a}, {.lr = 1e-3, .betas = {0.9, 1.5, 0.9}}); }), "betas"));
  CHECK(contains(error_message([&] { Came({a}, {.lr = 1e-3, .exp_avg_dtype = DType::f64}); }), "exp_avg_dtype"));
  CHECK(contains(error_message([&] { Sgd({a}, {.lr = 0.1, .nesterov = Nesterov::yes}); }), "Nesterov"));
  Tensor frozen = from_vector<float>({1, 2}, {2});
  frozen.set_name("v.frozen");
  CHECK(contains(error_message([&] { Came({frozen}, {.lr = 1e-3}); }), "does not require grad"));
  Tensor d = from_vector<double>({1, 2}, {2});
  d.set_requires_grad(true);
  d.set_name("v.d");
  CHECK(contains(error_message([&] { Came({d}, {.lr = 1e-3}); }), "f32"));
  Came opt({a}, {.lr = 1e-3});
  a.set_grad(from_vector<double>({1, 2}, {2}));
  const std::string msg = error_message([&] { opt.step(); });
  CHECK(contains(msg, "v.a"));
  CHECK(contains(msg, "f64"));
  CHECK(contains(error_message([&] { opt.step({.grad_scale = 0.0}); }), "grad_scale"));
  CHECK(contains(error_message([&] { (void)opt.param_step("nope"); }), "nope"));
}

TEST_CASE("validation: an infinite weight decay, or SGD momentum, is refused by name") {
  Tensor a = make_param("v.a", {1, 2}, {2});
  const double inf = std::numeric_limits<double>::infinity();
  const std::string wd = " group 0: weight_decay must be finite and >= 0, got inf";
  CHECK(contains(error_message([&] { AdamW({a}, {.weight_decay = inf}); }), "[adamw]" + wd));
  CHECK(contains(error_message([&] { Lamb({a}, {.weight_decay = inf}); }), "[lamb]" + wd));
  CHECK(contains(error_message([&] { Sm3({a}, {.weight_decay = inf}); }), "[sm3]" + wd));
  CHECK(contains(error_message([&] { Came({a}, {.lr = 1e-3, .weight_decay = inf}); }), "[came]" + wd));
  CHECK(contains(error_message([&] { Adafactor({a}, {.lr = 1e-3, .weight_decay = inf}); }), "[adafactor]" + wd));
  CHECK(contains(error_message([&] { Sgd({a}, {.lr = 0.1, .weight_decay = inf}); }), "[sgd]" + wd));
  CHECK(contains(error_message([&] { Sgd({a}, {.lr = 0.1, .momentum = inf}); }),
                 "[sgd] group 0: momentum must be finite and >= 0, got inf"));
  CHECK(contains(error_message([&] { Sgd({a}, {.lr = 0.1, .momentum = -inf}); }), "momentum must be finite and >= 0"));
  CHECK_NOTHROW(Sgd({a}, {.lr = 0.1, .momentum = 0.9, .weight_decay = 0.1}));
}

}  // TEST_SUITE
