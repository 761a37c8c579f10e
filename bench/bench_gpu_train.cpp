// GPU training benchmark: GPT-2 (default gpt2 124M) training steps on CUDA (fp32 storage, TF32 matmuls unless
// --strict; or --dtype bf16: bf16 parameters, activations and gradients over f32 master weights) with CAME or
// AdamW, and the optimizer step alone against the bytes it must move. Prints one JSON object per measurement,
// then (with --torch) runs bench/peers/torch_gpt2_step.py on the same GPU, model, batch, optimizer and precision
// (bf16: torch.autocast over f32 parameters). Used by scripts/gpu_check.sh; not a test.
// Step time: the mean over --steps consecutive steps after --warmup untimed ones (one synchronization at each end).
// MFU as llm.c computes it: flops per token = 6 N + 6 L C T, N every parameter once at the unpadded vocabulary
// (124,439,808 for gpt2 124M; the padded rows of wte are left out), against --peak-tflops (dense bf16 of an
// H100/H200 SXM: 989; for TF32 runs the same peak is used, so their MFU reads low).
//   bench_gpu_train [--model gpt2] [--batch 8] [--seq 1024] [--steps 8] [--warmup 2] [--optimizers came,adamw]
//                   [--dtype f32|bf16] [--strict] [--copy-mb 1024] [--peak-tflops 989] [--torch]
//                   [--loss-chunk-rows 1024]   (the head and loss in chunks of that many rows past it; 0: whole)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "core/ops.h"
#include "models/gpt2.h"
#include "optim/clip.h"
#include "train/setup.h"

#ifdef TALLY_HAS_CUDA
#include "core/cuda/runtime.h"
#include "core/kernels/cuda/attention_cudnn.h"
#include "core/kernels/cuda/linear_epilogues.h"
#endif

using namespace tally;

namespace {

constexpr const char* kUsage =
    "usage: bench_gpu_train [--model gpt2] [--batch 8] [--seq 1024] [--steps 8] [--warmup 2] [--optimizers came,adamw]\n"
    "                       [--dtype f32|bf16] [--strict] [--copy-mb 1024] [--peak-tflops 989] [--torch]\n"
    "                       [--loss-chunk-rows 1024]\n";

}  // namespace

int main(int argc, char** argv) {
  std::string preset = "gpt2", optimizers = "came,adamw";
  int64_t B = 8, T = 1024, steps = 8, warmup = 2, copy_mb = 1024;
  int64_t loss_chunk_rows = models::GPT2Options{}.loss_chunk_rows;
  double peak_tflops = 989;
  bool torch = false, strict = false;
  std::string dtype_name = "f32";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    auto next = [&]() -> std::string { return has_value ? argv[++i] : ""; };
    auto positive = [&](int64_t& v) {
      v = std::atoll(next().c_str());
      return v > 0;
    };
    bool ok = true;
    if (a == "--model") preset = next();
    else if (a == "--batch") ok = positive(B);
    else if (a == "--seq") ok = positive(T);
    else if (a == "--steps") ok = positive(steps);
    else if (a == "--warmup") {
      warmup = std::atoll(next().c_str());
      ok = has_value && warmup >= 0;
    } else if (a == "--peak-tflops") {
      peak_tflops = std::atof(next().c_str());
      ok = peak_tflops > 0;
    }
    else if (a == "--copy-mb") ok = positive(copy_mb);
    else if (a == "--loss-chunk-rows") {
      const std::string v = next();
      char* end = nullptr;
      loss_chunk_rows = std::strtoll(v.c_str(), &end, 10);
      ok = !v.empty() && *end == '\0' && loss_chunk_rows >= 0;
    }
    else if (a == "--optimizers") optimizers = next();
    else if (a == "--dtype") dtype_name = next();
    else if (a == "--torch") torch = true;
    else if (a == "--strict") strict = true;
    else if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else ok = false;
    if (!ok) {
      std::printf("bench_gpu_train: bad argument '%s'\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  if (dtype_name != "f32" && dtype_name != "bf16") {
    std::printf("bench_gpu_train: --dtype must be f32 or bf16, got '%s'\n", dtype_name.c_str());
    return 2;
  }
  if (dtype_name == "bf16" && strict) {
    std::printf("bench_gpu_train: --strict (f32 products without TF32) does not apply to --dtype bf16\n");
    return 2;
  }
#ifndef TALLY_HAS_CUDA
  (void)torch;
  std::printf("bench_gpu_train: built without CUDA; nothing to measure\n");
  return 0;
#else
  if (!cuda_available()) {
    std::printf("bench_gpu_train: no CUDA device\n");
    return 0;
  }
  const DType dtype = dtype_name == "bf16" ? DType::bf16 : DType::f32;
  const char* precision = dtype == DType::bf16 ? "bf16" : strict ? "fp32" : "tf32";
  cuda::set_fp32_matmul(strict ? cuda::Fp32Matmul::strict : cuda::Fp32Matmul::tf32);
  const Device dev = Device::cuda(0);
  models::GPT2Config config = models::GPT2Config::preset(preset);
  // MFU's N: every parameter once at the unpadded vocabulary; flops per token as llm.c counts them.
  const double n_mfu = double(config.num_parameters() - (config.padded_vocab_size - config.vocab_size) * config.n_embd);
  const double flops_per_token = 6 * n_mfu + 6.0 * double(config.n_layer * config.n_embd * T);
  std::vector<int32_t> xs(size_t(B * T)), ys(size_t(B * T));
  uint64_t r = 88172645463325252ull;
  for (size_t i = 0; i < xs.size(); ++i) {
    r ^= r << 13, r ^= r >> 7, r ^= r << 17;
    xs[i] = int32_t(r % uint64_t(config.vocab_size));
    ys[i] = int32_t((r >> 20) % uint64_t(config.vocab_size));
  }
  Tensor x = from_vector(xs, {B, T}, {.dtype = DType::i32, .device = dev});
  Tensor y = from_vector(ys, {B, T}, {.dtype = DType::i32, .device = dev});

  // Device-to-device copy ceiling (bytes read + written).
  double copy_gbs = 0;
  {
    const int64_t n = copy_mb << 18;  // f32 elements
    Tensor a = empty({n}, {.device = dev}), b = empty({n}, {.device = dev});
    a.fill_(1.0);
    cuda::synchronize();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) cuda::memcpy_device_to_device(b.data_ptr(), a.data_ptr(), a.nbytes());
    cuda::synchronize();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 10;
    copy_gbs = 2.0 * double(a.nbytes()) / s * 1e-9;
    std::printf("{\"bench\": \"d2d_copy\", \"GB_per_s\": %.1f}\n", copy_gbs);
  }

  size_t start = 0;
  while (start < optimizers.size()) {
    size_t comma = optimizers.find(',', start);
    if (comma == std::string::npos) comma = optimizers.size();
    std::string name = optimizers.substr(start, comma - start);
    start = comma + 1;
    ledger(dev).reset_peaks();  // each optimizer's peak from its own model up (the previous one is freed)
    models::GPT2 model(config, {.device = dev, .dtype = dtype, .seed = 1, .loss_chunk_rows = loss_chunk_rows});
    auto opt = optim::make_optimizer(name, model.parameters(), {{"lr", 1e-4}});
    opt->init_state();
    auto step = [&] {
      opt->zero_grad(optim::ZeroGrad::set_to_none);
      Tensor loss = model.loss(x, y);
      loss.backward();
      double norm = optim::grad_norm(model.parameters());
      opt->step({.grad_scale = optim::clip_coefficient(norm, 1.0)});
      return loss.item();
    };
    for (int64_t i = 0; i < warmup; ++i) step();
    cuda::synchronize();
    auto t0 = std::chrono::steady_clock::now();
    double loss = 0;
    for (int64_t i = 0; i < steps; ++i) loss = step();
    cuda::synchronize();
    double ms = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() * 1000 / double(steps);
    const auto usage = ledger(dev).total();
    const double tokens_per_s = double(B * T) / (ms / 1000);
    // Whose attention ran: cuDNN's fused kernels (TALLY_CUDNN_ATTENTION=1, bf16, taken) or tally's.
    const bool fused = dtype == DType::bf16 && kernels::cuda::cudnn_attention_enabled() &&
                       kernels::cuda::cudnn_attention_last_refusal().empty();
    // Whose Linear epilogues ran: cuBLASLt's (TALLY_CUBLASLT_EPILOGUES=1, taken by the step's last bias gradient)
    // or the separate bias, GELU and bias-gradient kernels.
    const bool epilogues = kernels::cuda::linear_epilogues_enabled() &&
                           kernels::cuda::linear_epilogues_last_refusal().empty();
    std::printf("{\"bench\": \"tally_train_step\", \"optimizer\": \"%s\", \"model\": \"%s\", \"batch\": %lld, \"seq\": %lld, "
                "\"precision\": \"%s\", \"attention\": \"%s\", \"epilogues\": \"%s\", \"loss_chunk_rows\": %lld, \"steps\": %lld, \"warmup\": %lld, \"ms_per_step\": %.2f, \"tokens_per_s\": %.0f, "
                "\"loss\": %.4f, \"peak_ledger_mb\": %.0f, \"peak_held_mb\": %.0f, \"params\": %.0f, "
                "\"flops_per_token\": %.0f, \"mfu\": %.4f, \"peak_tflops\": %.0f}\n",
                name.c_str(), preset.c_str(), (long long)B, (long long)T, precision, fused ? "cudnn" : "tally",
                epilogues ? "cublaslt" : "separate",
                (long long)loss_chunk_rows, (long long)steps, (long long)warmup, ms,
                tokens_per_s, loss, double(usage.peak_requested) / (1 << 20), double(usage.peak_held) / (1 << 20), n_mfu,
                flops_per_token, tokens_per_s * flops_per_token / (peak_tflops * 1e12), peak_tflops);
    // The optimizer step alone (gradients left in place), against the minimum bytes it must move.
    {
      Tensor loss_t = model.loss(x, y);
      loss_t.backward();
      cuda::synchronize();
      auto t1 = std::chrono::steady_clock::now();
      const int reps = 20;
      for (int i = 0; i < reps; ++i) opt->step();
      cuda::synchronize();
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count() / reps;
      // Read the parameter and its gradient, write the parameter, read and write every state tensor (the f32 master
      // of a bf16 parameter among them): AdamW f32 28 bytes per parameter, CAME 20 plus its small factors.
      const double n = double(model.num_parameters()), p = double(dtype_size(dtype));
      const double min_bytes = 3 * p * n + 2 * double(opt->total_state_bytes());
      std::printf("{\"bench\": \"tally_optimizer_step\", \"optimizer\": \"%s\", \"precision\": \"%s\", \"ms\": %.3f, "
                  "\"min_GB_per_s\": %.1f, \"fraction_of_copy\": %.2f}\n",
                  name.c_str(), precision, s * 1000, min_bytes / s * 1e-9, min_bytes / s * 1e-9 / copy_gbs);
    }
    std::fflush(stdout);
    if (torch) {
      char cmd[1024];
      std::snprintf(cmd, sizeof cmd,
                    "python3 %s/bench/peers/torch_gpt2_step.py --device cuda --dtype %s --batch %lld --seq %lld "
                    "--optimizer %s --steps %lld --warmup 2 --layers %lld --heads %lld --width %lld --vocab %lld --block %lld",
                    TALLY_SOURCE_DIR, precision, (long long)B, (long long)T, name.c_str(), (long long)steps,
                    (long long)config.n_layer, (long long)config.n_head, (long long)config.n_embd,
                    (long long)config.vocab_size, (long long)config.block_size);
      std::fflush(stdout);
      int rc = std::system(cmd);
      if (rc != 0) std::printf("{\"bench\": \"torch_train_step\", \"optimizer\": \"%s\", \"error\": %d}\n", name.c_str(), rc);
    }
  }
  return 0;
#endif
}
