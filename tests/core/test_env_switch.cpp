// The on/off environment variables of CUDA paths (core/cuda/env_switch.h, plain C++: checked on any build): "1" on;
// unset, empty or "0" off; any other value refused naming the variable, never taken silently for one or the other.
#include <doctest/doctest.h>

#include <cstdlib>

#include "core/cuda/env_switch.h"

namespace tally {

TEST_SUITE("core") {
  TEST_CASE("environment switches: 1 is on; unset, empty or 0 off; anything else refused by name") {
    const char* name = "TALLY_TEST_ENV_SWITCH";
    ::unsetenv(name);
    CHECK_FALSE(cuda::env_on(name));
    for (const char* off : {"", "0"}) {
      ::setenv(name, off, 1);
      CHECK_FALSE(cuda::env_on(name));
    }
    ::setenv(name, "1", 1);
    CHECK(cuda::env_on(name));
    cuda::EnvSwitch on_switch(name);
    CHECK(on_switch.on());
    for (const char* bad : {"true", "yes", "on", "2", " 1"}) {
      ::setenv(name, bad, 1);
      CHECK_THROWS_WITH_AS(
          cuda::env_on(name),
          doctest::Contains(cat("TALLY_TEST_ENV_SWITCH='", bad, "': set it to 1 (on) or 0 (off)").c_str()), Error);
      cuda::EnvSwitch fresh(name);
      CHECK_THROWS_AS(fresh.on(), Error);
    }
    ::unsetenv(name);
  }

}  // TEST_SUITE

}  // namespace tally
