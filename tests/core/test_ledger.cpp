// The memory ledger: exact bytes by category and owner after creating, viewing, freeing tensors and after a
// backward pass (saved tensors released); the meta device accounts like the CPU without memory.
#include <doctest/doctest.h>

#include <map>

#include "core/autograd/node.h"
#include "core/ledger.h"
#include "core/kernels/kernels.h"
#include "core/ops.h"

using namespace tally;

TEST_SUITE("core") {

TEST_CASE("ledger: creating, viewing and freeing tensors") {
  Ledger& l = ledger();
  const Usage before = l.category(Category::parameter);
  {
    MemoryScope scope(Category::parameter, "test.ledger.w");
    Tensor w = zeros({100, 3});  // 1200 B requested, held 1216 (64-byte blocks)
    CHECK(l.owner("test.ledger.w").live_requested == 1200);
    CHECK(l.owner("test.ledger.w").live_held == 1216);
    CHECK(l.category(Category::parameter).live_requested - before.live_requested == 1200);
    Tensor v = w.transpose(0, 1).slice(0, 1, 2);  // a view of a view: no bytes
    CHECK(v.shape() == Shape{1, 100});
    CHECK(l.owner("test.ledger.w").live_requested == 1200);
    Tensor d = zeros({7}, {.dtype = DType::f64});  // 56 B, held 64
    CHECK(l.owner("test.ledger.w").live_requested == 1256);
    CHECK(l.owner("test.ledger.w").live_held == 1280);
    CHECK(l.owner("test.ledger.w").allocations == 2);
    w = Tensor();  // the view v still holds the storage
    CHECK(l.owner("test.ledger.w").live_requested == 1256);
  }
  CHECK(l.owner("test.ledger.w").live_requested == 0);
  CHECK(l.owner("test.ledger.w").peak_requested == 1256);
  CHECK(l.category(Category::parameter).live_requested == before.live_requested);
}

TEST_CASE("ledger: a backward pass releases saved activations; gradients land under their owner") {
  Ledger& l = ledger();
  Tensor w, x;
  {
    MemoryScope p(Category::parameter, "test.bw.w");
    w = ones({64, 32}).set_name("test.bw.w").set_requires_grad(true);  // 8192 B
  }
  {
    MemoryScope o(Category::other, "test.bw.x");
    x = ones({16, 32});
  }
  Tensor loss;
  int64_t act_before = l.category(Category::activation).live_requested;
  {
    MemoryScope a(Category::activation, "test.bw.act");
    Tensor h = gelu(linear(x, w, Tensor()));  // linear out 16*64*4 = 4096 B, gelu out 4096 B
    loss = mean(h * h);                       // h*h 4096 B, mean: sum (4 B) then scalar * (4 B)
  }
  // Alive now: gelu's saved input (the linear output), h (saved by mul), h*h? (not saved: sum keeps none), loss.
  CHECK(l.owner("test.bw.act").live_requested == 4096 + 4096 + 4);
  loss.backward();
  loss = Tensor();
  CHECK(l.owner("test.bw.act").live_requested == 0);
  CHECK(l.category(Category::activation).live_requested == act_before);
  CHECK(l.owner("test.bw.w").live_requested == 8192);       // the parameter
  CHECK(l.owner("test.bw.w:grad").live_requested == 8192);  // its gradient, under the gradient category
  CHECK(l.category(Category::gradient).live_requested >= 8192);
  // Workspace used during backward is all returned.
  CHECK(l.owner("backward").live_requested == 0);
}

TEST_CASE("ledger: meta device accounts like the CPU and holds no memory") {
  Ledger& m = ledger(Device::meta());
  {
    MemoryScope s(Category::activation, "test.meta");
    Tensor a = empty({1000, 1000}, {.device = Device::meta()});
    CHECK(a.data_ptr() == nullptr);
    CHECK(m.owner("test.meta").live_requested == 4000000);
    CHECK(m.owner("test.meta").live_held == 4000000);
    Tensor b = linear(a, empty({10, 1000}, {.device = Device::meta()}), Tensor());
    CHECK(b.shape() == Shape{1000, 10});
    CHECK(m.owner("test.meta").live_requested == 4000000 + 40000);  // input + output (the weight was a temporary)
  }
  CHECK(m.owner("test.meta").live_requested == 0);
}

TEST_CASE("ledger: table and formatting") {
  CHECK(format_bytes_exact(124439808) == "124,439,808 B");
  CHECK(format_bytes_exact(0) == "0 B");
  CHECK(format_bytes_human(1536) == "1.50 KiB");
  std::string t = ledger().table();
  CHECK(t.find("optimizer_state") != std::string::npos);
  CHECK(t.find("peak held") != std::string::npos);
}

TEST_CASE("ledger: peaks restart from live figures") {
  Ledger& l = ledger();
  {
    MemoryScope s(Category::workspace, "test.peak");
    Tensor a = zeros({1024});
    { Tensor b = zeros({2048}); }
    CHECK(l.owner("test.peak").peak_requested == 4096 + 8192);
    l.reset_peaks();
    CHECK(l.owner("test.peak").peak_requested == 4096);
  }
}

}  // TEST_SUITE

TEST_SUITE("core") {
TEST_CASE("ledger: the meta device plans every op's bytes as the CPU spends them (attention with workspace)") {
  auto run = [](Device d) {
    Ledger& l = ledger(d);
    l.reset_peaks();
    Usage before = l.category(Category::workspace);
    {
      MemoryScope s(Category::activation, "test.meta_vs_cpu");
      Tensor qkv = empty({2, 16, 24}, {.device = d}).set_requires_grad(true);
      if (d.is_cpu()) qkv.detach().fill_(0.1);
      Tensor y = causal_self_attention(qkv, 2);
      Tensor loss = sum(y * y);
      loss.backward();
    }
    return std::pair<int64_t, int64_t>{l.category(Category::workspace).peak_requested - before.live_requested,
                                       l.owner("test.meta_vs_cpu").peak_requested};
  };
  auto cpu = run(Device::cpu()), meta = run(Device::meta());
  CHECK(cpu.first > 0);
  CHECK(cpu.first == meta.first);
  CHECK(cpu.second == meta.second);
}

TEST_CASE("ledger: a meta device planning for CUDA takes the CUDA kernels' scratch and the CUDA allocator's rounding") {
  const Device plan = Device::parse("meta:cuda");
  CHECK(plan.is_meta());
  CHECK(plan.backend() == DeviceKind::cuda);
  CHECK(plan.str() == "meta:cuda");
  CHECK(Device::meta().backend() == DeviceKind::cpu);
  CHECK(plan != Device::meta());
  Ledger& m = ledger(plan);
  CHECK(&m == &ledger(Device::meta()));  // one meta ledger, whatever a meta device plans for
  {
    MemoryScope s(Category::activation, "test.meta_cuda");
    Tensor a = empty({1000}, {.device = plan});  // 4000 B: a CUDA block is rounded to 512 B, a CPU one to 64 B
    CHECK(m.owner("test.meta_cuda").live_held == 4096);
    Tensor b = empty({1000}, {.device = Device::meta()});
    CHECK(m.owner("test.meta_cuda").live_held == 4096 + 4032);
  }
  // Backward passes whose CUDA kernels need scratch (the embedding's sort, LayerNorm's and a bias's column sums, a
  // sum of long rows): a plan for CUDA holds it under the op's name, a plan for the CPU holds none.
  auto scratch = [&](Device d) {
    std::map<std::string, int64_t> peaks;
    const char* owners[] = {"embedding_backward", "layer_norm_backward", "bias_backward", "sum"};
    m.reset_peaks();
    {
      Tensor w = empty({300, 64}, {.device = d}), ln_w = empty({64}, {.device = d}), ln_b = empty({64}, {.device = d});
      Tensor lw = empty({40, 64}, {.device = d}), lb = empty({40}, {.device = d});
      for (Tensor* t : {&w, &ln_w, &ln_b, &lw, &lb}) t->set_requires_grad(true);
      Tensor ids = empty({4, 512}, {.dtype = DType::i32, .device = d});
      Tensor x = layer_norm(embedding(ids, w), ln_w, ln_b);  // (4, 512, 64)
      Tensor y = linear(x, lw, lb);                          // (4, 512, 40)
      sum(sum(y.reshape({1, 4 * 512 * 40}), {1})).backward();  // one row of 81920: split into chunks on CUDA
    }
    for (const char* o : owners) peaks[o] = m.owner(o).peak_requested;
    return peaks;
  };
  const auto cuda = scratch(plan), cpu = scratch(Device::meta());
  CHECK(cuda.at("embedding_backward") == kernels::cuda_embedding_backward_workspace_bytes(2048));
  CHECK(cuda.at("layer_norm_backward") == kernels::cuda_layernorm_backward_workspace_bytes(2048, 64));
  CHECK(cuda.at("bias_backward") == kernels::cuda_sum_dim_workspace_bytes(1, 2048, 40));
  CHECK(cuda.at("sum") == kernels::cuda_sum_dim_workspace_bytes(1, 81920, 1));
  CHECK(cuda.at("sum") > 0);
  CHECK(cuda.at("layer_norm_backward") > 0);
  CHECK(cuda.at("bias_backward") > 0);
  for (const auto& entry : cpu) CHECK_MESSAGE(entry.second == 0, entry.first);
}
}  // TEST_SUITE
