// Helpers shared by the tests: where the data files and committed reference files are, temporary directories,
// environment variables set for one scope, and the scale-aware error the GPU tests compare tensors with.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "core/tensor.h"
#include "data/fetch.h"

namespace tally::test {

// A data file (Tiny Shakespeare, GPT-2's encoder.json or vocab.bpe) where tally itself finds it: data/ in the
// checkout, ../shared/data beside it (or $TALLY_SHARED_DATA), else the download cache, where it is downloaded once
// unless TALLY_OFFLINE=1 (data::locate). An empty path when it cannot be had, for the test to skip with a message;
// tried once per file and process, so a machine without the files and without a network pays one failure.
inline std::filesystem::path data_file(data::DataFile file) {
  static std::mutex mu;
  static std::map<data::DataFile, std::filesystem::path> known;
  std::lock_guard lock(mu);
  if (auto it = known.find(file); it != known.end()) return it->second;
  std::filesystem::path p;
  try {
    p = data::locate(file).value_or(std::filesystem::path());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test data: %s\n", e.what());
  }
  return known[file] = p;
}
// tests/reference in the checkout.
inline std::filesystem::path reference_dir() { return std::filesystem::path(TALLY_SOURCE_DIR) / "tests" / "reference"; }
// A fresh temporary directory for one test.
// The pid of a process that has ended (a child forked, exited and reaped): what a temporary's name holds when its
// writer died. (The kernel may in time give the number to another process; not within a test.)
inline pid_t gone_pid() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  if (child > 0) ::waitpid(child, nullptr, 0);
  return child;
}

inline std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("tally_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

// Sets (or, with std::nullopt, unsets) an environment variable for one scope; the old value comes back after it,
// also when a check fails and unwinds.
class ScopedEnv {
 public:
  ScopedEnv(std::string name, const std::optional<std::string>& value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) old_ = old;
    if (value) ::setenv(name_.c_str(), value->c_str(), 1);
    else ::unsetenv(name_.c_str());
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_.c_str(), old_->c_str(), 1);
    else ::unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// max |got - want| / max |want| over all elements (scale-aware); infinite when the sizes differ, when `want` (a
// reference) holds a NaN, or when `got` is not finite where `want` is or differs from an infinite `want`.
inline double max_rel_error(const Tensor& got_t, const Tensor& want_t) {
  const std::vector<double> got = got_t.to_vector<double>(), want = want_t.to_vector<double>();
  if (got.size() != want.size()) return INFINITY;
  double max_err = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) return INFINITY;
    if (std::isinf(want[i])) {
      if (got[i] != want[i]) return INFINITY;
      continue;
    }
    if (!std::isfinite(got[i])) return INFINITY;
    max_err = std::max(max_err, std::fabs(got[i] - want[i]));
    max_ref = std::max(max_ref, std::fabs(want[i]));
  }
  return max_err / std::max(max_ref, 1e-300);
}

}  // namespace tally::test
