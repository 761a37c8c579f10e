// ZeRO 1 on the GPU: the CUDA kernels of a part of a tensor complete their sums over the ranks in device memory
// (CAME's and Adafactor's column and row-group sums and the clip's RMS, LAMB's norms). One GPU cannot hold two NCCL
// ranks, so the ranks take turns as threads of this process (tests/train/turn_ranks.h: device buffers summed through
// host copies, in rank order): at 2 and 3 ranks, every optimizer's sharded step equals its whole step on the GPU,
// parameters and every state tensor, within float rounding (tests/train/zero1_equivalence.h), and bf16 parameters,
// rounded inside the fused kernels, get the whole step's random bits. Skipped, visibly, without a GPU.
#include <doctest/doctest.h>

#include "core/device.h"
#include "tests/train/turn_ranks.h"
#include "tests/train/zero1_equivalence.h"

using namespace tally;

TEST_SUITE("optim") {

TEST_CASE("cuda: a ZeRO-1 step over 2 and 3 ranks equals the whole step on the GPU" *
          doctest::skip(!tally::cuda_available())) {
  for (const int world : {2, 3}) {
    test::TurnRanks group(world);
    group.run([](dist::Communicator& c) { test::check_zero1_equals_whole(c, Device::cuda(), 10); });
  }
}

TEST_CASE("cuda: ZeRO 1 rounds a bf16 parameter with the whole step's random bits and gathers it as bf16 (fused kernels)" *
          doctest::skip(!tally::cuda_available())) {
  for (const int world : {2, 3}) {
    test::TurnRanks group(world);
    group.run([](dist::Communicator& c) { test::check_zero1_bf16_rounding(c, Device::cuda(), 4); });
  }
}

}  // TEST_SUITE
