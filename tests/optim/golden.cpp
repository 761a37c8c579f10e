// The golden test: replays tests/reference/optimizer_reference.safetensors (written by the real came-pytorch
// 0.1.3, torch.optim.AdamW, transformers' Adafactor and torch.optim.SGD) through tally's optimizers and compares
// the parameter and every state tensor after every step, plus the package's own pre-clip update RMS.
// Tolerance: |tally - reference| <= kAtolScale * max|reference tensor| + kRtol * |reference| per element.
#include <doctest/doctest.h>

#include <map>

#include "optim/registry.h"
#include "tests/optim/optim_test_util.h"

using namespace tally;
using namespace tally::test;

namespace {

constexpr double kRtol = 1e-6;
constexpr double kAtolScale = 1e-6;

struct Worst {
  double ratio = 0;
  std::string where;
};

// Runs one case over every shape; returns the worst comparison ratio seen (<= 1 passes).
Worst run_case(const std::string& name, const nlohmann::json& spec) {
  const io::SafetensorsReader& ref = optimizer_reference();
  const int steps = std::stoi(ref.metadata().at("steps"));
  Worst worst;
  int compared = 0;
  for (const std::string shape_name : {"vector", "square", "wide", "tall", "cube"}) {
    const io::SafetensorsEntry& init = ref.at("init/" + shape_name);
    const Shape shape(init.shape.begin(), init.shape.end());
    Tensor p = make_param("w", ref.read_floats(init.name), shape);
    auto opt = optim::make_optimizer(spec.at("kind").get<std::string>(), {p}, settings_from_json(spec.at("tally")));
    opt->set_inspect(optim::Inspect::summary);
    for (int k = 1; k <= steps; ++k) {
      const std::string prefix = name + "/" + shape_name + "/step" + std::to_string(k);
      p.set_grad(make_grad(ref.read_floats("grad/" + shape_name + "/step" + std::to_string(k)), shape));
      opt->step();
      // Every tensor the reference recorded at this step must exist here and match.
      for (const io::SafetensorsEntry& e : ref.tensors()) {
        if (e.name.rfind(prefix + "/", 0) != 0) continue;
        const std::string what = e.name.substr(prefix.size() + 1);
        if (what == "update_rms") {
          const double expect = ref.read_doubles(e.name)[0];
          const double got = opt->internals()[0].update_rms;
          const double ratio = std::fabs(got - expect) / (1e-6 * std::fabs(expect));
          if (ratio > worst.ratio) worst = {ratio, e.name};
          ++compared;
          continue;
        }
        Tensor mine = what == "param" ? p : opt->state("w", what);
        INFO(e.name);
        REQUIRE_MESSAGE(mine.defined(), "tally has no state '", what, "'");
        REQUIRE(mine.shape() == Shape(e.shape.begin(), e.shape.end()));
        const std::vector<float> expect = ref.read_floats(e.name);
        double scale = 0;
        for (float v : expect) scale = std::max(scale, double(std::fabs(v)));
        const Mismatch mm = compare(mine.to_vector<float>(), expect, kRtol, kAtolScale * scale);
        if (mm.worst_ratio > worst.ratio)
          worst = {mm.worst_ratio, cat(e.name, " [", mm.index, "] tally ", mm.a, " reference ", mm.b)};
        ++compared;
      }
      // And tally keeps no state the reference lacks.
      for (const optim::TensorState& ts : opt->state_bytes())
        for (const optim::StateSpec& st : ts.states) {
          INFO(prefix, "/", st.name);
          CHECK(ref.find(prefix + "/" + st.name) != nullptr);
        }
    }
  }
  CHECK(compared > 0);
  return worst;
}

}  // namespace

TEST_SUITE("optim") {

TEST_CASE("golden: every reference optimizer case, every step, parameter and every state tensor") {
  const nlohmann::json cases = nlohmann::json::parse(optimizer_reference().metadata().at("cases"));
  REQUIRE(cases.size() >= 10);
  std::map<std::string, int> kinds;
  for (const auto& [name, spec] : cases.items()) {
    ++kinds[spec.at("kind").get<std::string>()];
    const Worst w = run_case(name, spec);
    MESSAGE(name, ": worst error / tolerance = ", w.ratio, " at ", w.where);
    const std::string label = name;  // no structured binding inside CHECK_MESSAGE's lambda (clang 14)
    CHECK_MESSAGE(w.ratio <= 1.0, label, ": ", w.where, " (error/tolerance ", w.ratio, ")");
  }
  // Every registered optimizer has golden cases, more than one setting each; those with more settings to cover, more.
  for (const optim::OptimizerEntry& e : optim::optimizers()) {
    INFO("optimizer ", e.name);
    CHECK(kinds[e.name] >= 2);
  }
  CHECK(kinds["came"] >= 3);
  CHECK(kinds["adafactor"] >= 4);
  CHECK(kinds["sgd"] >= 3);
}

}  // TEST_SUITE
