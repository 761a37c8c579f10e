// GPU against CPU for every optimizer kernel: the same parameters and gradients stepped on both devices must
// give the same parameters, state and internals (sums run in a different order: tolerance 1e-5 relative plus
// 1e-6 of each tensor's scale). Shapes cover the float4 path (rows % 4 == 0), the scalar path, batched matrices,
// a general (P, n, Q, m, S) factoring and a vector. Skipped, visibly, without a GPU.
#include <doctest/doctest.h>

#include <cstring>
#include <optional>

#include "core/device.h"
#include "core/kernels/dispatch.h"
#include "optim/kernels/cuda_workspace.h"
#include "tests/optim/optim_test_util.h"

using namespace tally;
using namespace tally::test;

namespace {

constexpr int kSteps = 5;

struct Case {
  OptimizerCase optimizer;
  // Extra absolute tolerance on the parameters after the steps. A bf16 first moment is rounded to nearest, and the
  // devices' different summation orders (~1e-7 relative) move a few of its elements across a rounding midpoint:
  // one bf16 ulp (2^-8 relative) of m, which reaches the update (about lr x |u| x 2^-8 per step). Such a case
  // allows 2^-6 of lr per step; a wrong kernel is off by the order of lr itself.
  double param_atol = 0;
  std::unique_ptr<optim::Optimizer> make(const std::vector<Tensor>& params) const {
    return optim::make_optimizer(optimizer.name, params, optimizer.settings);
  }
};

// Every registered optimizer at its defaults (a new one is tested by its registration), then variants whose kernel
// paths the defaults leave off (tests/cuda/test_cuda_sm3_lamb.cpp has SM3's and LAMB's, over more shapes).
std::vector<Case> cases() {
  std::vector<Case> out;
  for (const optim::OptimizerEntry& e : optim::optimizers()) out.push_back({{e.name, {{"lr", 1e-2}}}});
  out.push_back(
      {{"came",
        {{"lr", 1e-2}, {"weight-decay", 0.1}, {"decay", "all"}, {"came-confidence-ones", true}, {"came-bf16-m", true}}},
       kSteps * 1e-2 / 64});
  out.push_back({{"came", {{"lr", 1e-2}, {"came-factor-largest", true}}}});
  out.push_back({{"adafactor", {{"lr", 1e-2}, {"no-adafactor-beta1", true}}}});
  out.push_back({{"adafactor", {{"lr", 1e-2}, {"weight-decay", 0.1}, {"decay", "all"}}}});
  out.push_back({{"sgd", {{"lr", 1e-2}, {"weight-decay", 0.01}, {"nesterov", true}}}});
  return out;
}

// The CUDA tiles have 8 rows for the small matrices, 16 for {9000, 3} and 32 for {16400, 3} (make_plan); {1100, 36}
// has more row tiles than the column EMA has lanes and a column count not a multiple of 32.
const std::vector<Shape> kShapes = {{1000},        {300, 260}, {257, 131}, {4, 33, 65},
                                    {130, 2, 128}, {1100, 36}, {9000, 3},  {16400, 3}};

}  // namespace

TEST_SUITE("optim") {

// With inspection (statistics, the exact second moment) and without (CAME's and Adafactor's tensors are then launched
// in batches: *_dense_steps, *_factored_steps).
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
      INFO(cat(c.optimizer.label(), " ", shape_str(kShapes[s]),
               inspect == optim::Inspect::off ? " (no inspection)" : ""));
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
      CHECK(ig.applied_rms == doctest::Approx(ic.applied_rms).epsilon(1e-4).scale(0));
      if (std::isfinite(ic.factored_rel_error))
        CHECK(ig.factored_rel_error == doctest::Approx(ic.factored_rel_error).epsilon(1e-4));
    }
  }
}

// CAME's and Adafactor's small dense tensors on CUDA are stepped a block each, many per launch (came_dense_steps,
// adafactor_dense_steps), one block's sum giving the clip where a tensor's own step sums over a grid: against the CPU.
TEST_CASE("cuda: CAME and Adafactor step many small dense tensors together as the CPU steps them one by one" *
          doctest::skip(!tally::cuda_available())) {
  using Groups = std::vector<Tensor>*;
  struct Maker {
    std::string name;
    std::function<std::unique_ptr<optim::Optimizer>(Groups)> make;
    double param_atol;  // a bf16 first moment may round differently after a summation-order difference (Case)
  };
  const std::vector<Maker> makers = {
      {"came",
       [](Groups p) {
         return std::make_unique<Came>(std::vector<ParamGroup<CameConfig>>{
             {p[0], CameConfig{.lr = 1e-2, .weight_decay = 0.1}},
             {p[1], CameConfig{.lr = 3e-3, .betas = {0.8, 0.99, 0.999}, .clip_threshold = 0.5}}});
       },
       0.0},
      {"came bf16 exp_avg",
       [](Groups p) {
         return std::make_unique<Came>(std::vector<ParamGroup<CameConfig>>{
             {p[0], CameConfig{.lr = 1e-2, .weight_decay = 0.1, .exp_avg_dtype = DType::bf16}},
             {p[1], CameConfig{.lr = 3e-3, .betas = {0.8, 0.99, 0.999}, .clip_threshold = 0.5,
                               .exp_avg_dtype = DType::bf16}}});
       },
       kSteps * 1e-2 / 64},
      {"adafactor",
       [](Groups p) {
         return std::make_unique<Adafactor>(std::vector<ParamGroup<AdafactorConfig>>{
             {p[0], AdafactorConfig{.lr = 1e-2, .weight_decay = 0.1}},
             {p[1], AdafactorConfig{.lr = 3e-3, .clip_threshold = 0.5, .beta1 = 0.9}}});
       },
       0.0},
  };
  // More tensors than one launch takes (kCameDenseBatchTasks, kAdafactorDenseBatchTasks), sizes from 1 to 3001 and
  // one too large to batch; two groups with different hyperparameters.
  REQUIRE(2 * optim::kernels::kCameDenseBatchTasks + 7 > 2 * optim::kernels::kAdafactorDenseBatchTasks);
  for (const Maker& maker : makers) {
    std::vector<Tensor> cpu[2], gpu[2];
    for (int i = 0; i < 2 * optim::kernels::kCameDenseBatchTasks + 7; ++i) {
      const int64_t n = i == 5 ? optim::kernels::kDenseBatchMax + 3 : 1 + (97 * int64_t(i)) % 3001;
      const std::vector<float> init = normal_values(n, 50 + uint64_t(i));
      cpu[i % 2].push_back(make_param(cat("v", i), init, {n}));
      gpu[i % 2].push_back(make_param(cat("v", i), init, {n}, Device::cuda()));
    }
    auto oc = maker.make(cpu), og = maker.make(gpu);
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
    for (int grp = 0; grp < 2; ++grp)
      for (size_t s = 0; s < cpu[grp].size(); ++s) {
        INFO(cat(maker.name, ": ", cpu[grp][s].name(), " ", shape_str(cpu[grp][s].shape())));
        const Mismatch p =
            compare(gpu[grp][s].to_vector<float>(), cpu[grp][s].to_vector<float>(), 1e-5, 1e-6 + maker.param_atol);
        CHECK_MESSAGE(p.ok(), "param: gpu ", p.a, " cpu ", p.b, " at ", p.index, " (ratio ", p.worst_ratio, ")");
        const std::string name = cpu[grp][s].name();
        const Mismatch v = compare(og->state(name, "exp_avg_sq").to_vector<float>(),
                                   oc->state(name, "exp_avg_sq").to_vector<float>(), 1e-5, 0);
        CHECK_MESSAGE(v.ok(), "exp_avg_sq: gpu ", v.a, " cpu ", v.b, " at ", v.index, " (ratio ", v.worst_ratio, ")");
      }
  }
}

// A bf16 parameter's step on CUDA (every optimizer) reads its gradient from bf16 and rounds its parameter in
// the kernels (FusedBf16): every tensor, CAME's and Adafactor's in batches (*_dense_steps, *_factored_steps). The
// kernels' arithmetic is the same for an f32 parameter given the widened gradient (widening is exact), so the master
// must equal that parameter bit for bit, and the bf16 parameter must be round_to_bf16 of the master with the
// parameter's key and counter, bit for bit (integer arithmetic from there).
// Factored shapes: float4 rows, odd rows (Philox blocks spanning rows), batched matrices, and a general
// (P, n, Q, m, S) layout under two_largest_dims.
TEST_CASE("cuda: bf16 optimizer steps fuse the gradient widening and the rounding, bit for bit" *
          doctest::skip(!tally::cuda_available())) {
  // Every registered optimizer whose kernels fuse bf16 (all today), with weight decay; then variants of other paths.
  std::vector<OptimizerCase> makers;
  for (const optim::OptimizerEntry& e : optim::optimizers())
    if (e.fused_bf16) makers.push_back({e.name, {{"lr", 1e-2}, {"weight-decay", 0.1}}});
  for (const OptimizerCase& c :
       std::vector<OptimizerCase>{{"came", {{"lr", 1e-2}, {"came-bf16-m", true}}},
                                  {"came", {{"lr", 1e-2}, {"came-factor-largest", true}}},
                                  {"adafactor", {{"lr", 1e-2}, {"no-adafactor-beta1", true}}},
                                  {"sgd", {{"lr", 1e-2}, {"weight-decay", 0.1}, {"nesterov", true}}},
                                  {"sm3", {{"lr", 1e-2}, {"momentum", 0.9}, {"beta", 0.5}, {"weight-decay", 0.1}}}})
    makers.push_back(c);
  for (const OptimizerCase& maker : makers) {
    INFO(maker.label());
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
    const std::unique_ptr<optim::Optimizer> ob = optim::make_optimizer(maker.name, pb, maker.settings),
                                            of = optim::make_optimizer(maker.name, pf, maker.settings);
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

}  // TEST_SUITE

namespace tally::optim {
namespace {

// A factored tensor of a batched-against-one-by-one test: its layout, its first moment (CAME's dtype; none for an
// Adafactor without beta1), a fused bf16 parameter or not, statistics or not.
struct BatchItem {
  kernels::FactoredLayout l;
  std::optional<DType> m;
  bool fused = false, stats = false;
};

// A factored tensor's buffers on the GPU, from fixed seeds (two calls give the same values). res_row/res_col: CAME's.
struct FactoredBuffers {
  Tensor param, m, sq_row, sq_col, res_row, res_col, bf16_param, stats;
};
FactoredBuffers factored_buffers(const BatchItem& it, uint64_t seed) {
  const kernels::FactoredLayout& l = it.l;
  const TensorOptions cuda{.device = Device::cuda()};
  FactoredBuffers b;
  b.param = from_vector(normal_values(l.numel(), seed), {l.numel()}, cuda);
  if (it.m) b.m = zeros({l.numel()}, {.dtype = *it.m, .device = Device::cuda()});
  b.sq_row = zeros({l.rows()}, cuda);
  b.sq_col = zeros({l.cols()}, cuda);
  b.res_row = full({l.rows()}, 1.0, cuda);
  b.res_col = full({l.cols()}, 1.0, cuda);
  if (it.fused) b.bf16_param = b.param.to(DType::bf16);
  if (it.stats) b.stats = zeros({kernels::kStatCount}, {.dtype = DType::f64, .device = Device::cuda()});
  return b;
}

// Plain (P, n, m) layouts, small for the CUDA emulator: 16- and 8-row tiles (make_plan; tiles of 16 or 32 rows mean
// more than 512 blocks, costly there: one such tensor), two column tiles, batched matrices, float4 rows and not, tiny
// ones.
const std::vector<kernels::FactoredLayout> kPlainLayouts = {
    {1, 8200, 1, 2, 1}, {1, 3, 1, 40, 1}, {1, 7, 1, 260, 1},  {4, 9, 1, 13, 1},  {1, 16, 1, 16, 1}, {3, 5, 1, 7, 1},
    {1, 64, 1, 8, 1},   {1, 2, 1, 2, 1},  {2, 20, 1, 12, 1}, {1, 33, 1, 65, 1}, {1, 40, 1, 36, 1}, {1, 1, 1, 5, 1}};

// Steps every item twice (the second step's gradients are clipped) tensor by tensor (one(args)) and in one batched
// call (batched(all args, workspace, bytes)) from the same values, and checks every output equal bit for bit: each
// tensor must be stepped by the same blocks, sums and orders. args(item, buffers, gradient, workspace, seed, step)
// gives a step's kernel arguments. Twice: with a workspace that holds little more than the largest tensor's (batches
// cut by bytes) and with one that holds them all (batches cut by the tensors a launch takes).
template <class Args, class MakeArgs, class One, class Batched>
void check_batched_as_one_by_one(const std::vector<BatchItem>& items, MakeArgs args, One one, Batched batched) {
  int64_t largest = 0, all = 0;
  for (const BatchItem& it : items) {
    const int64_t b = kernels::cuda_factored_workspace_bytes(it.l);
    largest = std::max(largest, b);
    all += b;
  }
  for (const int64_t budget : {largest + 4096, all}) {
    INFO("workspace ", budget, " bytes (largest step's ", largest, ", all ", all, ")");
    std::vector<FactoredBuffers> ones, batches;
    for (size_t i = 0; i < items.size(); ++i) {
      ones.push_back(factored_buffers(items[i], 40 + i));
      batches.push_back(factored_buffers(items[i], 40 + i));
    }
    Tensor ws_one = empty({largest}, {.dtype = DType::u8, .device = Device::cuda()});
    Tensor ws_batched = empty({budget}, {.dtype = DType::u8, .device = Device::cuda()});
    for (int k = 1; k <= 2; ++k) {
      std::vector<Args> args_one, args_batched;
      std::vector<Tensor> grads;  // read by both
      for (size_t i = 0; i < items.size(); ++i) {
        const int64_t n = items[i].l.numel();
        Tensor g = from_vector(normal_values(n, 500 + 10 * i + uint64_t(k), k == 2 ? 20.0 : 1.0), {n},
                               {.device = Device::cuda()});
        if (items[i].fused) g = g.to(DType::bf16);
        grads.push_back(g);
        args_one.push_back(args(items[i], ones[i], g, ws_one.data_ptr(), 7 + i, k));
        args_batched.push_back(args(items[i], batches[i], g, nullptr, 7 + i, k));  // not read: the shared workspace is
      }
      for (const Args& a : args_one) one(a);
      batched(args_batched, ws_batched.data_ptr(), budget);
      for (size_t i = 0; i < items.size(); ++i) {
        const BatchItem& it = items[i];
        // (doctest prints a const char* as a pointer: the words go through one std::string)
        INFO(cat("tensor ", i, " (P, n, Q, m, S) = (", it.l.P, ", ", it.l.n, ", ", it.l.Q, ", ", it.l.m, ", ", it.l.S,
                 "), exp_avg ", it.m ? dtype_name(*it.m) : "none", it.fused ? ", fused bf16" : "",
                 it.stats ? ", statistics" : "", ", step ", k));
        const FactoredBuffers& a = ones[i];
        const FactoredBuffers& b = batches[i];
        const std::vector<std::pair<const char*, std::pair<Tensor, Tensor>>> outputs = {
            {"param", {a.param, b.param}},       {"exp_avg", {a.m, b.m}},
            {"exp_avg_sq_row", {a.sq_row, b.sq_row}}, {"exp_avg_sq_col", {a.sq_col, b.sq_col}},
            {"exp_avg_res_row", {a.res_row, b.res_row}}, {"exp_avg_res_col", {a.res_col, b.res_col}},
            {"bf16 param", {a.bf16_param, b.bf16_param}}, {"stats", {a.stats, b.stats}}};
        for (const auto& output : outputs) {  // (no structured binding: clang cannot capture one in CHECK_MESSAGE)
          if (!output.second.first.defined()) continue;
          const Tensor x = output.second.first.to(Device::cpu()), y = output.second.second.to(Device::cpu());
          CHECK_MESSAGE(std::memcmp(x.data_ptr(), y.data_ptr(), size_t(x.nbytes())) == 0, std::string(output.first));
        }
      }
    }
  }
}

// A fused step's bf16 gradient and parameter, and the rounding's key and counter for step k.
kernels::FusedBf16 fused_output(const Tensor& g, const FactoredBuffers& b, uint64_t seed, int k) {
  return {.grad = g.data<bf16>(),
          .param = b.bf16_param.data<bf16>(),
          .seed = seed,
          .offset = uint64_t(k) * kernels::round_to_bf16_blocks(g.numel())};
}

// The CUDA kernels called directly (kernels:: is optim's here).
void came_one(const kernels::CameFactoredArgs& a) { TALLY_KERNEL(Device::cuda(), came_factored_step, a); }
void came_batched(const std::vector<kernels::CameFactoredArgs>& steps, void* workspace, int64_t bytes) {
  TALLY_KERNEL(Device::cuda(), came_factored_steps, steps.data(), int64_t(steps.size()), workspace, bytes);
}
void adafactor_one(const kernels::AdafactorFactoredArgs& a) {
  TALLY_KERNEL(Device::cuda(), adafactor_factored_step, a);
}
void adafactor_batched(const std::vector<kernels::AdafactorFactoredArgs>& steps, void* workspace, int64_t bytes) {
  TALLY_KERNEL(Device::cuda(), adafactor_factored_steps, steps.data(), int64_t(steps.size()), workspace, bytes);
}

}  // namespace
}  // namespace tally::optim

TEST_SUITE("optim") {

// came_factored_steps (CAME's factored tensors on CUDA, launched in batches) against came_factored_step tensor by
// tensor. More tensors of one kind than a batch takes; the four kinds of batch (first moment f32 or bf16, gradient
// f32 or bf16 with the parameter's rounding fused) mixed in one call; steps no batch takes (a general layout,
// statistics) run alone within the same call.
TEST_CASE("cuda: CAME steps factored tensors in batches exactly as one by one" *
          doctest::skip(!tally::cuda_available())) {
  using optim::BatchItem;
  const auto& plain = optim::kPlainLayouts;
  std::vector<BatchItem> items;
  for (const auto& l : plain) items.push_back({l, DType::f32});  // 12 > kCameFactoredBatchTasks
  for (int i = 1; i < 5; ++i) items.push_back({plain[size_t(i)], DType::bf16});
  for (int i = 4; i < 9; ++i) items.push_back({plain[size_t(i)], DType::f32, true});
  for (int i : {9, 10, 11, 2}) items.push_back({plain[size_t(i)], DType::bf16, true});
  items.push_back({{2, 6, 3, 10, 2}, DType::f32});                  // general layout: alone
  items.push_back({{1, 40, 1, 36, 1}, DType::bf16, false, true});  // statistics: alone
  REQUIRE(std::count_if(items.begin(), items.end(), [](const BatchItem& it) {
            return it.m == DType::f32 && !it.fused;
          }) > optim::kernels::kCameFactoredBatchTasks);
  using Args = optim::kernels::CameFactoredArgs;
  optim::check_batched_as_one_by_one<Args>(
      items,
      [](const BatchItem& it, optim::FactoredBuffers& b, const Tensor& g, void* ws, uint64_t seed, int k) {
        Args a{
            .layout = it.l,
            .param = b.param.data<float>(),
            .grad = it.fused ? nullptr : g.data<float>(),
            .exp_avg = b.m.data_ptr(),
            .exp_avg_dtype = *it.m,
            .exp_avg_sq_row = b.sq_row.data<float>(),
            .exp_avg_sq_col = b.sq_col.data<float>(),
            .exp_avg_res_row = b.res_row.data<float>(),
            .exp_avg_res_col = b.res_col.data<float>(),
            .lr = 1e-2,
            .beta1 = 0.9,
            .beta2 = 0.999,
            .beta3 = 0.9999,
            .eps1 = 1e-30,
            .eps2 = 1e-16,
            .clip_threshold = 1.0,
            .weight_decay = seed % 3 == 0 ? 0.1 : 0.0,
            .grad_scale = 0.5,
            .workspace = ws,
            .stats = it.stats ? b.stats.data<double>() : nullptr,
        };
        if (it.fused) a.bf16_param = optim::fused_output(g, b, seed, k);
        return a;
      },
      optim::came_one, optim::came_batched);
}

// adafactor_factored_steps against adafactor_factored_step tensor by tensor, as CAME's: more tensors of one kind than
// a batch takes, with and without a first moment (beta1) and weight decay; the two kinds of batch (gradient f32, or
// bf16 with the rounding fused) mixed in one call; a general layout and a step with statistics run alone.
TEST_CASE("cuda: Adafactor steps factored tensors in batches exactly as one by one" *
          doctest::skip(!tally::cuda_available())) {
  using optim::BatchItem;
  const auto& plain = optim::kPlainLayouts;
  std::vector<BatchItem> items;
  for (size_t i = 0; i < plain.size(); ++i)  // 12 f32 steps, 6 with a first moment
    items.push_back({plain[i], i % 2 ? std::optional<DType>(DType::f32) : std::nullopt});
  items.push_back({plain[3], DType::f32});  // 13 > kAdafactorFactoredBatchTasks
  for (int i = 2; i < 9; ++i)
    items.push_back({plain[size_t(i)], i % 3 ? std::optional<DType>(DType::f32) : std::nullopt, true});
  items.push_back({{2, 6, 3, 10, 2}, DType::f32});                 // general layout: alone
  items.push_back({{1, 40, 1, 36, 1}, DType::f32, false, true});  // statistics: alone
  REQUIRE(std::count_if(items.begin(), items.end(), [](const BatchItem& it) { return !it.fused; }) - 2 >
          optim::kernels::kAdafactorFactoredBatchTasks);
  using Args = optim::kernels::AdafactorFactoredArgs;
  optim::check_batched_as_one_by_one<Args>(
      items,
      [](const BatchItem& it, optim::FactoredBuffers& b, const Tensor& g, void* ws, uint64_t seed, int k) {
        Args a{
            .layout = it.l,
            .param = b.param.data<float>(),
            .grad = it.fused ? nullptr : g.data<float>(),
            .exp_avg = it.m ? b.m.data<float>() : nullptr,
            .exp_avg_sq_row = b.sq_row.data<float>(),
            .exp_avg_sq_col = b.sq_col.data<float>(),
            .lr = 1e-2,
            .beta1 = it.m ? 0.9 : 0.0,
            .beta2t = 1.0 - std::pow(double(k), -0.8),
            .eps1 = 1e-30,
            .clip_threshold = 1.0,
            .weight_decay = seed % 3 == 0 ? 0.1 : 0.0,
            .grad_scale = 0.5,
            .workspace = ws,
            .stats = it.stats ? b.stats.data<double>() : nullptr,
        };
        if (it.fused) a.bf16_param = optim::fused_output(g, b, seed, k);
        return a;
      },
      optim::adafactor_one, optim::adafactor_batched);
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
