// NCCL's collectives as tally calls them (core/dist/nccl.h), on one GPU: a communicator of one rank, made without MPI
// from a unique id, runs the all-reduce (f32, f64 for the optimizers' cross-rank sums, f32 maxima for SM3's, bf16
// for gradients summed in bf16), the reduce-scatter (f32, bf16) and the all-gather (bytes) on device buffers, in place
// on tally's stream, ordered with the kernels around them. At one rank each is the identity on its result segment, so
// the check is that the calls run, touch nothing else and report NCCL's errors by name. While open, the communicator
// watches the host's waits for the GPU: NCCL's asynchronous error or TALLY_NCCL_TIMEOUT_S ends a wait that cannot
// finish (shown with faults injected into the CUDA emulator's NCCL, where a collective can be made to never finish).
// Runs of several ranks (an id exchanged over MPI, one GPU per rank) need a machine with several GPUs. Skipped,
// visibly, without a GPU or without NCCL in the build.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <vector>

#include "core/cuda/runtime.h"
#include "core/device.h"
#include "core/dist/nccl.h"
#include "core/ops.h"

using namespace tally;

TEST_SUITE("cuda") {

#ifdef TALLY_HAS_NCCL
TEST_CASE("cuda nccl: one rank's collectives on device buffers, in place, in stream order" *
          doctest::skip(!tally::cuda_available())) {
  char id[dist::nccl::kUniqueIdBytes];
  dist::nccl::unique_id(id);
  dist::nccl::Comm* comm = dist::nccl::init(0, 1, id);
  const Device gpu = Device::cuda();
  std::vector<float> values(1000);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 0.25f * float(i) - 7.0f;

  // All-reduce: written by a kernel just before (same stream), then doubled by one just after.
  Tensor f = from_vector(values, {1000}, {.dtype = DType::f32, .device = gpu});
  f = f * 1.0;
  dist::nccl::all_reduce_sum(comm, f.data<float>(), f.numel());
  f = f * 2.0;
  std::vector<float> twice = values;
  for (float& v : twice) v *= 2.0f;
  CHECK(f.to_vector<float>() == twice);

  std::vector<double> d = {1e-300, 3.0, -2.5, 1.0 + 1e-15};
  Tensor t = from_vector(d, {4}, {.dtype = DType::f64, .device = gpu});
  dist::nccl::all_reduce_sum(comm, t.data<double>(), t.numel());
  CHECK(t.to_vector<double>() == d);  // f64 travels as f64 (1 + 1e-15 would not survive a float)

  // The all-reduce of maxima (SM3's accumulators under ZeRO 1), between two kernels as the sum above.
  Tensor m = from_vector(values, {1000}, {.dtype = DType::f32, .device = gpu});
  m = m * 1.0;
  dist::nccl::all_reduce_max(comm, m.data<float>(), m.numel());
  m = m * 2.0;
  CHECK(m.to_vector<float>() == twice);

  // Reduce-scatter and all-gather of one segment (rank 0's: the whole buffer).
  Tensor s = from_vector(values, {1000}, {.dtype = DType::f32, .device = gpu});
  dist::nccl::reduce_scatter_sum(comm, s.data<float>(), s.numel(), 0);
  CHECK(s.to_vector<float>() == values);
  dist::nccl::all_gather(comm, s.data<float>(), s.nbytes(), 0);
  CHECK(s.to_vector<float>() == values);
  Tensor h = from_vector(values, {1000}, {.dtype = DType::bf16, .device = gpu});  // bytes of any dtype
  const std::vector<float> rounded = h.to_vector<float>();
  dist::nccl::all_gather(comm, h.data_ptr(), h.nbytes(), 0);
  CHECK(h.to_vector<float>() == rounded);
  // bf16 sums (gradients summed in bf16): one rank's values come back as they were.
  dist::nccl::all_reduce_sum(comm, static_cast<bf16*>(h.data_ptr()), h.numel());
  dist::nccl::reduce_scatter_sum(comm, static_cast<bf16*>(h.data_ptr()), h.numel(), 0);
  CHECK(h.to_vector<float>() == rounded);
  dist::nccl::destroy(comm);

  // An invalid rank is NCCL's error, named.
  char other[dist::nccl::kUniqueIdBytes];
  dist::nccl::unique_id(other);
  CHECK_THROWS_WITH(dist::nccl::init(1, 1, other), doctest::Contains("[nccl] ncclCommInitRank"));

  // The communicator watches the host's waits while it is open, and only then; a bad time limit is refused first.
  char fresh[dist::nccl::kUniqueIdBytes];
  dist::nccl::unique_id(fresh);
  comm = dist::nccl::init(0, 1, fresh);
  CHECK(cuda::wait_watch() != nullptr);
  cuda::synchronize();
  dist::nccl::destroy(comm);
  CHECK(cuda::wait_watch() == nullptr);
  ::setenv("TALLY_NCCL_TIMEOUT_S", "ten", 1);
  CHECK_THROWS_WITH(dist::nccl::init(0, 1, fresh), doctest::Contains("TALLY_NCCL_TIMEOUT_S must be a number"));
  ::unsetenv("TALLY_NCCL_TIMEOUT_S");
  CHECK(cuda::wait_watch() == nullptr);
}

#ifdef TALLY_CUDA_EMULATED
// Faults injected into the emulator's NCCL (tools/cuda_emu/include/nccl.h): a rank's collectives stop finishing, as
// when a peer has stopped, and its stream stays busy. A real GPU would need a second rank that stops.
TEST_CASE("cuda nccl: a collective that cannot finish ends the host's wait with an error, not a hang (emulated)") {
  const Device gpu = Device::cuda();
  char id[dist::nccl::kUniqueIdBytes];
  dist::nccl::unique_id(id);
  Tensor f = from_vector(std::vector<float>{1, 2, 3}, {3}, {.dtype = DType::f32, .device = gpu});

  // NCCL reports the failure: the first wait after it gives up, and the aborted communicator refuses more work.
  ::setenv("CUDA_EMU_NCCL_FAULT", "error:0:1", 1);
  dist::nccl::Comm* comm = dist::nccl::init(0, 1, id);
  dist::nccl::all_reduce_sum(comm, f.data<float>(), f.numel());
  cuda::synchronize();  // the first collective finishes
  dist::nccl::all_reduce_sum(comm, f.data<float>(), f.numel());
  CHECK_THROWS_WITH(cuda::synchronize(), doctest::Contains("[synchronize] gave up waiting for the GPU: NCCL reported "
                                                           "remote process exited or there was a network error"));
  CHECK_THROWS_WITH(dist::nccl::all_reduce_sum(comm, f.data<float>(), f.numel()),
                    doctest::Contains("[nccl] ncclAllReduce: the communicator was aborted"));
  dist::nccl::destroy(comm);
  CHECK(cuda::wait_watch() == nullptr);

  // Nothing reported (a peer that stopped silently): the time limit ends the wait.
  ::setenv("CUDA_EMU_NCCL_FAULT", "stall:0:0", 1);
  ::setenv("TALLY_NCCL_TIMEOUT_S", "0.2", 1);
  comm = dist::nccl::init(0, 1, id);
  dist::nccl::reduce_scatter_sum(comm, f.data<float>(), f.numel(), 0);
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH((void)f.to_vector<float>(),
                    doctest::Contains("[memcpy_device_to_host] gave up waiting for the GPU: no end after"));
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(took >= 0.2);
  CHECK(took < 30.0);
  dist::nccl::destroy(comm);
  ::unsetenv("CUDA_EMU_NCCL_FAULT");
  ::unsetenv("TALLY_NCCL_TIMEOUT_S");
  CHECK(f.to_vector<float>() == std::vector<float>{1, 2, 3});  // the lost collectives changed nothing
}
#endif
#else
TEST_CASE("cuda nccl: not run, this build has no NCCL" * doctest::skip(true)) {}
#endif

}  // TEST_SUITE
