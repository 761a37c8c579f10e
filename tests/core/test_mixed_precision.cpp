// bf16 compute outside CUDA: an op on bf16 CPU tensors stops with an error naming the op (the CPU backend has no
// bf16 kernels), while the meta device accounts bf16 ops exactly (a bf16 model can be planned anywhere), and a
// bf16 GPT-2 is refused on the CPU but planned on meta with 2 bytes per parameter and f32 statistics.
#include <doctest/doctest.h>

#include "core/ledger.h"
#include "core/ops.h"
#include "models/gpt2.h"
#include "train/trainer.h"

using namespace tally;

TEST_SUITE("core") {

TEST_CASE("bf16: ops on CPU tensors stop with an error naming the op; meta accounts them exactly") {
  Tensor a = ones({4, 8}, {.dtype = DType::bf16}), b = ones({4, 8}, {.dtype = DType::bf16});
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("[add] bf16 compute runs on CUDA only; use f32 on the CPU"), Error);
  CHECK_THROWS_WITH_AS(matmul(a, b.transpose(0, 1)), doctest::Contains("[matmul] bf16 compute runs on CUDA only"), Error);
  CHECK_THROWS_WITH_AS(layer_norm(a, ones({8}, {.dtype = DType::bf16}), zeros({8}, {.dtype = DType::bf16})),
                       doctest::Contains("[layer_norm] bf16"), Error);
  // Conversions are not compute: they stay available on the CPU.
  CHECK(a.to(DType::f32).to_vector<float>()[5] == 1.0f);

  Ledger& meta = ledger(Device::meta());
  const int64_t before = meta.total().live_requested;
  {
    Tensor x = empty({6, 40}, {.dtype = DType::bf16, .device = Device::meta()});
    Tensor w = empty({40}, {.dtype = DType::bf16, .device = Device::meta()});
    w.set_requires_grad(true);  // the graph keeps mean and rstd
    Tensor y = layer_norm(x, w, w);
    CHECK(y.dtype() == DType::bf16);
    CHECK(meta.total().live_requested - before == 6 * 40 * 2 + 40 * 2 + 6 * 40 * 2 + 2 * 6 * 4);  // mean, rstd in f32
    Tensor logits = empty({6, 50}, {.dtype = DType::bf16, .device = Device::meta()});
    Tensor t = empty({6}, {.dtype = DType::i32, .device = Device::meta()});
    Tensor loss = cross_entropy(logits, t);
    CHECK(loss.dtype() == DType::f32);  // per-row losses and the loss in f32
  }
  CHECK(meta.total().live_requested == before);
}

TEST_CASE("bf16: GPT-2 is refused on the CPU with the way out, and planned on meta at 2 bytes per parameter") {
  models::GPT2Config c = models::GPT2Config::preset("tiny");
  CHECK_THROWS_WITH_AS(models::GPT2(c, {.dtype = DType::bf16}), doctest::Contains("bf16 computes on CUDA only: use device cuda"),
                       Error);
  Ledger& meta = ledger(Device::meta());
  const int64_t before = meta.category(Category::parameter).live_requested;
  {
    models::GPT2 m(c, {.device = Device::meta(), .dtype = DType::bf16});
    CHECK(meta.category(Category::parameter).live_requested - before == 2 * c.num_parameters());
    Tensor x = empty({2, 16}, {.dtype = DType::i32, .device = Device::meta()});
    Tensor loss = m.loss(x, x);
    CHECK(loss.dtype() == DType::f32);
    loss.backward();
    for (const auto& named : m.named_parameters()) {  // not a structured binding: clang 14 cannot capture one in INFO
      INFO(named.first);
      CHECK(named.second.grad().dtype() == DType::bf16);
    }
  }
}

TEST_CASE("bf16: tally train --dtype bf16 needs --device cuda") {
  train::Flags f("train", "", train::train_flags());
  f.parse({"--model", "tiny", "--dtype", "bf16"});
  CHECK_THROWS_WITH_AS(train::run_config(f), doctest::Contains("--dtype bf16 computes on CUDA only"), train::FlagError);
  train::Flags m("train", "", train::train_flags());
  m.parse({"--model", "tiny", "--f32-matmul", "fast"});
  CHECK_THROWS_WITH_AS(train::run_config(m), doctest::Contains("--f32-matmul must be tf32 or strict, got 'fast'"),
                       train::FlagError);
  // A resumed bf16 run (its --dtype saved, not given now) is told to resume on CUDA, not to change its dtype.
  train::Flags r("train", "", train::train_flags());
  r.parse({"--resume", "run", "--dtype", "bf16"});
  CHECK_THROWS_WITH_AS(train::dtype_flag(r, Device::cpu()),
                       doctest::Contains("--resume: the run trains with --dtype bf16, which computes on CUDA only: "
                                         "resume it with --device cuda"),
                       train::FlagError);
  train::Flags g("train", "", train::train_flags());
  g.parse({"--model", "tiny", "--dtype", "f16"});
  CHECK_THROWS_WITH_AS(train::run_config(g), doctest::Contains("--dtype must be f32 or bf16"), train::FlagError);
}

}  // TEST_SUITE
