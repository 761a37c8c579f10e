// A whole GPT-2 training step on the GPU against the same step on the CPU: identical weights and batch, then the
// logits, the loss, every parameter gradient, and the parameters after one CAME and one AdamW step. Also the
// GPU step's memory equals the meta-device plan, and a training step's host waits are counted. Skipped, visibly,
// without a GPU.
#include <doctest/doctest.h>

#include <cmath>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "core/ops.h"
#include "models/gpt2.h"
#include "optim/clip.h"
#include "optim/registry.h"
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
    REQUIRE_FALSE(std::isnan(a[i]));
    err = std::max(err, std::fabs(a[i] - b[i]));
    ref = std::max(ref, std::fabs(b[i]));
  }
  return err / std::max(ref, 1e-30);
}

struct Pair {
  std::unique_ptr<models::GPT2> cpu, gpu;
};

[[maybe_unused]] Pair make_pair(const models::GPT2Config& c, DType dtype) {
  Pair p;
  p.cpu = std::make_unique<models::GPT2>(c, models::GPT2Options{.dtype = dtype, .seed = 5});
  p.gpu = std::make_unique<models::GPT2>(c, models::GPT2Options{.device = Device::cuda(0), .dtype = dtype, .init = models::Init::none});
  auto src = p.cpu->named_parameters();
  auto dst = p.gpu->named_parameters();
  for (size_t i = 0; i < src.size(); ++i) dst[i].second.copy_(src[i].second);
  return p;
}

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
      INFO(dtype_name(dtype), " ", kind);
      if (dtype == DType::f64) continue;  // optimizers keep f32 parameters; f64 is checked for the model below
      Pair p = make_pair(c, dtype);
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
  // The model alone in f64: logits and gradients to 1e-10.
  Pair p = make_pair(c, DType::f64);
  Tensor x = from_vector<int32_t>({1, 5, 9, 200, 3000, 45000, 7, 8}, {2, 4});
  Tensor lc = p.cpu->loss(x, x), lg = p.gpu->loss(x.to(Device::cuda(0)), x.to(Device::cuda(0)));
  CHECK(std::fabs(lc.item() - lg.item()) <= 1e-12 * std::fabs(lc.item()));
  lc.backward();
  lg.backward();
  auto pc = p.cpu->named_parameters(), pg = p.gpu->named_parameters();
  for (size_t i = 0; i < pc.size(); ++i) CHECK(rel_err(pg[i].second.grad(), pc[i].second.grad()) < 1e-9);
#endif
}

TEST_CASE("cuda gpt2: the GPU step's memory equals the meta-device plan" * doctest::skip(!cuda_available())) {
#ifdef TALLY_HAS_CUDA
  models::GPT2Config c = models::GPT2Config::preset("tiny");
  const optim::Settings settings{{"lr", 1e-3}};
  // Parameters, gradients and optimizer state are allocated by the same code on both devices: requested bytes match.
  models::GPT2 meta(c, {.device = Device::meta()});
  models::GPT2 gpu(c, {.device = Device::cuda(0), .seed = 1});
  CHECK(ledger(Device::cuda(0)).category(Category::parameter).live_requested ==
        ledger(Device::meta()).category(Category::parameter).live_requested);
  auto om = optim::make_optimizer("came", meta.parameters(), settings);
  auto og = optim::make_optimizer("came", gpu.parameters(), settings);
  om->init_state();
  og->init_state();
  CHECK(om->total_state_bytes() == og->total_state_bytes());
  CHECK(ledger(Device::cuda(0)).category(Category::optimizer_state).live_requested ==
        ledger(Device::meta()).category(Category::optimizer_state).live_requested);
#endif
}

TEST_CASE("cuda gpt2: a training step waits for the device once per micro-batch (its loss) and once for the norm" *
          doctest::skip(!cuda_available())) {
#ifdef TALLY_HAS_CUDA
  // The host queues a step's kernels while the device runs them, except where it must read a result: each
  // micro-batch's loss (read after the last backward pass is queued) and the gradient norm for clipping. Ids the
  // caller has checked (the trainer's, from shards validated against the vocabulary when opened) are not copied
  // back to be checked; unchecked ids cost two waits per micro-batch (inputs and targets).
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
    const int64_t expected = plan.accumulation * (checked == TokenIds::check ? 3 : 1) + 1;
    CHECK_MESSAGE(waits == expected, "host waits in one step: ", waits, ", expected ", expected);
  }
#endif
}

}  // TEST_SUITE
