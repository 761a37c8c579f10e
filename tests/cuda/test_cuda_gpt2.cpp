// A whole GPT-2 training step on the GPU against the same step on the CPU: identical weights and batch, then the
// logits, the loss, every parameter gradient, and the parameters after one CAME and one AdamW step. Also the
// GPU step's memory equals the plan made for CUDA on the meta device, and a training step's host waits are counted. Skipped, visibly,
// without a GPU.
#include <doctest/doctest.h>

#include <cmath>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "core/ops.h"
#include "models/gpt2.h"
#include "optim/clip.h"
#include "optim/registry.h"
#include "train/memory_plan.h"
#include "train/setup.h"
#include "train/step.h"

#ifdef TALLY_HAS_CUDA
#include "core/cuda/runtime.h"
#endif

using namespace tally;

namespace {

[[maybe_unused]] double rel_err(const Tensor& got, const Tensor& want) {
  std::vector<double> a = got.to_vector<double>(), b = want.to_vector<double>();
  REQUIRE(a.size() == b.size());
  double err = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    REQUIRE(std::isfinite(a[i]));
    REQUIRE(std::isfinite(b[i]));  // a non-finite reference would drop out of the max below
    err = std::max(err, std::fabs(a[i] - b[i]));
    ref = std::max(ref, std::fabs(b[i]));
  }
  return err / std::max(ref, 1e-30);
}

struct Pair {
  std::unique_ptr<models::GPT2> cpu, gpu;
};

// The CPU model's loss runs the head whole, the GPU model's in chunks of `gpu_loss_chunk_rows` rows (0: whole).
[[maybe_unused]] Pair make_pair(const models::GPT2Config& c, DType dtype, int64_t gpu_loss_chunk_rows = 0) {
  Pair p;
  p.cpu = std::make_unique<models::GPT2>(c, models::GPT2Options{.dtype = dtype, .seed = 5, .loss_chunk_rows = 0});
  p.gpu = std::make_unique<models::GPT2>(c, models::GPT2Options{.device = Device::cuda(0), .dtype = dtype,
                                                                .init = models::Init::none,
                                                                .loss_chunk_rows = gpu_loss_chunk_rows});
  auto src = p.cpu->named_parameters();
  auto dst = p.gpu->named_parameters();
  for (size_t i = 0; i < src.size(); ++i) dst[i].second.copy_(src[i].second);
  return p;
}

// Micro-batches (2, 32) uploaded from host memory each time one is asked for, as the trainer's are: inputs
// ids[0, 64), targets ids[2, 66).
struct UploadedBatches final : train::Batches {
  std::vector<int32_t> x, y;
  explicit UploadedBatches(const std::vector<int32_t>& ids)
      : x(ids.begin(), ids.begin() + 64), y(ids.begin() + 2, ids.begin() + 66) {}
  void next(Tensor& inputs, Tensor& targets) override {
    inputs = from_vector(x, {2, 32}, {.dtype = DType::i32, .device = Device::cuda(0)});
    targets = from_vector(y, {2, 32}, {.dtype = DType::i32, .device = Device::cuda(0)});
  }
  TokenIds ids() const override { return TokenIds::checked_by_caller; }
};

}  // namespace

TEST_SUITE("cuda") {

TEST_CASE("cuda gpt2: a training step equals the CPU step (logits, loss, gradients, CAME and AdamW updates)" *
          doctest::skip(!cuda_available())) {
#ifdef TALLY_HAS_CUDA
  cuda::Fp32MatmulScope strict(cuda::Fp32Matmul::strict);
  models::GPT2Config c = models::GPT2Config::preset("tiny");
  c.block_size = 64;
  for (DType dtype : {DType::f64, DType::f32}) {
    const double tol = dtype == DType::f64 ? 1e-10 : 2e-5;
    for (const std::string kind : {"came", "adamw"}) {
      INFO(std::string(dtype_name(dtype)), " ", kind);
      if (dtype == DType::f64) continue;  // optimizers keep f32 parameters; f64 is checked for the model below
      // AdamW's GPU model runs the loss in chunks of 24 rows (24, 24, 16): the same step as the CPU's whole head.
      Pair p = make_pair(c, dtype, kind == "adamw" ? 24 : 0);
      std::vector<int32_t> ids(2 * 33);
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919 + 13) % 50257);
      std::vector<int32_t> xs(ids.begin(), ids.begin() + 64), ys(ids.begin() + 2, ids.begin() + 66);
      Tensor xc = from_vector(xs, {2, 32}), yc = from_vector(ys, {2, 32});
      Tensor xg = xc.to(Device::cuda(0)), yg = yc.to(Device::cuda(0));
      Tensor lc = p.cpu->loss(xc, yc), lg = p.gpu->loss(xg, yg);
      CHECK(std::fabs(lc.item() - lg.item()) <= tol * std::fabs(lc.item()));
      CHECK(rel_err(p.gpu->forward(xg), p.cpu->forward(xc)) < tol);
      lc.backward();
      lg.backward();
      auto pc = p.cpu->named_parameters(), pg = p.gpu->named_parameters();
      for (size_t i = 0; i < pc.size(); ++i) {
        INFO(pc[i].first);
        CHECK(rel_err(pg[i].second.grad(), pc[i].second.grad()) < 10 * tol);
      }
      // The optimizers then see the same gradients (the GPU's): gradients that are zero in exact arithmetic (e.g. the
      // key bias, which softmax cannot see) are rounding noise on each device, and Adam-like first steps turn noise
      // into +-lr. With identical inputs the two steps must agree to float rounding.
      for (size_t i = 0; i < pc.size(); ++i) pc[i].second.grad().copy_(pg[i].second.grad());
      const optim::Settings settings{{"lr", 1e-3}, {"weight-decay", 0.1}};
      auto oc = optim::make_optimizer(kind, p.cpu->parameters(), settings);
      auto og = optim::make_optimizer(kind, p.gpu->parameters(), settings);
      double nc = optim::grad_norm(p.cpu->parameters()), ng = optim::grad_norm(p.gpu->parameters());
      CHECK(std::fabs(nc - ng) <= 1e-5 * nc);
      oc->step({.grad_scale = optim::clip_coefficient(nc, 1.0)});
      og->step({.grad_scale = optim::clip_coefficient(ng, 1.0)});
      for (size_t i = 0; i < pc.size(); ++i) {
        INFO(pc[i].first);
        CHECK(rel_err(pg[i].second, pc[i].second) < 1e-5);
      }
    }
  }
  // The model alone in f64, its GPU loss in chunks of 3 rows: the loss to 1e-12, logits to 1e-10 and gradients to
  // 1e-9 (the backward's longer sums, over rows and through every layer, round more).
  Pair p = make_pair(c, DType::f64, 3);
  Tensor x = from_vector<int32_t>({1, 5, 9, 200, 3000, 45000, 7, 8}, {2, 4});
  CHECK(rel_err(p.gpu->forward(x.to(Device::cuda(0))), p.cpu->forward(x)) < 1e-10);
  Tensor lc = p.cpu->loss(x, x), lg = p.gpu->loss(x.to(Device::cuda(0)), x.to(Device::cuda(0)));
  CHECK(std::fabs(lc.item() - lg.item()) <= 1e-12 * std::fabs(lc.item()));
  lc.backward();
  lg.backward();
  auto pc = p.cpu->named_parameters(), pg = p.gpu->named_parameters();
  for (size_t i = 0; i < pc.size(); ++i) CHECK(rel_err(pg[i].second.grad(), pc[i].second.grad()) < 1e-9);
#endif
}

TEST_CASE("cuda gpt2: a GPU training step's memory equals the plan made for CUDA on the meta device, to the byte" *
          doctest::skip(!cuda_available())) {
#ifdef TALLY_HAS_CUDA
  // The plan (train::predict_step_memory for a CUDA step, what `tally memory --device cuda` prints) runs the same
  // step on a meta device planning for CUDA: the CUDA kernels' scratch (attention, the embedding's sort, column sums,
  // the optimizers' workspaces, the gradient norm's) and cuBLAS's workspace. The GPU step must measure the same
  // requested bytes in every category, and at its peak.
  models::GPT2Config c = models::GPT2Config::preset("tiny");
  c.block_size = 32;
  const Device gpu = Device::cuda(0);
  Ledger& l = ledger(gpu);
  // cuBLAS's workspace is made with the first product on the device and kept: make it now, so that what this
  // process already holds (it, and anything an earlier test kept) is the baseline the plan's figures add to.
  (void)matmul(ones({2, 2}, {.device = gpu}), ones({2, 2}, {.device = gpu}));
  cuda::synchronize();
  std::vector<int32_t> ids(2 * 33);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919 + 13) % 50257);
  UploadedBatches batches(ids);
  for (const DType dtype : {DType::f32, DType::bf16})
    for (const char* name : {"came", "adamw"}) {  // factored and dense optimizer workspaces
      INFO(name, " ", std::string(dtype_name(dtype)));
      const train::OptimizerChoice choice{.name = name, .settings = {{"lr", 1e-3}}};
      const train::StepShape shape{.batch = 2, .seq = 32, .accumulation = 2, .grad_clip = 1.0, .dtype = dtype,
                                   .device = DeviceKind::cuda};
      const train::MemoryFigures plan = train::predict_step_memory(c, choice, shape);
      const Usage base_total = l.total();
      std::map<Category, int64_t> base;
      for (Category k : {Category::parameter, Category::gradient, Category::optimizer_state, Category::activation,
                         Category::workspace, Category::other})
        base[k] = l.category(k).live_requested;
      train::MemoryFigures m;
      {
        models::GPT2 model(c, {.device = gpu, .dtype = dtype, .seed = 3});
        auto opt = choice.make(model.parameters());
        opt->init_state();
        l.reset_peaks();
        const train::StepOutcome out = train::optimizer_step(model, *opt, batches,
                                                             {.accumulation = shape.accumulation, .grad_clip = 1.0});
        CHECK(out.finite);
        m = train::measure(l, *opt);
      }
      // The plan holds cuBLAS's workspace itself; the baseline here already holds it.
      const int64_t cublas = cuda::kCublasWorkspaceBytes;
      CHECK(plan.parameters == m.parameters - base[Category::parameter]);
      CHECK(plan.gradients == m.gradients - base[Category::gradient]);
      CHECK(plan.optimizer_state == m.optimizer_state - base[Category::optimizer_state]);
      CHECK(plan.state_by_kind == m.state_by_kind);
      CHECK(plan.activations == m.activations - base[Category::activation]);
      CHECK(plan.workspace == m.workspace - base[Category::workspace] + cublas);
      CHECK(plan.other == m.other - base[Category::other]);
      CHECK(plan.total == m.total - base_total.live_requested + cublas);
      // Each owner of workspace the plan names is measured at the same peak (the sort, the sums, attention, ...).
      for (const auto& o : plan.owners) {
        if (o.category != Category::workspace || o.name == cuda::kCublasWorkspaceOwner) continue;
        int64_t measured = -1;
        for (const auto& q : m.owners)
          if (q.category == o.category && q.name == o.name) measured = q.bytes;
        CHECK_MESSAGE(measured == o.bytes, "workspace owner ", o.name);
      }
    }
#endif
}

TEST_CASE("cuda gpt2: a training step waits for the device once (its losses and gradient norm together)" *
          doctest::skip(!cuda_available())) {
#ifdef TALLY_HAS_CUDA
  // The host queues a step's kernels while the device runs them, except where it must read a result: once, the
  // micro-batches' losses summed with the gradient's squared elements (for the clip), after the last backward pass
  // is queued. Ids the caller has checked (the trainer's, from shards validated against the vocabulary when opened)
  // are not copied back to be checked; unchecked ids cost two waits per micro-batch (inputs and targets).
  models::GPT2Config c = models::GPT2Config::preset("tiny");
  c.block_size = 32;
  models::GPT2 model(c, {.device = Device::cuda(0), .seed = 3});
  auto opt = optim::make_optimizer("came", model.parameters(), {{"lr", 1e-3}});
  struct Fixed final : train::Batches {
    Tensor x, y;
    TokenIds checked;
    void next(Tensor& inputs, Tensor& targets) override {
      inputs = x;
      targets = y;
    }
    TokenIds ids() const override { return checked; }
  } batches;
  std::vector<int32_t> ids(2 * 33);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919 + 13) % 50257);
  batches.x = from_vector(std::vector<int32_t>(ids.begin(), ids.begin() + 64), {2, 32}).to(Device::cuda(0));
  batches.y = from_vector(std::vector<int32_t>(ids.begin() + 2, ids.begin() + 66), {2, 32}).to(Device::cuda(0));
  const train::StepPlan plan{.accumulation = 3, .grad_clip = 1.0};
  for (const TokenIds checked : {TokenIds::checked_by_caller, TokenIds::check}) {
    batches.checked = checked;
    train::optimizer_step(model, *opt, batches, plan);  // warm: the first step allocates
    cuda::synchronize();
    const int64_t before = cuda::host_waits();
    const train::StepOutcome out = train::optimizer_step(model, *opt, batches, plan);
    const int64_t waits = cuda::host_waits() - before;
    CHECK(out.finite);
    const int64_t expected = (checked == TokenIds::check ? 2 * plan.accumulation : 0) + 1;
    CHECK_MESSAGE(waits == expected, "host waits in one step: ", waits, ", expected ", expected);
  }
  // Batches uploaded from host memory when asked for, as the trainer's: each upload goes through a pinned buffer of
  // a ring of four and does not wait. (After a synchronize every buffer is free, so two micro-batches' four uploads
  // cannot find one in use: the count is exact. Later, an upload waits only when the host is two micro-batches
  // ahead of the device, and then the device is busy anyway.)
  UploadedBatches uploads(ids);
  const train::StepPlan two{.accumulation = 2, .grad_clip = 1.0};
  const train::StepOutcome warm = train::optimizer_step(model, *opt, uploads, two);
  cuda::synchronize();
  const int64_t before = cuda::host_waits();
  const train::StepOutcome out = train::optimizer_step(model, *opt, uploads, two);
  const int64_t waits = cuda::host_waits() - before;
  CHECK(warm.finite);
  CHECK(out.finite);
  CHECK_MESSAGE(waits == 1, "host waits in a step of uploaded batches: ", waits, ", expected 1");
#endif
}

}  // TEST_SUITE
