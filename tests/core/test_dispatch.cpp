// TALLY_KERNEL, the one backend dispatch of the op and the optimizer kernels: the CPU backend's result comes back,
// the meta device runs nothing (a query yields 0), an op kernel with bf16 data stops on the CPU naming the kernel
// while the optimizers' bf16 CPU kernels run, and a CUDA device without the CUDA backend stops naming the kernel.
#include <doctest/doctest.h>

#include <vector>

#include "core/kernels/dispatch.h"
#include "optim/kernels/optim_kernels.h"

namespace tally {

TEST_SUITE("core") {

TEST_CASE("dispatch: an op kernel's value on the CPU, nothing on meta, bf16 data refused on the CPU") {
  const kernels::AttentionLayout l{.B = 1, .NH = 2, .Tq = 3, .Tk = 5, .HS = 4};
  CHECK(TALLY_KERNEL(Device::cpu(), attention_workspace_size, l) == kernels::cpu::attention_workspace_size(l));
  CHECK(TALLY_KERNEL(Device::cpu(), attention_workspace_size, l) > 0);
  CHECK(TALLY_KERNEL(Device::meta(), attention_workspace_size, l) == 0);

  std::vector<float> y = {1, 2, 3}, x = {10, 20, 30};
  TALLY_KERNEL(Device::meta(), axpy<float>, y.data(), x.data(), 3, 1.0);
  CHECK(y == std::vector<float>{1, 2, 3});
  TALLY_KERNEL(Device::cpu(), axpy<float>, y.data(), x.data(), 3, 1.0);
  CHECK(y == std::vector<float>{11, 22, 33});

  std::vector<bf16> b(3);
  auto cpu_bf16 = [&] { TALLY_KERNEL(Device::cpu(), axpy<bf16>, b.data(), b.data(), 3, 1.0); };
  CHECK_THROWS_WITH_AS(cpu_bf16(), doctest::Contains("[axpy<bf16>] bf16 compute runs on CUDA only"), Error);
}

TEST_CASE("dispatch: a CUDA device without the CUDA backend stops naming the kernel") {
  auto cpu = [](int64_t n) { return n; };
  auto no_cuda = [&] { return detail::run_kernel<false>(Device::cuda(), "some_kernel", cpu, detail::NoCudaBackend{}, 3); };
  CHECK_THROWS_WITH_AS(no_cuda(), doctest::Contains("[some_kernel] tally was built without CUDA"), Error);
  CHECK(detail::run_kernel<false>(Device::cpu(), "some_kernel", cpu, detail::NoCudaBackend{}, 3) == 3);
#ifndef TALLY_HAS_CUDA
  const kernels::AttentionLayout l{.B = 1, .NH = 1, .Tq = 2, .Tk = 2, .HS = 4};
  auto cuda = [&] { return TALLY_KERNEL(Device::cuda(), attention_workspace_size, l); };
  CHECK_THROWS_WITH_AS(cuda(), doctest::Contains("[attention_workspace_size] tally was built without CUDA"), Error);
#endif
}

}  // TEST_SUITE

namespace optim {

TEST_SUITE("core") {

TEST_CASE("dispatch: optimizer kernels through the same macro, bf16 ones included on the CPU") {
  const kernels::FactoredLayout l{.P = 1, .n = 4, .Q = 1, .m = 6, .S = 1};
  CHECK(TALLY_KERNEL(Device::cpu(), factored_workspace_bytes, l) == kernels::cpu::factored_workspace_bytes(l));
  CHECK(TALLY_KERNEL(Device::cpu(), factored_workspace_bytes, l) > 0);
  CHECK(TALLY_KERNEL(Device::meta(), factored_workspace_bytes, l) == 0);

  // Values exact in bf16: stochastic rounding keeps them.
  const std::vector<float> master = {1.0f, -2.5f, 0.375f};
  std::vector<bf16> param(3);
  TALLY_KERNEL(Device::cpu(), round_to_bf16, master.data(), param.data(), 3, 7, 0);
  for (size_t i = 0; i < master.size(); ++i) CHECK(bf16_to_float(param[i]) == master[i]);
}

}  // TEST_SUITE

}  // namespace optim

}  // namespace tally
