// Exact optimizer-state bytes: for a vector, matrices and a 3-D tensor, the ledger's requested bytes (per owner
// and per category), state_bytes() measured from the tensors, the closed-form prediction, and the formulas of
// docs/optimizers.md must all be the same number. Also: lazy vs eager allocation, the meta device, held bytes.
#include <doctest/doctest.h>

#include "core/ledger.h"
#include "tests/optim/optim_test_util.h"

using namespace tally;
using namespace tally::test;

namespace {

enum class Kind { came, adamw, adafactor, adafactor_beta1, sgd };

std::unique_ptr<optim::Optimizer> build(Kind k, const std::vector<Tensor>& params) {
  switch (k) {
    case Kind::came: return std::make_unique<Came>(params, CameConfig{.lr = 1e-3});
    case Kind::adamw: return std::make_unique<AdamW>(params, AdamWConfig{});
    case Kind::adafactor: return std::make_unique<Adafactor>(params, AdafactorConfig{.lr = 1e-3});
    case Kind::adafactor_beta1: return std::make_unique<Adafactor>(params, AdafactorConfig{.lr = 1e-3, .beta1 = 0.9});
    case Kind::sgd: return std::make_unique<Sgd>(params, SgdConfig{.lr = 0.1, .momentum = 0.9});
  }
  return nullptr;
}

std::vector<TensorState> predict(Kind k, const std::vector<NamedShape>& shapes) {
  switch (k) {
    case Kind::came: return Came::predict_state_bytes(shapes, CameConfig{.lr = 1e-3});
    case Kind::adamw: return AdamW::predict_state_bytes(shapes, AdamWConfig{});
    case Kind::adafactor: return Adafactor::predict_state_bytes(shapes, AdafactorConfig{.lr = 1e-3});
    case Kind::adafactor_beta1: return Adafactor::predict_state_bytes(shapes, AdafactorConfig{.lr = 1e-3, .beta1 = 0.9});
    case Kind::sgd: return Sgd::predict_state_bytes(shapes, SgdConfig{.lr = 0.1, .momentum = 0.9});
  }
  return {};
}

// docs/optimizers.md's formulas, written out independently of the implementation. n = shape[-2] (or the length of a vector),
// m = shape[-1]; for more dims the factors hold prod(shape[:-1]) and prod(shape[:-2]) * shape[-1] elements.
int64_t formula(Kind k, const Shape& s) {
  const int64_t N = numel(s);
  if (s.size() == 1) {
    switch (k) {
      case Kind::came: return 8 * N;
      case Kind::adamw: return 8 * N;
      case Kind::adafactor: return 4 * N;
      case Kind::adafactor_beta1: return 8 * N;
      case Kind::sgd: return 4 * N;
    }
  }
  const int64_t rows = N / s.back(), cols = N / s[s.size() - 2];
  switch (k) {
    case Kind::came: return 4 * N + 8 * (rows + cols);
    case Kind::adamw: return 8 * N;
    case Kind::adafactor: return 4 * (rows + cols);
    case Kind::adafactor_beta1: return 4 * N + 4 * (rows + cols);
    case Kind::sgd: return 4 * N;
  }
  return -1;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::came: return "came";
    case Kind::adamw: return "adamw";
    case Kind::adafactor: return "adafactor";
    case Kind::adafactor_beta1: return "adafactor(beta1)";
    case Kind::sgd: return "sgd(momentum)";
  }
  return "?";
}

}  // namespace

TEST_SUITE("optim") {

TEST_CASE("state bytes: ledger == state_bytes() == prediction == docs/optimizers.md formula (vector, matrices, 3-D)") {
  const std::vector<Shape> shapes = {{4096}, {1024, 4096}, {4096, 1024}, {768, 3072}, {6, 40, 24}, {7, 5}};
  for (Kind k : {Kind::came, Kind::adamw, Kind::adafactor, Kind::adafactor_beta1, Kind::sgd}) {
    for (size_t si = 0; si < shapes.size(); ++si) {
      const Shape& shape = shapes[si];
      const std::string name = cat("bytes_", kind_name(k), "_", si);
      INFO(kind_name(k), " ", shape_str(shape));
      Tensor p = make_param(name, std::vector<float>(size_t(numel(shape)), 0.5f), shape);
      const int64_t before = ledger().category(Category::optimizer_state).live_requested;
      const int64_t held_before = ledger().category(Category::optimizer_state).live_held;
      auto opt = build(k, {p});
      CHECK(opt->total_state_bytes() == 0);  // lazy: nothing before the first step or init_state()
      opt->init_state();
      const int64_t measured = opt->total_state_bytes();
      const int64_t in_ledger = ledger().category(Category::optimizer_state).live_requested - before;
      const int64_t predicted = total_bytes(predict(k, {{name, shape}}));
      const int64_t predicted_here = total_bytes(opt->predict_state_bytes());
      CHECK(in_ledger == measured);
      CHECK(measured == predicted);
      CHECK(predicted_here == predicted);
      CHECK(measured == formula(k, shape));
      // Per state tensor: its ledger owner "<param>:<state>" holds exactly its bytes, CPU-held rounded to 64 B.
      int64_t held = 0;
      for (const TensorState& ts : opt->state_bytes())
        for (const StateSpec& st : ts.states) {
          const Usage u = ledger().owner(name + ":" + st.name);
          CHECK(u.live_requested == st.bytes());
          CHECK(u.live_held == cpu_held_bytes(st.bytes()));
          held += cpu_held_bytes(st.bytes());
        }
      CHECK(ledger().category(Category::optimizer_state).live_held - held_before == held);
      opt.reset();
      CHECK(ledger().category(Category::optimizer_state).live_requested == before);
    }
  }
}

TEST_CASE("state bytes: docs/optimizers.md's 1024x4096 figures") {
  const std::vector<NamedShape> w = {{"w", {1024, 4096}}};
  CHECK(total_bytes(AdamW::predict_state_bytes(w, {})) == 33'554'432);
  CHECK(total_bytes(Came::predict_state_bytes(w, {.lr = 1e-3})) == 16'818'176);
  CHECK(total_bytes(Adafactor::predict_state_bytes(w, {.lr = 1e-3})) == 20'480);
}

TEST_CASE("state bytes: per-tensor prediction lists names, shapes and dtypes as allocated") {
  const Shape shape = {3, 4, 5};
  Tensor p = make_param("cube", std::vector<float>(60, 1.0f), shape);
  Came opt({p}, {.lr = 1e-3, .exp_avg_dtype = DType::bf16, .confidence_init = ConfidenceInit::ones});
  const std::vector<TensorState> pred = opt.predict_state_bytes();
  opt.init_state();
  const std::vector<TensorState> got = opt.state_bytes();
  REQUIRE(pred.size() == 1);
  REQUIRE(got.size() == 1);
  REQUIRE(pred[0].states.size() == 5);
  REQUIRE(got[0].states.size() == 5);
  for (size_t i = 0; i < 5; ++i) {
    CHECK(pred[0].states[i].name == got[0].states[i].name);
    CHECK(pred[0].states[i].shape == got[0].states[i].shape);
    CHECK(pred[0].states[i].dtype == got[0].states[i].dtype);
  }
  CHECK(got[0].states[0].dtype == DType::bf16);
  CHECK(got[0].states[0].bytes() == 2 * 60);
  CHECK(got[0].states[1].shape == Shape{3, 4});  // exp_avg_sq_row: shape[:-1]
  CHECK(got[0].states[2].shape == Shape{3, 5});  // exp_avg_sq_col: shape[:-2] + shape[-1:]
  // Confidence factors start at one with ConfidenceInit::ones.
  for (float v : opt.state("cube", "exp_avg_res_row").to_vector<float>()) CHECK(v == 1.0f);
  for (float v : opt.state("cube", "exp_avg_sq_row").to_vector<float>()) CHECK(v == 0.0f);
}

TEST_CASE("state bytes: lazy allocation on the first step of each parameter; skipped parameters keep none") {
  Tensor a = make_param("lazy_a", std::vector<float>(64 * 32, 0.1f), {64, 32});
  Tensor b = make_param("lazy_b", std::vector<float>(32, 0.1f), {32});
  Came opt({a, b}, {.lr = 1e-3});
  a.set_grad(make_grad(std::vector<float>(64 * 32, 0.01f), {64, 32}));
  opt.step();
  CHECK(opt.param_step("lazy_a") == 1);
  CHECK(opt.param_step("lazy_b") == 0);
  CHECK(ledger().owner("lazy_a:exp_avg").live_requested == 64 * 32 * 4);
  CHECK(ledger().owner("lazy_b:exp_avg").live_requested == 0);
  CHECK(opt.total_state_bytes() == 4 * 64 * 32 + 8 * (64 + 32));
  CHECK(opt.steps() == 1);
}

TEST_CASE("state bytes: on the meta device init_state() accounts exactly without memory") {
  const Shape shapes[] = {{50257, 768}, {768}, {768, 2304}, {1024, 768}};
  std::vector<Tensor> params;
  std::vector<NamedShape> named;
  for (size_t i = 0; i < 4; ++i) {
    Tensor p = empty(shapes[i], {.dtype = DType::f32, .device = Device::meta()});
    p.set_requires_grad(true);
    p.set_name(cat("meta_", i));
    params.push_back(p);
    named.push_back({p.name(), shapes[i]});
  }
  const int64_t before = ledger(Device::meta()).category(Category::optimizer_state).live_requested;
  Came opt(params, {.lr = 1e-3});
  opt.init_state();
  const int64_t got = ledger(Device::meta()).category(Category::optimizer_state).live_requested - before;
  CHECK(got == total_bytes(Came::predict_state_bytes(named, {.lr = 1e-3})));
  CHECK(got == opt.total_state_bytes());
  CHECK(opt.workspace_bytes() > 0);  // the step workspace is allocated (and accounted) up front too
}

}  // TEST_SUITE
