// Finite-difference gradient checks in float64 for the nn modules (Linear, LayerNorm, Embedding, MLP, causal
// self-attention, Block) and a whole tiny GPT-2 (padded head, tied embedding): backprop gradients of a scalar loss
// must match central differences on a sample of entries of every parameter (and of the module input).
// Criterion: |analytic - numeric| <= 1e-7 + 1e-5 |numeric| with step 1e-6.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>

#include "core/autograd/node.h"
#include "core/ops.h"
#include "models/gpt2.h"
#include "nn/transformer.h"
#include "tests/models/test_helpers.h"

using namespace tally;

namespace {

const TensorOptions kF64{.dtype = DType::f64, .device = Device::cpu()};

// Fills every parameter with normal(0, scale) so that no gradient is trivially structured (LN ones, zero biases).
void randomise(const nn::Module& m, uint64_t seed, double scale) {
  NoGradGuard no_grad;
  Generator gen(seed);
  for (auto [name, p] : m.named_parameters()) normal_(p, gen, 0.0, scale);
}

// Compares d loss / d t (from backward) with central differences at `samples` entries of t (a leaf, contiguous f64).
void check_entries(const std::string& what, Tensor t, const std::function<double()>& loss, int samples, uint64_t seed) {
  REQUIRE(t.grad().defined());
  std::vector<double> analytic = t.grad().to_vector<double>();
  double* data = t.data<double>();
  const int64_t n = t.numel();
  const double h = 1e-6;
  for (int s = 0; s < samples && s < n; ++s) {
    int64_t i = samples >= n ? s : int64_t(philox(seed, uint64_t(s))[0] % uint64_t(n));
    double keep = data[i];
    data[i] = keep + h;
    double up = loss();
    data[i] = keep - h;
    double down = loss();
    data[i] = keep;
    double numeric = (up - down) / (2 * h);
    INFO(what, "[", i, "]: analytic ", analytic[size_t(i)], " numeric ", numeric);
    CHECK(std::abs(analytic[size_t(i)] - numeric) <= 1e-7 + 1e-5 * std::abs(numeric));
  }
}

// loss = sum(f(x) * R) for a fixed random R; checks every parameter of `m` (their gradients cleared first) and the
// input x.
void gradcheck_module(const nn::Module& m, Tensor x, const std::function<Tensor(const Tensor&)>& f, int samples = 12) {
  for (auto [name, p] : m.named_parameters()) p.clear_grad();
  Tensor probe;
  {
    NoGradGuard no_grad;
    Tensor out = f(x);
    Generator g(99);
    probe = randn(out.shape(), g, kF64);
  }
  auto loss_value = [&]() {
    NoGradGuard no_grad;
    return sum(f(x) * probe).item();
  };
  x.set_requires_grad(true);
  Tensor l = sum(f(x) * probe);
  l.backward();
  check_entries("input", x, loss_value, samples, 1);
  uint64_t seed = 2;
  for (auto [name, p] : m.named_parameters()) check_entries(name, p, loss_value, samples, seed++);
}

Tensor random_input(const Shape& shape, uint64_t seed) {
  Generator g(seed);
  return randn(shape, g, kF64);
}

const nn::BlockConfig kBlock{.n_embd = 8, .n_head = 2, .ln_eps = 1e-5, .dropout = 0.0};

}  // namespace

TEST_SUITE("nn") {

TEST_CASE("gradcheck f64: Linear with and without bias") {
  nn::Linear with("lin", 5, 3, kF64), without("lin_nb", 5, 3, kF64, {.bias = nn::Bias::no});
  randomise(with, 1, 0.5);
  randomise(without, 2, 0.5);
  CHECK(without.named_parameters().size() == 1);
  gradcheck_module(with, random_input({2, 4, 5}, 3), [&](const Tensor& x) { return with.forward(x); });
  gradcheck_module(without, random_input({4, 5}, 4), [&](const Tensor& x) { return without.forward(x); });
}

TEST_CASE("gradcheck f64: LayerNorm and Embedding") {
  nn::LayerNorm ln("ln", 6, kF64);
  randomise(ln, 5, 0.7);
  gradcheck_module(ln, random_input({3, 6}, 6), [&](const Tensor& x) { return ln.forward(x); });
  nn::Embedding emb("emb", 7, 4, kF64);
  randomise(emb, 7, 1.0);
  Tensor ids = from_vector<int32_t>({1, 3, 3, 6, 0, 1}, {2, 3});
  // The input of interest is the table: check through a module whose "input" is unused.
  gradcheck_module(emb, random_input({1}, 8), [&](const Tensor& x) { return emb.forward(ids) * sum(x); }, 28);
}

TEST_CASE("gradcheck f64: MLP, causal self-attention and Block") {
  Generator gen(0);
  nn::MLP mlp("mlp", kBlock, kF64, gen);
  nn::CausalSelfAttention attn("attn", kBlock, kF64, gen);
  nn::Block block("h.0", kBlock, kF64, gen);
  randomise(mlp, 10, 0.4);
  randomise(attn, 11, 0.4);
  randomise(block, 12, 0.4);
  gradcheck_module(mlp, random_input({2, 3, 8}, 13), [&](const Tensor& x) { return mlp.forward(x); });
  gradcheck_module(attn, random_input({2, 5, 8}, 14), [&](const Tensor& x) { return attn.forward(x); });
  gradcheck_module(block, random_input({2, 5, 8}, 15), [&](const Tensor& x) { return block.forward(x); });
  // The form GPT-2 trains with: the block's normed input given, its output joined with the next LayerNorm (whose
  // parameters are checked too): both outputs, the sum and its norm, weigh in the loss.
  nn::LayerNorm next("h.1.ln_1", kBlock.n_embd, kF64);
  randomise(next, 16, 0.4);
  const auto joined = [&](const Tensor& x) {
    const AddLayerNorm out = block.forward(x, block.ln_1.forward(x), next);
    return cat({out.sum, out.normed}, -1);
  };
  gradcheck_module(block, random_input({2, 5, 8}, 17), joined);
  gradcheck_module(next, random_input({2, 5, 8}, 18), joined);
}

TEST_CASE("gradcheck f64: a tiny GPT-2 (tied, padded head) matches central differences on every parameter") {
  models::GPT2Config c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.block_size = 8;
  c.vocab_size = 11;
  c.padded_vocab_size = 16;
  models::GPT2 model(c, {.dtype = DType::f64, .seed = 1});
  randomise(model, 20, 0.3);
  {
    NoGradGuard no_grad;  // the padded rows stay zero, as the model keeps them
    Tensor pad = model.wte.weight().slice(0, 11, 16);
    pad.zero_();
  }
  Tensor idx = test::random_tokens(2, 6, 11, 21), tgt = test::random_tokens(2, 6, 11, 22);
  auto loss_value = [&]() {
    NoGradGuard no_grad;
    return model.loss(idx, tgt).item();
  };
  model.loss(idx, tgt).backward();
  uint64_t seed = 30;
  for (auto [name, p] : model.named_parameters()) check_entries(name, p, loss_value, 10, seed++);
}

}  // TEST_SUITE
