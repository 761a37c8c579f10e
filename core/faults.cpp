// Fault injection for tests (see faults.h).
#include "core/faults.h"

#include <cerrno>
#include <cstdlib>

#include "core/error.h"

namespace tally::faults {

namespace {

int64_t read(const char* name) {
  const char* e = std::getenv(name);
  if (!e || !*e) return -1;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(e, &end, 10);
  if (errno != 0 || *end != '\0' || v < 0) fail(name, "='", e, "' is not a non-negative integer");
  return int64_t(v);
}

}  // namespace

int64_t nan_at_step() { return read("TALLY_FAULT_NAN_AT_STEP"); }
int64_t oom_at_step() { return read("TALLY_FAULT_OOM_AT_STEP"); }
int64_t write_after_bytes() { return read("TALLY_FAULT_WRITE_AFTER_BYTES"); }

}  // namespace tally::faults
