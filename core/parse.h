// Numbers read from text a user wrote (flags, config files, optimizer settings): one rule for all of them.
#pragma once
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>

namespace tally {

// The whole of `text` as a finite double, or nullopt: empty text, trailing characters, a value a double cannot
// hold (ERANGE: "1e400" overflows to inf, "1e-332" underflows to 0 or a subnormal), inf or nan.
inline std::optional<double> parse_finite_double(const std::string& text) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || errno == ERANGE || !std::isfinite(v)) return std::nullopt;
  return v;
}

}  // namespace tally
