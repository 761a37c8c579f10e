// Fault injection for tests, all in one place. Each fault is an environment variable, read when the code that
// honours it starts (a training run, an atomic file write), so a test sets it around one run:
//   TALLY_FAULT_NAN_AT_STEP=k        training step k's loss is NaN (the step is skipped as a real one would be)
//   TALLY_FAULT_OOM_AT_STEP=k        training step k's CPU allocations fail as a refused malloc would
//   TALLY_FAULT_WRITE_AFTER_BYTES=n  an atomic file write fails as a full disk would once n bytes reached the file
// A malformed value is a tally::Error naming the variable.
#pragma once
#include <cstdint>

namespace tally::faults {

// -1: not injected.
int64_t nan_at_step();
int64_t oom_at_step();
int64_t write_after_bytes();

}  // namespace tally::faults
