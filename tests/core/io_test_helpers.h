// Helpers for the io tests: capture a tally::Error's message, write raw bytes to a file, read a file back.
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"

namespace tally::test {

// The message of the tally::Error thrown by f, or a marker saying that none (or another type) was thrown,
// so that a CHECK on the message shows what actually happened.
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const tally::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a tally::Error: ") + e.what() + ">";
  }
  return "<no exception>";
}

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Plain (non-atomic) write, for building corrupt fixtures.
inline void write_raw(const std::filesystem::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}
inline void write_raw(const std::filesystem::path& p, const std::string& text) {
  write_raw(p, std::vector<uint8_t>(text.begin(), text.end()));
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Files in dir whose name contains ".tmp." (leftover AtomicFileWriter temp files).
inline int count_temp_files(const std::filesystem::path& dir) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp.") != std::string::npos) ++n;
  return n;
}

}  // namespace tally::test
