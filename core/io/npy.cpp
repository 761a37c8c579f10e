// .npy writing (header dict padded to a 64-byte boundary, as NumPy does) and reading with a small parser for
// the header's Python dict literal. Sizes are checked against the bytes present before anything is allocated.
#include "core/io/npy.h"

#include <algorithm>
#include <bit>
#include <limits>
#include <optional>

#include "core/io/file.h"
#include "core/shape.h"

namespace tally::io {
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, ".npy I/O assumes a little-endian host");

namespace {

constexpr char kMagic[] = "\x93NUMPY";  // 6 bytes
constexpr size_t kAlign = 64;           // NumPy pads the header so the data starts 64-byte aligned

struct NpyType {
  DType dtype;
  const char* descr;  // as written; the reader also accepts these
};
constexpr NpyType kTypes[] = {
    {DType::f32, "<f4"}, {DType::f64, "<f8"}, {DType::i32, "<i4"},
    {DType::i64, "<i8"}, {DType::u16, "<u2"}, {DType::u8, "|u1"},
};

const char* type_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u16: return "u16";
    case DType::u8: return "u8";
  }
  return "?";
}

// The dtype actually stored in the file (bf16 is stored as f32).
DType stored_dtype(DType t) { return t == DType::bf16 ? DType::f32 : t; }

const char* descr_of(DType t) {
  for (const NpyType& n : kTypes)
    if (n.dtype == stored_dtype(t)) return n.descr;
  fail("[npy] no .npy type for dtype ", type_name(t));
}

std::string shape_tuple(std::span<const int64_t> shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

// Validates the shape and returns numel; `where` names the destination.
uint64_t numel_or_fail(std::span<const int64_t> shape, const std::string& where) {
  const std::optional<int64_t> n = checked_numel(shape);
  if (n) return uint64_t(*n);
  for (int64_t d : shape)
    if (d < 0) fail(where, "shape ", shape_tuple(shape), " has a negative dimension");
  fail(where, "shape ", shape_tuple(shape), " has more elements than fit in 64 bits");
}

// The full preamble: magic, version, header length and the padded dict.
std::string make_preamble(DType dtype, std::span<const int64_t> shape) {
  std::string dict = cat("{'descr': '", descr_of(dtype), "', 'fortran_order': False, 'shape': ", shape_tuple(shape),
                         ", }");
  // Version 1.0 stores the header length in 2 bytes; 2.0 in 4 (only for absurdly many dimensions).
  bool v2 = 10 + dict.size() + 1 + kAlign > 65535;
  size_t prefix = v2 ? 12 : 10;
  size_t total = prefix + dict.size() + 1;  // + '\n'
  size_t padded = (total + kAlign - 1) / kAlign * kAlign;
  dict.append(padded - total, ' ');
  dict += '\n';
  std::string out(kMagic, 6);
  out += char(v2 ? 2 : 1);
  out += char(0);
  uint32_t len = uint32_t(dict.size());
  out += char(len & 0xff);
  out += char((len >> 8) & 0xff);
  if (v2) {
    out += char((len >> 16) & 0xff);
    out += char((len >> 24) & 0xff);
  }
  return out + dict;
}

// Emits the data in the stored dtype, converting bf16 to f32 in bounded chunks.
template <class Sink>
void emit_data(DType dtype, const void* data, uint64_t numel, Sink&& sink) {
  if (numel == 0) return;
  if (dtype != DType::bf16) {
    sink(data, numel * dtype_size(dtype));
    return;
  }
  const auto* src = static_cast<const uint16_t*>(data);
  std::vector<float> chunk(std::min<uint64_t>(numel, 1 << 16));
  for (uint64_t done = 0; done < numel;) {
    size_t n = size_t(std::min<uint64_t>(chunk.size(), numel - done));
    for (size_t i = 0; i < n; ++i) chunk[i] = bf16_to_float(bf16{src[done + i]});
    sink(chunk.data(), n * sizeof(float));
    done += n;
  }
}

// ---- reading: a tiny parser for the header's Python dict literal ----
class DictParser {
 public:
  DictParser(std::string_view text, std::string where) : s_(text), where_(std::move(where)) {}

  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool at_end() const { return i_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[i_]; }
  void expect(char c) {
    skip_ws();
    if (peek() != c) fail(where_, "malformed header ", quoted(), ": expected '", c, "' at position ", i_);
    ++i_;
  }
  bool accept(char c) {
    skip_ws();
    if (peek() != c) return false;
    ++i_;
    return true;
  }
  std::string string_literal() {
    skip_ws();
    char q = peek();
    if (q != '\'' && q != '"') fail(where_, "malformed header ", quoted(), ": expected a string at position ", i_);
    size_t end = s_.find(q, i_ + 1);
    if (end == std::string_view::npos) fail(where_, "malformed header ", quoted(), ": unterminated string");
    std::string out(s_.substr(i_ + 1, end - i_ - 1));
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    skip_ws();
    if (s_.substr(i_, 4) == "True") { i_ += 4; return true; }
    if (s_.substr(i_, 5) == "False") { i_ += 5; return false; }
    fail(where_, "malformed header ", quoted(), ": expected True or False at position ", i_);
  }
  std::vector<int64_t> shape() {
    expect('(');
    std::vector<int64_t> dims;
    for (;;) {
      skip_ws();
      if (accept(')')) break;
      if (peek() < '0' || peek() > '9')
        fail(where_, "malformed header ", quoted(), ": expected a non-negative dimension at position ", i_);
      int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (__builtin_mul_overflow(v, int64_t(10), &v) || __builtin_add_overflow(v, int64_t(peek() - '0'), &v))
          fail(where_, "shape dimension in header ", quoted(), " is too large");
        ++i_;
      }
      if (peek() == 'L') ++i_;  // Python 2 longs
      dims.push_back(v);
      if (dims.size() > 64) fail(where_, "shape has more than 64 dimensions");
      if (accept(')')) break;
      expect(',');
    }
    return dims;
  }
  std::string quoted() const {
    std::string_view shown = s_.substr(0, std::min<size_t>(s_.size(), 200));
    return cat("\"", shown, s_.size() > 200 ? "...\"" : "\"");
  }
  const std::string& where() const { return where_; }

 private:
  std::string_view s_;
  std::string where_;
  size_t i_ = 0;
};

}  // namespace

int64_t NpyArray::numel() const {
  // Parsing checked the shape; the order matters still: (huge, huge, 0) holds nothing, and must not overflow.
  return int64_t(numel_or_fail(shape, "[npy] NpyArray::numel: "));
}

void NpyArray::check_dtype(DType wanted) const {
  if (wanted != dtype) fail("[npy] NpyArray::as: the array holds ", type_name(dtype), ", not ", type_name(wanted));
}

void write_npy(const fs::path& path, DType dtype, std::span<const int64_t> shape, const void* data) {
  const std::string where = cat("[npy] '", path.string(), "': ");
  uint64_t numel = numel_or_fail(shape, where);
  if (numel > 0 && data == nullptr) fail(where, "data is null but the shape has ", numel, " elements");
  std::string preamble = make_preamble(dtype, shape);
  AtomicFileWriter w(path);
  w.write(preamble);
  emit_data(dtype, data, numel, [&](const void* p, size_t n) { w.write(p, n); });
  w.commit();
}

std::vector<uint8_t> serialize_npy(DType dtype, std::span<const int64_t> shape, const void* data) {
  const std::string where = "[npy] '<memory>': ";
  uint64_t numel = numel_or_fail(shape, where);
  if (numel > 0 && data == nullptr) fail(where, "data is null but the shape has ", numel, " elements");
  std::string preamble = make_preamble(dtype, shape);
  std::vector<uint8_t> out(preamble.begin(), preamble.end());
  out.reserve(out.size() + numel * dtype_size(stored_dtype(dtype)));
  emit_data(dtype, data, numel, [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  });
  return out;
}

NpyArray parse_npy(std::span<const uint8_t> bytes, std::string_view source_name) {
  const std::string where = cat("[npy] '", source_name, "': ");
  if (bytes.size() < 10) fail(where, "truncated: ", bytes.size(), " bytes, a .npy file has at least a 10-byte preamble");
  if (std::memcmp(bytes.data(), kMagic, 6) != 0) fail(where, "not a .npy file (magic \\x93NUMPY missing)");
  const unsigned major = bytes[6], minor = bytes[7];
  size_t prefix;
  uint64_t hlen;
  if (major == 1) {
    prefix = 10;
    hlen = uint64_t(bytes[8]) | uint64_t(bytes[9]) << 8;
  } else if (major == 2 || major == 3) {
    prefix = 12;
    if (bytes.size() < prefix) fail(where, "truncated: ", bytes.size(), " bytes, version ", major, " needs 12");
    hlen = uint64_t(bytes[8]) | uint64_t(bytes[9]) << 8 | uint64_t(bytes[10]) << 16 | uint64_t(bytes[11]) << 24;
  } else {
    fail(where, "unsupported .npy format version ", major, ".", minor, " (expected 1.0, 2.0 or 3.0)");
  }
  if (hlen > bytes.size() - prefix)
    fail(where, "header length ", hlen, " is larger than the ", bytes.size() - prefix, " bytes that follow it");

  DictParser p(std::string_view(reinterpret_cast<const char*>(bytes.data() + prefix), size_t(hlen)), where);
  std::optional<std::string> descr;
  std::optional<bool> fortran;
  std::optional<std::vector<int64_t>> shape;
  p.expect('{');
  while (!p.accept('}')) {
    std::string key = p.string_literal();
    p.expect(':');
    if (key == "descr") descr = p.string_literal();
    else if (key == "fortran_order") fortran = p.boolean();
    else if (key == "shape") shape = p.shape();
    else fail(where, "unexpected key '", key, "' in header ", p.quoted());
    if (p.accept('}')) break;
    p.expect(',');
  }
  p.skip_ws();
  if (!p.at_end()) fail(where, "unexpected text after the header dict in ", p.quoted());
  if (!descr || !fortran || !shape) fail(where, "header ", p.quoted(), " lacks 'descr', 'fortran_order' or 'shape'");
  if (*fortran) fail(where, "Fortran-order arrays are not supported (save with C order)");

  NpyArray a;
  bool known = false;
  for (const NpyType& t : kTypes)
    if (*descr == t.descr || (t.dtype == DType::u8 && *descr == "<u1")) {
      a.dtype = t.dtype;
      known = true;
    }
  if (!known) {
    if (!descr->empty() && (*descr)[0] == '>') fail(where, "big-endian dtype '", *descr, "' is not supported");
    fail(where, "unsupported dtype '", *descr, "' (expected <f4, <f8, <i4, <i8, <u2 or |u1)");
  }
  a.shape = std::move(*shape);
  uint64_t numel = numel_or_fail(a.shape, where);
  uint64_t want;
  if (__builtin_mul_overflow(numel, uint64_t(dtype_size(a.dtype)), &want))
    fail(where, "shape ", shape_tuple(a.shape), " needs more bytes than fit in 64 bits");
  const uint64_t have = bytes.size() - prefix - hlen;
  if (have != want)
    fail(where, "size mismatch: shape ", shape_tuple(a.shape), " of ", *descr, " needs ", want, " data bytes, the file has ",
         have);
  a.data.assign(bytes.begin() + ptrdiff_t(prefix + hlen), bytes.end());
  return a;
}

NpyArray read_npy(const fs::path& path) {
  MappedFile m(path);
  return parse_npy(m.bytes(), path.string());
}

}  // namespace tally::io
