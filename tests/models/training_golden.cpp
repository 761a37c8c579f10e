// The training golden (golden data from tests/reference/make_gpt2_training_reference.py): 10 steps of the tiny HF
// GPT-2 (tests/reference/gpt2_tiny) with CAME (came-pytorch 0.1.3), AdamW (torch), Adafactor (transformers, beta1 0.9),
// SGD with momentum, SM3 and LAMB (pytorch_optimizer 4.1.0), every optimizer of the registry, replayed through
// tally's float32 GPT2 and tally::optim on the same 10 batches. Checked: every
// step's loss and gradient norm, the loss after the last step, ||p_final - p_initial|| of every parameter, and the
// final values of a few tensors. It tests the whole training step together (tied head, Conv1D layouts, parameter
// groups, fused global-norm clipping); the optimizers alone are matched state by state in tests/optim/golden.cpp.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "core/autograd/node.h"
#include "core/io/safetensors.h"
#include "models/safetensors_gpt2.h"
#include "optim/clip.h"
#include "tests/models/test_helpers.h"
#include "tests/optim/optim_test_util.h"
#include "tests/test_util.h"

using namespace tally;
using namespace tally::models;

namespace {

// Tolerances, |a - b| <= atol + rtol |b|. The reference is the float64 trajectory; tally runs in float32, and so
// does PyTorch's own float32 run of the same steps, whose distance from the float64 one is stored in the file's
// metadata "torch_f32_spread" and quoted here for scale. Achieved on this machine, worst over the steps or tensors,
// per optimizer (came / adamw / adafactor / sgd), unpadded head:
//   step and final losses     tally 3.5e-8 / 4.0e-8 / 3.7e-8 / 3.4e-8 relative  PyTorch f32 7.7e-8 .. 1.3e-7
//                             (half the float32 spacing at 6.2 is 3.8e-8: the losses agree to the last bit or so)
//   gradient norms            tally 2.9e-8 / 1.7e-8 / 1.6e-8 / 2.4e-8 relative
//   ||p_final - p_initial||   tally 5.1e-5 / 3.1e-6 / 5.7e-6 / 4.1e-5 relative  PyTorch f32 the same figures: the
//                             worst are LayerNorm gains near 1 that move by ~2e-3, where float32's spacing (1.2e-7)
//                             is 6e-5 of the move; hence an absolute term of about sqrt(48) x that spacing
//   final tensor values       tally 4.0e-7 / 5.5e-6 / 2.0e-7 / 2.1e-7 of max |value|
//                             PyTorch f32 3.6e-7 / 1.2e-5 / 2.0e-7 / 2.1e-7; AdamW's is larger because elements
//                             whose gradient is near eps = 1e-8 amplify the gradient's float32 rounding (its
//                             first steps are g / (|g| + eps)), so AdamW gets its own bound.
// SM3 / LAMB: losses 3.7e-8 / 3.1e-8, gradient norms 1.1e-8 / 5.5e-8, ||delta|| 2.6e-6 / 7.0e-7, final values
// 2.0e-7 / 4.2e-7 (PyTorch f32: final values 2.0e-7 / 4.2e-7).
// The padded head (Vp 512; run for every optimizer) achieves the same figures.
// The bounds below leave a margin of 5x (final values) to 25x (losses).
constexpr double kLossRtol = 1e-6;
constexpr double kNormRtol = 2e-7;
constexpr double kDeltaRtol = 1e-5, kDeltaAtol = 1e-6;
double param_atol_rel(const std::string& kind) { return kind == "adamw" ? 3e-5 : 2e-6; }  // x max |value|; rtol 0

const io::SafetensorsReader& golden() {
  static const io::SafetensorsReader r(test::reference_dir() / "gpt2_training_golden.safetensors");
  return r;
}

bool conv1d(const std::string& name) {
  for (const char* s : {"c_attn.weight", "c_proj.weight", "c_fc.weight"})
    if (name.ends_with(s)) return true;
  return false;
}

// The parameter in HF's layout (Conv1D (in, out), wte without padding rows).
std::vector<double> hf_layout(const GPT2& m, const std::string& name) {
  Tensor p = m.parameter(name);
  if (name == "transformer.wte.weight") p = p.slice(0, 0, m.config().vocab_size);
  if (conv1d(name)) p = p.transpose(0, 1);
  return p.to_vector<double>();
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

double rel(double a, double b) { return std::abs(a - b) / std::abs(b); }

// The reference's optimizer, from the tally settings recorded for its hyperparameters, with weight decay on tensors of 2+ dims only
// (as the reference's two torch param groups; for Adafactor and SGD weight_decay is 0 and both groups are alike).
std::unique_ptr<optim::Optimizer> make_optimizer(const std::string& kind, const nlohmann::json& tally_settings,
                                                 const std::vector<Tensor>& params, optim::DecayRule rule) {
  optim::Settings s = test::settings_from_json(tally_settings);
  s.set("decay", rule == optim::DecayRule::all ? "all" : "matrices");
  return optim::make_optimizer(kind, params, s);
}

// Batch k of the file: idx = seq[:, :-1], targets = seq[:, 1:] (B, T) i32.
std::pair<Tensor, Tensor> batch(int k) {
  const io::SafetensorsEntry& e = golden().at("batches");
  const int64_t B = e.shape[1], T1 = e.shape[2];
  const std::vector<int32_t> all = golden().read_typed<int32_t>("batches");
  std::vector<int32_t> idx, tgt;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < T1; ++t) {
      idx.push_back(all[size_t((k * B + b) * T1 + t)]);
      tgt.push_back(all[size_t((k * B + b) * T1 + t + 1)]);
    }
  return {from_vector(idx, {B, T1 - 1}), from_vector(tgt, {B, T1 - 1})};
}

struct Run {
  std::unique_ptr<GPT2> model;
  std::unique_ptr<optim::Optimizer> opt;
  std::vector<double> losses, grad_norms;
  double final_loss = 0;
  std::map<std::string, double> delta_norm;  // ||p_final - p_initial||_2 by HF name
};

Run train(const std::string& kind, int64_t vocab_multiple, optim::DecayRule rule) {
  const nlohmann::json settings = nlohmann::json::parse(golden().metadata().at("tally_settings")).at(kind);
  const int steps = std::stoi(golden().metadata().at("steps"));
  const double clip = std::stod(golden().metadata().at("clip_grad_norm"));
  Run run;
  run.model = load_safetensors_gpt2(test::reference_dir() / "gpt2_tiny" / "model.safetensors",
                                    {.vocab_multiple = vocab_multiple});
  GPT2& m = *run.model;
  m.train();
  std::map<std::string, Tensor> initial;
  for (const auto& [name, p] : m.named_parameters()) initial[name] = p.clone();
  run.opt = make_optimizer(kind, settings, m.parameters(), rule);
  optim::Optimizer* opt = run.opt.get();
  const int64_t C = m.config().n_embd;
  for (int k = 0; k < steps; ++k) {
    opt->zero_grad(optim::ZeroGrad::set_to_none);
    auto [idx, tgt] = batch(k);
    Tensor loss = m.loss(idx, tgt);
    loss.backward();
    // The key third of c_attn.bias: zero in exact arithmetic, rounding noise after backprop (see the script's
    // zero_key_bias_grad); both sides set it to zero.
    for (size_t l = 0; l < m.h.size(); ++l)
      m.parameter("transformer.h." + std::to_string(l) + ".attn.c_attn.bias").grad().slice(0, C, 2 * C).zero_();
    const double norm = optim::grad_norm(m.parameters());
    opt->step({.grad_scale = optim::clip_coefficient(norm, clip)});  // fused clipping, as train/trainer.cpp
    run.losses.push_back(loss.item());
    run.grad_norms.push_back(norm);
  }
  {
    NoGradGuard no_grad;
    auto [idx, tgt] = batch(0);
    run.final_loss = m.loss(idx, tgt).item();
  }
  for (const auto& [name, p] : m.named_parameters()) {
    std::vector<double> now = p.to_vector<double>(), was = initial[name].to_vector<double>();
    double s = 0;
    for (size_t i = 0; i < now.size(); ++i) s += (now[i] - was[i]) * (now[i] - was[i]);
    run.delta_norm[name] = std::sqrt(s);
  }
  return run;
}

struct Achieved {
  double loss = 0, norm = 0, delta = 0, param = 0;  // worst relative errors (param: of max |value|)
  double delta_ratio = 0;                           // worst |a - b| / (atol + rtol |b|) of ||delta||
  std::string worst_delta;                          // the parameter where delta_ratio was seen
  bool ok = true;
};

// Compares a run with the reference of `kind`; returns the worst errors and whether every tolerance held.
Achieved compare_with_golden(const std::string& kind, const Run& run) {
  Achieved a;
  const std::vector<double> losses = golden().read_doubles(kind + "/loss");
  const std::vector<double> norms = golden().read_doubles(kind + "/grad_norm");
  REQUIRE(run.losses.size() == losses.size());
  for (size_t k = 0; k < losses.size(); ++k) {
    a.loss = std::max(a.loss, rel(run.losses[k], losses[k]));
    a.norm = std::max(a.norm, rel(run.grad_norms[k], norms[k]));
  }
  a.loss = std::max(a.loss, rel(run.final_loss, golden().read_doubles(kind + "/final_loss")[0]));
  a.ok = a.loss <= kLossRtol && a.norm <= kNormRtol;

  const std::vector<std::string> names = nlohmann::json::parse(golden().metadata().at("params"));
  const std::vector<double> delta = golden().read_doubles(kind + "/delta_norm");
  REQUIRE(names.size() == run.delta_norm.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const double got = run.delta_norm.at(names[i]);
    a.delta = std::max(a.delta, rel(got, delta[i]));
    const double ratio = std::abs(got - delta[i]) / (kDeltaAtol + kDeltaRtol * delta[i]);
    if (!(ratio <= a.delta_ratio)) {  // NaN counts as the worst
      a.delta_ratio = std::isnan(ratio) ? INFINITY : ratio;
      a.worst_delta = cat(names[i], ": tally ", got, " reference ", delta[i]);
    }
  }
  const std::string prefix = kind + "/param/";
  int tensors = 0;
  for (const io::SafetensorsEntry& e : golden().tensors()) {
    if (!e.name.starts_with(prefix)) continue;
    const std::vector<double> ref = golden().read_doubles(e.name);
    const double scale = max_abs(ref);
    const test::Closeness c = test::compare(hf_layout(*run.model, e.name.substr(prefix.size())), ref, 0.0,
                                            param_atol_rel(kind) * scale);
    a.param = std::max(a.param, c.max_abs / scale);
    a.ok = a.ok && c.ok();
    ++tensors;
  }
  CHECK(tensors >= 4);
  a.ok = a.ok && a.delta_ratio <= 1.0;
  return a;
}

}  // namespace

TEST_SUITE("models") {

TEST_CASE("training golden: 10 steps of the tiny HF GPT-2 with every optimizer match PyTorch") {
  const nlohmann::json optimizers = nlohmann::json::parse(golden().metadata().at("optimizers"));
  CHECK(optimizers.size() == optim::optimizers().size());
  for (const optim::OptimizerEntry& e : optim::optimizers()) CHECK_MESSAGE(optimizers.contains(e.name), e.name);
  const double clip = std::stod(golden().metadata().at("clip_grad_norm"));
  int clipped = 0, unclipped = 0;  // steps whose gradient the clip scaled down, and steps it left alone
  for (const auto& [kind, hyper] : optimizers.items()) {
    const std::string label = "optimizer " + std::string(kind) + " " + hyper.dump();  // no binding in INFO (clang 14)
    INFO(label);
    Run run = train(kind, 1, optim::DecayRule::matrices);
    const Achieved a = compare_with_golden(kind, run);
    MESSAGE(kind, ": loss ", run.losses.front(), " -> ", run.losses.back(), "; worst relative errors: loss ", a.loss,
            ", grad norm ", a.norm, ", ||delta|| ", a.delta, " (", a.delta_ratio, " of its tolerance), final values ",
            a.param, " of max |value|");
    CHECK(a.loss <= kLossRtol);
    CHECK(a.norm <= kNormRtol);
    CHECK_MESSAGE(a.delta_ratio <= 1.0, "worst ||delta|| ", a.worst_delta);
    CHECK(a.ok);
    // The steps moved the model well beyond the tolerances: a wrong step could not hide inside them.
    const std::vector<double> losses = golden().read_doubles(kind + "/loss");
    CHECK(rel(run.final_loss, losses.front()) > 1000 * kLossRtol);
    for (double n : run.grad_norms) (n > clip ? clipped : unclipped) += 1;
  }
  // Both sides of the clip were exercised.
  CHECK(clipped > 0);
  CHECK(unclipped > 0);
}

TEST_CASE("training golden: the padded head (500 -> 512, tally's default) follows the same trajectory") {
  // Padded rows of wte are alignment, not model: they get no gradient, and the optimizers keep no state for them and
  // never see them (Tensor::padding_rows), so CAME's and Adafactor's row means and the RMS of their clipped update are
  // those of HF's unpadded model. Every optimizer matches the same reference, and the state is the unpadded one.
  const nlohmann::json optimizers = nlohmann::json::parse(golden().metadata().at("optimizers"));
  for (const auto& entry : optimizers.items()) {
    const std::string kind = entry.key();
    INFO("optimizer ", kind);
    Run run = train(kind, 128, optim::DecayRule::matrices);
    REQUIRE(run.model->config().padded_vocab_size == 512);
    const Achieved a = compare_with_golden(kind, run);
    CHECK_MESSAGE(a.ok, "loss ", a.loss, " grad norm ", a.norm, " worst ||delta|| ", a.worst_delta, " final values ",
                  a.param);
    CHECK(max_abs(run.model->wte.weight().slice(0, 500, 512).to_vector<double>()) == 0.0);
    for (const optim::TensorState& ts : run.opt->state_bytes())
      if (ts.param == "transformer.wte.weight") {
        CHECK(ts.param_shape == Shape{500, run.model->config().n_embd});
        for (const optim::StateSpec& s : ts.states) CHECK(std::count(s.shape.begin(), s.shape.end(), 512) == 0);
      }
  }
}

TEST_CASE("training golden: weight decay on every tensor (not the reference's convention) is detected") {
  // The negative control for the tolerances above: AdamW decaying biases and LayerNorm gains too.
  Run run = train("adamw", 1, optim::DecayRule::all);
  const Achieved a = compare_with_golden("adamw", run);
  MESSAGE("adamw with DecayRule::all: worst ||delta|| ", a.worst_delta, " (", a.delta_ratio,
          " of its tolerance); final values ", a.param, " of max |value|");
  CHECK_FALSE(a.ok);
}

}  // TEST_SUITE
