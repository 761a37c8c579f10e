// Shapes and strides (row-major by default) and the small helpers every op uses on them.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace tally {

using Shape = std::vector<int64_t>;
using Strides = std::vector<int64_t>;

int64_t numel(const Shape& s);  // for shapes already made into tensors (empty() checked that theirs fits)
// The element count of a shape read from outside (a file, a flag), or nullopt when a dimension is negative or the
// count does not fit in int64. A zero dimension gives 0 whatever the others are: (huge, huge, 0) is a valid empty
// shape whose product taken in order would overflow. Each caller words its own error.
std::optional<int64_t> checked_numel(std::span<const int64_t> shape);
Strides contiguous_strides(const Shape& s);
std::string shape_str(const Shape& s);  // "(2, 3, 4)"
// Wraps a possibly negative dim into [0, ndim); throws naming `op` when out of range.
int wrap_dim(int64_t dim, int ndim, const char* op);
// Broadcast of two shapes (numpy rules); throws naming `op` and both shapes when incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

}  // namespace tally
