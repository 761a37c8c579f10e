// Text generation from a GPT-2: temperature and top-k sampling driven by a seeded Philox stream, with a key/value
// cache so that each new token costs one position (GPT2::forward_cached). Tokens only: the BPE tokenizer is in data/.
#pragma once
#include <functional>
#include <span>
#include <vector>

#include "core/random.h"
#include "models/gpt2.h"

namespace tally::models {

struct SampleOptions {
  int64_t max_new_tokens = 64;
  double temperature = 1.0;  // > 0; logits are divided by it
  int64_t top_k = 0;         // keep the k most likely tokens (0: all; 1: greedy)
  uint64_t seed = 0;
  int32_t stop_token = -1;   // a row that samples this token stops growing (< 0: none)
  int64_t vocab_limit = 0;   // sample among the ids below this (0: all of the model's): a tokenizer's vocabulary
                             // when the model's is larger (nanoGPT's 50,304 rows, 47 never trained)
  // Called after each step with the step index and the token sampled for each row (rows that already stopped
  // repeat their stop token).
  std::function<void(int64_t step, std::span<const int32_t> tokens)> on_step = {};
};

// Samples one token from logits (V) of one position. Definition (shared by every backend, so a seed fixes the
// result): candidates are the top_k largest logits (all when top_k == 0), ordered by logit descending then token
// id ascending; weights exp((logit - max) / temperature) in double; one uniform u in [0, 1) from the next counter of
// `gen` (always drawn, even for top_k == 1); the first candidate whose running weight sum exceeds u * total wins.
int32_t sample_token(std::span<const float> logits, double temperature, int64_t top_k, Generator& gen);

// Continues B prompts of equal length (B >= 1, length >= 1; prompt + max_new_tokens - 1 <= block_size) and returns
// the new tokens of each row (without the prompt; a row that hit stop_token ends with it). Runs in eval mode
// (restoring the model's mode afterwards) and without autograd. Row b of step s uses counter s*B + b of the stream.
std::vector<std::vector<int32_t>> generate(GPT2& model, const std::vector<std::vector<int32_t>>& prompts,
                                           const SampleOptions& options);

}  // namespace tally::models
