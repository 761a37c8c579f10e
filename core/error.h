// tally::Error and the checks that throw it.
// Public entry points validate their arguments and throw tally::Error with a message that names the op
// ("[matmul] ...") and every shape involved. Internal invariants use TALLY_ASSERT.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tally {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// An allocation the device (or the CPU allocator's limit) refused: the caller may free memory and try less.
class OutOfMemory : public Error {
 public:
  explicit OutOfMemory(const std::string& what) : Error(what) {}
};

// Concatenates any streamable values into one string: cat("[add] ", a, " vs ", b).
template <class... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <class... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(cat(std::forward<Args>(args)...));
}

}  // namespace tally

// TALLY_CHECK(cond, parts...): throws tally::Error(cat(parts...)) when cond is false. Always on.
#define TALLY_CHECK(cond, ...)            \
  do {                                    \
    if (!(cond)) ::tally::fail(__VA_ARGS__); \
  } while (0)

// TALLY_ASSERT(cond): an internal invariant; a failure is a bug in tally, reported with file and line.
#define TALLY_ASSERT(cond)                                                                       \
  do {                                                                                           \
    if (!(cond)) ::tally::fail("internal error: ", #cond, " at ", __FILE__, ":", __LINE__);     \
  } while (0)
