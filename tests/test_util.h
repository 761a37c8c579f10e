// Helpers shared by the tests: where the shared data and committed reference files are.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>

namespace tally::test {

// ../shared/data beside the checkout (or $TALLY_SHARED_DATA).
inline std::filesystem::path shared_data_dir() {
  if (const char* e = std::getenv("TALLY_SHARED_DATA")) return e;
  return std::filesystem::path(TALLY_SOURCE_DIR).parent_path() / "shared" / "data";
}
// tests/reference in the checkout.
inline std::filesystem::path reference_dir() { return std::filesystem::path(TALLY_SOURCE_DIR) / "tests" / "reference"; }
// A fresh temporary directory for one test.
inline std::filesystem::path temp_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("tally_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

}  // namespace tally::test
