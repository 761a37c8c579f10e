// bench_optim: time of one optimizer step (CAME, AdamW, Adafactor with and without beta1) on the CPU for a
// 4096x4096 matrix, a 768x3072 matrix and GPT-2 small's full parameter set (124M), beside the minimum bytes
// each step must move and the bytes tally's passes move. Runs bench/peers/optim_torch.py (came-pytorch,
// torch.optim.AdamW, transformers' Adafactor) on the same shapes and thread count when python3 + torch are
// present, and prints the ratios. --json adds one JSON line at the end (scripts/bench.sh reads it).
// Usage: bench_optim [--steps N] [--sets a,b] [--kinds came,adamw,...] [--clock wall|cpu] [--no-peers] [--json]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/random.h"
#include "optim/adafactor.h"
#include "optim/adamw.h"
#include "optim/came.h"

using namespace tally;
using namespace tally::optim;

namespace {

std::vector<Shape> gpt2_shapes() {
  const int64_t C = 768, L = 12, V = 50257, T = 1024;
  std::vector<Shape> s = {{V, C}, {T, C}};
  for (int l = 0; l < L; ++l)
    for (const Shape& x : std::vector<Shape>{{C}, {C}, {3 * C, C}, {3 * C}, {C, C}, {C}, {C}, {C}, {4 * C, C}, {4 * C}, {C, 4 * C}, {C}})
      s.push_back(x);
  s.push_back({C});
  s.push_back({C});
  return s;
}

std::vector<Shape> shape_set(const std::string& name) {
  if (name == "gpt2-124M") return gpt2_shapes();
  const size_t x = name.find('x');
  return {{std::stoll(name.substr(0, x)), std::stoll(name.substr(x + 1))}};
}

// Bytes per step: the algorithm's minimum (every full-size tensor read once, every updated one written once)
// and what tally's passes move (documented beside each kernel). Factor vectors are counted too.
struct Bytes {
  int64_t minimum = 0, moved = 0;
};
Bytes step_bytes(const std::string& kind, const std::vector<Shape>& shapes) {
  Bytes b;
  for (const Shape& s : shapes) {
    const int64_t N = numel(s);
    const bool factored = s.size() >= 2;
    const int64_t factors = factored ? N / s.back() + N / s[s.size() - 2] : 0;
    if (kind == "adamw") {
      b.minimum += 28 * N;  // g; p, m, v read and written
      b.moved += 28 * N;
    } else if (kind == "came") {
      b.minimum += factored ? 20 * N + 16 * factors : 28 * N;  // g; p, m rw (+ r, c, R, C rw) | g; p, m, v rw
      b.moved += factored ? 28 * N + 16 * factors : 36 * N;
    } else if (kind == "adafactor") {
      b.minimum += factored ? 12 * N + 8 * factors : 20 * N;
      b.moved += factored ? 16 * N + 8 * factors : 24 * N;
    } else {  // adafactor_beta1
      b.minimum += factored ? 20 * N + 8 * factors : 28 * N;
      b.moved += factored ? 24 * N + 8 * factors : 32 * N;
    }
  }
  return b;
}

std::unique_ptr<Optimizer> make(const std::string& kind, const std::vector<Tensor>& params) {
  if (kind == "came") return std::make_unique<Came>(params, CameConfig{.lr = 1e-4});
  if (kind == "adamw") return std::make_unique<AdamW>(params, AdamWConfig{.lr = 1e-4, .weight_decay = 0.0});
  if (kind == "adafactor") return std::make_unique<Adafactor>(params, AdafactorConfig{.lr = 1e-4});
  return std::make_unique<Adafactor>(params, AdafactorConfig{.lr = 1e-4, .beta1 = 0.9});
}

// Wall time, or (--clock cpu) this process's CPU time: on a loaded machine the latter counts only the work done
// (with one thread it is the step's time had the core been free).
bool g_cpu_clock = false;
double now_seconds() {
  if (!g_cpu_clock) return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

double seconds_per_step(const std::string& kind, const std::vector<Shape>& shapes, int steps) {
  Generator gen(1234);
  std::vector<Tensor> params;
  for (size_t i = 0; i < shapes.size(); ++i) {
    Tensor p = randn(shapes[i], gen);
    p.set_requires_grad(true);
    p.set_name(cat("p", i));
    p.set_grad(randn(shapes[i], gen));
    params.push_back(p);
  }
  auto opt = make(kind, params);
  opt->step();  // warm-up: state allocation, first touch
  opt->step();
  std::vector<double> times;
  for (int k = 0; k < steps; ++k) {
    const double t0 = now_seconds();
    opt->step();
    times.push_back(now_seconds() - t0);
  }
  // The best of the timed steps: on a shared machine the others measure the neighbours.
  return *std::min_element(times.begin(), times.end());
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

nlohmann::json run_peers(int threads, int steps, const std::string& sets, const std::vector<std::string>& kinds) {
  if (std::system("python3 -c 'import torch, came_pytorch, transformers' > /dev/null 2>&1") != 0) {
    std::printf("(peers skipped: python3 with torch, came-pytorch and transformers not found)\n");
    return {};
  }
  const std::string cmd = cat("python3 ", TALLY_SOURCE_DIR, "/bench/peers/optim_torch.py --threads ", threads,
                              " --steps ", steps, " --sets ", sets, " --optimizers ", join(kinds));
  std::printf("running peers: %s\n", cmd.c_str());
  std::fflush(stdout);
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return {};
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, f)) out.append(buf, n);
  if (pclose(f) != 0) {
    std::printf("(peer script failed)\n");
    return {};
  }
  return nlohmann::json::parse(out.substr(out.find('{')));
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 5;
  std::string sets = "4096x4096,768x3072,gpt2-124M";
  bool peers = true, json = false;
  std::vector<std::string> kinds = {"came", "adamw", "adafactor", "adafactor_beta1"};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (a == "--sets" && i + 1 < argc) sets = argv[++i];
    else if (a == "--no-peers") peers = false;
    else if (a == "--json") json = true;
    else if (a == "--clock" && i + 1 < argc) g_cpu_clock = std::string(argv[++i]) == "cpu";
    else if (a == "--kinds" && i + 1 < argc) {
      kinds.clear();
      std::stringstream ss(argv[++i]);
      for (std::string k; std::getline(ss, k, ',');) kinds.push_back(k);
    }
    else {
      std::fprintf(stderr, "usage: bench_optim [--steps N] [--sets 4096x4096,768x3072,gpt2-124M] [--kinds came,adamw,adafactor,adafactor_beta1] [--clock wall|cpu] [--no-peers] [--json]\n");
      return 2;
    }
  }
  const int threads = omp_get_max_threads();
  std::vector<std::string> set_names;
  {
    std::stringstream ss(sets);
    for (std::string s; std::getline(ss, s, ',');) set_names.push_back(s);
  }
  std::printf("tally optimizer step, CPU, %d threads, best of %d steps (%s time)\n\n", threads, steps,
              g_cpu_clock ? "process CPU" : "wall");
  std::printf("%-16s %-11s %12s %10s %10s %10s %10s %10s\n", "optimizer", "set", "params", "ms/step", "ns/param",
              "min B/par", "GB/s(min)", "GB/s(mov)");
  std::map<std::string, std::map<std::string, double>> mine;
  nlohmann::json out = {{"bench", "optim"}, {"threads", threads}, {"results", nlohmann::json::object()}};
  for (const std::string& set : set_names) {
    const std::vector<Shape> shapes = shape_set(set);
    int64_t n = 0;
    for (const Shape& s : shapes) n += numel(s);
    for (const std::string& kind : kinds) {
      const double t = seconds_per_step(kind, shapes, steps);
      mine[kind][set] = t;
      const Bytes b = step_bytes(kind, shapes);
      out["results"][kind][set] = {{"s_per_step", t}, {"params", n}, {"min_bytes", b.minimum}, {"moved_bytes", b.moved}};
      std::printf("%-16s %-11s %12lld %10.3f %10.3f %10.2f %10.2f %10.2f\n", kind.c_str(), set.c_str(),
                  static_cast<long long>(n), t * 1e3, t * 1e9 / double(n), double(b.minimum) / double(n),
                  double(b.minimum) / t / 1e9, double(b.moved) / t / 1e9);
      std::fflush(stdout);
    }
  }
  if (mine.count("came") && mine.count("adamw")) {
    std::printf("\nCAME / AdamW step time (target <= 1.3):");
    for (const std::string& set : set_names) std::printf("  %s %.2f", set.c_str(), mine["came"][set] / mine["adamw"][set]);
    std::printf("\n");
  }
  auto finish = [&] {
    if (json) std::printf("%s\n", out.dump().c_str());
    return 0;
  };
  if (!peers) return finish();
  const nlohmann::json peer = run_peers(threads, steps, sets, kinds);
  if (peer.is_null()) return finish();
  out["peer"] = peer;
  std::printf("\npeers (torch %s, %d threads): ms/step and speed-up of tally (peer time / tally time)\n",
              peer["torch"].get<std::string>().c_str(), peer["threads"].get<int>());
  const std::map<std::string, std::string> peer_name = {{"came", "came-pytorch 0.1.3"},
                                                        {"adamw", "torch.optim.AdamW"},
                                                        {"adafactor", "transformers Adafactor"},
                                                        {"adafactor_beta1", "transformers Adafactor b1"}};
  std::printf("%-26s %-11s %10s %10s %8s\n", "peer", "set", "peer ms", "tally ms", "speed-up");
  for (const std::string& kind : kinds)
    for (const std::string& set : set_names) {
      if (!peer["results"].contains(kind) || !peer["results"][kind].contains(set)) continue;
      const double pt = peer["results"][kind][set]["s_per_step"].get<double>();
      std::printf("%-26s %-11s %10.3f %10.3f %8.2f\n", peer_name.at(kind).c_str(), set.c_str(), pt * 1e3,
                  mine[kind][set] * 1e3, pt / mine[kind][set]);
    }
  std::printf("(targets: CAME >= 3x faster than came-pytorch on the CPU)\n");
  return finish();
}
