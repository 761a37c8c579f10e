// An on/off setting of a CUDA path that stays off unless its environment variable is "1" (env_on) (cuDNN's attention,
// cuBLASLt's epilogues: paths not yet compared with the default on a GPU): read from the environment on first use,
// and set by tests and benchmarks, which compare both paths in one process. Thread-safe; constant-initialised, so a
// switch at namespace scope is ready before any static constructor runs.
#pragma once
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace tally::cuda {

// An on/off environment variable: "1" on; unset, empty or "0" off; anything else ("true", "yes") refused by name,
// rather than taken silently for one or the other.
inline bool env_on(const char* variable) {
  const char* value = std::getenv(variable);
  if (!value || value[0] == '\0' || std::strcmp(value, "0") == 0) return false;
  if (std::strcmp(value, "1") == 0) return true;
  fail("environment variable ", variable, "='", value, "': set it to 1 (on) or 0 (off)");
}

class EnvSwitch {
 public:
  explicit constexpr EnvSwitch(const char* variable) : variable_(variable) {}
  EnvSwitch(const EnvSwitch&) = delete;
  EnvSwitch& operator=(const EnvSwitch&) = delete;

  bool on() {
    int state = state_.load();
    if (state < 0) {
      state_.compare_exchange_strong(state, env_on(variable_) ? 1 : 0);
      state = state_.load();
    }
    return state == 1;
  }
  void turn_on() { state_.store(1); }
  void turn_off() { state_.store(0); }

 private:
  const char* variable_;
  std::atomic<int> state_{-1};  // -1: not read from the environment yet
};

}  // namespace tally::cuda
