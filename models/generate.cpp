// Sampling (temperature, top-k, seeded) and the key/value-cached generation loop.
#include "models/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/autograd/node.h"

namespace tally::models {

int32_t sample_token(std::span<const float> logits, double temperature, int64_t top_k, Generator& gen) {
  const int64_t V = int64_t(logits.size());
  TALLY_CHECK(V > 0, "[sample] empty logits");
  TALLY_CHECK(temperature > 0 && std::isfinite(temperature), "[sample] temperature must be positive, got ", temperature);
  TALLY_CHECK(top_k >= 0, "[sample] top_k must be >= 0, got ", top_k);
  const float u = uniform_from_bits(philox(gen.seed(), gen.advance(1))[0]);  // [0, 1)
  const int64_t k = top_k == 0 ? V : std::min(top_k, V);
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  auto before = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
  const double top = logits[order[0]];
  TALLY_CHECK(std::isfinite(top), "[sample] the model's logits are not finite (the largest is ", top, "): its weights ",
              "overflow or hold NaN, as a diverged run's do (train with a lower --lr, --grad-clip, more --warmup)");
  std::vector<double> w(static_cast<size_t>(k));
  double total = 0;
  for (int64_t i = 0; i < k; ++i) total += w[size_t(i)] = std::exp((double(logits[order[size_t(i)]]) - top) / temperature);
  const double target = double(u) * total;
  double running = 0;
  for (int64_t i = 0; i < k; ++i) {
    running += w[size_t(i)];
    if (running > target) return order[size_t(i)];
  }
  return order[size_t(k - 1)];  // rounding at the very end of the range
}

namespace {
// Sets a module's mode for a scope and restores it.
class ModeGuard {
 public:
  ModeGuard(nn::Module& m, nn::Mode mode) : m_(m), previous_(m.mode()) { m.set_mode(mode); }
  ~ModeGuard() { m_.set_mode(previous_); }
  ModeGuard(const ModeGuard&) = delete;
  ModeGuard& operator=(const ModeGuard&) = delete;

 private:
  nn::Module& m_;
  nn::Mode previous_;
};
}  // namespace

std::vector<std::vector<int32_t>> generate(GPT2& model, const std::vector<std::vector<int32_t>>& prompts,
                                           const SampleOptions& options) {
  const int64_t B = int64_t(prompts.size());
  TALLY_CHECK(B > 0, "[generate] no prompts");
  const int64_t T0 = int64_t(prompts[0].size());
  TALLY_CHECK(T0 > 0, "[generate] prompts must hold at least one token (e.g. the end-of-text token)");
  for (int64_t b = 1; b < B; ++b)
    TALLY_CHECK(int64_t(prompts[size_t(b)].size()) == T0, "[generate] prompts must have equal lengths: row 0 has ", T0,
                " tokens, row ", b, " has ", prompts[size_t(b)].size());
  TALLY_CHECK(options.max_new_tokens >= 0, "[generate] max_new_tokens must be >= 0, got ", options.max_new_tokens);
  TALLY_CHECK(options.temperature > 0, "[generate] temperature must be positive, got ", options.temperature);
  TALLY_CHECK(options.top_k >= 0, "[generate] top_k must be >= 0, got ", options.top_k);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  if (options.max_new_tokens == 0) return out;
  const int64_t positions = T0 + options.max_new_tokens - 1;  // the last sampled token is never fed back
  TALLY_CHECK(positions <= model.config().block_size, "[generate] prompt (", T0, ") + max_new_tokens (",
              options.max_new_tokens, ") - 1 exceeds the context of ", model.config().block_size, " positions");

  ModeGuard eval(model, nn::Mode::eval);
  NoGradGuard no_grad;
  TALLY_CHECK(options.vocab_limit >= 0, "[generate] vocab_limit must be >= 0, got ", options.vocab_limit);
  const int64_t V = model.config().vocab_size;
  const int64_t sampled = options.vocab_limit > 0 ? std::min(options.vocab_limit, V) : V;  // the ids drawn from
  KVCache cache = model.make_kv_cache(B, positions);
  std::vector<int32_t> flat;
  flat.reserve(size_t(B * T0));
  for (const auto& p : prompts) flat.insert(flat.end(), p.begin(), p.end());
  Tensor logits = model.forward_cached(from_vector(flat, {B, T0}, {.dtype = DType::i32, .device = model.device()}), cache,
                                       LogitPositions::last);  // (B, 1, V)
  Generator gen(options.seed);
  std::vector<bool> stopped(static_cast<size_t>(B), false);
  std::vector<int32_t> step_tokens(static_cast<size_t>(B));
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    std::vector<float> host = logits.to_vector<float>();  // (B, V)
    bool all_stopped = true;
    for (int64_t b = 0; b < B; ++b) {
      int32_t tok = sample_token(std::span<const float>(host.data() + b * V, size_t(sampled)), options.temperature,
                                 options.top_k, gen);
      if (stopped[size_t(b)]) {
        tok = options.stop_token;
      } else {
        out[size_t(b)].push_back(tok);
        stopped[size_t(b)] = options.stop_token >= 0 && tok == options.stop_token;
      }
      step_tokens[size_t(b)] = tok;
      all_stopped = all_stopped && stopped[size_t(b)];
    }
    if (options.on_step) options.on_step(step, step_tokens);
    if (all_stopped || step + 1 == options.max_new_tokens) break;
    logits = model.forward_cached(from_vector(step_tokens, {B, 1}, {.dtype = DType::i32, .device = model.device()}),
                                  cache);
  }
  return out;
}

}  // namespace tally::models
