// SM3 and LAMB on the GPU against the CPU, step for step, in more settings and shapes than tests/optim/cuda.cpp
// gives every optimizer: the same parameters and gradients on both devices give the same parameters, state and
// internals (sums run in another order: 1e-5 relative plus 1e-6 of each tensor's scale; SM3's maxima are exact).
// Shapes cover a scalar, vectors, matrices with one and several column tiles, rows in several row tiles, 3-D and 4-D
// tensors (accumulators of middle dims), and a tensor larger than one grid of tiles. Skipped, visibly, without a GPU.
#include <doctest/doctest.h>

#include "core/device.h"
#include "tests/optim/optim_test_util.h"

using namespace tally;
using namespace tally::test;

namespace {

constexpr int kSteps = 5;

// {33000, 1}: one column in 1032 row tiles, more than the tile kernel's grid (1024 blocks) takes at once.
const std::vector<Shape> kShapes = {{},           {1000},     {300, 260}, {257, 131},  {4, 33, 65},
                                    {3, 4, 5, 6}, {1100, 36}, {9000, 3},  {160, 1030}, {33000, 1}};

struct Case {
  std::string optimizer;
  optim::Settings settings;
};

}  // namespace

TEST_SUITE("optim") {

TEST_CASE("cuda: SM3 and LAMB on the GPU match the CPU step for step" * doctest::skip(!tally::cuda_available())) {
  const std::vector<Case> cases = {
      {"sm3", {{"lr", 1e-2}}},
      {"sm3", {{"lr", 1e-2}, {"momentum", 0.9}, {"beta", 0.9}, {"weight-decay", 0.1}}},
      {"sm3", {{"lr", 1e-2}, {"momentum", 0.3}, {"beta", 0.5}, {"eps", 1e-8}}},
      {"lamb", {{"lr", 1e-2}}},
      {"lamb", {{"lr", 1e-2}, {"weight-decay", 0.1}, {"lamb-clamp", 2.0}}},
      {"lamb", {{"lr", 1e-2}, {"weight-decay", 0.05}, {"lamb-decay-in-update", true}, {"lamb-no-bias-correction", true}}},
  };
  for (const optim::Inspect inspect : {optim::Inspect::summary, optim::Inspect::off})
    for (const Case& c : cases) {
      std::vector<Tensor> cpu, gpu;
      for (size_t s = 0; s < kShapes.size(); ++s) {
        const std::vector<float> init = normal_values(numel(kShapes[s]), 10 + s);
        cpu.push_back(make_param(cat("p", s), init, kShapes[s]));
        gpu.push_back(make_param(cat("p", s), init, kShapes[s], Device::cuda()));
      }
      optim::Settings all = c.settings;
      all.set("decay", "all");
      auto oc = optim::make_optimizer(c.optimizer, cpu, all), og = optim::make_optimizer(c.optimizer, gpu, all);
      oc->set_inspect(inspect);
      og->set_inspect(inspect);
      for (int k = 0; k < kSteps; ++k) {
        for (size_t s = 0; s < kShapes.size(); ++s) {
          const std::vector<float> g = normal_values(numel(kShapes[s]), 1000 * (s + 1) + uint64_t(k), k == 3 ? 20.0 : 1.0);
          cpu[s].set_grad(make_grad(g, kShapes[s]));
          gpu[s].set_grad(make_grad(g, kShapes[s], Device::cuda()));
        }
        oc->step({.grad_scale = 0.5});
        og->step({.grad_scale = 0.5});
      }
      for (size_t s = 0; s < kShapes.size(); ++s) {
        INFO(c.optimizer, " ", nlohmann::json(c.settings.values()).dump(), " ", shape_str(kShapes[s]),
             inspect == optim::Inspect::off ? " (no inspection)" : "");
        auto check = [&](const Tensor& a, const Tensor& b, const std::string& what) {
          const std::vector<float> va = a.to_vector<float>(), vb = b.to_vector<float>();
          double scale = 0;
          for (float x : va) scale = std::max(scale, double(std::fabs(x)));
          const Mismatch mm = compare(vb, va, 1e-5, 1e-6 * scale);
          CHECK_MESSAGE(mm.ok(), what, ": gpu ", mm.a, " cpu ", mm.b, " at ", mm.index, " (ratio ", mm.worst_ratio, ")");
        };
        check(cpu[s], gpu[s], "param");
        for (const TensorState& ts : oc->state_bytes())
          if (ts.param == cpu[s].name())
            for (const StateSpec& st : ts.states) check(oc->state(ts.param, st.name), og->state(ts.param, st.name), st.name);
        if (inspect == optim::Inspect::off) continue;
        const optim::TensorInternals ic = oc->internals()[s], ig = og->internals()[s];
        CHECK(ig.update_rms == doctest::Approx(ic.update_rms).epsilon(1e-5).scale(0));
        CHECK(ig.clipped_update_rms == doctest::Approx(ic.clipped_update_rms).epsilon(1e-5).scale(0));
        CHECK(ig.applied_rms == doctest::Approx(ic.applied_rms).epsilon(1e-4).scale(0));
      }
      // The step workspace is the CUDA kernels' own figure, held once for the largest tensor.
      CHECK(og->workspace_bytes() > 0);
    }
}

}  // TEST_SUITE
