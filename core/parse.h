// Numbers read from text a user wrote (flags, config files, optimizer settings): one rule for all of them.
#pragma once
#include <charconv>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

namespace tally {

// Decimal numbers only, written as a person writes them: an optional sign, digits, for a double a decimal point and
// an exponent. Refused: empty text, whitespace around it, trailing characters, hexadecimal ("0x10"), a value the
// type cannot hold (a double: "1e400" overflows, "1e-332" underflows to a subnormal or 0; an int64 out of range),
// and for a double inf and nan.
namespace parse_detail {
// The text after an optional leading '+' (from_chars takes '-' only), or nullopt for what is never a number here.
inline std::optional<std::string_view> unsigned_or_minus(const std::string& text) {
  std::string_view t = text;
  if (!t.empty() && t.front() == '+') t.remove_prefix(1);
  if (t.empty() || (t.size() < text.size() && t.front() == '-')) return std::nullopt;  // "+-1"
  const std::string_view digits = t.front() == '-' ? t.substr(1) : t;
  if (digits.size() > 1 && digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) return std::nullopt;
  return t;
}
}  // namespace parse_detail

inline std::optional<double> parse_finite_double(const std::string& text) {
  const std::optional<std::string_view> t = parse_detail::unsigned_or_minus(text);
  if (!t) return std::nullopt;
  double v = 0;
  const auto [end, ec] = std::from_chars(t->data(), t->data() + t->size(), v, std::chars_format::general);
  if (ec != std::errc() || end != t->data() + t->size() || !std::isfinite(v)) return std::nullopt;
  // from_chars rounds an underflow to the nearest subnormal or 0 without an error: refused as strtod's ERANGE was.
  if (v != 0 && std::fabs(v) < 2.2250738585072014e-308) return std::nullopt;
  if (v == 0 && t->find_first_of("123456789") < t->find_first_of("eE")) return std::nullopt;
  return v;
}

inline std::optional<int64_t> parse_int64(const std::string& text) {
  const std::optional<std::string_view> t = parse_detail::unsigned_or_minus(text);
  if (!t) return std::nullopt;
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(t->data(), t->data() + t->size(), v, 10);
  if (ec != std::errc() || end != t->data() + t->size()) return std::nullopt;
  return v;
}

}  // namespace tally
