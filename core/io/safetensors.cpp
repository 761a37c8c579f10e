// safetensors parsing (with validation of every size and offset before use) and writing.
// The checks mirror the reference implementation (huggingface/safetensors): header within the file and under
// 100 MB, JSON object, known dtypes, offsets inside the data section, byte count == numel * element size,
// tensors packed with no overlap, gap or trailing bytes.
#include "core/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/shape.h"

namespace tally::io {
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

struct DTypeInfo {
  SafeDType type;
  const char* name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {SafeDType::boolean, "BOOL", 1}, {SafeDType::u8, "U8", 1},           {SafeDType::i8, "I8", 1},
    {SafeDType::f8_e5m2, "F8_E5M2", 1}, {SafeDType::f8_e4m3, "F8_E4M3", 1}, {SafeDType::f8_e8m0, "F8_E8M0", 1},
    {SafeDType::i16, "I16", 2},      {SafeDType::u16, "U16", 2},         {SafeDType::f16, "F16", 2},
    {SafeDType::bf16, "BF16", 2},    {SafeDType::i32, "I32", 4},         {SafeDType::u32, "U32", 4},
    {SafeDType::f32, "F32", 4},      {SafeDType::c64, "C64", 8},         {SafeDType::f64, "F64", 8},
    {SafeDType::i64, "I64", 8},      {SafeDType::u64, "U64", 8},
};

const DTypeInfo& info(SafeDType t) {
  auto i = size_t(t);
  TALLY_ASSERT(i < std::size(kDTypes) && kDTypes[i].type == t);
  return kDTypes[i];
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

template <class T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

size_t safe_dtype_size(SafeDType t) { return info(t).size; }
const char* safe_dtype_name(SafeDType t) { return info(t).name; }

std::optional<SafeDType> safe_dtype_from_name(std::string_view name) {
  for (const DTypeInfo& d : kDTypes)
    if (name == d.name) return d.type;
  return std::nullopt;
}

SafeDType to_safe_dtype(DType t) {
  switch (t) {
    case DType::f32: return SafeDType::f32;
    case DType::f64: return SafeDType::f64;
    case DType::bf16: return SafeDType::bf16;
    case DType::i32: return SafeDType::i32;
    case DType::i64: return SafeDType::i64;
    case DType::u16: return SafeDType::u16;
    case DType::u8: return SafeDType::u8;
  }
  fail("[safetensors] unknown tally dtype ", int(t));
}

std::optional<DType> to_tally_dtype(SafeDType t) {
  switch (t) {
    case SafeDType::f32: return DType::f32;
    case SafeDType::f64: return DType::f64;
    case SafeDType::bf16: return DType::bf16;
    case SafeDType::i32: return DType::i32;
    case SafeDType::i64: return DType::i64;
    case SafeDType::u16: return DType::u16;
    case SafeDType::u8: return DType::u8;
    default: return std::nullopt;
  }
}

float f16_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);  // inf or NaN (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal half: value = man * 2^-24; normalise into a float.
    int e = -1;
    do {
      man <<= 1;
      ++e;
    } while ((man & 0x400u) == 0);
    bits = sign | uint32_t(127 - 15 - e) << 23 | ((man & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

int64_t SafetensorsEntry::numel() const {
  // Validated on parse, so it has a value; checked still, as (huge, huge, 0) is a valid empty shape whose product
  // in order would overflow.
  return int64_t(*checked_numel(shape));
}

// ---------------------------------------------------------------------------------------------------------
// Reader

SafetensorsReader::SafetensorsReader(const fs::path& path) : source_(path.string()), map_(path) {
  parse(map_.bytes());
}

SafetensorsReader SafetensorsReader::from_memory(std::span<const uint8_t> bytes, std::string source_name) {
  SafetensorsReader r;
  r.source_ = std::move(source_name);
  r.parse(bytes);
  return r;
}

namespace {

// The header's JSON (n bytes) of a file whose data section has `data_size` bytes: every entry and its validation
// (known dtype, shape, offsets inside the data section, bytes == numel * element size, tensors packed with no
// overlap, gap or trailing bytes). Entries come out sorted by offset, their `bytes` left empty.
void parse_header(const std::string& where, std::string_view json_text, uint64_t data_size,
                  std::vector<SafetensorsEntry>& entries, std::map<std::string, std::string, std::less<>>& metadata) {
  const uint64_t n = json_text.size();
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(json_text.begin(), json_text.end());
  } catch (const nlohmann::json::exception& e) {
    fail(where, "the ", n, "-byte header is not valid JSON: ", e.what());
  }
  if (!header.is_object()) fail(where, "the header must be a JSON object, found a JSON ", header.type_name());

  try {
    for (const auto& item : header.items()) {
      const std::string& key = item.key();
      const nlohmann::json& value = item.value();
      if (key == "__metadata__") {
        if (value.is_null()) continue;
        if (!value.is_object())
          fail(where, "\"__metadata__\" must be an object of strings, found a JSON ", value.type_name());
        for (const auto& meta : value.items()) {
          const std::string& mk = meta.key();
          const nlohmann::json& mv = meta.value();
          if (!mv.is_string())
            fail(where, "\"__metadata__\" value for key '", mk, "' must be a string, found a JSON ", mv.type_name());
          metadata.emplace(mk, mv.get<std::string>());
        }
        continue;
      }
      const std::string tw = cat(where, "tensor '", key, "': ");
      if (!value.is_object()) fail(tw, "entry must be a JSON object, found a JSON ", value.type_name());
      SafetensorsEntry e;
      e.name = key;

      auto dt = value.find("dtype");
      if (dt == value.end() || !dt->is_string()) fail(tw, "missing \"dtype\" string");
      const std::string& dname = dt->get_ref<const std::string&>();
      auto parsed = safe_dtype_from_name(dname);
      if (!parsed)
        fail(tw, "unknown dtype \"", dname, "\" (expected one of BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, ",
             "U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64)");
      e.dtype = *parsed;

      auto sh = value.find("shape");
      if (sh == value.end() || !sh->is_array()) fail(tw, "missing \"shape\" array");
      for (const auto& d : *sh) {
        if (!d.is_number_unsigned())
          fail(tw, "shape ", sh->dump(), " must hold non-negative integers");
        uint64_t v = d.get<uint64_t>();
        if (v > uint64_t(std::numeric_limits<int64_t>::max())) fail(tw, "shape dimension ", v, " is too large");
        e.shape.push_back(int64_t(v));
      }
      auto numel = checked_numel(e.shape);
      if (!numel) fail(tw, "shape ", shape_text(e.shape), " has more elements than fit in 64 bits");
      uint64_t nbytes;
      if (__builtin_mul_overflow(*numel, uint64_t(safe_dtype_size(e.dtype)), &nbytes))
        fail(tw, "shape ", shape_text(e.shape), " of ", dname, " needs more bytes than fit in 64 bits");

      auto off = value.find("data_offsets");
      if (off == value.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
          !(*off)[1].is_number_unsigned())
        fail(tw, "\"data_offsets\" must be [begin, end] with non-negative integers");
      e.begin = (*off)[0].get<uint64_t>();
      e.end = (*off)[1].get<uint64_t>();
      if (e.begin > e.end) fail(tw, "data_offsets [", e.begin, ", ", e.end, "] end before they begin");
      if (e.end > data_size)
        fail(tw, "data_offsets [", e.begin, ", ", e.end, "] lie outside the data section of ", data_size,
             " bytes (offsets out of range)");
      if (e.end - e.begin != nbytes)
        fail(tw, "size mismatch: dtype ", dname, " with shape ", shape_text(e.shape), " needs ", nbytes,
             " bytes, but data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin);
      entries.push_back(std::move(e));
    }
  } catch (const nlohmann::json::exception& ex) {  // type errors while reading a well-formed but odd header
    fail(where, "malformed header: ", ex.what());
  }

  // The tensors must tile the data section exactly: sorted by offset, each begins where the previous ends.
  std::sort(entries.begin(), entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  const SafetensorsEntry* last = nullptr;  // the entry that ends at `covered`
  for (const SafetensorsEntry& e : entries) {
    if (e.begin < covered)
      fail(where, "tensors '", last->name, "' [", last->begin, ", ", last->end, "] and '", e.name, "' [", e.begin,
           ", ", e.end, "] overlap");
    if (e.begin > covered)
      fail(where, "tensor '", e.name, "' begins at data offset ", e.begin, ", leaving a gap of ", e.begin - covered,
           " bytes after offset ", covered, " (tensors must be packed)");
    covered = e.end;
    last = &e;
  }
  if (covered != data_size)
    fail(where, "the data section has ", data_size, " bytes but the tensors cover only ", covered,
         " (trailing bytes; file corrupt)");
}

// The 8-byte header length N of a file of `file_size` bytes, checked against the limit and the file.
uint64_t checked_header_length(const std::string& where, const uint8_t* first8, uint64_t file_size) {
  if (file_size < 8)
    fail(where, "truncated: the file is ", file_size,
         " bytes, but a safetensors file starts with an 8-byte header length");
  const uint64_t n = load<uint64_t>(first8);
  if (n > kSafetensorsMaxHeaderBytes)
    fail(where, "header length ", n, " exceeds the ", kSafetensorsMaxHeaderBytes,
         "-byte limit (not a safetensors file, or corrupt)");
  if (n > file_size - 8)
    fail(where, "header length ", n, " is larger than the ", file_size - 8,
         " bytes that follow it (file truncated or corrupt)");
  return n;
}

}  // namespace

void SafetensorsReader::parse(std::span<const uint8_t> file) {
  const std::string where = cat("[safetensors] '", source_, "': ");
  static const uint8_t kNone[8] = {};
  const uint64_t n = checked_header_length(where, file.size() >= 8 ? file.data() : kNone, file.size());
  header_size_ = n;
  const std::span<const uint8_t> data = file.subspan(8 + n);
  parse_header(where, {reinterpret_cast<const char*>(file.data() + 8), size_t(n)}, data.size(), entries_, metadata_);
  for (SafetensorsEntry& e : entries_) e.bytes = data.subspan(e.begin, e.end - e.begin);
  for (size_t i = 0; i < entries_.size(); ++i) by_name_.emplace(entries_[i].name, i);
}

SafetensorsHeader read_safetensors_header(const fs::path& path) {
  SafetensorsHeader h;
  h.source = path.string();
  const std::string where = cat("[safetensors] '", h.source, "': ");
  std::error_code ec;
  if (fs::is_directory(path, ec)) fail(where, "is a directory, not a safetensors file");
  // Anything but a regular file (a FIFO would block the open below forever) has no size to check against.
  if (fs::exists(path, ec) && !fs::is_regular_file(path, ec))
    fail(where, "is not a regular file (a device, a pipe or a socket)");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(where, fs::exists(path, ec) ? "cannot be opened for reading" : "no such file");
  const uintmax_t file_size = fs::file_size(path, ec);
  if (ec) fail(where, "cannot read its size: ", ec.message());
  uint8_t first8[8] = {};
  if (file_size >= 8 && !in.read(reinterpret_cast<char*>(first8), 8)) fail(where, "reading the header length failed");
  const uint64_t n = checked_header_length(where, first8, file_size);
  std::string text(size_t(n), '\0');
  if (n > 0 && !in.read(text.data(), std::streamsize(n))) fail(where, "reading the ", n, "-byte header failed");
  h.header_size = n;
  h.data_size = file_size - 8 - n;
  parse_header(where, text, h.data_size, h.tensors, h.metadata);
  return h;
}

const SafetensorsEntry* SafetensorsReader::find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

const SafetensorsEntry& SafetensorsReader::at(std::string_view name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) fail("[safetensors] '", source_, "': no tensor named '", name, "' (the file has ", entries_.size(),
               " tensors)");
  return *e;
}

void SafetensorsReader::wrong_dtype(const SafetensorsEntry& e, const char* wanted) const {
  fail("[safetensors] '", source_, "': tensor '", e.name, "' has dtype ", safe_dtype_name(e.dtype), "; expected ",
       wanted);
}

namespace {

template <class Out>
std::vector<Out> convert_floating(const SafetensorsEntry& e, bool& ok) {
  const size_t n = size_t(e.numel());
  const uint8_t* p = e.bytes.data();
  std::vector<Out> out;
  ok = true;
  switch (e.dtype) {
    case SafeDType::f32:
      out.resize(n);
      for (size_t i = 0; i < n; ++i) out[i] = Out(load<float>(p + 4 * i));
      break;
    case SafeDType::f64:
      out.resize(n);
      for (size_t i = 0; i < n; ++i) out[i] = Out(load<double>(p + 8 * i));
      break;
    case SafeDType::bf16:
      out.resize(n);
      for (size_t i = 0; i < n; ++i) out[i] = Out(bf16_to_float(bf16{load<uint16_t>(p + 2 * i)}));
      break;
    case SafeDType::f16:
      out.resize(n);
      for (size_t i = 0; i < n; ++i) out[i] = Out(f16_to_float(load<uint16_t>(p + 2 * i)));
      break;
    default: ok = false;
  }
  return out;
}

}  // namespace

std::vector<float> SafetensorsReader::read_floats(std::string_view name) const {
  const SafetensorsEntry& e = at(name);
  bool ok;
  auto out = convert_floating<float>(e, ok);
  if (!ok) wrong_dtype(e, "F32, F64, BF16 or F16");
  return out;
}

std::vector<double> SafetensorsReader::read_doubles(std::string_view name) const {
  const SafetensorsEntry& e = at(name);
  bool ok;
  auto out = convert_floating<double>(e, ok);
  if (!ok) wrong_dtype(e, "F32, F64, BF16 or F16");
  return out;
}

std::vector<int64_t> SafetensorsReader::read_int64s(std::string_view name) const {
  const SafetensorsEntry& e = at(name);
  const size_t n = size_t(e.numel());
  const uint8_t* p = e.bytes.data();
  std::vector<int64_t> out(n);
  switch (e.dtype) {
    case SafeDType::boolean:
    case SafeDType::u8: for (size_t i = 0; i < n; ++i) out[i] = p[i]; break;
    case SafeDType::i8: for (size_t i = 0; i < n; ++i) out[i] = int8_t(p[i]); break;
    case SafeDType::i16: for (size_t i = 0; i < n; ++i) out[i] = load<int16_t>(p + 2 * i); break;
    case SafeDType::u16: for (size_t i = 0; i < n; ++i) out[i] = load<uint16_t>(p + 2 * i); break;
    case SafeDType::i32: for (size_t i = 0; i < n; ++i) out[i] = load<int32_t>(p + 4 * i); break;
    case SafeDType::u32: for (size_t i = 0; i < n; ++i) out[i] = load<uint32_t>(p + 4 * i); break;
    case SafeDType::i64: for (size_t i = 0; i < n; ++i) out[i] = load<int64_t>(p + 8 * i); break;
    case SafeDType::u64:
      for (size_t i = 0; i < n; ++i) {
        uint64_t v = load<uint64_t>(p + 8 * i);
        if (v > uint64_t(std::numeric_limits<int64_t>::max()))
          fail("[safetensors] '", source_, "': tensor '", e.name, "' element ", i, " = ", v,
               " does not fit in int64");
        out[i] = int64_t(v);
      }
      break;
    default: wrong_dtype(e, "an integer type or BOOL");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Writer

namespace {

struct Planned {
  const SafetensorsTensor* tensor;
  uint64_t nbytes;
};

// Validates the tensors, orders them, and builds the padded header. `where` names the destination in errors.
std::string plan(std::span<const SafetensorsTensor> tensors, const SafetensorsWriteOptions& options,
                 const std::string& where, std::vector<Planned>& order) {
  std::map<std::string_view, int> seen;
  for (const SafetensorsTensor& t : tensors) {
    if (t.name.empty()) fail(where, "a tensor has an empty name");
    if (t.name == "__metadata__") fail(where, "\"__metadata__\" is reserved and cannot name a tensor");
    if (!seen.emplace(t.name, 0).second) fail(where, "tensor name '", t.name, "' appears twice");
    if (size_t(t.dtype) >= std::size(kDTypes)) fail(where, "tensor '", t.name, "': invalid dtype ", int(t.dtype));
    for (int64_t d : t.shape)
      if (d < 0) fail(where, "tensor '", t.name, "': shape ", shape_text(t.shape), " has a negative dimension");
    auto numel = checked_numel(t.shape);
    if (!numel) fail(where, "tensor '", t.name, "': shape ", shape_text(t.shape), " has too many elements");
    uint64_t nbytes;
    if (__builtin_mul_overflow(*numel, uint64_t(safe_dtype_size(t.dtype)), &nbytes))
      fail(where, "tensor '", t.name, "': shape ", shape_text(t.shape), " needs too many bytes");
    if (nbytes > 0 && t.data == nullptr) fail(where, "tensor '", t.name, "': data is null but ", nbytes, " bytes are due");
    order.push_back({&t, nbytes});
  }
  if (options.order == SafetensorsOrder::reference)
    std::stable_sort(order.begin(), order.end(), [](const Planned& a, const Planned& b) {
      if (a.tensor->dtype != b.tensor->dtype) return a.tensor->dtype > b.tensor->dtype;
      return a.tensor->name < b.tensor->name;
    });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!options.metadata.empty()) header["__metadata__"] = options.metadata;
  uint64_t offset = 0;
  for (const Planned& p : order) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = safe_dtype_name(p.tensor->dtype);
    entry["shape"] = p.tensor->shape;
    entry["data_offsets"] = {offset, offset + p.nbytes};
    header[p.tensor->name] = std::move(entry);
    offset += p.nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // names or metadata that are not valid UTF-8
    fail(where, "cannot encode the header (tensor names and metadata must be valid UTF-8): ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void put_u64(uint8_t* out, uint64_t v) { std::memcpy(out, &v, 8); }

}  // namespace

void write_safetensors(const fs::path& path, std::span<const SafetensorsTensor> tensors,
                       const SafetensorsWriteOptions& options) {
  std::vector<Planned> order;
  std::string header = plan(tensors, options, cat("[safetensors] '", path.string(), "': "), order);
  AtomicFileWriter w(path);
  uint8_t len[8];
  put_u64(len, header.size());
  w.write(len, 8);
  w.write(header);
  for (const Planned& p : order) w.write(p.tensor->data, p.nbytes);
  w.commit();
}

std::vector<uint8_t> serialize_safetensors(std::span<const SafetensorsTensor> tensors,
                                           const SafetensorsWriteOptions& options) {
  std::vector<Planned> order;
  std::string header = plan(tensors, options, "[safetensors] '<memory>': ", order);
  uint64_t total = 8 + header.size();
  for (const Planned& p : order) total += p.nbytes;
  std::vector<uint8_t> out(total);
  put_u64(out.data(), header.size());
  std::memcpy(out.data() + 8, header.data(), header.size());
  uint64_t at = 8 + header.size();
  for (const Planned& p : order) {
    if (p.nbytes) std::memcpy(out.data() + at, p.tensor->data, p.nbytes);
    at += p.nbytes;
  }
  return out;
}

}  // namespace tally::io
