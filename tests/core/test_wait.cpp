// The polling wait behind the host's waits for the GPU while NCCL is open (core/wait.h): it ends when the work is
// done, it ends with the watch's reason when the watch gives up (bounded: a rank whose peer stopped does not hang),
// it asks the watch at its pace and it stops spinning after its spin time. And the time limit's setting,
// TALLY_NCCL_TIMEOUT_S, as core/dist/nccl.cu reads it. Here on the CPU with stand-in queries; the CUDA side (the same
// loop over cudaStreamQuery) runs in tests/cuda and in the CUDA emulator's NCCL runs.
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

#include "core/dist/communicator.h"
#include "core/error.h"
#include "core/wait.h"

namespace tally {

TEST_SUITE("core") {

TEST_CASE("wait: ends when the work is done, asking the watch at once and then at its pace") {
  int queries = 0;
  std::vector<double> asked;
  const std::string why = wait_until_ready(
      [&] { return ++queries > 5 ? Readiness::ready : Readiness::pending; },
      [&](double waited) {
        asked.push_back(waited);
        return std::string();
      });
  CHECK(why.empty());
  CHECK(queries == 6);
  REQUIRE(!asked.empty());  // the first pending answer asks at once
  CHECK(asked.front() >= 0.0);

  // A watch that never gives up is asked no more often than every `ask_every`, with growing times.
  asked.clear();
  const auto start = std::chrono::steady_clock::now();
  const WaitPacing pacing{.ask_every = std::chrono::microseconds(2000)};
  wait_until_ready(
      [&] { return std::chrono::steady_clock::now() - start > std::chrono::milliseconds(30) ? Readiness::ready
                                                                                          : Readiness::pending; },
      [&](double waited) {
        asked.push_back(waited);
        return std::string();
      },
      pacing);
  REQUIRE(asked.size() >= 1);
  CHECK(asked.size() <= 16);  // 30 ms at one question per 2 ms, and the first
  // At least 2 ms apart on the clock; as seconds in doubles, the difference of two such times may round below 0.002
  // by a few ulps, hence the nanosecond's margin.
  for (size_t i = 1; i < asked.size(); ++i) CHECK(asked[i] - asked[i - 1] >= 0.002 - 1e-9);
}

TEST_CASE("wait: a wait that never ends is given up with the watch's reason, in bounded time") {
  const auto start = std::chrono::steady_clock::now();
  const std::string why = wait_until_ready([] { return Readiness::pending; },
                                           [](double waited) { return waited > 0.05 ? std::string("gone") : ""; });
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(why == "gone");
  CHECK(took >= 0.05);
  CHECK(took < 30.0);  // bounded: the watch's limit and one question's pace, however loaded the machine

  // A watch that gives up at its first question ends the wait after one query.
  int queries = 0;
  CHECK(wait_until_ready(
            [&] {
              ++queries;
              return Readiness::pending;
            },
            [](double) { return std::string("NCCL reported an error"); }) == "NCCL reported an error");
  CHECK(queries == 1);
}

TEST_CASE("wait: after its spin time the wait sleeps between queries") {
  int queries = 0;
  const WaitPacing pacing{.ask_every = std::chrono::microseconds(0),
                          .spin_for = std::chrono::microseconds(0),
                          .sleep_after = std::chrono::microseconds(2000)};
  const std::string why = wait_until_ready(
      [&] {
        ++queries;
        return Readiness::pending;
      },
      [](double waited) { return waited > 0.03 ? std::string("limit") : ""; }, pacing);
  CHECK(why == "limit");
  // Every pending query is followed by a sleep of at least 2 ms, so 30 ms hold at most 16 queries (the last one
  // seen after the limit); spinning would have made thousands.
  CHECK(queries <= 17);
}

TEST_CASE("wait: TALLY_NCCL_TIMEOUT_S is a number of seconds >= 0, 600 when unset, 0 for no limit") {
  CHECK(dist::nccl_timeout_seconds(nullptr) == dist::kNcclTimeoutSeconds);
  CHECK(dist::nccl_timeout_seconds("") == 600.0);
  CHECK(dist::nccl_timeout_seconds("0") == 0.0);
  CHECK(dist::nccl_timeout_seconds("2.5") == 2.5);
  CHECK(dist::nccl_timeout_seconds("3600") == 3600.0);
  for (const char* bad : {"-1", "abc", "10s", "nan", "inf", "1e400"})
    CHECK_THROWS_WITH_AS(dist::nccl_timeout_seconds(bad), doctest::Contains("TALLY_NCCL_TIMEOUT_S must be a number"),
                         Error);
}

}  // TEST_SUITE

}  // namespace tally
