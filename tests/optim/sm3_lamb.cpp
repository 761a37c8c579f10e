// SM3 and LAMB beyond the golden steps (tests/optim/golden.cpp replays the reference on vectors, matrices and a 3-D
// tensor): SM3 on a scalar, a vector and a 4-D tensor against a plain reimplementation of the reference's step
// (every accumulator, the momentum), LAMB's trust ratio when the weights are zero, exact state bytes (ledger ==
// measured == predicted == docs/optimizers.md's closed forms), settings and bad values refused by name, SM3 under ZeRO
// 1 (dim 0 cut, the other accumulators' maxima completed over ranks) equal to the whole step, results independent of
// the thread count and of inspection, and a save/load round trip.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "core/ledger.h"
#include "tests/optim/optim_test_util.h"
#include "tests/train/turn_ranks.h"
#include "tests/train/zero1_equivalence.h"

using namespace tally;
using namespace tally::test;

namespace {

// pytorch_optimizer 4.1.0's SM3 step (dense gradient), written out plainly in float: v from the smallest accumulator,
// the per-dim maxima, u = g / sqrt(v + eps), the momentum's lerp, p -= lr * update.
struct PlainSm3 {
  Shape dims;
  double lr = 0.1, momentum = 0, beta = 0, eps = 1e-30;
  std::vector<std::vector<float>> acc;  // rank >= 2: one per dim; else one of the tensor's size
  std::vector<float> m;

  PlainSm3(Shape shape, double lr_, double momentum_, double beta_) : dims(std::move(shape)), lr(lr_), momentum(momentum_), beta(beta_) {
    if (dims.size() <= 1) acc.emplace_back(size_t(numel(dims)), 0.0f);
    else
      for (int64_t d : dims) acc.emplace_back(size_t(d), 0.0f);
    m.assign(size_t(numel(dims)), 0.0f);
  }

  std::vector<int64_t> index(int64_t e) const {
    std::vector<int64_t> idx(dims.size());
    for (size_t k = dims.size(); k-- > 0;) {
      idx[k] = e % dims[k];
      e /= dims[k];
    }
    return idx;
  }

  void step(std::vector<float>& p, const std::vector<float>& g) {
    const int64_t n = numel(dims);
    const size_t rank = dims.size();
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t e = 0; e < n; ++e) {
      float smallest;
      if (rank <= 1) {
        smallest = acc[0][size_t(e)];
      } else {
        const std::vector<int64_t> idx = index(e);
        smallest = acc[0][size_t(idx[0])];
        for (size_t k = 1; k < rank; ++k) smallest = std::min(smallest, acc[k][size_t(idx[k])]);
      }
      const float x = beta > 0 ? smallest * float(beta) : smallest;
      v[size_t(e)] = std::fma(float(1.0 - beta) * g[size_t(e)], g[size_t(e)], x);
    }
    if (rank == 0) {
      acc[0][0] = v[0];  // the reference copies v into a 0-dim accumulator
    } else if (rank == 1) {
      for (int64_t e = 0; e < n; ++e) acc[0][size_t(e)] = beta > 0 ? std::max(acc[0][size_t(e)], v[size_t(e)]) : v[size_t(e)];
    } else {
      for (size_t k = 0; k < rank; ++k) {
        std::vector<float> nu(size_t(dims[k]), 0.0f);
        for (int64_t e = 0; e < n; ++e) {
          const int64_t j = index(e)[k];
          nu[size_t(j)] = std::max(nu[size_t(j)], v[size_t(e)]);
        }
        for (size_t j = 0; j < nu.size(); ++j) acc[k][j] = beta > 0 ? std::max(acc[k][j], nu[j]) : nu[j];
      }
    }
    const float w = float(1.0 - momentum);
    for (int64_t e = 0; e < n; ++e) {
      const size_t i = size_t(e);
      float d = (1.0f / std::sqrt(v[i] + float(eps))) * g[i];
      if (momentum > 0) {
        m[i] = w < 0.5f ? std::fma(w, d - m[i], m[i]) : std::fma(-(d - m[i]), 1.0f - w, d);
        d = m[i];
      }
      p[i] = std::fma(d, float(-lr), p[i]);
    }
  }
};

void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  double scale = 0;
  for (float x : want) scale = std::max(scale, double(std::fabs(x)));
  const Mismatch mm = compare(got, want, 1e-6, 1e-6 * scale);
  CHECK_MESSAGE(mm.ok(), what, ": tally ", mm.a, " plain ", mm.b, " at ", mm.index, " (ratio ", mm.worst_ratio, ")");
}

}  // namespace

TEST_SUITE("optim") {

TEST_CASE("sm3: a scalar, a vector and 2-D/4-D tensors step as the reference's algorithm written out plainly") {
  const std::vector<Shape> shapes = {{}, {11}, {70, 300}, {3, 4, 5, 6}};  // {70, 300}: several tasks
  struct Config {
    double momentum, beta;
  };
  for (const Config cfg : {Config{0, 0}, Config{0.9, 0.9}, Config{0.3, 0.5}})
    for (size_t si = 0; si < shapes.size(); ++si) {
      const Shape& shape = shapes[si];
      INFO("shape ", shape_str(shape), " momentum ", cfg.momentum, " beta ", cfg.beta);
      const int64_t n = numel(shape);
      std::vector<float> plain_p = normal_values(n, 5 + si);
      Tensor p = make_param("w", plain_p, shape);
      auto opt = optim::make_optimizer("sm3", {p}, {{"lr", 0.05}, {"momentum", cfg.momentum}, {"beta", cfg.beta}});
      PlainSm3 plain(shape, 0.05, cfg.momentum, cfg.beta);
      for (int k = 0; k < 6; ++k) {
        const std::vector<float> g = normal_values(n, 100 * si + uint64_t(k), k == 3 ? 10.0 : 1.0);
        p.set_grad(make_grad(g, shape));
        opt->step();
        plain.step(plain_p, g);
      }
      expect_close(p.to_vector<float>(), plain_p, "param");
      const size_t accs = shape.size() <= 1 ? 1 : shape.size();
      for (size_t k = 0; k < accs; ++k) {
        const Tensor a = opt->state("w", cat("accumulator_", k));
        REQUIRE(a.defined());
        CHECK(a.numel() == int64_t(plain.acc[k].size()));
        expect_close(a.to_vector<float>(), plain.acc[k], cat("accumulator_", k));
      }
      CHECK(opt->state("w", "momentum_buffer").defined() == (cfg.momentum > 0));
      if (cfg.momentum > 0) expect_close(opt->state("w", "momentum_buffer").to_vector<float>(), plain.m, "momentum");
    }
}

TEST_CASE("lamb: zero weights give a trust ratio of one; the first step is lr / (1 - beta1) times u") {
  const Shape shape = {8, 5};
  Tensor p = make_param("z", std::vector<float>(40, 0.0f), shape);
  const std::vector<float> g = normal_values(40, 3);
  p.set_grad(make_grad(g, shape));
  auto opt = optim::make_optimizer("lamb", {p}, {{"lr", 1e-2}});
  opt->step();
  const std::vector<float> got = p.to_vector<float>();
  for (size_t i = 0; i < got.size(); ++i) {
    const float m = 0.1f * g[i], v = float(1.0 - 0.999) * g[i] * g[i];
    const float u = m / (std::sqrt(v) + 1e-6f);
    CHECK(got[i] == doctest::Approx(-(1e-2 / 0.1) * u).epsilon(1e-6));
  }
}

TEST_CASE("sm3, lamb: state bytes in the ledger == measured == predicted == the closed forms of docs/optimizers.md") {
  const std::vector<Shape> shapes = {{}, {4096}, {1024, 4096}, {768, 3072}, {6, 40, 24}, {7, 5}};
  struct Case {
    std::string optimizer;
    optim::Settings settings;
    std::function<int64_t(const Shape&)> formula;
  };
  auto dims_sum = [](const Shape& s) {
    int64_t sum = 0;
    for (int64_t d : s) sum += d;
    return sum;
  };
  const std::vector<Case> cases = {
      {"sm3", {}, [&](const Shape& s) { return s.size() <= 1 ? 4 * numel(s) : 4 * dims_sum(s); }},
      {"sm3", {{"momentum", 0.9}},
       [&](const Shape& s) { return 4 * numel(s) + (s.size() <= 1 ? 4 * numel(s) : 4 * dims_sum(s)); }},
      {"lamb", {}, [](const Shape& s) { return 8 * numel(s); }},
  };
  for (const Case& c : cases)
    for (size_t si = 0; si < shapes.size(); ++si) {
      const Shape& shape = shapes[si];
      const std::string name = cat("bytes_", c.optimizer, "_", c.settings.values().size(), "_", si);
      INFO(c.optimizer, " ", shape_str(shape));
      Tensor p = make_param(name, std::vector<float>(size_t(numel(shape)), 0.5f), shape);
      const int64_t before = ledger().category(Category::optimizer_state).live_requested;
      auto opt = optim::make_optimizer(c.optimizer, {p}, c.settings);
      CHECK(opt->total_state_bytes() == 0);  // lazy
      opt->init_state();
      const int64_t measured = opt->total_state_bytes();
      CHECK(ledger().category(Category::optimizer_state).live_requested - before == measured);
      CHECK(measured == optim::total_bytes(optim::predict_optimizer_state(c.optimizer, {{name, shape}}, c.settings)));
      CHECK(measured == c.formula(shape));
      for (const TensorState& ts : opt->state_bytes())
        for (const StateSpec& st : ts.states) CHECK(ledger().owner(name + ":" + st.name).live_requested == st.bytes());
    }
  // The reference's shapes: accumulator_k is 1 in every dim but k.
  const std::vector<TensorState> s = optim::predict_optimizer_state("sm3", {{"w", {6, 40, 24}}});
  REQUIRE(s[0].states.size() == 3);
  CHECK(s[0].states[0].shape == Shape{6, 1, 1});
  CHECK(s[0].states[1].shape == Shape{1, 40, 1});
  CHECK(s[0].states[2].shape == Shape{1, 1, 24});
  CHECK(s[0].states[2].name == "accumulator_2");
}

TEST_CASE("sm3, lamb: settings reach the configuration; bad values are refused naming the optimizer") {
  Tensor p = make_param("w", normal_values(64 * 48, 3), {64, 48});
  auto sm3 = optim::make_optimizer("sm3", {p}, {{"momentum", 0.5}, {"beta", 0.25}, {"eps", 1e-8}});
  const Sm3Config& s = dynamic_cast<Sm3&>(*sm3).config(0);
  CHECK(s.momentum == 0.5);
  CHECK(s.beta == 0.25);
  CHECK(s.eps == 1e-8);
  CHECK(s.lr == 0.1);  // the registry's default
  auto lamb = optim::make_optimizer(
      "lamb", {p}, {{"lamb-clamp", 3.0}, {"lamb-decay-in-update", true}, {"lamb-no-bias-correction", true}, {"eps", 1e-7}});
  const LambConfig& l = dynamic_cast<Lamb&>(*lamb).config(0);
  CHECK(l.clamp == 3.0);
  CHECK(l.decay == LambDecay::in_update);
  CHECK(l.bias_correction == LambBiasCorrection::none);
  CHECK(l.eps == 1e-7);
  CHECK(l.betas[1] == 0.999);
  CHECK(Lamb::step_size(l, 1) == l.lr);
  CHECK(Lamb::step_size(LambConfig{.lr = 1e-2}, 2) == doctest::Approx(1e-2 / (1 - 0.81)));
  CHECK_THROWS_WITH_AS(optim::make_optimizer("sm3", {p}, {{"momentum", 1.0}}),
                       doctest::Contains("[sm3] group 0: momentum must be in [0, 1), got 1"), Error);
  CHECK_THROWS_WITH_AS(optim::make_optimizer("sm3", {p}, {{"beta", 1.0}}),
                       doctest::Contains("[sm3] group 0: beta must be in [0, 1) (at 1 the accumulators"), Error);
  CHECK_THROWS_WITH_AS(optim::make_optimizer("sm3", {p}, {{"beta", 1.5}}),
                       doctest::Contains("[sm3] group 0: beta must be in [0, 1) (at 1 the accumulators"), Error);
  CHECK_THROWS_WITH_AS(optim::make_optimizer("sm3", {p}, {{"beta1", 0.9}}),
                       doctest::Contains("[sm3] has no setting 'beta1'"), Error);
  CHECK_THROWS_WITH_AS(optim::make_optimizer("lamb", {p}, {{"lamb-clamp", 0.0}}),
                       doctest::Contains("[lamb] group 0: clamp (the largest weight norm of the trust ratio) must be > 0"),
                       Error);
  CHECK_THROWS_WITH_AS(optim::make_optimizer("lamb", {p}, {{"beta2", 1.0}}),
                       doctest::Contains("[lamb] group 0: betas must be in [0, 1)"), Error);
  CHECK_THROWS_WITH_AS(optim::find_optimizer("lamb").check({{"lamb-decay-in-update", "sometimes"}}),
                       doctest::Contains("[lamb] switch 'lamb-decay-in-update' expects true or false"), Error);
  // At most kSm3MaxDims dims: refused when the state is laid out (the first step, init_state(), a prediction).
  auto nine = optim::make_optimizer("sm3", {make_param("x", std::vector<float>(512, 1.0f), {2, 2, 2, 2, 2, 2, 2, 2, 2})});
  CHECK_THROWS_WITH_AS(nine->init_state(),
                       doctest::Contains("[sm3] a parameter of shape (2, 2, 2, 2, 2, 2, 2, 2, 2) has 9 dims"), Error);
}

TEST_CASE("sm3: ZeRO 1 cuts dim 0 and gives the whole tensor's bits, ranks holding nothing included") {
  // Per rank: the rows of dim 0 with their accumulator_0 (and momentum), the other dims' accumulators whole.
  const auto rank_of_2 = [](int r) { return optim::predict_optimizer_state("sm3", {{"m", {3, 4}}}, {}, {r, 2}); };
  const std::vector<TensorState> r0 = rank_of_2(0), r1 = rank_of_2(1);
  CHECK(r0[0].param_shape == Shape{2, 4});
  CHECK(r0[0].states[0].shape == Shape{2, 1});
  CHECK(r0[0].states[1].shape == Shape{1, 4});
  CHECK(r1[0].states[0].shape == Shape{1, 1});
  CHECK(r1[0].states[1].shape == Shape{1, 4});
  // A vector in units of 8 elements (parts start on round_to_bf16's blocks): 8 and 4 of 12. SM3's step sums nothing
  // over a tensor, so its vectors stay split; LAMB's, whose two norms would cost a collective a step, go whole to one
  // rank (optim::shard_cuts), up to kWholeTensorMax elements.
  const auto vector_bytes = [](const char* name, int64_t n, int rank) {
    return optim::total_bytes(optim::predict_optimizer_state(name, {{"v", {n}}}, {}, {.rank = rank, .world = 2}));
  };
  CHECK(vector_bytes("sm3", 12, 1) == 4 * 4);
  CHECK(vector_bytes("lamb", 12, 0) == 12 * 8);
  CHECK(vector_bytes("lamb", 12, 1) == 0);
  const int64_t n = optim::kWholeTensorMax + 12, first = (n / 8 + 1) / 2 * 8;  // 8194 blocks of 8, the last short
  CHECK(vector_bytes("lamb", n, 0) == first * 8);
  CHECK(vector_bytes("lamb", n, 1) == (n - first) * 8);
  // Maxima are exact in any order and each element's arithmetic is the same at any cut: equal bits, not a
  // tolerance. Shapes with more ranks than indices of dim 0 ({2, 5} at 3 ranks), a 3-D tensor (two accumulators
  // completed over ranks), a vector and a scalar; beta 0 (the new maxima replace the old: a rank holding nothing
  // contributes zeros) and beta > 0 with momentum.
  const std::vector<Shape> shapes = {{37, 20}, {2, 5}, {5, 6, 7}, {50}, {}};
  struct Config {
    double momentum, beta;
  };
  for (const Config cfg : {Config{0, 0}, Config{0.9, 0.5}}) {
    const optim::Settings settings{{"lr", 0.05}, {"momentum", cfg.momentum}, {"beta", cfg.beta}, {"weight-decay", 0.1}};
    auto make = [&](std::vector<Tensor>& params) {
      params.clear();
      for (size_t i = 0; i < shapes.size(); ++i)
        params.push_back(make_param(cat("s", i), normal_values(numel(shapes[i]), 60 + i), shapes[i]));
      return optim::make_optimizer("sm3", params, settings);
    };
    auto gradient = [&](const Tensor& p, size_t i, int step) {
      // Larger at some steps, so that the maxima change hands between ranks.
      return make_grad(normal_values(p.numel(), 700 * uint64_t(step) + i, step % 3 == 0 ? 4.0 : 0.5), p.shape());
    };
    std::vector<Tensor> whole_params;
    auto whole = make(whole_params);
    for (int step = 1; step <= 8; ++step) {
      for (size_t i = 0; i < whole_params.size(); ++i) whole_params[i].set_grad(gradient(whole_params[i], i, step));
      whole->step();
    }
    const optim::OptimizerState want = whole->state_dict();
    for (int world : {2, 3}) {
      INFO("momentum ", cfg.momentum, " beta ", cfg.beta, ", world ", world);
      TurnRanks group(world);
      group.run([&](dist::Communicator& c) {
        std::vector<Tensor> params;
        auto sharded = make(params);
        sharded->shard(c);
        for (int step = 1; step <= 8; ++step) {
          for (size_t i = 0; i < params.size(); ++i) params[i].set_grad(gradient(params[i], i, step));
          sharded->step();  // each rank updates its part of every parameter: compared below, part by part
        }
        const optim::OptimizerState got = sharded->state_dict();  // gathered: whole tensors
        REQUIRE(got.tensors.size() == want.tensors.size());
        for (const auto& entry : want.tensors) {
          const std::string key = entry.first;
          INFO("rank ", c.rank(), " state ", key);
          CHECK(got.tensors.at(key).to_vector<float>() == entry.second.to_vector<float>());
        }
        for (size_t i = 0; i < params.size(); ++i) {
          const optim::ShardCut& cut = sharded->shard_cut(params[i].name());
          INFO("rank ", c.rank(), " parameter ", params[i].name());
          CHECK(rank_elements(params[i], cut, c.rank()) == rank_elements(whole_params[i], cut, c.rank()));
        }
      });
    }
  }
  // beta 0 from a state it did not make (saved with beta > 0, say): accumulator_1 above every new v. The new maxima
  // replace it on every rank, on the ranks holding no row of the tensor too (a (2, 5) tensor's rows go in units of 8,
  // all to rank 0).
  const Shape shape{2, 5};
  const std::vector<float> gradient = normal_values(10, 9);
  Tensor w = make_param("t", normal_values(10, 8), shape);
  auto whole = optim::make_optimizer("sm3", {w});
  whole->init_state();
  optim::OptimizerState saved = whole->state_dict();
  for (auto& entry : saved.tensors) entry.second = entry.second.clone();  // not the optimizer's own tensors
  saved.tensors.at("t:accumulator_1").fill_(100.0);
  whole->load_state_dict(saved);
  w.set_grad(make_grad(gradient, shape));
  whole->step();
  const std::vector<float> want = whole->state("t", "accumulator_1").to_vector<float>();
  CHECK(*std::max_element(want.begin(), want.end()) < 100.0f);
  TurnRanks group(3);
  group.run([&](dist::Communicator& c) {
    Tensor p = make_param("t", normal_values(10, 8), shape);
    auto sharded = optim::make_optimizer("sm3", {p});
    sharded->shard(c);
    sharded->load_state_dict(saved);
    p.set_grad(make_grad(gradient, shape));
    sharded->step();
    INFO("rank ", c.rank());
    CHECK(sharded->state("t", "accumulator_1").to_vector<float>() == want);
  });
}

// Thread counts, inspection and restored state: tests/optim/behaviour.cpp's tests of every registered optimizer.
TEST_CASE("lamb: the trust ratio rescales the update the internals report") {
  // Weights of norm ~143 (clamped to 10) and ~7 (not clamped): both terms of the ratio are exercised.
  for (const float spread : {1.0f, 0.05f}) {
    INFO("weights scaled by ", spread);
    Tensor a = make_param("tr.a", normal_values(64 * 8 * 40, 51, spread), {64, 8, 40});
    auto opt = optim::make_optimizer("lamb", {a}, {{"weight-decay", 0.1}});
    opt->set_inspect(optim::Inspect::summary);
    std::vector<float> before;  // the parameter before the last step
    for (int k = 0; k < 3; ++k) {
      a.set_grad(make_grad(normal_values(a.numel(), 900 + uint64_t(k)), a.shape()));
      before = a.to_vector<float>();
      opt->step();
    }
    const optim::TensorInternals in = opt->internals()[0];
    CHECK(std::isfinite(in.exp_avg_rms));
    // The trust ratio, recomputed: min(||p (1 - lr wd)||, clamp) / (||u|| + eps), with ||u|| from the reported RMS
    // of u (defaults: clamp 10, eps 1e-6). The internals report it as clipped_update_rms / update_rms; float norms
    // and the RMS's round trip agree to ~1e-6 relative.
    const float keep = float(1.0 - 0.1 * opt->lr());
    double kept_sq = 0;
    for (float x : before) kept_sq += double(x * keep) * double(x * keep);
    CHECK((std::sqrt(kept_sq) > 10.0) == (spread == 1.0f));  // clamped in the first case only
    const double update_norm = in.update_rms * std::sqrt(double(a.numel()));
    const double trust = std::min(std::sqrt(kept_sq), 10.0) / (update_norm + 1e-6);
    CHECK(trust != doctest::Approx(1.0));
    CHECK(in.clipped_update_rms / in.update_rms == doctest::Approx(trust).epsilon(1e-4).scale(0));
  }
}

}  // TEST_SUITE
