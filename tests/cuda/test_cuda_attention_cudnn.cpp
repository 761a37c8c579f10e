// cuDNN's fused attention (core/kernels/cuda/attention_cudnn.h) against tally's own attention kernels on the GPU:
// GPT-2's causal self-attention in bf16, forward (the output and the softmax statistic the backward reads) and
// backward (dq, dk, dv through the fused qkv), for head sizes 32, 64 and 128, sequences that are and are not
// multiples of the tiles, batch and heads > 1. Both run in bf16 with f32 accumulation but tile and round differently,
// so they agree within bf16's resolution (2^-8 relative), not bit for bit: tolerance 2e-2 of each tensor's largest
// value. Also checked: cuDNN did run (no refusal), its output against the CPU's f32 attention of the same values, its
// saved statistic serves tally's backward, its backward (the deterministic algorithm) gives the same bits when run
// again, and a problem it does not take (f32) falls back to tally's kernels, which match the CPU. Skipped, visibly,
// without a GPU or without cuDNN in the build.
#include <doctest/doctest.h>

#ifdef TALLY_HAS_CUDA
#include <cmath>
#include <string>

#include "core/autograd/node.h"
#include "core/kernels/cuda/attention_cudnn.h"
#include "core/ops.h"
#include "core/random.h"
#include "tests/test_util.h"

using namespace tally;
namespace kc = tally::kernels::cuda;

namespace {

struct Result {
  Tensor out, dqkv;
  std::string forward_refusal, backward_refusal;  // why cuDNN declined each pass ("" where it ran)
};

// causal_self_attention of qkv (B, T, 3C) in bf16 on the GPU, and d(sum(out * w))/dqkv; cuDNN on or off for the
// forward and the backward separately.
Result attend(const Tensor& qkv_f32, const Tensor& w_f32, int64_t heads, kc::CudnnAttention forward,
              kc::CudnnAttention backward) {
  Tensor qkv = qkv_f32.to(Device::cuda()).to(DType::bf16).detach();
  qkv.set_requires_grad(true);
  kc::set_cudnn_attention(forward);
  Tensor out = causal_self_attention(qkv, heads);
  const std::string forward_refusal = kc::cudnn_attention_last_refusal();  // the backward's call overwrites it
  Tensor loss = sum(out * w_f32.to(Device::cuda()).to(DType::bf16));
  kc::set_cudnn_attention(backward);
  loss.backward();
  kc::set_cudnn_attention(kc::CudnnAttention::off);
  return {out.to(DType::f32).to(Device::cpu()), qkv.grad().to(DType::f32).to(Device::cpu()), forward_refusal,
          kc::cudnn_attention_last_refusal()};
}

}  // namespace

TEST_SUITE("cuda") {

TEST_CASE("cuda attention: cuDNN's fused attention matches tally's kernels (bf16, causal)" *
          doctest::skip(!tally::cuda_available() || !kc::cudnn_attention_built())) {
  struct Shape3 {
    int64_t B, T, heads, HS;
  };
  for (const Shape3 s : {Shape3{2, 64, 3, 64}, Shape3{1, 257, 2, 32}, Shape3{2, 128, 2, 128}, Shape3{4, 1024, 12, 64}}) {
    INFO("B ", s.B, " T ", s.T, " heads ", s.heads, " head size ", s.HS);
    const int64_t C = s.heads * s.HS;
    Generator gen(7 + uint64_t(s.T));
    const Tensor qkv = randn({s.B, s.T, 3 * C}, gen), w = randn({s.B, s.T, C}, gen);
    using enum kc::CudnnAttention;
    const Result mine = attend(qkv, w, s.heads, off, off);
    const Result fused = attend(qkv, w, s.heads, on, on);
    CHECK_MESSAGE(fused.forward_refusal.empty(), "cuDNN refused the forward: ", fused.forward_refusal);
    CHECK_MESSAGE(fused.backward_refusal.empty(), "cuDNN refused the backward: ", fused.backward_refusal);
    CHECK(test::max_rel_error(fused.out, mine.out) <= 2e-2);
    CHECK(test::max_rel_error(fused.dqkv, mine.dqkv) <= 2e-2);
    // Against the CPU in f32 on the same (bf16-rounded) values, not only against tally's GPU kernels.
    const Tensor cpu_out = causal_self_attention(qkv.to(DType::bf16).to(DType::f32), s.heads);
    CHECK(test::max_rel_error(fused.out, cpu_out) <= 2e-2);
    // cuDNN's forward, tally's backward: the saved statistic means the same to both (max + log sum exp).
    const Result mixed = attend(qkv, w, s.heads, on, off);
    CHECK_MESSAGE(mixed.forward_refusal.empty(), "cuDNN refused the forward: ", mixed.forward_refusal);
    CHECK(test::max_rel_error(mixed.dqkv, mine.dqkv) <= 2e-2);
    // The backward is asked for cuDNN's deterministic algorithm: the same gradient, bit for bit, run after run.
    const Result again = attend(qkv, w, s.heads, on, on);
    const std::vector<float> first = fused.dqkv.to_vector<float>(), second = again.dqkv.to_vector<float>();
    CHECK(first == second);
  }
  // f32 operands are not cuDNN's here: tally's kernels run, whatever the switch says, and match the CPU.
  kc::set_cudnn_attention(kc::CudnnAttention::on);
  Generator gen(3);
  const Tensor qkv = randn({1, 16, 3 * 64}, gen);
  const Tensor out = causal_self_attention(qkv.to(Device::cuda()), 2);
  kc::set_cudnn_attention(kc::CudnnAttention::off);
  CHECK(out.dtype() == DType::f32);
  CHECK(test::max_rel_error(out.to(Device::cpu()), causal_self_attention(qkv, 2)) <= 5e-3);  // TF32 products
}

}  // TEST_SUITE
#else
TEST_SUITE("cuda") {
TEST_CASE("cuda attention: not run, this build has no CUDA" * doctest::skip(true)) {}
}  // TEST_SUITE
#endif
