// cuBLASLt's epilogues for a Linear layer (core/kernels/cuda/linear_epilogues.h) against the separate kernels they
// replace (the product, add_bias, gelu, bias_backward) on the GPU: linear and linear_gelu, forward (the output) and
// backward (dx, dw and db), in f32 (strict FP32 products) and bf16. The two paths sum in different orders and round
// differently (cuBLASLt adds the bias and applies GELU before the one rounding of the output; the separate kernels
// round the product first), so they agree within each type's resolution, not bit for bit: 1e-5 of each tensor's
// largest value in f32, 2e-2 in bf16. Also checked: cuBLASLt did run where tally asks it to (no refusal), a GELU
// whose rows are not a multiple of 8 elements falls back, and a layer without bias never asks. Skipped, visibly,
// without a GPU.
#include <doctest/doctest.h>

#ifdef TALLY_HAS_CUDA
#include <cmath>
#include <string>

#include "core/autograd/node.h"
#include "core/cuda/runtime.h"
#include "core/kernels/cuda/linear_epilogues.h"
#include "core/ops.h"
#include "core/random.h"
#include "tests/test_util.h"

using namespace tally;
namespace kc = tally::kernels::cuda;

namespace {

enum class Layer : uint8_t { linear, linear_gelu };

struct Run {
  Tensor y, dx, dw, db;  // f32, on the CPU
  std::string forward_refusal, backward_refusal;
};

// The layer on the GPU in `dtype`, and the gradients of sum(y * r); cuBLASLt on or off.
Run layer(Layer kind, const Tensor& x32, const Tensor& w32, const Tensor& b32, const Tensor& r32, DType dtype,
          kc::LinearEpilogues mode) {
  auto leaf = [&](const Tensor& t) {
    Tensor d = t.to(Device::cuda()).to(dtype).detach();
    d.set_requires_grad(true);
    return d;
  };
  Tensor x = leaf(x32), w = leaf(w32), b = b32.defined() ? leaf(b32) : Tensor();
  kc::set_linear_epilogues(mode);
  Run run;
  Tensor y = kind == Layer::linear ? linear(x, w, b) : linear_gelu(x, w, b);
  run.forward_refusal = kc::linear_epilogues_last_refusal();
  Tensor loss = sum(y * r32.to(Device::cuda()).to(dtype));
  loss.backward();
  run.backward_refusal = kc::linear_epilogues_last_refusal();
  kc::set_linear_epilogues(kc::LinearEpilogues::separate);
  auto host = [](const Tensor& t) { return t.defined() ? t.to(DType::f32).to(Device::cpu()) : Tensor(); };
  run.y = host(y);
  run.dx = host(x.grad());
  run.dw = host(w.grad());
  run.db = b.defined() ? host(b.grad()) : Tensor();
  return run;
}

}  // namespace

TEST_SUITE("cuda") {

TEST_CASE("cuda linear: cuBLASLt's bias, GELU and bias-gradient epilogues match the separate kernels" *
          doctest::skip(!tally::cuda_available())) {
  tally::cuda::Fp32MatmulScope strict(tally::cuda::Fp32Matmul::strict);
  struct Problem {
    int64_t N, IN, OUT;
    bool bias;
  };
  // GPT-2's shapes scaled down (OUT = 3C, C, 4C), a tall one, OUT not a multiple of 8, and no bias.
  for (const Problem p : {Problem{64, 32, 96, true}, Problem{64, 32, 32, true}, Problem{48, 32, 128, true},
                          Problem{300, 64, 48, true}, Problem{37, 24, 17, true}, Problem{40, 16, 24, false}}) {
    Generator gen(11 + uint64_t(p.N * p.OUT));
    const Tensor x = randn({p.N, p.IN}, gen), w = mul_scalar(randn({p.OUT, p.IN}, gen), 0.2);
    const Tensor b = p.bias ? randn({p.OUT}, gen) : Tensor(), r = randn({p.N, p.OUT}, gen);
    for (const DType dtype : {DType::f32, DType::bf16})
      for (const Layer kind : {Layer::linear, Layer::linear_gelu}) {
        const std::string what = cat(kind == Layer::linear ? "linear" : "linear_gelu", " ", dtype_name(dtype), " N ",
                                     p.N, " IN ", p.IN, " OUT ", p.OUT, p.bias ? "" : " no bias");
        INFO(what);
        const double tol = dtype == DType::bf16 ? 2e-2 : 1e-5;
        const Run separate = layer(kind, x, w, b, r, dtype, kc::LinearEpilogues::separate);
        CHECK(separate.forward_refusal != "");
        const Run fused = layer(kind, x, w, b, r, dtype, kc::LinearEpilogues::cublaslt);
        const bool gelu_rows_ok = kind == Layer::linear || p.OUT % 8 == 0;
        if (p.bias && gelu_rows_ok && p.OUT % 8 == 0) {  // what cuBLASLt should take: GPT-2's every layer
          CHECK_MESSAGE(fused.forward_refusal.empty(), "cuBLASLt refused the forward: ", fused.forward_refusal);
          CHECK_MESSAGE(fused.backward_refusal.empty(), "cuBLASLt refused the bias gradient: ", fused.backward_refusal);
        }
        if (!p.bias) CHECK(fused.forward_refusal == "no bias");
        if (!gelu_rows_ok) CHECK(fused.forward_refusal.find("multiple of 8") != std::string::npos);
        CHECK(test::max_rel_error(fused.y, separate.y) <= tol);
        CHECK(test::max_rel_error(fused.dx, separate.dx) <= tol);
        CHECK(test::max_rel_error(fused.dw, separate.dw) <= tol);
        if (p.bias) CHECK(test::max_rel_error(fused.db, separate.db) <= tol);
      }
  }
}

}  // TEST_SUITE

#endif  // TALLY_HAS_CUDA
