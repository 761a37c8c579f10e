// Generation tests: the key/value-cached forward gives the full forward's logits (f32 to 1e-5, f64 to 1e-12),
// greedy decoding equals argmax decoding without a cache, sampling follows softmax(logits / temperature) restricted to
// the top k, and a seed fixes the sample.
#include <doctest/doctest.h>

#include <cmath>
#include <map>

#include "models/generate.h"
#include "tests/models/test_helpers.h"

using namespace tally;
using namespace tally::models;

TEST_SUITE("models") {

TEST_CASE("kv cache: incremental logits equal the full forward's") {
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(std::string(dtype_name(dtype)));
    GPT2 model(test::tiny_config(), {.dtype = dtype, .seed = 41});
    const int64_t B = 2, T = 14, V = 500;
    Tensor idx = test::random_tokens(B, T, V, 42);
    std::vector<double> full = model.forward(idx).to_vector<double>();  // (B, T, V)
    KVCache cache = model.make_kv_cache(B, T);
    // A 5-token prefill, then one token at a time, then the last 3 together.
    std::vector<std::pair<int64_t, int64_t>> chunks = {{0, 5}};
    for (int64_t t = 5; t < T - 3; ++t) chunks.push_back({t, t + 1});
    chunks.push_back({T - 3, T});
    const double tol = dtype == DType::f32 ? 1e-5 : 1e-12;
    for (const auto& chunk : chunks) {
      const int64_t t0 = chunk.first, t1 = chunk.second;  // not a structured binding: INFO captures them (clang 14)
      Tensor part = model.forward_cached(idx.slice(1, t0, t1).contiguous(), cache);
      REQUIRE(part.shape() == Shape{B, t1 - t0, V});
      std::vector<double> got = part.to_vector<double>(), want;
      for (int64_t b = 0; b < B; ++b)
        want.insert(want.end(), full.begin() + (b * T + t0) * V, full.begin() + (b * T + t1) * V);
      test::Closeness c = test::compare(got, want, tol, tol);
      INFO("positions [", t0, ", ", t1, "): max |diff| ", c.max_abs);
      CHECK(c.ok());
    }
    CHECK(cache.length == T);
    CHECK_THROWS_WITH_AS(model.forward_cached(idx.slice(1, 0, 1).contiguous(), cache), doctest::Contains("positions filled"),
                         Error);
    // Only the last position's logits: the same values.
    KVCache c2 = model.make_kv_cache(B, T);
    Tensor last = model.forward_cached(idx, c2, LogitPositions::last);
    CHECK(last.shape() == Shape{B, 1, V});
    std::vector<double> want;
    for (int64_t b = 0; b < B; ++b) want.insert(want.end(), full.begin() + (b * T + T - 1) * V, full.begin() + (b * T + T) * V);
    CHECK(test::compare(last.to_vector<double>(), want, tol, tol).ok());
  }
}

TEST_CASE("generate: greedy equals argmax decoding without a cache, and is deterministic") {
  GPT2 model(test::tiny_config(), {.seed = 43});
  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4}, {400, 300, 200, 100}};
  auto a = generate(model, prompts, {.max_new_tokens = 12, .top_k = 1, .seed = 1});
  auto b = generate(model, prompts, {.max_new_tokens = 12, .top_k = 1, .seed = 999});
  CHECK(a == b);  // greedy ignores the stream
  for (size_t row = 0; row < prompts.size(); ++row) {
    std::vector<int32_t> seq = prompts[row];
    for (int step = 0; step < 12; ++step) {
      Tensor logits = model.forward(from_vector(seq, {1, int64_t(seq.size())}));
      std::vector<float> last = logits.select(1, -1).to_vector<float>();
      seq.push_back(int32_t(std::max_element(last.begin(), last.end()) - last.begin()));
    }
    CHECK(std::vector<int32_t>(seq.begin() + 4, seq.end()) == a[row]);
  }
}

TEST_CASE("generate: the seed fixes the sample; stop token, callback, mode restored") {
  GPT2 model(test::tiny_config(), {.seed = 44});
  std::vector<std::vector<int32_t>> prompts = {{7}, {8}, {9}};
  auto a = generate(model, prompts, {.max_new_tokens = 20, .temperature = 1.0, .seed = 5});
  auto b = generate(model, prompts, {.max_new_tokens = 20, .temperature = 1.0, .seed = 5});
  auto c = generate(model, prompts, {.max_new_tokens = 20, .temperature = 1.0, .seed = 6});
  CHECK(a == b);
  CHECK(a != c);
  for (const auto& row : a) CHECK(row.size() == 20);
  CHECK(model.training());  // generate ran in eval mode and restored train mode

  // Stop on the token row 0 sampled at step 3 (the same seed reproduces it): row 0 ends there.
  int32_t stop = a[0][3];
  int64_t calls = 0;
  auto s = generate(model, prompts, {.max_new_tokens = 20, .seed = 5, .stop_token = stop,
                                     .on_step = [&](int64_t step, std::span<const int32_t> toks) {
                                       CHECK(step == calls);
                                       CHECK(toks.size() == 3);
                                       ++calls;
                                     }});
  size_t first_stop = size_t(std::find(a[0].begin(), a[0].end(), stop) - a[0].begin());
  CHECK(s[0] == std::vector<int32_t>(a[0].begin(), a[0].begin() + first_stop + 1));
  CHECK(calls >= 4);

  CHECK_THROWS_WITH_AS(generate(model, {{1, 2}, {3}}, {}), doctest::Contains("prompts must have equal lengths"), Error);
  CHECK_THROWS_WITH_AS(generate(model, {{1}}, {.max_new_tokens = 40}), doctest::Contains("exceeds the context of 32"),
                       Error);
  CHECK_THROWS_WITH_AS(generate(model, {{1}}, {.temperature = 0}), doctest::Contains("temperature must be positive"),
                       Error);
  CHECK_THROWS_WITH_AS(generate(model, {{600}}, {.max_new_tokens = 2}),
                       doctest::Contains("vocabulary token 600 at position 0 of"), Error);

  // vocab_limit: ids at or past it are never drawn (a tokenizer's vocabulary under a model's larger one), however hot
  // the sample; without it, a sample this hot draws them.
  auto hot = [&](int64_t limit) {
    int32_t most = 0;
    for (uint64_t seed = 0; seed < 8; ++seed)
      for (const auto& row :
           generate(model, prompts, {.max_new_tokens = 20, .temperature = 1e6, .seed = seed, .vocab_limit = limit}))
        for (int32_t t : row) most = std::max(most, t);
    return most;
  };
  CHECK(hot(10) < 10);
  CHECK(hot(0) >= 10);
  CHECK(hot(1'000'000) >= 10);  // beyond the model's vocabulary: all of it
}

TEST_CASE("sample_token: frequencies follow softmax(logits / temperature) over the top k") {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 1.0f, 1.5f};
  auto frequencies = [&](double temperature, int64_t k, int n) {
    Generator gen(123);
    std::vector<double> f(logits.size(), 0.0);
    for (int i = 0; i < n; ++i) f[size_t(sample_token(logits, temperature, k, gen))] += 1.0 / n;
    CHECK(gen.offset() == uint64_t(n));  // one draw per sample
    return f;
  };
  auto expected = [&](double temperature, std::vector<int> keep) {
    std::vector<double> p(logits.size(), 0.0);
    double z = 0;
    for (int i : keep) z += p[size_t(i)] = std::exp(logits[size_t(i)] / temperature);
    for (double& x : p) x /= z;
    return p;
  };
  const int n = 40000;
  struct Case {
    double temperature;
    int64_t k;
    std::vector<int> keep;
  };
  for (const Case& cs : {Case{1.0, 0, {0, 1, 2, 3, 4}}, Case{0.5, 0, {0, 1, 2, 3, 4}}, Case{2.0, 3, {1, 3, 4}}}) {
    std::vector<double> f = frequencies(cs.temperature, cs.k, n), p = expected(cs.temperature, cs.keep);
    for (size_t i = 0; i < p.size(); ++i) {
      INFO("T=", cs.temperature, " k=", cs.k, " token ", i, ": ", f[i], " vs ", p[i]);
      CHECK(std::abs(f[i] - p[i]) <= 4.5 * std::sqrt(p[i] * (1 - p[i]) / n) + 1e-12);  // ~4.5 sigma
    }
  }
  Generator g(1);
  CHECK(sample_token(logits, 1.0, 1, g) == 1);
  CHECK(sample_token(std::vector<float>{3.0f, 3.0f, 1.0f}, 1.0, 1, g) == 0);  // ties: lowest id first
  CHECK_THROWS_WITH_AS(sample_token(logits, -1.0, 0, g), doctest::Contains("temperature must be positive"), Error);
}

}  // TEST_SUITE
