// NCCL's collectives as tally calls them (core/dist/nccl.h), on one GPU: a communicator of one rank, made without
// MPI from a unique id, runs the all-reduce (f32, and f64 for the optimizers' cross-rank sums), the reduce-scatter
// and the all-gather on device buffers, in place on tally's stream, ordered with the kernels around them. At one
// rank each is the identity on its result segment, so the check is that the calls run, touch nothing else and
// report NCCL's errors by name. Runs of several ranks (an id exchanged over MPI, one GPU per rank) need a machine
// with several GPUs. Skipped, visibly, without a GPU or without NCCL in the build.
#include <doctest/doctest.h>

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

  // Reduce-scatter and all-gather of one segment (rank 0's: the whole buffer).
  Tensor s = from_vector(values, {1000}, {.dtype = DType::f32, .device = gpu});
  dist::nccl::reduce_scatter_sum(comm, s.data<float>(), s.numel(), 0);
  CHECK(s.to_vector<float>() == values);
  dist::nccl::all_gather(comm, s.data<float>(), s.numel(), 0);
  CHECK(s.to_vector<float>() == values);
  dist::nccl::destroy(comm);

  // An invalid rank is NCCL's error, named.
  char other[dist::nccl::kUniqueIdBytes];
  dist::nccl::unique_id(other);
  CHECK_THROWS_WITH(dist::nccl::init(1, 1, other), doctest::Contains("[nccl] ncclCommInitRank"));
}
#else
TEST_CASE("cuda nccl: not run, this build has no NCCL" * doctest::skip(true)) {}
#endif

}  // TEST_SUITE
