// Benchmark: GPT-2 forward + backward on the CPU (ms per step split into forward and backward, tokens/s), with the
// memory ledger's table after the first step. No optimizer step (optim/ has its own bench); no peer comparison here.
// Usage: bench_gpt2_step [--models gpt2,small] [--batch 4] [--seq 64] [--steps 3] [--warmup 1]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "core/ledger.h"
#include "models/gpt2.h"

using namespace tally;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

Tensor random_tokens(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(B * T));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(philox(seed, i)[0] % uint32_t(V));
  return from_vector(ids, {B, T}, {.dtype = DType::i32});
}

void bench(const std::string& preset, int64_t B, int64_t T, int steps, int warmup) {
  models::GPT2Config config = models::GPT2Config::preset(preset);
  auto t_init = Clock::now();
  models::GPT2 model(config, {.seed = 1});
  double init_ms = ms_since(t_init);
  Tensor idx = random_tokens(B, T, config.vocab_size, 1), tgt = random_tokens(B, T, config.vocab_size, 2);
  std::printf("\n== %s (%s, %lld parameters), B=%lld T=%lld, %d threads; init %.0f ms\n", preset.c_str(),
              config.str().c_str(), (long long)model.num_parameters(), (long long)B, (long long)T, omp_get_max_threads(),
              init_ms);
  double sum_fwd = 0, sum_bwd = 0, best = 1e30;
  for (int step = 0; step < warmup + steps; ++step) {
    if (step == 0) ledger().reset_peaks();
    model.zero_grads();
    auto t0 = Clock::now();
    Tensor loss = model.loss(idx, tgt);
    double fwd = ms_since(t0);
    auto t1 = Clock::now();
    loss.backward();
    double bwd = ms_since(t1);
    double l = loss.item();
    loss = Tensor();
    std::printf("step %d%s: loss %.4f  forward %8.1f ms  backward %8.1f ms  total %8.1f ms\n", step,
                step < warmup ? " (warmup)" : "", l, fwd, bwd, fwd + bwd);
    if (step == 0) std::printf("\nmemory ledger (CPU) after the first step:\n%s\n", ledger().table().c_str());
    if (step >= warmup) {
      sum_fwd += fwd;
      sum_bwd += bwd;
      best = std::min(best, fwd + bwd);
    }
  }
  double mean = (sum_fwd + sum_bwd) / steps;
  std::printf("%s B=%lld T=%lld: mean %.1f ms/step (forward %.1f, backward %.1f), best %.1f ms; %.0f tokens/s\n",
              preset.c_str(), (long long)B, (long long)T, mean, sum_fwd / steps, sum_bwd / steps, best,
              double(B * T) / (mean / 1000.0));
}

}  // namespace

int main(int argc, char** argv) {
  std::string models = "gpt2,small";
  int64_t B = 4, T = 64;
  int steps = 3, warmup = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--models") models = v;
    else if (k == "--batch") B = std::atoll(v.c_str());
    else if (k == "--seq") T = std::atoll(v.c_str());
    else if (k == "--steps") steps = std::atoi(v.c_str());
    else if (k == "--warmup") warmup = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s (flags: --models --batch --seq --steps --warmup)\n", k.c_str());
      return 2;
    }
  }
  if (B < 1 || T < 1 || steps < 1 || warmup < 0) {
    std::fprintf(stderr, "--batch, --seq and --steps must be positive\n");
    return 2;
  }
  std::stringstream list(models);
  std::string name;
  try {
    while (std::getline(list, name, ',')) bench(name, B, T, steps, warmup);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
