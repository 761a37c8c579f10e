// Mixed precision on the GPU: every op forward and backward in bf16 against the f32 CPU op on the same
// (bf16-representable) values, within bf16 tolerance; stochastic rounding unbiased and bit-identical to the CPU
// kernel; a bf16 GPT-2 tiny training step (loss, gradients, CAME and AdamW updates) against the f32 CPU step;
// master weights that step exactly as f32 parameters and keep updates below bf16's resolution; and the meta-device
// plan of a bf16 model equal to the bytes measured on the GPU. Skipped, visibly, without a GPU; without one,
// scripts/cuda_emulate.sh runs these cases against the CPU emulation of CUDA (tools/cuda_emu).
#include <doctest/doctest.h>

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
#include "tests/test_util.h"
#include "train/setup.h"
#include "train/trainer.h"

using namespace tally;

namespace {

const bool kNoGpu = !cuda_available();

Device gpu() { return Device::cuda(0); }

// max |got - want| / max |want| (scale-aware); NaN in `got` fails.
double rel_err(const Tensor& got_t, const Tensor& want_t) {
  std::vector<double> got = got_t.to_vector<double>(), want = want_t.to_vector<double>();
  REQUIRE(got.size() == want.size());
  double max_err = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) && !std::isnan(want[i])) return INFINITY;
    max_err = std::max(max_err, std::fabs(got[i] - want[i]));
    max_ref = std::max(max_ref, std::fabs(want[i]));
  }
  return max_err / std::max(max_ref, 1e-300);
}

void check_close(const Tensor& got, const Tensor& want, double tol, const std::string& what) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  const double err = rel_err(got, want);
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

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

// Runs `f` on f32 CPU leaves and on their bf16 GPU copies (integer inputs copied as they are); compares the output
// and, for a bf16-representable upstream gradient, the gradient of every floating input, relative to the largest
// reference value. The GPU gradients must be bf16 (the bf16 kernels ran).
void compare_bf16(const std::string& name, const OpFn& f, const std::vector<Tensor>& inputs, double tol = 1e-2,
                  double grad_tol = -1) {
  if (grad_tol < 0) grad_tol = tol;
  std::vector<Tensor> ci, gi;
  for (const Tensor& t : inputs) {
    Tensor c = t.detach().clone();
    Tensor g = is_floating(c.dtype()) ? c.to(DType::bf16).to(gpu()) : c.to(gpu());
    if (is_floating(c.dtype())) {
      c.set_requires_grad(true);
      g.set_requires_grad(true);
    }
    ci.push_back(c);
    gi.push_back(g);
  }
  Tensor oc = f(ci), og = f(gi);
  REQUIRE(og.device() == gpu());
  check_close(og, oc, tol, name + ": forward");
  Tensor up = bf16_values(oc.shape(), 4242);
  oc.backward(up);
  og.backward(up.to(og.dtype()).to(gpu()));
  for (size_t i = 0; i < ci.size(); ++i) {
    if (!ci[i].requires_grad()) continue;
    REQUIRE(gi[i].grad().defined());
    CHECK(gi[i].grad().dtype() == DType::bf16);
    check_close(gi[i].grad(), ci[i].grad(), grad_tol, name + ": gradient of input " + std::to_string(i));
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

TEST_CASE("cuda bf16: elementwise ops and their gradients match the f32 CPU ops" * doctest::skip(kNoGpu)) {
  struct Shapes {
    Shape a, b;
  };
  for (const Shapes& s : {Shapes{{5, 37}, {5, 37}}, Shapes{{5, 37}, {37}}, Shapes{{4, 1, 9}, {1, 6, 9}},
                          Shapes{{33}, {1}}, Shapes{{1}, {19}}}) {
    Tensor a = bf16_values(s.a, 1), b = bf16_values(s.b, 2), pos = bf16_values(s.b, 3, 0.5, 2.0);
    const std::string sh = shape_str(s.a) + " " + shape_str(s.b);
    compare_bf16("add " + sh, [](const std::vector<Tensor>& v) { return add(v[0], v[1]); }, {a, b});
    compare_bf16("sub " + sh, [](const std::vector<Tensor>& v) { return sub(v[0], v[1]); }, {a, b});
    compare_bf16("mul " + sh, [](const std::vector<Tensor>& v) { return mul(v[0], v[1]); }, {a, b});
    compare_bf16("div " + sh, [](const std::vector<Tensor>& v) { return div(v[0], v[1]); }, {a, pos});
  }
  struct Unary {
    const char* name;
    std::function<Tensor(const Tensor&)> f;
    bool positive;
  };
  const Unary unaries[] = {
      {"neg", [](const Tensor& x) { return neg(x); }, false},
      {"exp", [](const Tensor& x) { return exp(x); }, false},
      {"log", [](const Tensor& x) { return log(x); }, true},
      {"sqrt", [](const Tensor& x) { return sqrt(x); }, true},
      {"rsqrt", [](const Tensor& x) { return rsqrt(x); }, true},
      {"tanh", [](const Tensor& x) { return tanh(x); }, false},
      {"gelu", [](const Tensor& x) { return gelu(x); }, false},
      {"add_scalar", [](const Tensor& x) { return add_scalar(x, 0.75); }, false},
      {"mul_scalar", [](const Tensor& x) { return mul_scalar(x, -1.5); }, false},
      {"rsub_scalar", [](const Tensor& x) { return rsub_scalar(x, 2.0); }, false},
      {"rdiv_scalar", [](const Tensor& x) { return rdiv_scalar(x, 3.0); }, true},
      {"pow_scalar", [](const Tensor& x) { return pow_scalar(x, 1.7); }, true},
  };
  for (int64_t n : {1, 7, 8, 1001}) {  // 8-wide packs, their tail, and the scalar path
    for (const Unary& u : unaries) {
      Tensor x = u.positive ? bf16_values({n}, 10 + uint64_t(n), 0.5, 3.0) : bf16_values({n}, 10 + uint64_t(n));
      compare_bf16(cat(u.name, " n=", n), [&](const std::vector<Tensor>& v) { return u.f(v[0]); }, {x});
    }
  }
  // In place (outside autograd): y += alpha x.
  Tensor y = bf16_values({1001}, 20), x = bf16_values({1001}, 21);
  Tensor yc = y.clone(), yg = y.to(DType::bf16).to(gpu());
  add_(yc, x, 0.5);
  add_(yg, x.to(DType::bf16).to(gpu()), 0.5);
  CHECK(yg.dtype() == DType::bf16);
  check_close(yg, yc, 1e-2, "add_");
}

TEST_CASE("cuda bf16: reductions, matrix products and linear match the f32 CPU ops" * doctest::skip(kNoGpu)) {
  Tensor x = bf16_values({6, 5, 43}, 30);
  compare_bf16("sum dim 2", [](const std::vector<Tensor>& v) { return sum(v[0], {2}); }, {x});
  compare_bf16("sum dims 0,1 keep", [](const std::vector<Tensor>& v) { return sum(v[0], {0, 1}, KeepDim::yes); }, {x});
  compare_bf16("mean", [](const std::vector<Tensor>& v) { return mean(v[0]); }, {x});
  compare_bf16("max dim 1", [](const std::vector<Tensor>& v) { return max(v[0], 1); }, {x});
  compare_bf16("max dim 2", [](const std::vector<Tensor>& v) { return max(v[0], 2); }, {x});
  struct Mm {
    Shape a, b;
    bool ta, tb;
  };
  for (const Mm& m : {Mm{{7, 13}, {13, 5}, false, false}, Mm{{13, 7}, {13, 5}, true, false},
                      Mm{{3, 7, 13}, {3, 5, 13}, false, true}, Mm{{2, 3, 4, 9}, {9, 6}, false, false}}) {
    Tensor a = bf16_values(m.a, 31), b = bf16_values(m.b, 32);
    compare_bf16(cat("matmul ", shape_str(m.a), " @ ", shape_str(m.b)),
                 [&](const std::vector<Tensor>& v) {
                   return matmul(m.ta ? v[0].transpose(-1, -2) : v[0], m.tb ? v[1].transpose(-1, -2) : v[1]);
                 },
                 {a, b});
  }
  for (int64_t n : {1, 9}) {
    Tensor in = bf16_values({n, 3, 24}, 33), w = bf16_values({17, 24}, 34), bias = bf16_values({17}, 35);
    compare_bf16(cat("linear N=", 3 * n), [](const std::vector<Tensor>& v) { return linear(v[0], v[1], v[2]); },
                 {in, w, bias});
    compare_bf16(cat("linear no bias N=", 3 * n), [](const std::vector<Tensor>& v) { return linear(v[0], v[1], Tensor()); },
                 {in, w});
  }
}

TEST_CASE("cuda bf16: softmax, layer norm, embedding, cross-entropy and dropout match the f32 CPU ops" *
          doctest::skip(kNoGpu)) {
  for (const Shape& s : {Shape{7, 300}, Shape{3, 1}, Shape{2, 3, 40}}) {
    Tensor x = bf16_values(s, 40);
    compare_bf16("softmax " + shape_str(s), [](const std::vector<Tensor>& v) { return softmax(v[0]); }, {x});
    compare_bf16("log_softmax " + shape_str(s), [](const std::vector<Tensor>& v) { return log_softmax(v[0]); }, {x});
  }
  for (const Shape& s : {Shape{6, 67}, Shape{2, 3, 8}}) {
    const int64_t C = s.back();
    Tensor x = bf16_values(s, 41), w = bf16_values({C}, 42, 0.5, 1.5), b = bf16_values({C}, 43);
    compare_bf16("layer_norm " + shape_str(s),
                 [](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2], 1e-5); }, {x, w, b}, 1e-2, 2e-2);
  }
  Tensor ids = from_vector<int32_t>({3, 0, 49, 3, 7, 7, 7, 12, 3, 48, 1, 0, 25}, {13});
  compare_bf16("embedding", [](const std::vector<Tensor>& v) { return embedding(v[0], v[1]); },
               {ids, bf16_values({50, 24}, 44)});
  Tensor targets = from_vector<int32_t>({0, 299, 5, 17, 17, 250, 3, 100, 42}, {9});
  Tensor logits = bf16_values({9, 320}, 45);
  compare_bf16("cross_entropy (classes 300 of 320)",
               [](const std::vector<Tensor>& v) { return cross_entropy(v[0], v[1], {.classes = 300}); },
               {logits, targets});
  compare_bf16("cross_entropy row-strided",
               [](const std::vector<Tensor>& v) { return cross_entropy(v[0].slice(1, 0, 300), v[1]); }, {logits, targets});
  {
    Tensor loss = cross_entropy(logits.to(DType::bf16).to(gpu()), targets.to(gpu()));
    CHECK(loss.dtype() == DType::f32);  // per-row losses and their mean in f32
  }
  Tensor d = bf16_values({1000}, 46);
  compare_bf16("dropout p=0.3 (the same mask on both devices)",
               [](const std::vector<Tensor>& v) {
                 Generator gen(9);
                 return dropout(v[0], 0.3, gen);
               },
               {d});
  compare_bf16("cat", [](const std::vector<Tensor>& v) { return cat({v[0], v[1]}, 1); },
               {bf16_values({3, 4}, 47), bf16_values({3, 9}, 48)});
}

TEST_CASE("cuda bf16: attention (scores in f32, probabilities over their own rows) matches the f32 CPU op" *
          doctest::skip(kNoGpu)) {
  struct Sdpa {
    int64_t B, NH, Tq, Tk, HS;
    Causal causal;
  };
  for (const Sdpa& c : {Sdpa{2, 2, 5, 9, 8, Causal::yes}, Sdpa{1, 3, 7, 7, 4, Causal::no}, Sdpa{2, 1, 1, 1, 8, Causal::yes},
                        Sdpa{1, 1, 50, 50, 4, Causal::yes}}) {  // Tk = 50 > 32 threads: rows rewritten in two chunks
    Tensor q = bf16_values({c.B, c.NH, c.Tq, c.HS}, 50), k = bf16_values({c.B, c.NH, c.Tk, c.HS}, 51),
           v = bf16_values({c.B, c.NH, c.Tk, c.HS}, 52);
    compare_bf16(cat("sdpa B=", c.B, " NH=", c.NH, " Tq=", c.Tq, " Tk=", c.Tk, " HS=", c.HS, " causal=", int(c.causal)),
                 [&](const std::vector<Tensor>& t) { return scaled_dot_product_attention(t[0], t[1], t[2], c.causal); },
                 {q, k, v}, 1e-2, 2e-2);
  }
  struct Csa {
    int64_t B, T, C, NH;
  };
  for (const Csa& c : {Csa{2, 17, 16, 2}, Csa{1, 40, 24, 3}, Csa{3, 1, 8, 2}}) {
    Tensor qkv = bf16_values({c.B, c.T, 3 * c.C}, 53);
    compare_bf16(cat("causal_self_attention B=", c.B, " T=", c.T, " C=", c.C, " NH=", c.NH),
                 [&](const std::vector<Tensor>& t) { return causal_self_attention(t[0], c.NH); }, {qkv}, 1e-2, 2e-2);
  }
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
      CHECK(rel_err(pg[i].second.grad(), pc[i].second.grad()) < 5e-2);
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
      Tensor master = og->state(pg[i].first, "master");
      CHECK(rel_err(master, pc[i].second) < 1e-5);
      CHECK(rel_err(pg[i].second, master) < 1.0 / 128);  // within a bf16 ulp of the largest value
      CHECK(rel_err(pg[i].second, pc[i].second) < 1.0 / 128);
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
  models::GPT2 meta(c, {.device = Device::meta(), .dtype = DType::bf16});
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
  CHECK(masters == 4 * c.num_parameters());
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
  Tensor lossm = meta.loss(empty({2, 32}, {.dtype = DType::i32, .device = Device::meta()}),
                           empty({2, 32}, {.dtype = DType::i32, .device = Device::meta()}));
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
  // Activations peak alike. Workspaces: the GPU also spends CUB's sort scratch (embedding backward), which meta
  // does not plan; attention's (the large one) is planned as CUDA allocates it, so the rest is small.
  CHECK(lm.category(peak_cats[0]).peak_requested - meta_base[0] == lg.category(peak_cats[0]).peak_requested - gpu_base[0]);
  const int64_t ws_meta = lm.category(peak_cats[1]).peak_requested - meta_base[1];
  const int64_t ws_gpu = lg.category(peak_cats[1]).peak_requested - gpu_base[1];
  MESSAGE("workspace peak: planned ", ws_meta, " B, measured ", ws_gpu, " B");
  CHECK(ws_meta <= ws_gpu);
  CHECK(ws_gpu - ws_meta <= (int64_t(1) << 20));
}

TEST_CASE("cuda bf16: tally train --device cuda --dtype bf16 trains, evaluates, samples, and resumes bit for bit" * doctest::skip(kNoGpu)) {
  namespace fs = std::filesystem;
  auto config = [](const fs::path& out, std::vector<std::string> extra) {
    cli::Flags f("train", "", cli::train_flags());
    // SGD with momentum and few steps keep this affordable under the CPU emulator (CAME's factored step is slow there).
    std::vector<std::string> args = {"--model", "tiny", "--device", "cuda", "--dtype", "bf16", "--batch", "1", "--seq",
                                     "16", "--steps", "3", "--eval-every", "2", "--val-batches", "1", "--sample-tokens",
                                     "2", "--out", out.string(), "--optimizer", "sgd", "--lr", "3e-2", "--warmup", "1"};
    args.insert(args.end(), extra.begin(), extra.end());
    f.parse(args);
    return cli::run_config(f);
  };
  auto losses = [](const fs::path& log) {
    std::map<int64_t, double> m;
    std::ifstream in(log);
    std::string line;
    bool planned = false;
    while (std::getline(in, line)) {
      nlohmann::json j = nlohmann::json::parse(line);
      if (j.contains("loss") && !j.contains("skipped")) m[j["step"].get<int64_t>()] = j["loss"].get<double>();
      if (j.contains("memory_difference")) planned = true;
    }
    return std::make_pair(m, planned);
  };
  fs::path a = test::temp_dir("cuda_bf16_train_a"), b = test::temp_dir("cuda_bf16_train_b");
  {
    cli::Trainer t(config(a, {"--save-every", "2"}));
    t.run();
  }
  REQUIRE(fs::exists(a / "step-00000002"));
  {
    nlohmann::json state = nlohmann::json::parse(std::ifstream(a / "step-00000002" / "state.json"));
    CHECK(state["dtype"] == "bf16");
  }
  {
    cli::Trainer t(config(b, {}));
    t.resume(a / "step-00000002");
    t.run();
  }
  {
    cli::Flags f("train", "", cli::train_flags());
    f.parse({"--model", "tiny", "--device", "cuda", "--out", (b / "f32").string()});
    cli::Trainer t(cli::run_config(f));
    CHECK_THROWS_WITH_AS(t.resume(a / "step-00000002"), doctest::Contains("trained with --dtype bf16"), Error);
  }
  auto [la, planned] = losses(a / "log.jsonl");
  auto [lb, planned_b] = losses(b / "log.jsonl");
  (void)planned_b;
  CHECK(!planned);  // a CUDA run prints its plan beside the measurement only on the CPU (see Trainer::run)
  REQUIRE(la.size() == 3);
  for (const auto& [step, loss] : la) CHECK(std::isfinite(loss));
  REQUIRE(lb.size() == 1);  // step 3
  for (const auto& entry : lb) CHECK_MESSAGE(entry.second == la[entry.first], "step ", entry.first);  // exact
  fs::remove_all(a);
  fs::remove_all(b);
}

}  // TEST_SUITE
