// GPU against CPU for every optimizer kernel: the same parameters and gradients stepped on both devices must
// give the same parameters, state and internals (sums run in a different order: tolerance 1e-5 relative plus
// 1e-6 of each tensor's scale). Shapes cover the float4 path (rows % 4 == 0), the scalar path, batched matrices,
// a general (P, n, Q, m, S) factoring and a vector. Skipped, visibly, without a GPU.
#include <doctest/doctest.h>

#include <cstring>

#include "core/device.h"
#include "tests/optim/optim_test_util.h"

using namespace tally;
using namespace tally::test;

namespace {

constexpr int kSteps = 5;

struct Case {
  std::string name;
  std::function<std::unique_ptr<optim::Optimizer>(const std::vector<Tensor>&)> make;
  // Extra absolute tolerance on the parameters after the steps. A bf16 first moment is rounded to nearest, and the
  // devices' different summation orders (~1e-7 relative) move a few of its elements across a rounding midpoint:
  // one bf16 ulp (2^-8 relative) of m, which reaches the update (about lr x |u| x 2^-8 per step). Such a case
  // allows 2^-6 of lr per step; a wrong kernel is off by the order of lr itself.
  double param_atol = 0;
};

std::vector<Case> cases() {
  return {
      {"came", [](const std::vector<Tensor>& p) { return std::make_unique<Came>(p, CameConfig{.lr = 1e-2}); }},
      {"came wd, ones, bf16",
       [](const std::vector<Tensor>& p) {
         return std::make_unique<Came>(p, CameConfig{.lr = 1e-2, .weight_decay = 0.1, .exp_avg_dtype = DType::bf16,
                                                     .confidence_init = ConfidenceInit::ones});
       },
       kSteps * 1e-2 / 64},  // param_atol
      {"came two_largest_dims",
       [](const std::vector<Tensor>& p) {
         return std::make_unique<Came>(p, CameConfig{.lr = 1e-2, .factoring = optim::Factoring::two_largest_dims});
       }},
      {"adamw", [](const std::vector<Tensor>& p) { return std::make_unique<AdamW>(p, AdamWConfig{.lr = 1e-2}); }},
      {"adafactor", [](const std::vector<Tensor>& p) { return std::make_unique<Adafactor>(p, AdafactorConfig{.lr = 1e-2}); }},
      {"adafactor beta1 wd",
       [](const std::vector<Tensor>& p) {
         return std::make_unique<Adafactor>(p, AdafactorConfig{.lr = 1e-2, .beta1 = 0.9, .weight_decay = 0.1});
       }},
      {"sgd nesterov wd",
       [](const std::vector<Tensor>& p) {
         return std::make_unique<Sgd>(p, SgdConfig{.lr = 1e-2, .momentum = 0.9, .weight_decay = 0.01,
                                                   .nesterov = Nesterov::yes});
       }},
  };
}

// The CUDA tiles have 8 rows for the small matrices, 16 for {9000, 3} and 32 for {16400, 3} (make_plan); {1100, 36}
// has more row tiles than the column EMA has lanes and a column count not a multiple of 32.
const std::vector<Shape> kShapes = {{1000},        {300, 260}, {257, 131}, {4, 33, 65},
                                    {130, 2, 128}, {1100, 36}, {9000, 3},  {16400, 3}};

}  // namespace

TEST_SUITE("optim") {

// With inspection (statistics, the exact second moment) and without (CAME's small dense tensors are then launched
// together: came_dense_steps).
TEST_CASE("cuda: every optimizer on the GPU matches the CPU step for step" * doctest::skip(!tally::cuda_available())) {
  for (const optim::Inspect inspect : {optim::Inspect::factored_error, optim::Inspect::off})
  for (const Case& c : cases()) {
    std::vector<Tensor> cpu, gpu;
    for (size_t s = 0; s < kShapes.size(); ++s) {
      const std::vector<float> init = normal_values(numel(kShapes[s]), 10 + s);
      cpu.push_back(make_param(cat("p", s), init, kShapes[s]));
      gpu.push_back(make_param(cat("p", s), init, kShapes[s], Device::cuda()));
    }
    auto oc = c.make(cpu), og = c.make(gpu);
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
      INFO(c.name, " ", shape_str(kShapes[s]), inspect == optim::Inspect::off ? " (no inspection)" : "");
      auto check = [&](const Tensor& a, const Tensor& b, const std::string& what, double extra_atol) {
        const std::vector<float> va = a.to(DType::f32).to_vector<float>(), vb = b.to(DType::f32).to_vector<float>();
        double scale = 0;
        for (float x : va) scale = std::max(scale, double(std::fabs(x)));
        const double rtol = a.dtype() == DType::bf16 ? 1e-2 : 1e-5;
        const Mismatch mm = compare(vb, va, rtol, (a.dtype() == DType::bf16 ? 1e-2 : 1e-6) * scale + extra_atol);
        CHECK_MESSAGE(mm.ok(), what, ": gpu ", mm.a, " cpu ", mm.b, " at ", mm.index, " (ratio ", mm.worst_ratio, ")");
      };
      check(cpu[s], gpu[s], "param", c.param_atol);
      for (const TensorState& ts : oc->state_bytes())
        if (ts.param == cpu[s].name())
          for (const StateSpec& st : ts.states) check(oc->state(ts.param, st.name), og->state(ts.param, st.name), st.name, 0);
      if (inspect == optim::Inspect::off) continue;
      const optim::TensorInternals ic = oc->internals()[s], ig = og->internals()[s];
      CHECK(ig.update_rms == doctest::Approx(ic.update_rms).epsilon(1e-5));
      CHECK(ig.clipped == ic.clipped);
      CHECK(ig.applied_rms == doctest::Approx(ic.applied_rms).epsilon(1e-4));
      if (std::isfinite(ic.factored_rel_error))
        CHECK(ig.factored_rel_error == doctest::Approx(ic.factored_rel_error).epsilon(1e-4));
    }
  }
}

TEST_CASE("cuda: CAME steps many small dense tensors together as the CPU steps them one by one" *
          doctest::skip(!tally::cuda_available())) {
  // More tensors than one launch takes (kCameDenseBatchTasks), sizes from 1 to 3001 and one too large to batch;
  // two groups with different hyperparameters; f32 and bf16 first moments.
  for (const DType m_dtype : {DType::f32, DType::bf16}) {
    std::vector<Tensor> cpu[2], gpu[2];
    for (int i = 0; i < 2 * optim::kernels::kCameDenseBatchTasks + 7; ++i) {
      const int64_t n = i == 5 ? optim::kernels::kCameDenseBatchMax + 3 : 1 + (97 * int64_t(i)) % 3001;
      const std::vector<float> init = normal_values(n, 50 + uint64_t(i));
      cpu[i % 2].push_back(make_param(cat("v", i), init, {n}));
      gpu[i % 2].push_back(make_param(cat("v", i), init, {n}, Device::cuda()));
    }
    auto make = [&](std::vector<Tensor>* p) {
      return std::make_unique<Came>(std::vector<ParamGroup<CameConfig>>{
          {p[0], CameConfig{.lr = 1e-2, .weight_decay = 0.1, .exp_avg_dtype = m_dtype}},
          {p[1], CameConfig{.lr = 3e-3, .betas = {0.8, 0.99, 0.999}, .clip_threshold = 0.5,
                            .exp_avg_dtype = m_dtype}}});
    };
    auto oc = make(cpu), og = make(gpu);
    for (int k = 0; k < kSteps; ++k) {
      for (int grp = 0; grp < 2; ++grp)
        for (size_t s = 0; s < cpu[grp].size(); ++s) {
          const std::vector<float> g = normal_values(cpu[grp][s].numel(), 7000 + 100 * s + 10 * grp + uint64_t(k));
          cpu[grp][s].set_grad(make_grad(g, cpu[grp][s].shape()));
          gpu[grp][s].set_grad(make_grad(g, cpu[grp][s].shape(), Device::cuda()));
        }
      oc->step({.grad_scale = 0.5});
      og->step({.grad_scale = 0.5});
    }
    // A bf16 first moment may round differently after a summation-order difference (see Case::param_atol).
    const double param_atol = m_dtype == DType::bf16 ? kSteps * 1e-2 / 64 : 0.0;
    for (int grp = 0; grp < 2; ++grp)
      for (size_t s = 0; s < cpu[grp].size(); ++s) {
        INFO(cpu[grp][s].name(), " ", shape_str(cpu[grp][s].shape()), " exp_avg ", dtype_name(m_dtype));
        const Mismatch p =
            compare(gpu[grp][s].to_vector<float>(), cpu[grp][s].to_vector<float>(), 1e-5, 1e-6 + param_atol);
        CHECK_MESSAGE(p.ok(), "param: gpu ", p.a, " cpu ", p.b, " at ", p.index, " (ratio ", p.worst_ratio, ")");
        const std::string name = cpu[grp][s].name();
        const Mismatch v = compare(og->state(name, "exp_avg_sq").to_vector<float>(),
                                   oc->state(name, "exp_avg_sq").to_vector<float>(), 1e-5, 0);
        CHECK_MESSAGE(v.ok(), "exp_avg_sq: gpu ", v.a, " cpu ", v.b, " at ", v.index, " (ratio ", v.worst_ratio, ")");
      }
  }
}

// A bf16 parameter's step on CUDA (every optimizer but SM3) reads its gradient from bf16 and rounds its parameter in
// the kernels (FusedBf16): every tensor, CAME's small dense ones batched by came_dense_steps. The kernels' arithmetic
// is the same for an f32 parameter given the widened gradient (widening is exact), so the master must equal that
// parameter bit for bit, and the bf16 parameter must be round_to_bf16 of the master with the parameter's key and
// counter, bit for bit (integer arithmetic from there).
// Factored shapes: float4 rows, odd rows (Philox blocks spanning rows), batched matrices, and a general
// (P, n, Q, m, S) layout under two_largest_dims.
TEST_CASE("cuda: bf16 optimizer steps fuse the gradient widening and the rounding, bit for bit" *
          doctest::skip(!tally::cuda_available())) {
  using Make = std::function<std::unique_ptr<optim::Optimizer>(const std::vector<Tensor>&)>;
  const std::vector<std::pair<std::string, Make>> makers = {
      {"came", [](const std::vector<Tensor>& p) { return std::make_unique<Came>(p, CameConfig{.lr = 1e-2}); }},
      {"came bf16 exp_avg, wd",
       [](const std::vector<Tensor>& p) {
         return std::make_unique<Came>(p, CameConfig{.lr = 1e-2, .weight_decay = 0.1, .exp_avg_dtype = DType::bf16});
       }},
      {"came two_largest_dims",
       [](const std::vector<Tensor>& p) {
         return std::make_unique<Came>(p, CameConfig{.lr = 1e-2, .factoring = optim::Factoring::two_largest_dims});
       }},
      {"adafactor",
       [](const std::vector<Tensor>& p) { return std::make_unique<Adafactor>(p, AdafactorConfig{.lr = 1e-2}); }},
      {"adafactor beta1, wd",
       [](const std::vector<Tensor>& p) {
         return std::make_unique<Adafactor>(p, AdafactorConfig{.lr = 1e-2, .beta1 = 0.9, .weight_decay = 0.1});
       }},
      {"adamw wd",
       [](const std::vector<Tensor>& p) {
         return std::make_unique<AdamW>(p, AdamWConfig{.lr = 1e-2, .weight_decay = 0.1});
       }},
      {"sgd nesterov, wd",
       [](const std::vector<Tensor>& p) {
         return std::make_unique<Sgd>(
             p, SgdConfig{.lr = 1e-2, .momentum = 0.9, .weight_decay = 0.1, .nesterov = optim::Nesterov::yes});
       }},
      {"lamb", [](const std::vector<Tensor>& p) { return std::make_unique<Lamb>(p, LambConfig{.lr = 1e-2}); }},
  };
  for (const auto& maker : makers) {
    INFO(maker.first);
    // A dense tensor too large to be batched (CAME steps it alone), then small ones.
    std::vector<Shape> shapes = {{300, 260}, {257, 131}, {4, 33, 65}, {130, 2, 128}, {70001}};
    for (int i = 0; i < optim::kernels::kCameDenseBatchTasks + 5; ++i)  // two batch launches; sizes 1 .. 3001
      shapes.push_back({1 + (97 * int64_t(i)) % 3001});
    std::vector<Tensor> pb, pf;  // bf16 parameters, and f32 ones holding the same values
    for (size_t i = 0; i < shapes.size(); ++i) {
      const int64_t n = numel(shapes[i]);
      Tensor b = from_vector(normal_values(n, 300 + i), shapes[i], {.device = Device::cuda()}).to(DType::bf16);
      b.set_requires_grad(true);
      b.set_name(cat("p", i));
      pb.push_back(b);
      pf.push_back(make_param(cat("p", i), b.to(DType::f32).to_vector<float>(), shapes[i], Device::cuda()));
    }
    const std::unique_ptr<optim::Optimizer> ob = maker.second(pb), of = maker.second(pf);
    ob->init_state();
    of->init_state();
    // Fused, the bf16 steps need no f32 buffer to widen gradients into: the same workspace as the f32 steps.
    CHECK(ob->workspace_bytes() == of->workspace_bytes());
    for (int k = 1; k <= 3; ++k) {
      for (size_t i = 0; i < pb.size(); ++i) {
        const Tensor g = from_vector(normal_values(numel(shapes[i]), 900 + 10 * i + uint64_t(k), k == 2 ? 20.0 : 1.0),
                                     shapes[i], {.device = Device::cuda()}).to(DType::bf16);
        pb[i].set_grad(g.clone());
        pf[i].set_grad(g.to(DType::f32));
      }
      ob->step({.grad_scale = 0.5});
      of->step({.grad_scale = 0.5});
      for (size_t i = 0; i < pb.size(); ++i) {
        const int64_t n = pb[i].numel();
        INFO(pb[i].name(), " ", shape_str(shapes[i]), " step ", k);
        const std::vector<float> master = ob->state(pb[i].name(), "master").to_vector<float>();
        const std::vector<float> f32 = pf[i].to_vector<float>();
        CHECK(std::memcmp(master.data(), f32.data(), size_t(n) * 4) == 0);
        std::vector<bf16> want(static_cast<size_t>(n));
        optim::kernels::cpu::round_to_bf16(master.data(), want.data(), n,
                                           optim::bf16_rounding_key(ob->rounding_seed(), pb[i].name()),
                                           uint64_t(k) * optim::kernels::round_to_bf16_blocks(n));
        const Tensor got = pb[i].to(Device::cpu());
        CHECK(std::memcmp(got.data<bf16>(), want.data(), size_t(n) * 2) == 0);
      }
    }
  }
}

TEST_CASE("cuda: gradient norm and clipping match the CPU" * doctest::skip(!tally::cuda_available())) {
  Tensor a = make_param("n.a", normal_values(100000, 1), {1000, 100});
  Tensor b = make_param("n.a", normal_values(100000, 1), {1000, 100}, Device::cuda());
  const std::vector<float> g = normal_values(100000, 2, 3.0);
  a.set_grad(make_grad(g, {1000, 100}));
  b.set_grad(make_grad(g, {1000, 100}, Device::cuda()));
  const double na = optim::clip_grad_norm({a}, 1.0), nb = optim::clip_grad_norm({b}, 1.0);
  CHECK(nb == doctest::Approx(na).epsilon(1e-12));
  CHECK(compare(b.grad().to_vector<float>(), a.grad().to_vector<float>(), 0, 0).ok());
}

}  // TEST_SUITE
