// Helpers shared by the model tests: small configurations, deterministic token batches, and tensor comparison
// with a combined tolerance |a - b| <= atol + rtol * |b| that reports the worst element.
#pragma once
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/random.h"
#include "models/gpt2.h"

namespace tally::test {

// A two-layer GPT-2 small enough for unit tests; vocab 500 padded to 512 exercises the padded head.
inline models::GPT2Config tiny_config(int64_t padded_multiple = 128) {
  models::GPT2Config c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 32;
  c.block_size = 32;
  c.vocab_size = 500;
  c.padded_vocab_size = models::padded_vocab(500, padded_multiple);
  return c;
}

// (B, T) i32 tokens in [0, V) from a Philox stream.
inline Tensor random_tokens(int64_t B, int64_t T, int64_t V, uint64_t seed, Device device = Device::cpu()) {
  Generator gen(seed);
  std::vector<int32_t> ids(size_t(B * T));
  uint64_t first = gen.advance(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(philox(seed, first + i)[0] % uint32_t(V));
  return from_vector(ids, {B, T}, {.dtype = DType::i32, .device = device});
}

struct Closeness {
  double worst_excess = 0;  // max over elements of |a-b| - (atol + rtol |b|); <= 0 means all close
  double max_abs = 0;       // max |a - b|
  double max_rel = 0;       // max |a - b| / max(|b|, tiny)
  size_t worst_index = 0;
  bool ok() const { return worst_excess <= 0; }
};

inline Closeness compare(const std::vector<double>& a, const std::vector<double>& b, double rtol, double atol) {
  REQUIRE(a.size() == b.size());
  Closeness c;
  c.worst_excess = -1e300;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = std::abs(a[i] - b[i]);
    double excess = d - (atol + rtol * std::abs(b[i]));
    if (!(excess <= c.worst_excess) || std::isnan(d)) {
      c.worst_excess = std::isnan(d) ? 1e300 : excess;
      c.worst_index = i;
    }
    c.max_abs = std::max(c.max_abs, d);
    c.max_rel = std::max(c.max_rel, d / std::max(std::abs(b[i]), 1e-30));
  }
  if (a.empty()) c.worst_excess = 0;
  return c;
}

// CHECKs that tensor `a` matches the values `b` within atol + rtol |b|, naming `what` and the worst element.
inline void check_close(const std::string& what, const Tensor& a, const std::vector<double>& b, double rtol, double atol) {
  std::vector<double> av = a.to_vector<double>();
  Closeness c = compare(av, b, rtol, atol);
  INFO(what, ": max |a-b| ", c.max_abs, ", max rel ", c.max_rel, ", worst at ", c.worst_index, " (a ",
       av.empty() ? 0.0 : av[c.worst_index], " vs b ", b.empty() ? 0.0 : b[c.worst_index], ")");
  CHECK(c.ok());
}

}  // namespace tally::test
