// Benchmark: one GPT-2 training step on the CPU (forward, backward, optimizer step, gradients set to none), the
// same step bench/peers/torch_gpt2_step.py times in PyTorch eager: ms per step (best and median of the timed
// steps, with the forward / backward / optimizer split), tokens/s, the process's peak RSS (VmHWM) and the memory
// ledger's peak. Run one configuration per process when comparing peak RSS (scripts/bench.sh does).
// --device meta runs the same step on the meta device as it would run on CUDA (--dtype bf16 for mixed precision):
// every op, autograd node, ledger entry and optimizer slot, but no arithmetic and no launches: the time is tally's own
// host work per step, which a GPU step cannot go below.
// Usage: bench_gpt2_step [--models gpt2,d4] [--batch 4] [--seq 64] [--optimizer NAME|none (any registered)]
//                        [--threads N] [--steps 3] [--warmup 1] [--device cpu|meta] [--dtype f32|bf16] [--json]
//                        [--ledger]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/ledger.h"
#include "models/gpt2.h"
#include "optim/registry.h"

using namespace tally;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// CPU time of the whole process (all threads) in ms: on a shared machine it counts the work done, not the waits
// for a core (but it does count OpenMP's spinning at barriers).
double cpu_ms() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) * 1e3 + double(t.tv_nsec) * 1e-6;
}

// Peak resident set of this process in MiB (VmHWM), or -1 where /proc is absent.
double peak_rss_mib() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) return double(std::atoll(line.c_str() + 6)) / 1024.0;  // kB
  return -1;
}

Tensor random_tokens(int64_t B, int64_t T, int64_t V, uint64_t seed, Device device) {
  if (device.is_meta()) return empty({B, T}, {.dtype = DType::i32, .device = device});
  std::vector<int32_t> ids(static_cast<size_t>(B * T));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(philox(seed, i)[0] % uint32_t(V));
  return from_vector(ids, {B, T}, {.dtype = DType::i32});
}

// The peers' settings: lr 1e-4, no weight decay, each package's defaults otherwise (transformers' Adafactor has no
// first moment by default); "none" times the model alone.
std::unique_ptr<optim::Optimizer> make_optimizer(const std::string& kind, const std::vector<Tensor>& params) {
  if (kind == "none") return nullptr;
  optim::Settings settings{{"lr", 1e-4}};
  if (kind == "adafactor") settings.set("no-adafactor-beta1", true);
  return optim::make_optimizer(kind, params, settings);
}

struct Options {
  int64_t B = 4, T = 64;
  int steps = 3, warmup = 1;
  std::string optimizer = "adamw";
  Device device = Device::cpu();  // or the meta device planning for CUDA
  DType dtype = DType::f32;
  bool json = false, ledger_table = false;
};

void bench(const std::string& preset, const Options& o) {
  models::GPT2Config config = models::GPT2Config::preset(preset);
  auto t_init = Clock::now();
  models::GPT2 model(config, {.device = o.device, .dtype = o.dtype, .seed = 1});
  const double init_ms = ms_since(t_init);
  std::unique_ptr<optim::Optimizer> opt = make_optimizer(o.optimizer, model.parameters());
  Tensor idx = random_tokens(o.B, o.T, config.vocab_size, 1, o.device);
  Tensor tgt = random_tokens(o.B, o.T, config.vocab_size, 2, o.device);
  if (!o.json)
    std::printf("\n== %s (%s, %lld parameters), B=%lld T=%lld, optimizer %s, %d threads, %s %s; init %.0f ms\n",
                preset.c_str(), config.str().c_str(), (long long)model.num_parameters(), (long long)o.B,
                (long long)o.T, o.optimizer.c_str(), omp_get_max_threads(), o.device.str().c_str(),
                dtype_name(o.dtype), init_ms);
  Ledger& book = ledger(o.device);
  book.reset_peaks();
  std::vector<double> total, fwd_ms, bwd_ms, opt_ms, cpu;
  double last_loss = 0;
  for (int step = 0; step < o.warmup + o.steps; ++step) {
    const double c0 = cpu_ms();
    auto t0 = Clock::now();
    Tensor loss = model.loss(idx, tgt);
    const double fwd = ms_since(t0);
    auto t1 = Clock::now();
    loss.backward();
    const double bwd = ms_since(t1);
    auto t2 = Clock::now();
    if (opt) {
      opt->step();
      opt->zero_grad(optim::ZeroGrad::set_to_none);
    } else {
      model.zero_grads();
    }
    const double ost = ms_since(t2);
    const double step_cpu = cpu_ms() - c0;
    last_loss = o.device.is_meta() ? 0.0 : loss.item();  // the meta device computes no values
    loss = Tensor();
    if (!o.json)
      std::printf("step %d%s: loss %.4f  forward %8.1f  backward %8.1f  optimizer %7.1f  total %8.1f ms\n", step,
                  step < o.warmup ? " (warmup)" : "", last_loss, fwd, bwd, ost, fwd + bwd + ost);
    if (step == 0 && o.ledger_table && !o.json)
      std::printf("\nmemory ledger (%s) after the first step:\n%s\n", o.device.str().c_str(), book.table().c_str());
    if (step >= o.warmup) {
      total.push_back(fwd + bwd + ost);
      fwd_ms.push_back(fwd);
      bwd_ms.push_back(bwd);
      opt_ms.push_back(ost);
      cpu.push_back(step_cpu);
    }
  }
  auto best_index = size_t(std::min_element(total.begin(), total.end()) - total.begin());
  std::vector<double> sorted = total;
  std::sort(sorted.begin(), sorted.end());
  const double best = sorted.front(), median = sorted[sorted.size() / 2];
  const double tokens = double(o.B * o.T);
  const double best_cpu = *std::min_element(cpu.begin(), cpu.end());
  const double rss = peak_rss_mib();
  const double ledger_total_peak = double(book.total().peak_requested) / 1048576.0;
  if (o.json) {
    std::printf(
        "{\"peer\": \"tally\", \"model\": \"%s\", \"device\": \"%s\", \"dtype\": \"%s\", \"threads\": %d, "
        "\"optimizer\": \"%s\", \"params\": %lld, "
        "\"batch\": %lld, \"seq\": %lld, \"init_ms\": %.1f, \"best_ms\": %.2f, \"ms_per_step\": %.2f, "
        "\"cpu_ms\": %.2f, \"forward_ms\": %.2f, \"backward_ms\": %.2f, \"optimizer_ms\": %.2f, \"tokens_per_s\": %.1f, "
        "\"peak_rss_mb\": %.1f, \"ledger_peak_mb\": %.1f, \"loss\": %.5f}\n",
        preset.c_str(), o.device.str().c_str(), dtype_name(o.dtype), omp_get_max_threads(), o.optimizer.c_str(),
        (long long)model.num_parameters(), (long long)o.B,
        (long long)o.T, init_ms, best, median, best_cpu, fwd_ms[best_index], bwd_ms[best_index], opt_ms[best_index],
        tokens / (best / 1000.0), rss, ledger_total_peak, last_loss);
  } else {
    std::printf("%s B=%lld T=%lld %s: best %.1f ms/step (forward %.1f, backward %.1f, optimizer %.1f), median %.1f ms; "
                "%.0f tokens/s; CPU %.1f ms/step; peak RSS %.0f MiB, ledger peak %.0f MiB\n",
                preset.c_str(), (long long)o.B, (long long)o.T, o.optimizer.c_str(), best, fwd_ms[best_index],
                bwd_ms[best_index], opt_ms[best_index], median, tokens / (best / 1000.0), best_cpu, rss, ledger_total_peak);
  }
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string models = "gpt2,d4";
  Options o;
  const std::string usage_text =
      "flags: --models gpt2,d4 --batch B --seq T --optimizer " + optim::optimizer_names("|") +
      "|none --threads N --steps N --warmup N --device cpu|meta --dtype f32|bf16 --json --ledger";
  const char* usage = usage_text.c_str();
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--json") {
      o.json = true;
      continue;
    }
    if (k == "--ledger") {
      o.ledger_table = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "flag %s needs a value (%s)\n", k.c_str(), usage);
      return 2;
    }
    std::string v = argv[++i];
    if (k == "--models") models = v;
    else if (k == "--batch") o.B = std::atoll(v.c_str());
    else if (k == "--seq") o.T = std::atoll(v.c_str());
    else if (k == "--steps") o.steps = std::atoi(v.c_str());
    else if (k == "--warmup") o.warmup = std::atoi(v.c_str());
    else if (k == "--optimizer") o.optimizer = v;
    else if (k == "--threads") omp_set_num_threads(std::atoi(v.c_str()));
    else if ((k == "--device" && v != "cpu" && v != "meta") || (k == "--dtype" && v != "f32" && v != "bf16")) {
      std::fprintf(stderr, "%s %s: not one of %s\n", k.c_str(), v.c_str(), k == "--device" ? "cpu, meta" : "f32, bf16");
      return 2;
    } else if (k == "--device") o.device = v == "meta" ? Device::meta(DeviceKind::cuda) : Device::cpu();
    else if (k == "--dtype") o.dtype = v == "bf16" ? DType::bf16 : DType::f32;
    else {
      std::fprintf(stderr, "unknown flag %s (%s)\n", k.c_str(), usage);
      return 2;
    }
  }
  if (o.B < 1 || o.T < 1 || o.steps < 1 || o.warmup < 0) {
    std::fprintf(stderr, "--batch, --seq and --steps must be positive\n");
    return 2;
  }
  if (o.dtype == DType::bf16 && !o.device.is_meta()) {
    std::fprintf(stderr, "--dtype bf16 trains on CUDA only: here with --device meta (the step's host work)\n");
    return 2;
  }
  std::stringstream list(models);
  std::string name;
  try {
    while (std::getline(list, name, ',')) bench(name, o);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
