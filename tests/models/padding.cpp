// The vocabulary's padding rows (Vp > V, a kernel-alignment detail) are invisible to training: a padded and an
// unpadded GPT-2 trained from the same initialisation on the same batches follow the same trajectory for every
// optimizer, keep the same optimizer state (no state for padding rows), and `tally memory`'s closed-form state bytes
// equal what the optimizer allocates either way. Models saved with one padding load with the other.
#include <doctest/doctest.h>

#include <cmath>

#include "core/autograd/node.h"
#include "models/gpt2.h"
#include "optim/clip.h"
#include "tests/models/test_helpers.h"
#include "optim/registry.h"

using namespace tally;
using namespace tally::models;

namespace {

struct Trained {
  std::unique_ptr<GPT2> model;
  std::unique_ptr<optim::Optimizer> opt;
  std::vector<double> losses;
};

// 20 steps of the tiny model (V 500, padded to a multiple of `multiple`) on one batch it learns by heart, with
// global-norm clipping at 1, as a run does.
Trained train(const std::string& optimizer, int64_t multiple) {
  Trained t;
  t.model = std::make_unique<GPT2>(test::tiny_config(multiple), GPT2Options{.seed = 7});
  t.opt = optim::make_optimizer(optimizer, t.model->parameters(), {{"lr", 1e-3}, {"weight-decay", 0.1}});
  const Tensor idx = test::random_tokens(2, 16, 500, 100), tgt = test::random_tokens(2, 16, 500, 200);
  const int64_t C = t.model->config().n_embd;
  for (int step = 0; step < 20; ++step) {
    t.opt->zero_grad();
    Tensor loss = t.model->loss(idx, tgt);
    loss.backward();
    // The key third of c_attn.bias has an exact gradient of zero (softmax ignores a constant added to every
    // score), so what backprop leaves there is rounding noise, which Adam-like steps blow up to +-lr: both runs set
    // it to zero, as the training golden does.
    for (size_t l = 0; l < t.model->h.size(); ++l)
      t.model->parameter(cat("transformer.h.", l, ".attn.c_attn.bias")).grad().slice(0, C, 2 * C).zero_();
    t.losses.push_back(loss.item());
    t.opt->step({.grad_scale = optim::clip_coefficient(optim::grad_norm(t.model->parameters()), 1.0)});
  }
  return t;
}

}  // namespace

TEST_SUITE("models") {

TEST_CASE("vocabulary padding: 20 steps padded and unpadded give the same losses, weights and optimizer state") {
  // The two models differ only in the head's GEMM (N = 512 or 500 columns), which BLAS may block differently: the
  // runs agree to float rounding, amplified by 20 steps of adaptive updates (seen: losses within 4e-6 relative with
  // OPENBLAS_CORETYPE=Haswell, bit-equal without; CAME's, which reaches a loss of 0.0035, is the largest). Tolerance
  // 5e-5 of (|loss| + 0.05): relative for losses of order 1, and at least 2.5e-6 absolute (7e-4 of 0.0035) for the
  // smallest, so that the rounding of other BLAS kernels stays well inside it. Before the optimizers ignored
  // padding, CAME's and Adafactor's state had 512 rows and their row means and clip differed.
  for (const std::string name : {"came", "adafactor", "adamw"}) {
    INFO("optimizer ", name);
    Trained padded = train(name, 128), plain = train(name, 1);
    REQUIRE(padded.model->config().padded_vocab_size == 512);
    REQUIRE(plain.model->config().padded_vocab_size == 500);
    for (size_t i = 0; i < padded.losses.size(); ++i) {
      INFO("step ", i + 1);
      CHECK(padded.losses[i] == doctest::Approx(plain.losses[i]).epsilon(5e-5).scale(0.05));
    }
    CHECK(padded.losses.back() < padded.losses.front() - 0.1);  // it trained
    for (const auto& [pname, p] : plain.model->named_parameters()) {
      Tensor q = padded.model->parameter(pname);
      if (pname == "transformer.wte.weight") {
        CHECK(q.slice(0, 500, 512).to_vector<double>() == std::vector<double>(12 * 32, 0.0));  // never updated
        q = q.slice(0, 0, 500);
      }
      test::check_close(pname, q, p.to_vector<double>(), 1e-3, 1e-5);
    }
    const auto sp = padded.opt->state_bytes(), su = plain.opt->state_bytes();
    REQUIRE(sp.size() == su.size());
    for (size_t i = 0; i < sp.size(); ++i) {
      REQUIRE(sp[i].states.size() == su[i].states.size());
      for (size_t k = 0; k < sp[i].states.size(); ++k) {
        const std::string& state = sp[i].states[k].name;
        INFO(sp[i].param, ":", state);
        CHECK(sp[i].states[k].shape == su[i].states[k].shape);
        Tensor a = padded.opt->state(sp[i].param, state), b = plain.opt->state(su[i].param, state);
        const std::vector<double> bv = b.to_vector<double>();
        double scale = 0;
        for (double v : bv) scale = std::max(scale, std::abs(v));
        test::check_close(sp[i].param + ":" + state, a, bv, 1e-3, 1e-4 * scale);
      }
    }
    // `tally memory`'s closed form, from the parameters as the optimizers see them, equals what was allocated.
    for (Trained* t : {&padded, &plain}) {
      std::vector<optim::NamedShape> shapes;
      for (const Tensor& p : t->model->parameters()) shapes.push_back(optim::named_shape(p));
      const auto predicted = optim::predict_optimizer_state(name, shapes);
      CHECK(optim::total_bytes(predicted) == t->opt->total_state_bytes());
    }
    CHECK(padded.opt->total_state_bytes() == plain.opt->total_state_bytes());
  }
}

TEST_CASE("vocabulary padding: a model loads its parameters across paddings; other shapes are refused") {
  GPT2 padded(test::tiny_config(128), {.seed = 3}), plain(test::tiny_config(1), {.seed = 4, .init = Init::none});
  for (const auto& [name, p] : padded.named_parameters()) plain.load_parameter(name, p, "padded");
  for (const auto& [name, p] : plain.named_parameters()) {
    Tensor q = padded.parameter(name);
    if (name == "transformer.wte.weight") q = q.slice(0, 0, 500);
    CHECK(p.to_vector<double>() == q.to_vector<double>());
  }
  GPT2 back(test::tiny_config(128), {.seed = 5});  // its own rows, then the unpadded one's: padding zeroed
  back.load_parameter("transformer.wte.weight", plain.wte.weight(), "plain");
  CHECK(back.wte.weight().to_vector<double>() == padded.wte.weight().to_vector<double>());
  CHECK_THROWS_WITH_AS(back.load_parameter("transformer.wpe.weight", zeros({16, 32}), "file.bin"),
                       doctest::Contains("'file.bin': tensor 'transformer.wpe.weight' is (16, 32)"), Error);
  CHECK_THROWS_WITH_AS(back.load_parameter("transformer.wte.weight", zeros({499, 32}), "file.bin"),
                       doctest::Contains("needs (512, 32)"), Error);
}

TEST_CASE("vocabulary padding: the padding rows of a parameter are checked") {
  Tensor w = zeros({4, 3});
  w.set_requires_grad(true);
  CHECK_THROWS_WITH_AS(w.set_padding_rows(4), doctest::Contains("keeps at least one row"), Error);
  CHECK_THROWS_WITH_AS(w.set_padding_rows(-1), doctest::Contains("[set_padding_rows]"), Error);
  w.set_padding_rows(1);
  CHECK(optim::updated_part(w).shape() == Shape{3, 3});
  CHECK(optim::updated_part(w).data_ptr() == w.data_ptr());
}

}  // TEST_SUITE
