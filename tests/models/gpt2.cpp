// GPT-2 model tests: presets and exact parameter counts (on the meta device, so nothing is allocated), parameter
// names and order, ledger accounting, initialisation rules and determinism, padded vs unpadded heads, loss at
// initialisation, meta-device memory prediction equal to the CPU's, dropout modes and argument errors.
#include <doctest/doctest.h>

#include <cmath>
#include <set>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "models/gpt2.h"
#include "tests/models/test_helpers.h"

using namespace tally;
using namespace tally::models;

TEST_SUITE("models") {

TEST_CASE("gpt2 presets: closed-form parameter counts of the released sizes") {
  GPT2Config c = GPT2Config::preset("gpt2");
  CHECK(c.n_layer == 12);
  CHECK(c.n_head == 12);
  CHECK(c.n_embd == 768);
  CHECK(c.vocab_size == 50257);
  CHECK(c.padded_vocab_size == 50304);
  CHECK(c.num_parameters() == 124'475'904);  // llm.c's count (padded vocabulary)
  c.padded_vocab_size = c.vocab_size;
  CHECK(c.num_parameters() == 124'439'808);  // Hugging Face's count
  CHECK(GPT2Config::preset("gpt2-medium").n_layer == 24);
  CHECK(GPT2Config::preset("gpt2-medium").n_embd == 1024);
  CHECK(GPT2Config::preset("gpt2-large").n_head == 20);
  CHECK(GPT2Config::preset("gpt2-xl").n_embd == 1600);
  CHECK(GPT2Config::preset("gpt2-xl").n_head == 25);
  CHECK(GPT2Config::preset("d6").n_embd == 384);
  CHECK(GPT2Config::preset("small") == GPT2Config::preset("d4"));
  for (const std::string& name : GPT2Config::preset_names()) CHECK_NOTHROW(GPT2Config::preset(name).validate());
  CHECK_THROWS_WITH_AS(GPT2Config::preset("gpt3"), doctest::Contains("unknown model preset 'gpt3'"), Error);
  CHECK(padded_vocab(50257) == 50304);
  CHECK(padded_vocab(50257, 1) == 50257);
}

TEST_CASE("gpt2 124M on meta: ledger parameter bytes are exactly 4 x the parameter count") {
  for (int64_t multiple : {int64_t(128), int64_t(1)}) {
    GPT2Config c = GPT2Config::preset("gpt2");
    c.padded_vocab_size = padded_vocab(c.vocab_size, multiple);
    const int64_t expected = multiple == 128 ? 124'475'904 : 124'439'808;
    Ledger& led = ledger(Device::meta());
    const int64_t before = led.category(Category::parameter).live_requested;
    const int64_t held_before = led.category(Category::parameter).live_held;
    {
      GPT2 model(c, {.device = Device::meta()});
      CHECK(model.num_parameters() == expected);
      CHECK(model.named_parameters().size() == size_t(4 + 12 * 12));
      CHECK(led.category(Category::parameter).live_requested - before == 4 * expected);
      int64_t held = 0;
      for (const auto& [name, p] : model.named_parameters()) {
        held += cpu_held_bytes(p.nbytes());
        CHECK(led.owner(name).live_requested == p.nbytes());
      }
      CHECK(led.category(Category::parameter).live_held - held_before == held);
      CHECK(led.owner("transformer.wte.weight").live_requested == 4 * c.padded_vocab_size * 768);
      CHECK(led.owner("lm_head.weight").live_requested == 0);  // tied: never a second tensor
    }
    CHECK(led.category(Category::parameter).live_requested == before);  // freed with the model
  }
}

TEST_CASE("gpt2 parameters: Hugging Face names, registration order, names and flags on the tensors") {
  GPT2 model(test::tiny_config(), {.seed = 1});
  std::vector<std::string> names;
  for (const auto& [name, p] : model.named_parameters()) {
    names.push_back(name);
    CHECK(p.name() == name);
    CHECK(p.requires_grad());
    CHECK(p.is_leaf());
    CHECK(ledger().owner(name).live_requested == p.nbytes());
  }
  std::vector<std::string> expected = {"transformer.wte.weight", "transformer.wpe.weight"};
  for (int i = 0; i < 2; ++i)
    for (const char* s : {"ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                          "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                          "mlp.c_proj.weight", "mlp.c_proj.bias"})
      expected.push_back(cat("transformer.h.", i, ".", s));
  expected.push_back("transformer.ln_f.weight");
  expected.push_back("transformer.ln_f.bias");
  CHECK(names == expected);
  CHECK(model.num_parameters() == test::tiny_config().num_parameters());
  CHECK(model.parameter("transformer.h.1.mlp.c_fc.weight").shape() == Shape{128, 32});  // (OUT, IN)
  CHECK(model.parameter("transformer.h.0.attn.c_attn.weight").shape() == Shape{96, 32});
  CHECK(model.parameter("transformer.wte.weight").shape() == Shape{512, 32});
  CHECK_THROWS_WITH_AS(model.parameter("lm_head.weight"), doctest::Contains("has no parameter 'lm_head.weight'"), Error);
  CHECK(model.h[1]->mlp.name() == "transformer.h.1.mlp");
}

TEST_CASE("gpt2 init: GPT-2 rules, padded rows zero, deterministic from the seed") {
  GPT2Config c = test::tiny_config();
  c.n_embd = 64;  // enough elements for the spread checks below
  GPT2 a(c, {.seed = 7}), b(c, {.seed = 7}), other(c, {.seed = 8});
  auto values = [](const GPT2& m, const std::string& n) { return m.parameter(n).to_vector<double>(); };
  for (const auto& [name, p] : a.named_parameters()) CHECK(values(a, name) == values(b, name));
  CHECK(values(a, "transformer.h.0.mlp.c_fc.weight") != values(other, "transformer.h.0.mlp.c_fc.weight"));

  auto spread = [](const std::vector<double>& v) {
    double s = 0, s2 = 0;
    for (double x : v) {
      s += x;
      s2 += x * x;
    }
    double m = s / double(v.size());
    return std::sqrt(s2 / double(v.size()) - m * m);
  };
  const double proj = 0.02 / std::sqrt(2.0 * double(c.n_layer));
  // Relative tolerances (scale 0; doctest's default scale would make them absolute, wider than the values): a sample
  // standard deviation of N draws is within about 1/sqrt(2N) of the true one (0.6% for c_fc's 16,384, 1.1% for
  // attn.c_proj's 4,096), so 5-8% never fails by chance and still tells 0.02 from the projections' scaled sigma.
  CHECK(spread(values(a, "transformer.h.0.mlp.c_fc.weight")) == doctest::Approx(0.02).epsilon(0.05).scale(0));
  CHECK(spread(values(a, "transformer.h.1.mlp.c_proj.weight")) == doctest::Approx(proj).epsilon(0.05).scale(0));
  CHECK(spread(values(a, "transformer.h.0.attn.c_proj.weight")) == doctest::Approx(proj).epsilon(0.08).scale(0));
  CHECK(spread(values(a, "transformer.h.0.attn.c_attn.weight")) == doctest::Approx(0.02).epsilon(0.05).scale(0));
  CHECK(spread(values(a, "transformer.wpe.weight")) == doctest::Approx(0.02).epsilon(0.05).scale(0));
  for (double x : values(a, "transformer.h.0.ln_1.weight")) CHECK(x == 1.0);
  for (double x : values(a, "transformer.h.0.attn.c_attn.bias")) CHECK(x == 0.0);
  for (double x : values(a, "transformer.ln_f.bias")) CHECK(x == 0.0);
  std::vector<double> wte = values(a, "transformer.wte.weight");
  double pad_abs = 0, real_abs = 0;
  for (size_t i = 0; i < wte.size(); ++i) (int64_t(i) / c.n_embd < c.vocab_size ? real_abs : pad_abs) += std::abs(wte[i]);
  CHECK(pad_abs == 0.0);
  CHECK(real_abs > 0.0);
  CHECK(spread(std::vector<double>(wte.begin(), wte.begin() + c.vocab_size * c.n_embd)) ==
        doctest::Approx(0.02).epsilon(0.02).scale(0));

  // The first draws of the stream land in wte row 0: the init consumes counters in the documented order.
  std::vector<float> row0 = a.wte.weight().slice(0, 0, 1).to_vector<float>();
  for (int64_t i = 0; i < c.n_embd; ++i) {
    auto r = philox(7, uint64_t(i));
    CHECK(row0[size_t(i)] == float(0.02 * double(normal_from_bits(r[0], r[1]))));
  }
  // wpe draws right after the V*C counters of wte.
  auto r = philox(7, uint64_t(c.vocab_size * c.n_embd));
  CHECK(a.wpe.weight().to_vector<float>()[0] == float(0.02 * double(normal_from_bits(r[0], r[1]))));
}

TEST_CASE("gpt2 forward: padded and unpadded heads give the same logits and loss") {
  GPT2Config padded = test::tiny_config(128), plain = test::tiny_config(1);
  REQUIRE(padded.padded_vocab_size == 512);
  REQUIRE(plain.padded_vocab_size == 500);
  GPT2 a(padded, {.seed = 3}), b(plain, {.seed = 3});
  Tensor idx = test::random_tokens(2, 8, 500, 11), tgt = test::random_tokens(2, 8, 500, 12);
  auto ra = a.forward_with_loss(idx, tgt), rb = b.forward_with_loss(idx, tgt);
  CHECK(ra.logits.shape() == Shape{2, 8, 500});
  CHECK(rb.logits.shape() == Shape{2, 8, 500});
  // The heads are GEMMs with N = 512 and N = 500 columns: BLAS may block them differently (another kernel, another
  // summation order over K = 32), so the two agree to float rounding, not bit for bit. One model computing the same
  // product twice makes the same call, and that is bit-identical.
  test::check_close("logits, padded vs unpadded head", ra.logits, rb.logits.to_vector<double>(), 1e-5, 1e-6);
  CHECK(ra.loss.item() == doctest::Approx(rb.loss.item()).epsilon(1e-6));
  CHECK(a.forward(idx).to_vector<double>() == ra.logits.to_vector<double>());
  CHECK(a.loss(idx, tgt).item() == ra.loss.item());
  // Near uniform predictions at initialisation: loss close to ln V.
  CHECK(ra.loss.item() == doctest::Approx(std::log(500.0)).epsilon(0.02));

  // The gradient reaches every parameter; padded rows of wte get none (their logits are never used).
  ra.loss.backward();
  for (const auto& [name, p] : a.named_parameters()) {
    const std::string label = name;  // no structured binding inside INFO's lambda (clang 14)
    INFO(label);
    REQUIRE(p.grad().defined());
    for (double g : p.grad().to_vector<double>()) REQUIRE(std::isfinite(g));
  }
  std::vector<double> gw = a.wte.weight().grad().to_vector<double>();
  double pad = 0;
  for (size_t i = 500 * 32; i < gw.size(); ++i) pad += std::abs(gw[i]);
  CHECK(pad == 0.0);
}

TEST_CASE("gpt2 forward: activations are recorded per module in the ledger") {
  GPT2 model(test::tiny_config(), {.seed = 1});
  Tensor idx = test::random_tokens(2, 16, 500, 1), tgt = test::random_tokens(2, 16, 500, 2);
  Ledger& led = ledger();
  Tensor loss = model.loss(idx, tgt);
  const int64_t B = 2, T = 16, C = 32;
  // c_fc output (B, T, 4C) is kept for gelu's backward; its owner is the Linear's name.
  CHECK(led.owner("transformer.h.1.mlp.c_fc").live_requested >= B * T * 4 * C * 4);
  CHECK(led.owner("transformer.h.0.attn.c_attn").live_requested >= B * T * 3 * C * 4);
  CHECK(led.owner("lm_head").live_requested == B * T * 512 * 4);  // the (B, T, Vp) logits
  // The token embedding's output is consumed by the position add and not saved; the sum is (ln_1 keeps it).
  CHECK(led.owner("transformer.wte").live_requested == 0);
  CHECK(led.owner("transformer.wpe").live_requested == B * T * C * 4);
  loss.backward();
  loss = Tensor();
  CHECK(led.owner("lm_head").live_requested == 0);  // freed with the graph
  CHECK(led.owner("transformer.h.1.mlp.c_fc").live_requested == 0);
}

TEST_CASE("gpt2 loss in row chunks equals the unchunked loss and gradients; the logits are never held whole") {
  // 2 x 16 = 32 positions in chunks of 7 rows (7, 7, 7, 7, 4), against one unchunked head; padded vocabulary.
  const GPT2Config c = test::tiny_config(128);
  GPT2 whole(c, {.seed = 4, .loss_chunk_rows = 0}), chunked(c, {.seed = 4, .loss_chunk_rows = 7});
  Tensor idx = test::random_tokens(2, 16, 500, 21), tgt = test::random_tokens(2, 16, 500, 22);
  Ledger& led = ledger();
  led.reset_peaks();
  const int64_t before = led.owner("lm_head").live_requested;
  Tensor lc = chunked.loss(idx, tgt);
  const int64_t B = 2, T = 16, C = 32, Vp = 512;
  // Held until backward: the loss, dx (B*T, C) and the head's gradient (Vp, C); the per-row losses and one chunk's
  // (7, Vp) logits (workspace) lived during the forward pass only.
  CHECK(led.owner("lm_head").live_requested - before == 4 + B * T * C * 4 + Vp * C * 4);
  CHECK(led.owner("linear_cross_entropy").peak_requested == 7 * Vp * 4 + 7 * 4);
  CHECK(led.owner("linear_cross_entropy").live_requested == 0);
  Tensor lw = whole.loss(idx, tgt);
  CHECK(lc.item() == doctest::Approx(lw.item()).epsilon(1e-6));
  // Scaled as the trainer scales a micro-batch's loss: the gradient of the loss reaches the chunked path's backward.
  (lc * 0.25).backward();
  (lw * 0.25).backward();
  const auto pw = whole.named_parameters(), pc = chunked.named_parameters();
  REQUIRE(pw.size() == pc.size());
  for (size_t i = 0; i < pw.size(); ++i) {
    const std::string label = pw[i].first;
    INFO(label);
    // Chunks change the summation order of the head's gradient (float rounding only).
    test::check_close("gradient, chunked vs whole", pc[i].second.grad(), pw[i].second.grad().to_vector<double>(), 1e-5,
                      1e-6);
  }
  std::vector<double> gw = chunked.wte.weight().grad().to_vector<double>();
  double pad = 0;
  for (size_t i = 500 * 32; i < gw.size(); ++i) pad += std::abs(gw[i]);
  CHECK(pad == 0.0);  // padded rows of the head get no gradient
  {
    NoGradGuard no_grad;  // evaluation: one chunk's logits, no gradient buffers
    const int64_t live = led.owner("lm_head").live_requested;
    Tensor eval = chunked.loss(idx, tgt);
    CHECK(led.owner("lm_head").live_requested - live == 4);
    CHECK(eval.item() == lc.item());
  }
  CHECK_THROWS_WITH_AS(GPT2(c, {.loss_chunk_rows = -1}), doctest::Contains("[gpt2] loss_chunk_rows must be >= 0"), Error);
}

TEST_CASE("gpt2 on meta predicts the CPU step's memory exactly, per category") {
  GPT2Config c = test::tiny_config();
  Tensor idx_cpu = test::random_tokens(2, 16, 500, 5), tgt_cpu = test::random_tokens(2, 16, 500, 6);
  struct Peaks {
    std::vector<int64_t> requested, held;
  };
  auto run = [&](Device d, int64_t loss_chunk_rows) {
    Ledger& led = ledger(d);
    std::vector<int64_t> live(kNumCategories);
    for (int k = 0; k < kNumCategories; ++k) live[k] = led.category(Category(k)).live_requested;
    led.reset_peaks();
    Peaks p;
    {
      GPT2 model(c, {.device = d, .seed = 1, .loss_chunk_rows = loss_chunk_rows});
      Tensor idx = empty({2, 16}, {DType::i32, d}), tgt = empty({2, 16}, {DType::i32, d});
      idx.copy_(idx_cpu);
      tgt.copy_(tgt_cpu);
      Tensor loss = model.loss(idx, tgt);
      loss.backward();
      for (int k = 0; k < kNumCategories; ++k) {
        p.requested.push_back(led.category(Category(k)).peak_requested - live[k]);
        p.held.push_back(led.category(Category(k)).peak_held);
      }
    }
    return p;
  };
  for (const int64_t rows : {int64_t(0), int64_t(10)}) {  // the head unchunked, and in chunks of 10 rows
    INFO("loss_chunk_rows ", rows);
    Peaks cpu = run(Device::cpu(), rows), meta = run(Device::meta(), rows);
    for (int k = 0; k < kNumCategories; ++k) {
      INFO(category_name(Category(k)));
      CHECK(cpu.requested[k] == meta.requested[k]);
    }
    CHECK(cpu.requested[int(Category::parameter)] == 4 * c.num_parameters());
    CHECK(cpu.requested[int(Category::gradient)] == 4 * c.num_parameters());
    CHECK(cpu.requested[int(Category::activation)] > 0);
  }
}

TEST_CASE("gpt2 dropout: active in train mode only, reproducible from the seed") {
  GPT2Config c = test::tiny_config();
  c.dropout = 0.2;
  Tensor idx = test::random_tokens(2, 8, 500, 1), tgt = test::random_tokens(2, 8, 500, 2);
  GPT2 a(c, {.seed = 5}), b(c, {.seed = 5});
  double a1 = a.loss(idx, tgt).item(), a2 = a.loss(idx, tgt).item(), b1 = b.loss(idx, tgt).item();
  CHECK(a1 != a2);  // a fresh mask each call
  CHECK(a1 == b1);  // the same stream for the same seed
  a.eval();
  CHECK(!a.h[0]->mlp.dropout.training());
  double e1 = a.loss(idx, tgt).item(), e2 = a.loss(idx, tgt).item();
  CHECK(e1 == e2);
  c.dropout = 0.0;
  GPT2 plain(c, {.seed = 5});
  CHECK(plain.loss(idx, tgt).item() == e1);  // eval mode == no dropout
}

TEST_CASE("gpt2 dropout: a forward pass takes exactly dropout_draws counters of the stream") {
  GPT2Config c = test::tiny_config();
  c.dropout = 0.1;
  Tensor idx = test::random_tokens(3, 8, 500, 1), tgt = test::random_tokens(3, 8, 500, 2);
  for (const int64_t chunk_rows : {int64_t(0), int64_t(5)}) {  // the head and loss whole, and in row chunks
    GPT2 m(c, {.seed = 5, .loss_chunk_rows = chunk_rows});
    const uint64_t before = m.dropout_generator().offset();
    (void)m.loss(idx, tgt);
    CHECK(m.dropout_generator().offset() - before == m.dropout_draws(24));
    CHECK(m.dropout_draws(24) == uint64_t(24 * c.n_embd * (1 + 2 * c.n_layer)));
    m.eval();
    CHECK(m.dropout_draws(24) == 0);
    const uint64_t at = m.dropout_generator().offset();
    (void)m.loss(idx, tgt);
    CHECK(m.dropout_generator().offset() == at);
  }
  c.dropout = 0.0;
  CHECK(GPT2(c, {.seed = 5}).dropout_draws(24) == 0);
}

TEST_CASE("gpt2 argument errors name the problem") {
  GPT2Config c = test::tiny_config();
  GPT2 model(c, {.seed = 1});
  Tensor ok = test::random_tokens(1, 4, 500, 1);
  CHECK_THROWS_WITH_AS(model.forward(ok.to(DType::i64)), doctest::Contains("idx must be i32 (B, T)"), Error);
  CHECK_THROWS_WITH_AS(model.forward(test::random_tokens(1, 33, 500, 1)), doctest::Contains("0 < T <= 32"), Error);
  CHECK_THROWS_WITH_AS(model.forward(from_vector<int32_t>({1, 2, 500}, {1, 3})),
                       doctest::Contains("vocabulary token 500 at position 2 of (1, 3) is outside [0, 500)"), Error);
  CHECK_THROWS_WITH_AS(model.loss(ok, test::random_tokens(1, 3, 500, 1)), doctest::Contains("must have the shape of idx"),
                       Error);
  GPT2Config bad = c;
  bad.n_head = 5;
  CHECK_THROWS_WITH_AS(GPT2{bad}, doctest::Contains("n_embd (32) must be a positive multiple of n_head (5)"), Error);
  bad = c;
  bad.padded_vocab_size = 499;
  CHECK_THROWS_WITH_AS(GPT2{bad}, doctest::Contains("padded_vocab_size (499) must be at least vocab_size (500)"), Error);
  CHECK_THROWS_WITH_AS(GPT2(c, {.dtype = DType::bf16}), doctest::Contains("must be f32 or f64"), Error);
}

}  // TEST_SUITE
