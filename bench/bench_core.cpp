// Core engine throughput against the machine's own ceilings, as ratios measured in the same run:
//   matmul GFLOP/s (tally::matmul, f32) vs OpenBLAS sgemm called directly on the same buffers;
//   a large elementwise add and a full reduction in GB/s vs a memcpy of the same bytes;
//   the residual stream's add and LayerNorm in one pass (add_layer_norm) vs add, then layer_norm;
//   GPT-2's head and loss, forward and backward, in row chunks (linear_cross_entropy) vs whole (linear, then
//   cross_entropy): time and the peak bytes beside the inputs.
// Not a test: run it (make bench) and read the ratios. The last line is the same table as one JSON object.
#include <cblas.h>
#include <omp.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "core/ops.h"

using namespace tally;

namespace {
// Best-of-n wall time in seconds.
double best_time(int reps, const std::function<void()>& fn) {
  fn();  // warm up
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
// The head and loss of the d4 model (C = 256, Vp = 50304) over N = 2048 positions, forward and backward: chunks of
// 1024 rows (GPT2Options::loss_chunk_rows) against the whole (N, Vp) logits. Returns {chunked ms, whole ms, chunked
// peak bytes, whole peak bytes}, the peaks of the CPU ledger beside the inputs.
std::array<double, 4> head_and_loss(Generator& gen) {
  const int64_t N = 2048, C = 256, Vp = 50304, V = 50257;
  Tensor x = randn({N, C}, gen).set_requires_grad(true), w = (randn({Vp, C}, gen) * 0.02).detach().set_requires_grad(true);
  std::vector<int32_t> ids(static_cast<size_t>(N));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 7919) % size_t(V));
  Tensor targets = from_vector<int32_t>(ids, {N});
  Ledger& led = ledger();
  auto run = [&](bool chunked) {
    x.clear_grad();
    w.clear_grad();
    Tensor loss = chunked ? linear_cross_entropy(x, w, targets, {.classes = V, .chunk_rows = 1024})
                          : cross_entropy(linear(x, w, Tensor()), targets, {.classes = V});
    loss.backward();
  };
  std::array<double, 4> out{};
  for (int k = 0; k < 2; ++k) {
    const bool chunked = k == 0;
    out[size_t(k)] = best_time(3, [&] { run(chunked); }) * 1e3;
    x.clear_grad();
    w.clear_grad();
    const int64_t live = led.total().live_requested;
    led.reset_peaks();
    run(chunked);
    out[size_t(2 + k)] = double(led.total().peak_requested - live);
  }
  return out;
}
}  // namespace

int main() {
  Generator gen(1);
  const std::array<double, 4> head = head_and_loss(gen);  // needs gradients: before the guard below
  std::printf("tally bench_core: %d threads\n\n", omp_get_max_threads());
  std::printf("%-34s %12s %12s %8s\n", "what", "tally", "ceiling", "ratio");
  nlohmann::json rows = nlohmann::json::array();
  auto row = [&](const char* what, double mine, double ceiling, double ratio) {
    std::printf("%-34s %12.1f %12.1f %8.2f\n", what, mine, ceiling, ratio);
    rows.push_back({{"what", what}, {"tally", mine}, {"ceiling", ceiling}, {"ratio", ratio}});
  };

  for (int64_t n : {256, 1024, 2048}) {
    Tensor a = randn({n, n}, gen), b = randn({n, n}, gen), c = empty({n, n});
    double flops = 2.0 * double(n) * double(n) * double(n);
    double t_tally = best_time(5, [&] { c = matmul(a, b); });
    double t_blas = best_time(5, [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(n), int(n), 1.0f, a.data<float>(), int(n),
                  b.data<float>(), int(n), 0.0f, c.data<float>(), int(n));
    });
    char what[64];
    std::snprintf(what, sizeof what, "matmul %lldx%lld GFLOP/s", (long long)n, (long long)n);
    row(what, flops / t_tally * 1e-9, flops / t_blas * 1e-9, t_blas / t_tally);
  }

  const int64_t N = 16 << 20;  // 16M floats = 64 MiB per tensor
  Tensor x = randn({N}, gen), y = randn({N}, gen);
  std::vector<float> src(static_cast<size_t>(N), 1.0f), dst(static_cast<size_t>(N));
  double t_copy = best_time(5, [&] { std::memcpy(dst.data(), src.data(), size_t(N) * 4); });
  double copy_gbs = 2.0 * double(N) * 4 / t_copy * 1e-9;  // read + write
  double t_add = best_time(5, [&] { Tensor z = add(x, y); });
  double add_gbs = 3.0 * double(N) * 4 / t_add * 1e-9;  // two reads + one write
  row("add 16M f32 GB/s (vs memcpy)", add_gbs, copy_gbs, add_gbs / copy_gbs);
  double t_sum = best_time(5, [&] { Tensor s = sum(x); });
  double sum_gbs = double(N) * 4 / t_sum * 1e-9;
  row("sum 16M f32 GB/s (vs memcpy)", sum_gbs, copy_gbs, sum_gbs / copy_gbs);
  {
    // The residual stream's join at GPT-2's (B*T, C) = (8192, 768): add_layer_norm against add then layer_norm.
    Tensor a = randn({8192, 768}, gen), r = randn({8192, 768}, gen), w = randn({768}, gen), b = randn({768}, gen);
    double fused = 1e30, separate = 1e30;  // interleaved, best of 8 each
    for (int i = 0; i < 8; ++i) {
      fused = std::min(fused, best_time(1, [&] { add_layer_norm(a, r, w, b); }) * 1e3);
      separate = std::min(separate, best_time(1, [&] { layer_norm(add(a, r), w, b); }) * 1e3);
    }
    row("add+layer_norm 8192x768 ms (fused)", fused, separate, separate / fused);
  }
  row("head+loss fwd+bwd ms (chunked)", head[0], head[1], head[1] / head[0]);
  row("head+loss peak MiB (chunked)", head[2] / 1048576.0, head[3] / 1048576.0, head[3] / head[2]);
  std::printf("%s\n", nlohmann::json({{"bench", "core"}, {"threads", omp_get_max_threads()}, {"rows", rows}}).dump().c_str());
  return 0;
}
