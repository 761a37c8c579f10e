// Data parallelism. tests/cli/distributed.sh runs this suite under `mpirun -np 2` (and 3); in the plain unit run the
// world is one process and the same cases check the single-rank path, and ranks taking turns as threads of one
// process check worlds of 2 and 3 as well. Checked: the collectives (uneven sizes), and for every optimizer in the
// registry that a ZeRO-1 step equals the whole step after 50 steps, parameters and every state tensor
// (tests/train/zero1_equivalence.h), and that bf16 parameters are rounded with the whole step's random bits;
// checkpoints of a sharded optimizer hold whole tensors and load at any world size.
#include <doctest/doctest.h>

#include <cmath>

#include "core/autograd/node.h"
#include "core/dist/communicator.h"
#include "tests/train/turn_ranks.h"
#include "tests/train/zero1_equivalence.h"

using namespace tally;

namespace {

dist::Communicator& ranks() { return dist::process_group(); }

void check_collectives(dist::Communicator& c) {
  const int W = c.world(), R = c.rank();
  MESSAGE("world ", W, " (", c.engine(), ")");
  std::vector<double> d = {double(R + 1), 0.5};
  c.all_reduce_sum(d.data(), 2);
  CHECK(d[0] == double(W * (W + 1) / 2));
  CHECK(d[1] == 0.5 * W);
  c.all_reduce_sum(d.data(), 2, Device::cpu());  // the optimizer kernels' form (a device named)
  CHECK(d[0] == double(W * W * (W + 1) / 2));
  std::vector<char> b(5, R == W - 1 ? 'x' : 'y');
  c.broadcast(b.data(), 5, W - 1);
  CHECK(std::string(b.begin(), b.end()) == "xxxxx");
  std::vector<float> f(7);
  for (size_t i = 0; i < f.size(); ++i) f[i] = float(R * 10 + int(i));
  c.all_reduce_sum(f.data(), 7, Device::cpu());
  for (size_t i = 0; i < f.size(); ++i) CHECK(f[i] == float(10 * W * (W - 1) / 2 + W * int(i)));
  // Maxima: element i's largest is rank (i % W)'s, the others' are negative.
  std::vector<float> mx(7);
  for (size_t i = 0; i < mx.size(); ++i) mx[i] = int(i) % W == R ? float(i) + 0.5f : -float(R) - float(i);
  c.all_reduce_max(mx.data(), 7, Device::cpu());
  for (size_t i = 0; i < mx.size(); ++i) CHECK(mx[i] == float(i) + 0.5f);
  const int64_t seg = 3;
  std::vector<float> rs(size_t(seg * W));
  for (size_t i = 0; i < rs.size(); ++i) rs[i] = float(i) + float(R);
  c.reduce_scatter_sum(rs.data(), seg, Device::cpu());
  for (int64_t k = 0; k < seg; ++k) CHECK(rs[size_t(R * seg + k)] == float(W * (R * seg + k) + W * (W - 1) / 2));
  std::vector<float> ag(size_t(seg * W), -1.0f);
  for (int64_t k = 0; k < seg; ++k) ag[size_t(R * seg + k)] = float(R * 100 + k);
  c.all_gather(ag.data(), seg * 4, Device::cpu());
  for (int r = 0; r < W; ++r)
    for (int64_t k = 0; k < seg; ++k) CHECK(ag[size_t(r * seg + k)] == float(r * 100 + k));
  // Bytes of any dtype: segments of 3 bf16 values (6 bytes, not a multiple of a float), bits unchanged.
  std::vector<uint16_t> half(size_t(seg * W), 0xFFFF);
  for (int64_t k = 0; k < seg; ++k) half[size_t(R * seg + k)] = uint16_t(0x7F80 + R * 16 + k);
  c.all_gather(half.data(), seg * 2, Device::cpu());
  for (int r = 0; r < W; ++r)
    for (int64_t k = 0; k < seg; ++k) CHECK(half[size_t(r * seg + k)] == uint16_t(0x7F80 + r * 16 + k));
  const std::vector<uint64_t> ids = c.all_gather_u64(0xFEDCBA9876543210ull + uint64_t(R));
  REQUIRE(ids.size() == size_t(W));
  for (int r = 0; r < W; ++r) CHECK(ids[size_t(r)] == 0xFEDCBA9876543210ull + uint64_t(r));
}

}  // namespace

TEST_SUITE("distributed") {

TEST_CASE("distributed: collectives sum, take maxima, scatter and gather, whatever the sizes") {
  check_collectives(ranks());
  for (const int world : {2, 3}) {  // and ranks taking turns in this process (the check below runs on them)
    test::TurnRanks group(world);
    group.run(check_collectives);
  }
}

TEST_CASE("distributed: a ZeRO-1 step equals the whole step for every optimizer (50 steps, every state tensor)") {
  test::check_zero1_equals_whole(ranks(), Device::cpu(), 50);
}

TEST_CASE("distributed: ZeRO 1 rounds a bf16 parameter with the whole step's random bits and gathers it as bf16") {
  test::check_zero1_bf16_rounding(ranks(), Device::cpu(), 4);
  for (const int world : {2, 3}) {
    test::TurnRanks group(world);
    group.run([](dist::Communicator& c) { test::check_zero1_bf16_rounding(c, Device::cpu(), 4); });
  }
}

TEST_CASE("distributed: the same at 2 and 3 ranks taking turns in one process (no mpirun)") {
  // The ranks as threads of this process, one running at a time (tests/train/turn_ranks.h): the same check, so that
  // the plain unit run covers world sizes above one too.
  for (const int world : {2, 3}) {
    test::TurnRanks group(world);
    group.run([](dist::Communicator& c) { test::check_zero1_equals_whole(c, Device::cpu(), 50); });
  }
}

}  // TEST_SUITE
