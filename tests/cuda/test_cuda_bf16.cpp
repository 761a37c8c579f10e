// Mixed precision on the GPU: every op of the table (tests/core/op_cases.h) forward and backward in bf16 against
// the f32 CPU op on the same (bf16-representable) values, within bf16 tolerance; stochastic rounding unbiased and
// bit-identical to the CPU kernel; a bf16 GPT-2 tiny training step (loss, gradients, CAME and AdamW updates) against
// the f32 CPU step; master weights that step exactly as f32 parameters and keep updates below bf16's resolution; and
// the meta-device plan of a bf16 model equal to the bytes measured on the GPU. Skipped, visibly, without a GPU;
// without one, scripts/cuda_emulate.sh runs these cases against the CPU emulation of CUDA (tools/cuda_emu).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "core/ops.h"
#include "core/random.h"
#include "models/gpt2.h"
#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/sgd.h"
#include "tests/core/op_cases.h"
#include "tests/test_util.h"
#include "train/setup.h"
#include "train/trainer.h"

using namespace tally;

namespace {

const bool kNoGpu = !cuda_available();

Device gpu() { return Device::cuda(0); }

void check_close(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  const double err = test::max_rel_error(got, want);
  INFO("relative max error ", err, ", tolerance ", tol);
  CHECK(err <= tol);
  if (err > tol / 2 && err <= tol) MESSAGE(what, ": error ", err, " is over half the tolerance ", tol);
}

// Values from tally's stream, rounded to bf16 and widened back: the CPU reference sees exactly the GPU's inputs.
Tensor bf16_values(const Shape& shape, uint64_t seed, double lo = 0.0, double hi = 0.0) {
  Generator gen(seed);
  Tensor t = empty(shape);
  if (lo < hi) uniform_(t, gen, lo, hi);
  else normal_(t, gen, 0.0, 1.0);
  return t.to(DType::bf16).to(DType::f32);
}

// Runs `f` on the f32 CPU leaves and on their bf16 GPU copies (integer inputs copied as they are); compares the
// output and, for a bf16-representable upstream gradient, the gradient of every floating input, relative to the
// largest reference value. The GPU output must have the dtype the op promises for bf16 inputs (`output`) and the
// gradients must be bf16 (the bf16 kernels ran).
void compare_bf16(const std::string& name, const test::OpFn& f, const test::Inputs& leaves, const test::Tolerance& tol,
                  DType output, test::Backward backward, const std::vector<size_t>& frozen = {}) {
  std::vector<Tensor> ci, gi;
  for (size_t i = 0; i < leaves.size(); ++i) {
    Tensor c = leaves[i].detach().clone();
    Tensor g = is_floating(c.dtype()) ? c.to(DType::bf16).to(gpu()) : c.to(gpu());
    if (backward == test::Backward::yes && is_floating(c.dtype()) &&
        std::find(frozen.begin(), frozen.end(), i) == frozen.end()) {
      c.set_requires_grad(true);
      g.set_requires_grad(true);
    }
    ci.push_back(c);
    gi.push_back(g);
  }
  Tensor oc = f(ci), og = f(gi);
  REQUIRE(og.device() == gpu());
  CHECK(og.dtype() == output);
  check_close(og, oc, tol.bf16, name + ": forward");
  if (backward == test::Backward::none) return;
  Tensor up = bf16_values(oc.shape(), 4242);
  oc.backward(up);
  og.backward(up.to(og.dtype()).to(gpu()));
  for (size_t i = 0; i < ci.size(); ++i) {
    if (!ci[i].requires_grad()) {
      CHECK_MESSAGE(!gi[i].grad().defined(), name, ": input ", i, " requires no gradient but received one");
      continue;
    }
    REQUIRE(gi[i].grad().defined());
    CHECK(gi[i].grad().dtype() == DType::bf16);
    check_close(gi[i].grad(), ci[i].grad(), tol.bf16_grad, name + ": gradient of input " + std::to_string(i));
  }
}

std::vector<uint16_t> bits_of(const Tensor& t) {
  Tensor h = t.to(Device::cpu()).contiguous();
  std::vector<uint16_t> out(size_t(h.numel()));
  std::memcpy(out.data(), h.data<bf16>(), out.size() * 2);
  return out;
}

bool same_f32_bits(const Tensor& a, const Tensor& b) {
  std::vector<float> x = a.to_vector<float>(), y = b.to_vector<float>();
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * 4) == 0;
}

Tensor named_param(Tensor t, const std::string& name) {
  t.set_requires_grad(true);
  t.set_name(name);
  return t;
}

}  // namespace

TEST_SUITE("cuda") {

TEST_CASE("cuda bf16 op table: every op forward and backward in bf16 against f32 on the CPU" * doctest::skip(kNoGpu)) {
  test::for_each_variant(test::Check::bf16, [](const test::OpCase& c, const test::Variant& v, size_t i) {
    // Values rounded to bf16 and widened back: the CPU reference sees exactly the GPU's inputs.
    test::Inputs leaves = make_leaves(v, i, DType::f32);
    for (Tensor& t : leaves)
      if (is_floating(t.dtype())) t = t.to(DType::bf16).to(DType::f32);
    compare_bf16(
        "bf16", [&](const test::Inputs& in) { return run(c, v, in); }, leaves, c.tol, c.bf16_output, c.backward,
        test::frozen_inputs(v));
  });
}

TEST_CASE("cuda bf16: stochastic rounding on the GPU is the CPU kernel's, bit for bit, and unbiased" *
          doctest::skip(kNoGpu)) {
#ifdef TALLY_HAS_CUDA
  const int64_t n = 20011;  // not a multiple of 8: the scalar tail too
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[size_t(i)] = 1.0f + (float(i % 5) + 0.3f) / 128;  // between bf16 neighbours
  Tensor master = from_vector(x, {n}).to(gpu());
  Tensor out = empty({n}, {.dtype = DType::bf16, .device = gpu()});
  optim::kernels::cuda::round_to_bf16(master.data<float>(), out.data<bf16>(), n, 77, 5);
  std::vector<bf16> want(static_cast<size_t>(n));
  optim::kernels::cpu::round_to_bf16(x.data(), want.data(), n, 77, 5);
  std::vector<uint16_t> got = bits_of(out);
  int64_t diff = 0;
  double err = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += got[size_t(i)] != want[size_t(i)].bits;
    err += double(bf16_to_float(bf16{got[size_t(i)]})) - double(x[size_t(i)]);
  }
  CHECK(diff == 0);
  // Spacing 2^-7 near 1: the standard deviation of the mean error is below 2^-8 / sqrt(n) ~ 3e-5.
  CHECK(std::fabs(err / double(n)) < 2e-4);
#endif
}

TEST_CASE("cuda bf16: master weights step exactly as f32 parameters and keep updates below bf16's resolution" *
          doctest::skip(kNoGpu)) {
  // The master of a bf16 parameter against an f32 parameter holding the same values, both on the GPU.
  const int64_t n = 4099;
  Tensor init = bf16_values({n}, 60);
  Tensor pb = named_param(init.to(DType::bf16).to(gpu()), "w"), pf = named_param(init.to(gpu()), "w");
  optim::AdamW ob({pb}, optim::AdamWConfig{.lr = 1e-2}), of({pf}, optim::AdamWConfig{.lr = 1e-2});
  for (int step = 1; step <= 3; ++step) {
    Tensor g = bf16_values({n}, 60 + uint64_t(step));
    pb.set_grad(g.to(DType::bf16).to(gpu()));
    pf.set_grad(g.to(gpu()));
    ob.step({.grad_scale = 0.5});
    of.step({.grad_scale = 0.5});
    CHECK(same_f32_bits(ob.state("w", "master"), pf));
  }
  // 10 SGD steps of 1e-4 from 1.0 (bf16 spacing 2^-8 below 1): round to nearest would stay at 1.0.
  const int64_t m = 8192;
  Tensor p = named_param(ones({m}, {.dtype = DType::bf16, .device = gpu()}), "u");
  optim::Sgd sgd({p}, optim::SgdConfig{.lr = 1e-4});
  for (int step = 0; step < 10; ++step) {
    p.set_grad(ones({m}, {.dtype = DType::bf16, .device = gpu()}));
    sgd.step();
  }
  const double master = sgd.state("u", "master").to_vector<float>()[0];
  CHECK(std::fabs(master - (1.0 - 1e-3)) < 1e-6);
  double mean = 0;
  for (float v : p.to_vector<float>()) mean += v;
  mean /= double(m);
  CHECK(std::fabs(mean - master) < 1.5e-4);
  CHECK(mean < 1.0 - 5e-4);
  // Gradient-norm clipping reads bf16 gradients.
  Tensor g = bf16_values({n}, 70);
  pb.set_grad(g.to(DType::bf16).to(gpu()));
  double want = 0;
  for (float v : g.to_vector<float>()) want += double(v) * v;
  CHECK(std::fabs(optim::grad_norm({pb}) - std::sqrt(want)) <= 1e-9 * std::sqrt(want));
}

TEST_CASE("cuda bf16: a GPT-2 training step matches the f32 CPU step within bf16 tolerance" * doctest::skip(kNoGpu)) {
  models::GPT2Config c = models::GPT2Config::preset("tiny");
  c.block_size = 64;
  std::vector<int32_t> ids(2 * 33);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919 + 13) % 50257);
  std::vector<int32_t> xs(ids.begin(), ids.begin() + 64), ys(ids.begin() + 2, ids.begin() + 66);
  Tensor xc = from_vector(xs, {2, 32}), yc = from_vector(ys, {2, 32});
  Tensor xg = xc.to(gpu()), yg = yc.to(gpu());
  for (const std::string kind : {"came", "adamw"}) {
    INFO(kind);
    // The f32 CPU model starts from the bf16 model's weights (its GPT-2 init rounded to nearest even) so that the
    // comparison measures bf16 compute, not the initial rounding.
    models::GPT2 gpu_model(c, {.device = gpu(), .dtype = DType::bf16, .seed = 5});
    models::GPT2 cpu_model(c, {.seed = 5});
    models::GPT2 f32_init(c, {.seed = 5});
    auto pg = gpu_model.named_parameters(), pc = cpu_model.named_parameters(), pi = f32_init.named_parameters();
    {
      NoGradGuard no_grad;
      for (size_t i = 0; i < pc.size(); ++i) {
        INFO(pc[i].first);
        REQUIRE(pg[i].second.dtype() == DType::bf16);
        // The bf16 init is the f32 init rounded to nearest even, element for element.
        CHECK(bits_of(pg[i].second) == bits_of(pi[i].second.to(DType::bf16)));
        pc[i].second.copy_(pg[i].second);
      }
    }
    Tensor lg = gpu_model.loss(xg, yg), lc = cpu_model.loss(xc, yc);
    CHECK(lg.dtype() == DType::f32);
    CHECK(std::fabs(lg.item() - lc.item()) <= 1e-2 * std::fabs(lc.item()));
    check_close(gpu_model.forward(xg), cpu_model.forward(xc), 3e-2, "logits");
    lg.backward();
    lc.backward();
    for (size_t i = 0; i < pc.size(); ++i) {
      INFO(pc[i].first);
      REQUIRE(pg[i].second.grad().dtype() == DType::bf16);
      CHECK(test::max_rel_error(pg[i].second.grad(), pc[i].second.grad()) < 5e-2);
    }
    const double ng = optim::grad_norm(gpu_model.parameters()), nc = optim::grad_norm(cpu_model.parameters());
    CHECK(std::fabs(ng - nc) <= 2e-2 * nc);
    // The update: CAME's and AdamW's first steps are sign-like (m / sqrt(v)), so gradients that differ by bf16
    // noise around zero give updates of opposite signs, and comparing parameters after the step against the f32
    // run would measure that, not the optimizer. Instead the CPU f32 step is given the GPU's own (bf16) gradients:
    // the master must then follow the f32 algorithm to kernel rounding, and the parameter be its bf16 rounding.
    {
      NoGradGuard no_grad;
      for (size_t i = 0; i < pc.size(); ++i) pc[i].second.set_grad(pg[i].second.grad().to(Device::cpu()).to(DType::f32));
    }
    CHECK(std::fabs(optim::grad_norm(cpu_model.parameters()) - ng) <= 1e-9 * ng);
    const optim::Settings settings{{"lr", 1e-3}, {"weight-decay", 0.1}};
    auto og = optim::make_optimizer(kind, gpu_model.parameters(), settings);
    auto oc = optim::make_optimizer(kind, cpu_model.parameters(), settings);
    og->step({.grad_scale = optim::clip_coefficient(ng, 1.0)});
    oc->step({.grad_scale = optim::clip_coefficient(ng, 1.0)});
    for (size_t i = 0; i < pc.size(); ++i) {
      INFO(pc[i].first);
      // The master weights cover the rows the optimizer updates: the embedding's padding rows have none.
      Tensor master = og->state(pg[i].first, "master");
      const Tensor updated_cpu = optim::updated_part(pc[i].second), updated_gpu = optim::updated_part(pg[i].second);
      REQUIRE(master.shape() == updated_cpu.shape());
      CHECK(test::max_rel_error(master, updated_cpu) < 1e-5);
      CHECK(test::max_rel_error(updated_gpu, master) < 1.0 / 128);  // within a bf16 ulp of the largest value
      CHECK(test::max_rel_error(pg[i].second, pc[i].second) < 1.0 / 128);  // padding rows included: untouched
    }
  }
}

TEST_CASE("cuda bf16: the meta-device plan of a bf16 training step equals the bytes measured on the GPU" *
          doctest::skip(kNoGpu)) {
  models::GPT2Config c = models::GPT2Config::preset("tiny");
  c.block_size = 64;
  // AdamW: master + two moments; CAME's factored step is slow under the emulator.
  const optim::Settings settings{{"lr", 1e-3}};
  Ledger& lm = ledger(Device::meta());
  Ledger& lg = ledger(gpu());
  const Category cats[] = {Category::parameter, Category::gradient, Category::optimizer_state, Category::activation};
  auto live = [&](Ledger& l) {
    std::vector<int64_t> v;
    for (Category k : cats) v.push_back(l.category(k).live_requested);
    return v;
  };
  const std::vector<int64_t> meta0 = live(lm), gpu0 = live(lg);
  const Device plan = Device::meta(DeviceKind::cuda);  // a meta device planning for CUDA
  models::GPT2 meta(c, {.device = plan, .dtype = DType::bf16});
  models::GPT2 model(c, {.device = gpu(), .dtype = DType::bf16, .seed = 1});
  auto om = optim::make_optimizer("adamw", meta.parameters(), settings);
  auto og = optim::make_optimizer("adamw", model.parameters(), settings);
  om->init_state();
  og->init_state();
  CHECK(om->total_state_bytes() == og->total_state_bytes());
  CHECK(om->total_state_bytes() == total_bytes(om->predict_state_bytes()));
  // The master weights: 4 bytes per parameter, as optimizer state.
  int64_t masters = 0;
  for (const auto& ts : og->state_bytes())
    for (const auto& s : ts.states)
      if (s.name == "master") masters += s.bytes();
  // The optimizers keep no state for the vocabulary's padding rows of wte, masters included.
  const int64_t padding = (c.padded_vocab_size - c.vocab_size) * c.n_embd;
  CHECK(masters == 4 * (c.num_parameters() - padding));
  Tensor x = from_vector<int32_t>(std::vector<int32_t>(64, 7), {2, 32});
  // cuBLAS's workspace (made on first use, then kept) exists before the peaks are taken.
  (void)matmul(ones({2, 2}, {.dtype = DType::bf16, .device = gpu()}), ones({2, 2}, {.dtype = DType::bf16, .device = gpu()}));
  // Peaks from here: the step's activations and workspaces (meta plans bf16 attention's workspace as CUDA does).
  const Category peak_cats[] = {Category::activation, Category::workspace};
  std::vector<int64_t> meta_base, gpu_base;
  lm.reset_peaks();
  lg.reset_peaks();
  for (Category k : peak_cats) {
    meta_base.push_back(lm.category(k).live_requested);
    gpu_base.push_back(lg.category(k).live_requested);
  }
  Tensor lossm = meta.loss(empty({2, 32}, {.dtype = DType::i32, .device = plan}),
                           empty({2, 32}, {.dtype = DType::i32, .device = plan}));
  Tensor lossg = model.loss(x.to(gpu()), x.to(gpu()));
  const std::vector<int64_t> fm = live(lm), fg = live(lg);  // after forward: the graph holds the activations
  for (size_t k = 0; k < 4; ++k) {
    INFO("category ", int(k), " after forward");
    CHECK(fm[k] - meta0[k] == fg[k] - gpu0[k]);
  }
  lossm.backward();
  lossg.backward();
  om->step();
  og->step();
  const std::vector<int64_t> sm = live(lm), sg = live(lg);
  for (size_t k = 0; k < 4; ++k) {
    INFO("category ", int(k), " after the step");
    CHECK(sm[k] - meta0[k] == sg[k] - gpu0[k]);
  }
  CHECK(sg[1] - gpu0[1] == 2 * c.num_parameters());  // bf16 gradients
  // Activations and workspaces peak alike: the meta device plans every CUDA kernel's scratch (attention, the
  // embedding's sort, the column sums, the optimizer's workspace) as the GPU allocates it.
  CHECK(lm.category(peak_cats[0]).peak_requested - meta_base[0] == lg.category(peak_cats[0]).peak_requested - gpu_base[0]);
  const int64_t ws_meta = lm.category(peak_cats[1]).peak_requested - meta_base[1];
  const int64_t ws_gpu = lg.category(peak_cats[1]).peak_requested - gpu_base[1];
  CHECK_MESSAGE(ws_meta == ws_gpu, "workspace peak: planned ", ws_meta, " B, measured ", ws_gpu, " B");
}

TEST_CASE("cuda bf16: tally train --device cuda --dtype bf16 trains, evaluates, samples, and resumes bit for bit" * doctest::skip(kNoGpu)) {
  namespace fs = std::filesystem;
  auto config = [](const fs::path& out, std::vector<std::string> extra) {
    train::Flags f("train", "", train::train_flags());
    // SGD with momentum and few steps keep this affordable under the CPU emulator (CAME's factored step is slow there).
    std::vector<std::string> args = {"--model", "tiny", "--device", "cuda", "--dtype", "bf16", "--batch", "1", "--seq",
                                     "16", "--steps", "3", "--eval-every", "2", "--val-batches", "1", "--sample-tokens",
                                     "2", "--out", out.string(), "--optimizer", "sgd", "--lr", "3e-2", "--warmup", "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    f.parse(args);
    return train::run_config(f);
  };
  // The losses by step, and each memory record's measured minus predicted bytes.
  auto read_log = [](const fs::path& log) {
    std::map<int64_t, double> m;
    std::vector<int64_t> memory_differences;
    std::ifstream in(log);
    std::string line;
    while (std::getline(in, line)) {
      nlohmann::json j = nlohmann::json::parse(line);
      if (j.contains("loss") && !j.contains("skipped")) m[j["step"].get<int64_t>()] = j["loss"].get<double>();
      if (j.contains("memory_difference")) memory_differences.push_back(j["memory_difference"].get<int64_t>());
    }
    return std::make_pair(m, memory_differences);
  };
  fs::path a = test::temp_dir("cuda_bf16_train_a"), b = test::temp_dir("cuda_bf16_train_b");
  {
    train::Trainer t(config(a, {"--save-every", "2"}));
    t.run();
  }
  REQUIRE(fs::exists(a / "step-00000002"));
  {
    nlohmann::json state = nlohmann::json::parse(std::ifstream(a / "step-00000002" / "state.json"));
    CHECK(state["dtype"] == "bf16");
  }
  {
    train::Trainer t(config(b, {}));
    t.resume(a / "step-00000002");
    t.run();
  }
  {
    train::Flags f("train", "", train::train_flags());
    f.parse({"--model", "tiny", "--device", "cuda", "--optimizer", "sgd", "--out", (b / "f32").string()});
    train::Trainer t(train::run_config(f));
    CHECK_THROWS_WITH_AS(t.resume(a / "step-00000002"), doctest::Contains("trained with --dtype bf16"), Error);
  }
  auto [la, memory_a] = read_log(a / "log.jsonl");
  auto [lb, memory_b] = read_log(b / "log.jsonl");
  // Each run's first step is measured beside the plan made for CUDA on the meta device: equal to the byte.
  CHECK(memory_a == std::vector<int64_t>{0});
  CHECK(memory_b == std::vector<int64_t>{0});
  REQUIRE(la.size() == 3);
  for (const auto& [step, loss] : la) CHECK(std::isfinite(loss));
  REQUIRE(lb.size() == 1);  // step 3
  for (const auto& entry : lb) CHECK_MESSAGE(entry.second == la[entry.first], "step ", entry.first);  // exact
  fs::remove_all(a);
  fs::remove_all(b);
}

}  // TEST_SUITE
