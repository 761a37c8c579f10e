// Shape helpers: element counts, row-major strides, printing, dim wrapping and broadcasting.
#include "core/shape.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace tally {

int64_t numel(const Shape& s) {
  if (std::ranges::find(s, int64_t(0)) != s.end()) return 0;  // before the product: (huge, huge, 0) is empty
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::optional<int64_t> checked_numel(std::span<const int64_t> shape) {
  if (std::ranges::any_of(shape, [](int64_t d) { return d < 0; })) return std::nullopt;
  if (std::ranges::any_of(shape, [](int64_t d) { return d == 0; })) return 0;
  int64_t n = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n)) return std::nullopt;
  return n;
}

Strides contiguous_strides(const Shape& s) {
  Strides st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    // Only an empty tensor's product can overflow (a non-empty one's element count fits, checked by empty()): its
    // strides address nothing, so they saturate.
    if (__builtin_mul_overflow(acc, std::max<int64_t>(s[i], 1), &acc)) acc = std::numeric_limits<int64_t>::max();
  }
  return st;
}

std::string shape_str(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(s[i]);
  }
  if (s.size() == 1) out += ",";
  return out + ")";
}

int wrap_dim(int64_t dim, int ndim, const char* op) {
  int64_t d = dim < 0 ? dim + ndim : dim;
  TALLY_CHECK(d >= 0 && d < ndim, "[", op, "] dim ", dim, " out of range for a tensor of ", ndim, " dims");
  return int(d);
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    TALLY_CHECK(da == db || da == 1 || db == 1, "[", op, "] shapes ", shape_str(a), " and ", shape_str(b),
                " do not broadcast (dim ", i, ": ", da, " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

}  // namespace tally
