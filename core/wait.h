// Waiting for what the host can only ask about (a GPU stream, an event) while a watch may end the wait: the loop
// behind the host's waits for the GPU while NCCL could leave them waiting forever (core/cuda/runtime.cu, set up by
// core/dist/nccl.cu). CUDA-free, so that the loop is tested on any machine (tests/core/test_wait.cpp).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

namespace tally {

enum class Readiness : uint8_t { ready, pending };

// How a wait polls. For its first second it queries back to back (yielding the core), as CUDA's own waits spin, so
// a training step's wait ends as soon as the GPU's work does; after that it sleeps between queries (ending at most
// `sleep_after` late: 0.1% of a wait that long). The watch is asked every `ask_every`.
struct WaitPacing {
  std::chrono::microseconds ask_every{1000};
  std::chrono::microseconds spin_for{1000000};
  std::chrono::microseconds sleep_after{1000};
};

// Calls `query()` until it answers Readiness::ready and returns "". While it answers pending, `verdict(seconds
// waited)` is asked every `pacing.ask_every`: a non-empty answer (why to stop waiting) ends the wait and is returned.
// The first pending answer asks `verdict` at once (with the time waited until then).
template <class Query, class Verdict>
std::string wait_until_ready(Query&& query, Verdict&& verdict, const WaitPacing& pacing = {}) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  Clock::time_point next_ask = start;
  while (query() != Readiness::ready) {
    const Clock::time_point now = Clock::now();
    if (now >= next_ask) {
      std::string why = verdict(std::chrono::duration<double>(now - start).count());
      if (!why.empty()) return why;
      next_ask = now + pacing.ask_every;
    }
    if (now - start < pacing.spin_for)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(pacing.sleep_after);
  }
  return {};
}

}  // namespace tally
