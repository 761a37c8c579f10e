// GPU benchmarks of the CUDA backend (run by scripts/gpu_check.sh; not part of the test suite): the two
// ceilings (device-to-device copy bandwidth, cuBLAS GEMM rate) and tally's kernels at GPT-2 small shapes
// against them, and CAME's factored kernels on GPT-2 small's matrices, one tensor per launch sequence against
// batched. Prints one table; times are medians of host-timed, synchronised batches after a warm-up. The training step
// and the whole optimizer steps are bench_gpu_train's.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/random.h"

#ifdef TALLY_HAS_CUDA
#include "core/cuda/runtime.h"
#include "core/kernels/cuda/linear_epilogues.h"
#include "optim/kernels/cuda_workspace.h"
#include "optim/kernels/optim_kernels.h"
#endif

using namespace tally;

#ifdef TALLY_HAS_CUDA
namespace {

struct Row {
  std::string name;
  double ms;
  double rate;       // GB/s or TFLOP/s
  const char* unit;  // "GB/s" or "TFLOP/s"
};
std::vector<Row> rows;

// Median milliseconds of one call of f, over `samples` batches of `iters` calls.
double time_ms(const std::function<void()>& f, int iters, int samples = 5) {
  f();
  cuda::synchronize();
  std::vector<double> t;
  for (int s = 0; s < samples; ++s) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) f();
    cuda::synchronize();
    auto t1 = std::chrono::steady_clock::now();
    t.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count() / iters);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void bandwidth(const std::string& name, double bytes, const std::function<void()>& f, int iters) {
  double ms = time_ms(f, iters);
  rows.push_back({name, ms, bytes / (ms * 1e-3) / 1e9, "GB/s"});
  std::printf("  %-46s %9.3f ms %9.1f GB/s\n", name.c_str(), ms, rows.back().rate);
  std::fflush(stdout);
}

void flops(const std::string& name, double flop, const std::function<void()>& f, int iters) {
  double ms = time_ms(f, iters);
  rows.push_back({name, ms, flop / (ms * 1e-3) / 1e12, "TFLOP/s"});
  std::printf("  %-46s %9.3f ms %9.1f TFLOP/s\n", name.c_str(), ms, rows.back().rate);
  std::fflush(stdout);
}

Tensor gpu_randn(const Shape& s, uint64_t seed, DType t = DType::f32) {
  Generator g(seed);
  return randn(s, g, {.dtype = t, .device = Device::cuda(0)});
}

}  // namespace

int main() {
  if (!cuda_available()) {
    std::printf("bench_cuda: no CUDA device; nothing to measure\n");
    return 0;
  }
  cuda::DeviceProperties p = cuda::device_properties(0);
  std::printf("bench_cuda on %s (sm_%d%d, %d SMs)\n", p.name, p.major, p.minor, p.multiprocessors);
  const Device d = Device::cuda(0);

  // ---- ceilings ----
  const int64_t n = int64_t(1) << 28;  // 256M floats = 1 GiB
  Tensor a = gpu_randn({n}, 1), b = gpu_randn({n}, 2), c = empty({n}, {.device = d});
  bandwidth("ceiling: device-to-device copy (1 GiB)", 2.0 * 4 * double(n), [&] { c.copy_(a); }, 10);
  flops("ceiling: GEMM f32 TF32 8192^3", 2.0 * 8192.0 * 8192 * 8192, [&, x = gpu_randn({8192, 8192}, 3),
                                                                     y = gpu_randn({8192, 8192}, 4)] { matmul(x, y); },
        5);
  {
    cuda::Fp32MatmulScope strict(cuda::Fp32Matmul::strict);
    flops("GEMM f32 strict FP32 8192^3", 2.0 * 8192.0 * 8192 * 8192,
          [&, x = gpu_randn({8192, 8192}, 3), y = gpu_randn({8192, 8192}, 4)] { matmul(x, y); }, 3);
  }
  flops("GEMM f64 4096^3", 2.0 * 4096.0 * 4096 * 4096,
        [&, x = gpu_randn({4096, 4096}, 5, DType::f64), y = gpu_randn({4096, 4096}, 6, DType::f64)] { matmul(x, y); }, 3);

  // ---- elementwise against the copy ceiling ----
  bandwidth("add (1 GiB + 1 GiB -> 1 GiB)", 3.0 * 4 * double(n), [&] { add(a, b); }, 10);
  bandwidth("add broadcast row (8192x32768 + 32768)", 2.0 * 4 * double(n),
            [&, row = gpu_randn({32768}, 7)] { add(a.view({8192, 32768}), row); }, 10);
  bandwidth("gelu (1 GiB)", 2.0 * 4 * double(n), [&] { gelu(a); }, 10);
  bandwidth("add_ axpy (1 GiB)", 3.0 * 4 * double(n), [&] { add_(c, a, 0.5); }, 10);
  bandwidth("randn (1 GiB)", 4.0 * double(n), [&] { Generator g(9); normal_(c, g, 0.0, 1.0); }, 10);
  bandwidth("transpose copy 16384x16384", 2.0 * 4 * 16384.0 * 16384,
            [&] { a.view({16384, 16384}).transpose(0, 1).contiguous(); }, 5);
  a = b = c = Tensor();

  // ---- GPT-2 small shapes: B=8, T=1024, C=768, NH=12, V=50304 ----
  const int64_t B = 8, T = 1024, C = 768, NH = 12, V = 50304, N = B * T;
  {
    Tensor x = gpu_randn({N, C}, 10), w = gpu_randn({3 * C, C}, 11), bias = gpu_randn({3 * C}, 12);
    flops("linear qkv (8192x768 @ 768x2304, TF32)", 2.0 * N * C * 3 * C, [&] { linear(x, w, bias); }, 20);
  }
  {
    // GPT-2's c_fc and GELU in bf16, forward and backward (three products), with the bias, GELU and bias gradient as
    // separate kernels and as cuBLASLt's epilogues (kernels::cuda::LinearEpilogues), in one run.
    Tensor x = gpu_randn({N, C}, 17).to(DType::bf16), w = gpu_randn({4 * C, C}, 18).to(DType::bf16);
    Tensor bias = gpu_randn({4 * C}, 19).to(DType::bf16), up = gpu_randn({N, 4 * C}, 20).to(DType::bf16);
    for (Tensor* t : {&x, &w, &bias}) t->set_requires_grad(true);
    for (const auto mode : {kernels::cuda::LinearEpilogues::separate, kernels::cuda::LinearEpilogues::cublaslt}) {
      kernels::cuda::set_linear_epilogues(mode);
      const bool lt = mode == kernels::cuda::LinearEpilogues::cublaslt;
      flops(lt ? "c_fc+gelu fwd+bwd bf16, cuBLASLt epilogues" : "c_fc+gelu fwd+bwd bf16, separate kernels",
            3 * 2.0 * N * C * 4 * C, [&] { linear_gelu(x, w, bias).backward(up); }, 10);
      if (lt && !kernels::cuda::linear_epilogues_last_refusal().empty())
        std::printf("  (cuBLASLt refused: %s)\n", kernels::cuda::linear_epilogues_last_refusal().c_str());
    }
    kernels::cuda::set_linear_epilogues(kernels::cuda::LinearEpilogues::separate);
  }
  // LayerNorm at GPT-2's (B*T, C), f32 and bf16 (bytes: the forward reads x and writes y; the backward reads dy and x
  // and writes dx, its weight and bias sums made in the same pass: 5 passes in all, the least the two can move).
  for (const DType t : {DType::f32, DType::bf16}) {
    const double bytes = double(dtype_size(t)) * N * C;
    const std::string what = t == DType::f32 ? "f32" : "bf16";
    Tensor x = gpu_randn({N, C}, 13, t), w = gpu_randn({C}, 14, t), bias = gpu_randn({C}, 15, t);
    Tensor up = gpu_randn({N, C}, 16, t);
    bandwidth("layer_norm forward (8192x768) " + what, 2.0 * bytes, [&] { layer_norm(x, w, bias); }, 20);
    w.set_requires_grad(true);
    bias.set_requires_grad(true);
    x.set_requires_grad(true);
    bandwidth("layer_norm forward+backward " + what, 5.0 * bytes, [&] {
      layer_norm(x, w, bias).backward(up);
      x.clear_grad();
      w.clear_grad();
      bias.clear_grad();
    }, 10);
  }
  // The residual stream's join, x + r then LayerNorm of the sum: add then layer_norm (reads x and r, writes the sum,
  // reads it, writes y: 5 passes) against add_layer_norm (reads x and r, writes the sum and y: 4), in one run. The
  // rate is over the 4 passes that both must make, so the fused row's GB/s says how close it comes to them.
  for (const DType t : {DType::f32, DType::bf16}) {
    const double bytes = double(dtype_size(t)) * N * C;
    const std::string what = t == DType::f32 ? "f32" : "bf16";
    Tensor x = gpu_randn({N, C}, 21, t), r = gpu_randn({N, C}, 22, t), w = gpu_randn({C}, 23, t);
    Tensor bias = gpu_randn({C}, 24, t);
    bandwidth("layer_norm after add, separate " + what, 4.0 * bytes, [&] { layer_norm(add(x, r), w, bias); }, 20);
    bandwidth("layer_norm after add, fused " + what, 4.0 * bytes, [&] { add_layer_norm(x, r, w, bias); }, 20);
  }
  {
    Tensor logits = gpu_randn({N, V}, 17);
    Generator g(18);
    Tensor targets = mul_scalar(rand({N}, g, {.dtype = DType::f32, .device = d}), double(V - 1)).to(DType::i32);
    bandwidth("cross_entropy forward (8192x50304)", 4.0 * N * V, [&] { cross_entropy(logits, targets); }, 10);
    logits.set_requires_grad(true);
    bandwidth("cross_entropy forward+backward", 3.0 * 4 * N * V, [&] {
      cross_entropy(logits, targets).backward();
      logits.clear_grad();
    }, 5);
    bandwidth("softmax (8192x50304)", 2.0 * 4 * N * V, [&] { softmax(logits.detach()); }, 5);
  }
  {
    Tensor qkv = gpu_randn({B, T, 3 * C}, 19), up = gpu_randn({B, T, C}, 20);
    const double attn_flop = 4.0 * B * NH * T * T * (C / NH);  // QK^T and PV, full (not causal-halved)
    flops("attention forward (B8 T1024 C768 NH12)", attn_flop, [&] { causal_self_attention(qkv, NH); }, 10);
    qkv.set_requires_grad(true);
    flops("attention forward+backward", 3.5 * attn_flop, [&] {
      causal_self_attention(qkv, NH).backward(up);
      qkv.clear_grad();
    }, 5);
  }
  {
    Generator g(21);
    Tensor ids = mul_scalar(rand({N}, g, {.dtype = DType::f32, .device = d}), double(V - 1)).to(DType::i32);
    Tensor w = gpu_randn({V, C}, 22), up = gpu_randn({N, C}, 23);
    bandwidth("embedding forward (8192 of 50304x768)", 2.0 * 4 * N * C, [&] { embedding(ids, w); }, 20);
    w.set_requires_grad(true);
    bandwidth("embedding forward+backward (incl. zeroing dW)", 4.0 * (3.0 * N * C + double(V) * C), [&] {
      embedding(ids, w).backward(up);
      w.clear_grad();
    }, 10);
  }
  {
    // CAME's 50 factored tensors of GPT-2 124M (the 98 vectors are came_dense_steps' and not here): each tensor's
    // nine launches in turn (came_factored_step), against came_factored_steps' batches of up to 10 tensors sharing
    // the workspace of the largest (wte's, as the optimizer holds it). Minimum bytes: the gradient read, the
    // parameter (or master) and the first moment read and written, the bf16 parameter written: 20 bytes per
    // element in f32 and 22 in bf16 (f32 first moment).
    using optim::kernels::CameFactoredArgs;
    using optim::kernels::FactoredLayout;
    std::vector<FactoredLayout> layouts = {{1, 50257, 1, 768, 1}, {1, 1024, 1, 768, 1}};
    for (int layer = 0; layer < 12; ++layer)
      for (const auto& [rows, cols] : {std::pair{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}})
        layouts.push_back({1, rows, 1, cols, 1});
    int64_t elements = 0, largest = 0;
    for (const FactoredLayout& l : layouts) {
      elements += l.numel();
      largest = std::max(largest, optim::kernels::cuda_factored_workspace_bytes(l));
    }
    Tensor ws = empty({largest}, {.dtype = DType::u8, .device = d});
    std::vector<Tensor> keep;  // the buffers of every tensor
    // A step's gradient: f32, or (fused) bf16 with the bf16 parameter the step rounds into.
    auto set_gradient = [&keep](auto& step, const Tensor& g, const Tensor& param, bool fused) {
      if (!fused) {
        step.grad = g.data<float>();
        return;
      }
      Tensor gb = g.to(DType::bf16), pb = param.to(DType::bf16);
      step.bf16_param = {.grad = gb.data<bf16>(), .param = pb.data<bf16>(), .seed = 7, .offset = 0};
      keep.insert(keep.end(), {gb, pb});
    };
    for (const bool fused : {false, true}) {
      std::vector<CameFactoredArgs> args;
      for (size_t i = 0; i < layouts.size(); ++i) {
        const FactoredLayout& l = layouts[i];
        Tensor param = gpu_randn({l.numel()}, 40 + i), m = zeros({l.numel()}, {.device = d});
        Tensor g = mul_scalar(gpu_randn({l.numel()}, 140 + i), 1e-3);
        Tensor stats[4] = {zeros({l.rows()}, {.device = d}), zeros({l.cols()}, {.device = d}),
                           full({l.rows()}, 1.0, {.device = d}), full({l.cols()}, 1.0, {.device = d})};
        CameFactoredArgs step{.layout = l,
                              .param = param.data<float>(),
                              .exp_avg = m.data_ptr(),
                              .exp_avg_sq_row = stats[0].data<float>(),
                              .exp_avg_sq_col = stats[1].data<float>(),
                              .exp_avg_res_row = stats[2].data<float>(),
                              .exp_avg_res_col = stats[3].data<float>(),
                              .lr = 1e-4,
                              .beta1 = 0.9,
                              .beta2 = 0.999,
                              .beta3 = 0.9999,
                              .eps1 = 1e-30,
                              .eps2 = 1e-16,
                              .clip_threshold = 1.0,
                              .workspace = ws.data_ptr()};
        set_gradient(step, g, param, fused);
        keep.insert(keep.end(), {param, m, g, stats[0], stats[1], stats[2], stats[3]});
        args.push_back(step);
      }
      const double bytes = double(elements) * (fused ? 22.0 : 20.0);
      const std::string what = fused ? "bf16 (fused)" : "f32";
      bandwidth("CAME gpt2 matrices, one by one, " + what, bytes, [&] {
        for (const CameFactoredArgs& one : args) optim::kernels::cuda::came_factored_step(one);
      }, 10);
      bandwidth("CAME gpt2 matrices, batched, " + what, bytes, [&] {
        optim::kernels::cuda::came_factored_steps(args.data(), int64_t(args.size()), ws.data_ptr(), largest);
      }, 10);
    }
    // Adafactor's (transformers' defaults: no first moment) on the same matrices: six launches per tensor against
    // adafactor_factored_steps' six per batch of up to 12. Minimum bytes: the gradient read, the parameter (or
    // master) read and written, the bf16 parameter written: 12 bytes per element in f32 and in bf16.
    using optim::kernels::AdafactorFactoredArgs;
    for (const bool fused : {false, true}) {
      std::vector<AdafactorFactoredArgs> args;
      for (size_t i = 0; i < layouts.size(); ++i) {
        const FactoredLayout& l = layouts[i];
        Tensor param = gpu_randn({l.numel()}, 40 + i), g = mul_scalar(gpu_randn({l.numel()}, 140 + i), 1e-3);
        Tensor row = zeros({l.rows()}, {.device = d}), col = zeros({l.cols()}, {.device = d});
        AdafactorFactoredArgs step{.layout = l,
                                   .param = param.data<float>(),
                                   .exp_avg_sq_row = row.data<float>(),
                                   .exp_avg_sq_col = col.data<float>(),
                                   .lr = 1e-4,
                                   .beta2t = 0.9,
                                   .eps1 = 1e-30,
                                   .clip_threshold = 1.0,
                                   .workspace = ws.data_ptr()};
        set_gradient(step, g, param, fused);
        keep.insert(keep.end(), {param, g, row, col});
        args.push_back(step);
      }
      const double bytes = double(elements) * 12.0;
      const std::string what = fused ? "bf16 (fused)" : "f32";
      bandwidth("Adafactor gpt2 matrices, singly, " + what, bytes, [&] {
        for (const AdafactorFactoredArgs& one : args) optim::kernels::cuda::adafactor_factored_step(one);
      }, 10);
      bandwidth("Adafactor gpt2 matrices, batched, " + what, bytes, [&] {
        optim::kernels::cuda::adafactor_factored_steps(args.data(), int64_t(args.size()), ws.data_ptr(), largest);
      }, 10);
    }
  }

  std::printf("\n%-48s %10s %12s\n", "benchmark", "ms", "rate");
  for (const Row& r : rows) std::printf("%-48s %10.3f %9.1f %s\n", r.name.c_str(), r.ms, r.rate, r.unit);
  return 0;
}
#else
int main() {
  std::printf("bench_cuda: built without CUDA; nothing to measure\n");
  return 0;
}
#endif
