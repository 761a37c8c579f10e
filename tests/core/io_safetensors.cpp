// Tests of core/io/safetensors.h: round trips, the committed file written by Python's safetensors read exactly,
// and corrupt files (each must throw tally::Error naming the file and the problem, never crash).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/io/safetensors.h"
#include "tests/core/io_test_helpers.h"
#include "tests/test_util.h"

using namespace tally;
using namespace tally::io;
using tally::test::contains;
using tally::test::error_message;
namespace fs = std::filesystem;

namespace {

// A safetensors file from a header string and data bytes (header length computed, no padding).
std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data) {
  // Sized up front and filled with memcpy (GCC 12 misreports vector::insert here under -Warray-bounds).
  std::vector<uint8_t> out(8 + header.size() + data.size());
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  if (!header.empty()) std::memcpy(out.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(out.data() + 8 + header.size(), data.data(), data.size());
  return out;
}

// The message of the error raised by reading `bytes` as file `name` in dir.
std::string read_error(const fs::path& dir, const std::string& name, const std::vector<uint8_t>& bytes) {
  test::write_raw(dir / name, bytes);
  std::string msg = error_message([&] { SafetensorsReader r(dir / name); });
  MESSAGE(msg);  // shown with -s, and beside any failing check on it
  // Reading the header alone finds the same fault, in the same words (the data section's size comes from the file).
  CHECK(error_message([&] { read_safetensors_header(dir / name); }) == msg);
  return msg;
}

}  // namespace

TEST_SUITE("io") {

TEST_CASE("safetensors: round trip of every tally dtype, F16, a 0-d and an empty tensor, with metadata") {
  fs::path dir = test::temp_dir("st_roundtrip");
  std::vector<float> w = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
  std::vector<double> d = {1.0 / 3.0, -1e300};
  std::vector<bf16> b = {float_to_bf16(1.0f), float_to_bf16(-0.1f), float_to_bf16(3e38f)};
  std::vector<uint16_t> h = {0x3C00, 0x0001, 0xFC00};  // 1, 2^-24, -inf
  std::vector<int32_t> i32 = {-7, 2147483647};
  std::vector<int64_t> i64 = {std::numeric_limits<int64_t>::min(), 42};
  std::vector<uint16_t> u16 = {0, 65535, 50256};
  std::vector<uint8_t> u8 = {9};
  float scalar = 2.5f;
  std::vector<SafetensorsTensor> tensors = {
      {.name = "w", .dtype = SafeDType::f32, .shape = {2, 3}, .data = w.data()},
      {.name = "d", .dtype = SafeDType::f64, .shape = {2}, .data = d.data()},
      {.name = "b", .dtype = to_safe_dtype(DType::bf16), .shape = {3}, .data = b.data()},
      {.name = "h", .dtype = SafeDType::f16, .shape = {3, 1}, .data = h.data()},
      {.name = "i32", .dtype = SafeDType::i32, .shape = {2}, .data = i32.data()},
      {.name = "i64", .dtype = SafeDType::i64, .shape = {1, 2}, .data = i64.data()},
      {.name = "u16", .dtype = SafeDType::u16, .shape = {3}, .data = u16.data()},
      {.name = "u8", .dtype = SafeDType::u8, .shape = {1, 1, 1}, .data = u8.data()},
      {.name = "scalar", .dtype = SafeDType::f32, .shape = {}, .data = &scalar},
      {.name = "empty", .dtype = SafeDType::f32, .shape = {0, 4}, .data = nullptr},
  };
  SafetensorsWriteOptions opts{.metadata = {{"format", "pt"}, {"step", "100"}}};
  fs::path p = dir / "rt.safetensors";
  write_safetensors(p, tensors, opts);

  // The file matches the in-memory serialization, and its header is space-padded to a multiple of 8.
  auto file_bytes = read_file(p);
  CHECK(file_bytes == serialize_safetensors(tensors, opts));
  SafetensorsReader r(p);
  CHECK(r.header_size() % 8 == 0);
  CHECK(r.source() == p.string());
  REQUIRE(r.tensors().size() == tensors.size());
  CHECK(r.metadata().size() == 2);
  CHECK(r.metadata().at("step") == "100");

  // Reference order: larger dtypes first (I64, F64, F32, I32, BF16, F16, U16, U8), then by name.
  std::vector<std::string> names;
  for (const auto& e : r.tensors()) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"i64", "d", "empty", "scalar", "w", "i32", "b", "h", "u16", "u8"});
  for (const auto& e : r.tensors()) {
    CAPTURE(e.name);
    CHECK((8 + r.header_size() + e.begin) % safe_dtype_size(e.dtype) == 0);  // every tensor aligned in the file
  }

  for (const auto& t : tensors) {
    const SafetensorsEntry& e = r.at(t.name);
    CAPTURE(t.name);
    CHECK(e.dtype == t.dtype);
    CHECK(e.shape == t.shape);
    CHECK(e.bytes.size() == size_t(e.numel()) * safe_dtype_size(e.dtype));
    if (!e.bytes.empty()) CHECK(std::memcmp(e.bytes.data(), t.data, e.bytes.size()) == 0);
  }
  CHECK(r.read_typed<float>("w") == w);
  CHECK(r.read_typed<double>("d") == d);
  CHECK(r.read_typed<int64_t>("i64") == i64);
  CHECK(r.read_typed<uint16_t>("u16") == u16);
  CHECK(r.read_floats("scalar") == std::vector<float>{2.5f});
  CHECK(r.at("scalar").numel() == 1);
  CHECK(r.at("empty").numel() == 0);
  CHECK(r.read_floats("empty").empty());

  // Conversions.
  auto bf = r.read_floats("b");
  CHECK(bf == std::vector<float>{1.0f, bf16_to_float(b[1]), bf16_to_float(b[2])});
  auto hf = r.read_doubles("h");
  CHECK(hf[0] == 1.0);
  CHECK(hf[1] == std::ldexp(1.0, -24));
  CHECK(std::isinf(hf[2]));
  CHECK(hf[2] < 0);
  CHECK(r.read_floats("d")[0] == float(1.0 / 3.0));
  CHECK(r.read_int64s("i32") == std::vector<int64_t>{-7, 2147483647});
  CHECK(r.read_int64s("u16") == std::vector<int64_t>{0, 65535, 50256});

  // Wrong use names the file, the tensor and the dtypes.
  std::string msg = error_message([&] { r.read_floats("i64"); });
  CHECK(contains(msg, p.string()));
  CHECK(contains(msg, "'i64'"));
  CHECK(contains(msg, "I64"));
  msg = error_message([&] { r.read_typed<float>("d"); });
  CHECK(contains(msg, "'d' has dtype F64; expected F32"));
  msg = error_message([&] { r.read_int64s("w"); });
  CHECK(contains(msg, "integer"));
  msg = error_message([&] { r.at("nope"); });
  CHECK(contains(msg, p.string()));
  CHECK(contains(msg, "no tensor named 'nope'"));
  CHECK(r.find("nope") == nullptr);

  // The caller's order, when asked for.
  write_safetensors(dir / "given.safetensors", tensors, {.order = SafetensorsOrder::as_given});
  SafetensorsReader g(dir / "given.safetensors");
  CHECK(g.tensors().front().name == "w");
  CHECK(g.tensors().back().name == "empty");
  CHECK(g.metadata().empty());
  CHECK(g.read_typed<float>("w") == w);

  // No tensors at all: "{}" padded to 8, as Python writes it.
  auto none = serialize_safetensors({});
  CHECK(std::string(none.begin() + 8, none.end()) == "{}      ");
  CHECK(SafetensorsReader::from_memory(none, "none").tensors().empty());

  // Empty, with dimensions whose product before the zero overflows 64 bits: 0 elements, no overflow on the way.
  const std::vector<SafetensorsTensor> wide_empty = {
      {.name = "wide", .dtype = SafeDType::f32, .shape = {int64_t(1) << 40, int64_t(1) << 40, 0}}};
  auto wide = serialize_safetensors(wide_empty);
  const SafetensorsReader wr = SafetensorsReader::from_memory(wide, "wide");
  CHECK(wr.at("wide").numel() == 0);
  CHECK(wr.read_floats("wide").empty());

  // A reader can be moved; the spans stay valid.
  SafetensorsReader moved = std::move(r);
  CHECK(moved.read_typed<float>("w") == w);
  fs::remove_all(dir);
}

TEST_CASE("safetensors: the writer rejects bad input with the destination's name") {
  float x = 1;
  fs::path p = test::temp_dir("st_writer_errors") / "bad.safetensors";
  auto err = [&](std::vector<SafetensorsTensor> ts) { return error_message([&] { write_safetensors(p, ts); }); };
  std::string msg = err({{.name = "a", .shape = {1}, .data = &x}, {.name = "a", .shape = {1}, .data = &x}});
  CHECK(contains(msg, "bad.safetensors"));
  CHECK(contains(msg, "'a' appears twice"));
  CHECK(contains(err({{.name = "__metadata__", .shape = {1}, .data = &x}}), "reserved"));
  CHECK(contains(err({{.name = "", .shape = {1}, .data = &x}}), "empty name"));
  CHECK(contains(err({{.name = "neg", .shape = {2, -1}, .data = &x}}), "negative dimension"));
  CHECK(contains(err({{.name = "null", .shape = {4}, .data = nullptr}}), "data is null"));
  CHECK(!fs::exists(p));
  CHECK(test::count_temp_files(p.parent_path()) == 0);
  fs::remove_all(p.parent_path());
}

TEST_CASE("safetensors: a file written by Python's safetensors is read exactly") {
  fs::path p = test::reference_dir() / "safetensors_sample.safetensors";
  REQUIRE_MESSAGE(fs::exists(p), "missing ", p.string(), ": run python3 tests/reference/make_safetensors_sample.py");
  SafetensorsReader r(p);

  CHECK(r.metadata().size() == 3);
  CHECK(r.metadata().at("format") == "pt");
  CHECK(r.metadata().at("source") == "tally io test sample");
  CHECK(r.metadata().at("unicode") == "h\xc3\xa9llo \xe2\x9c\x93");

  std::vector<std::string> names;
  for (const auto& e : r.tensors()) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"ids", "f64", "empty", "scalar", "weight", "bf16_vals", "half", "bytes"});

  const auto& weight = r.at("weight");
  CHECK(weight.dtype == SafeDType::f32);
  CHECK(weight.shape == std::vector<int64_t>{2, 3});
  CHECK(r.read_typed<float>("weight") == std::vector<float>{-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f});

  CHECK(r.at("f64").dtype == SafeDType::f64);
  CHECK(r.read_typed<double>("f64") == std::vector<double>{1.0 / 3.0, -1e300});

  const auto& bv = r.at("bf16_vals");
  CHECK(bv.dtype == SafeDType::bf16);
  CHECK(bv.shape == std::vector<int64_t>{7});
  std::vector<uint16_t> bits;
  for (bf16 v : r.read_typed<bf16>("bf16_vals")) bits.push_back(v.bits);
  CHECK(bits == std::vector<uint16_t>{0x3F80, 0xC020, 0x3E20, 0x4049, 0xC780, 0x3DCD, 0xFF80});
  CHECK(float_to_bf16(0.1f).bits == 0x3DCD);  // torch and tally round 0.1 the same way
  auto bf = r.read_floats("bf16_vals");
  CHECK(bf[3] == 3.140625f);
  CHECK(bf[6] == -std::numeric_limits<float>::infinity());

  CHECK(r.at("half").dtype == SafeDType::f16);
  auto hf = r.read_floats("half");
  CHECK(hf[0] == 1.0f);
  CHECK(hf[1] == 65504.0f);
  CHECK(hf[2] == std::ldexp(1.0f, -14));
  CHECK(hf[3] == std::ldexp(1.0f, -24));
  CHECK(hf[4] == 0.0f);
  CHECK(std::signbit(hf[4]));

  CHECK(r.at("ids").dtype == SafeDType::i64);
  CHECK(r.read_typed<int64_t>("ids") == std::vector<int64_t>{0, -1, (int64_t(1) << 40) + 3,
                                                            std::numeric_limits<int64_t>::max(),
                                                            std::numeric_limits<int64_t>::min()});
  CHECK(r.at("bytes").shape == std::vector<int64_t>{2, 2, 1});
  CHECK(r.read_int64s("bytes") == std::vector<int64_t>{0, 1, 254, 255});

  CHECK(r.at("scalar").shape.empty());
  CHECK(r.read_floats("scalar") == std::vector<float>{3.5f});
  CHECK(r.at("empty").shape == std::vector<int64_t>{0, 3});
  CHECK(r.at("empty").bytes.empty());

  // Writing the same tensors in reference order reproduces Python's data section byte for byte.
  std::vector<SafetensorsTensor> same;
  for (const auto& e : r.tensors())
    same.push_back({.name = e.name, .dtype = e.dtype, .shape = e.shape, .data = e.bytes.data()});
  std::reverse(same.begin(), same.end());  // the writer's own ordering must restore Python's
  auto ours = serialize_safetensors(same);
  auto theirs = read_file(p);
  size_t our_data = 8 + SafetensorsReader::from_memory(ours, "ours").header_size();
  size_t their_data = 8 + r.header_size();
  CHECK(std::vector<uint8_t>(ours.begin() + ptrdiff_t(our_data), ours.end()) ==
        std::vector<uint8_t>(theirs.begin() + ptrdiff_t(their_data), theirs.end()));
}

TEST_CASE("safetensors: corrupt files throw tally::Error naming the file and the problem") {
  fs::path dir = test::temp_dir("st_corrupt");
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::vector<uint8_t> eight(8, 0);
  auto valid = make_file(ok_header, eight);
  REQUIRE(SafetensorsReader::from_memory(valid, "valid").tensors().size() == 1);

  SUBCASE("empty file") {
    std::string msg = read_error(dir, "empty.safetensors", {});
    CHECK(contains(msg, "empty.safetensors"));
    CHECK(contains(msg, "truncated"));
    CHECK(contains(msg, "0 bytes"));
  }
  SUBCASE("truncated inside the length") {
    std::string msg = read_error(dir, "t5.safetensors", std::vector<uint8_t>(valid.begin(), valid.begin() + 5));
    CHECK(contains(msg, "t5.safetensors"));
    CHECK(contains(msg, "truncated"));
  }
  SUBCASE("truncated inside the header") {
    std::string msg = read_error(dir, "th.safetensors", std::vector<uint8_t>(valid.begin(), valid.begin() + 30));
    CHECK(contains(msg, "th.safetensors"));
    CHECK(contains(msg, "header length 54 is larger than the 22 bytes"));
    CHECK(contains(msg, "truncated"));
  }
  SUBCASE("truncated inside the data") {
    std::string msg = read_error(dir, "td.safetensors", std::vector<uint8_t>(valid.begin(), valid.end() - 3));
    CHECK(contains(msg, "td.safetensors"));
    CHECK(contains(msg, "tensor 'a'"));
    CHECK(contains(msg, "outside the data section of 5 bytes"));
  }
  SUBCASE("header length larger than the file") {
    auto bad = valid;
    uint64_t n = 1000;
    std::memcpy(bad.data(), &n, 8);
    std::string msg = read_error(dir, "hl.safetensors", bad);
    CHECK(contains(msg, "hl.safetensors"));
    CHECK(contains(msg, "header length 1000 is larger than the 62 bytes"));
  }
  SUBCASE("absurd header length") {
    auto bad = valid;
    uint64_t n = ~uint64_t(0);
    std::memcpy(bad.data(), &n, 8);
    std::string msg = read_error(dir, "huge.safetensors", bad);
    CHECK(contains(msg, "huge.safetensors"));
    CHECK(contains(msg, "exceeds"));
  }
  SUBCASE("invalid JSON") {
    std::string msg = read_error(dir, "json.safetensors", make_file(R"({"a":{"dtype":"F32",)", eight));
    CHECK(contains(msg, "json.safetensors"));
    CHECK(contains(msg, "not valid JSON"));
  }
  SUBCASE("invalid UTF-8 in the header") {
    std::string msg = read_error(dir, "utf.safetensors", make_file("{\"\xff\xfe\":{}}", {}));
    CHECK(contains(msg, "not valid JSON"));
  }
  SUBCASE("header is not an object") {
    CHECK(contains(read_error(dir, "arr.safetensors", make_file("[1,2]", {})), "must be a JSON object"));
  }
  SUBCASE("deeply nested JSON does not crash") {
    std::string deep = R"({"a":)" + std::string(200000, '[') + std::string(200000, ']') + "}";
    std::string msg = read_error(dir, "deep.safetensors", make_file(deep, {}));
    CHECK(contains(msg, "deep.safetensors"));
    CHECK(contains(msg, "tensor 'a'"));
  }
  SUBCASE("offsets out of range") {
    std::string msg = read_error(
        dir, "oor.safetensors", make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", eight));
    CHECK(contains(msg, "oor.safetensors"));
    CHECK(contains(msg, "tensor 'a'"));
    CHECK(contains(msg, "data_offsets [8, 16] lie outside the data section of 8 bytes"));
  }
  SUBCASE("offsets reversed") {
    std::string msg = read_error(
        dir, "rev.safetensors", make_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight));
    CHECK(contains(msg, "end before they begin"));
  }
  SUBCASE("size mismatch") {
    std::string msg = read_error(
        dir, "size.safetensors", make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight));
    CHECK(contains(msg, "size.safetensors"));
    CHECK(contains(msg, "tensor 'a'"));
    CHECK(contains(msg, "size mismatch"));
    CHECK(contains(msg, "needs 12 bytes"));
    CHECK(contains(msg, "span 8"));
  }
  SUBCASE("overlapping entries") {
    std::string msg = read_error(dir, "overlap.safetensors",
                                 make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                           std::vector<uint8_t>(12, 0)));
    CHECK(contains(msg, "overlap.safetensors"));
    CHECK(contains(msg, "'a' [0, 8] and 'b' [4, 12] overlap"));
  }
  SUBCASE("the same bytes claimed twice") {
    std::string msg = read_error(dir, "twice.safetensors",
                                 make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                           R"("b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
                                           eight));
    CHECK(contains(msg, "overlap"));
  }
  SUBCASE("a gap between tensors") {
    std::string msg = read_error(dir, "gap.safetensors",
                                 make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight));
    CHECK(contains(msg, "gap of 4 bytes"));
  }
  SUBCASE("trailing bytes after the last tensor") {
    std::string msg = read_error(dir, "trail.safetensors",
                                 make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight));
    CHECK(contains(msg, "trail.safetensors"));
    CHECK(contains(msg, "trailing bytes"));
  }
  SUBCASE("unknown dtype") {
    std::string msg = read_error(
        dir, "dtype.safetensors", make_file(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", eight));
    CHECK(contains(msg, "dtype.safetensors"));
    CHECK(contains(msg, "tensor 'a'"));
    CHECK(contains(msg, "unknown dtype \"F33\""));
  }
  SUBCASE("negative or fractional shape") {
    CHECK(contains(read_error(dir, "neg.safetensors",
                              make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight)),
                   "non-negative integers"));
    CHECK(contains(read_error(dir, "frac.safetensors",
                              make_file(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", eight)),
                   "non-negative integers"));
  }
  SUBCASE("shape whose element count overflows") {
    std::string msg = read_error(
        dir, "ovf.safetensors",
        make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", eight));
    CHECK(contains(msg, "ovf.safetensors"));
    CHECK(contains(msg, "more elements than fit in 64 bits"));
    msg = read_error(dir, "ovf2.safetensors",
                     make_file(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", eight));
    CHECK(contains(msg, "more bytes than fit in 64 bits"));
  }
  SUBCASE("missing or malformed fields") {
    CHECK(contains(read_error(dir, "m1.safetensors", make_file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", eight)),
                   "missing \"dtype\""));
    CHECK(contains(read_error(dir, "m2.safetensors", make_file(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", eight)),
                   "missing \"shape\""));
    CHECK(contains(read_error(dir, "m3.safetensors",
                              make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", eight)),
                   "\"data_offsets\" must be [begin, end]"));
    CHECK(contains(read_error(dir, "m4.safetensors", make_file(R"({"a":7})", {})), "entry must be a JSON object"));
  }
  SUBCASE("metadata that is not strings") {
    std::string msg = read_error(dir, "meta.safetensors", make_file(R"({"__metadata__":{"step":100}})", {}));
    CHECK(contains(msg, "meta.safetensors"));
    CHECK(contains(msg, "'step' must be a string"));
  }
  fs::remove_all(dir);
}

}  // TEST_SUITE("io")

TEST_CASE("safetensors: reading the header alone gives the reader's tensors, offsets and metadata") {
  const fs::path sample = test::reference_dir() / "safetensors_sample.safetensors";
  const SafetensorsReader full(sample);
  const SafetensorsHeader h = read_safetensors_header(sample);
  CHECK(h.source == sample.string());
  CHECK(h.header_size == full.header_size());
  CHECK(h.data_size == fs::file_size(sample) - 8 - full.header_size());
  CHECK(h.metadata == full.metadata());
  REQUIRE(h.tensors.size() == full.tensors().size());
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const SafetensorsEntry &a = h.tensors[i], &b = full.tensors()[i];
    CHECK(a.name == b.name);
    CHECK(a.dtype == b.dtype);
    CHECK(a.shape == b.shape);
    CHECK(a.begin == b.begin);
    CHECK(a.end == b.end);
    CHECK(a.bytes.empty());
  }
  fs::path dir = test::temp_dir("st_header");
  CHECK(contains(error_message([&] { read_safetensors_header(dir / "absent.safetensors"); }), "no such file"));
  CHECK(contains(error_message([&] { read_safetensors_header(dir); }), "is a directory"));
}
