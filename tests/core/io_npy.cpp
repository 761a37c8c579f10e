// Tests of core/io/npy.h: round trips of every dtype (bf16 exported as f32), the exact header NumPy expects,
// files in NumPy's own variants (version 2.0, '<u1', Python 2 longs), and corrupt files.
#include <doctest/doctest.h>

#include <cmath>

#include "core/io/file.h"
#include "core/io/npy.h"
#include "tests/core/io_test_helpers.h"
#include "tests/test_util.h"

using namespace tally;
using namespace tally::io;
using tally::test::contains;
using tally::test::error_message;
namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> npy_bytes(uint8_t major, const std::string& dict, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', major, 0};
  uint32_t n = uint32_t(dict.size());
  out.push_back(uint8_t(n));
  out.push_back(uint8_t(n >> 8));
  if (major >= 2) {
    out.push_back(uint8_t(n >> 16));
    out.push_back(uint8_t(n >> 24));
  }
  out.insert(out.end(), dict.begin(), dict.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

}  // namespace

TEST_SUITE("io") {

TEST_CASE("npy: round trip of every dtype; header is NumPy's v1.0 layout, 64-byte aligned") {
  fs::path dir = test::temp_dir("npy_rt");
  std::vector<float> f = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};
  std::vector<int64_t> shape23 = {2, 3};
  write_npy(dir / "f.npy", DType::f32, shape23, f.data());
  std::string raw = test::slurp(dir / "f.npy");
  CHECK(raw.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
  size_t hlen = uint8_t(raw[8]) | size_t(uint8_t(raw[9])) << 8;
  CHECK((10 + hlen) % 64 == 0);
  CHECK(raw.substr(10, 59) == "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
  CHECK(raw[10 + hlen - 1] == '\n');
  CHECK(raw.size() == 10 + hlen + f.size() * 4);

  NpyArray a = read_npy(dir / "f.npy");
  CHECK(a.dtype == DType::f32);
  CHECK(a.shape == shape23);
  CHECK(a.numel() == 6);
  CHECK(a.as<float>() == f);
  CHECK(contains(error_message([&] { a.as<double>(); }), "holds f32, not f64"));

  auto check_rt = [&](DType t, const auto& values, std::vector<int64_t> shape) {
    using T = typename std::decay_t<decltype(values)>::value_type;
    auto bytes = serialize_npy(t, shape, values.data());
    NpyArray back = parse_npy(bytes, "mem");
    CHECK(back.dtype == t);
    CHECK(back.shape == shape);
    CHECK(back.as<T>() == values);
  };
  check_rt(DType::f64, std::vector<double>{1.0 / 3.0, -1e300}, {2});
  check_rt(DType::i32, std::vector<int32_t>{-1, 2, 2147483647}, {3, 1});
  check_rt(DType::i64, std::vector<int64_t>{int64_t(1) << 62, -5}, {1, 2});
  check_rt(DType::u16, std::vector<uint16_t>{50256, 0, 65535, 1}, {2, 2});
  check_rt(DType::u8, std::vector<uint8_t>{0, 255}, {2});
  check_rt(DType::f32, std::vector<float>{42.0f}, {});  // 0-d
  CHECK(contains(std::string(reinterpret_cast<const char*>(serialize_npy(DType::f32, std::vector<int64_t>{}, f.data()).data()) + 10, 60),
                 "'shape': ()"));
  CHECK(contains(std::string(reinterpret_cast<const char*>(serialize_npy(DType::u8, std::vector<int64_t>{5}, f.data()).data()) + 10, 60),
                 "'descr': '|u1', 'fortran_order': False, 'shape': (5,)"));

  // Empty arrays: no data pointer needed.
  auto empty = serialize_npy(DType::f32, std::vector<int64_t>{0, 4}, nullptr);
  NpyArray e = parse_npy(empty, "empty");
  CHECK(e.shape == std::vector<int64_t>{0, 4});
  CHECK(e.data.empty());
  CHECK(e.numel() == 0);
  // Empty, with dimensions whose product before the zero overflows 64 bits: still 0 elements.
  const std::vector<int64_t> wide = {27518114, 666666666665, 0};
  NpyArray w = parse_npy(serialize_npy(DType::u16, wide, nullptr), "wide empty");
  CHECK(w.shape == wide);
  CHECK(w.numel() == 0);
  fs::remove_all(dir);
}

TEST_CASE("npy: bf16 is exported as <f4 with exact values") {
  std::vector<bf16> b = {float_to_bf16(1.0f), float_to_bf16(-0.1f), float_to_bf16(3e38f), bf16{0x7FC0}};
  auto bytes = serialize_npy(DType::bf16, std::vector<int64_t>{4}, b.data());
  NpyArray a = parse_npy(bytes, "bf16");
  CHECK(a.dtype == DType::f32);
  auto f = a.as<float>();
  REQUIRE(f.size() == 4);
  for (size_t i = 0; i < 3; ++i) CHECK(f[i] == bf16_to_float(b[i]));
  CHECK(std::isnan(f[3]));

  // Large enough to take several conversion chunks through the file writer.
  std::vector<bf16> big(200000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = float_to_bf16(float(i) * 0.25f);
  fs::path dir = test::temp_dir("npy_bf16");
  write_npy(dir / "big.npy", DType::bf16, std::vector<int64_t>{400, 500}, big.data());
  auto back = read_npy(dir / "big.npy").as<float>();
  REQUIRE(back.size() == big.size());
  bool all_equal = true;
  for (size_t i = 0; i < big.size(); ++i) all_equal = all_equal && back[i] == bf16_to_float(big[i]);
  CHECK(all_equal);
  fs::remove_all(dir);
}

TEST_CASE("npy: NumPy's header variants are read") {
  std::vector<uint8_t> data = {1, 0, 0, 0, 2, 0, 0, 0};
  // Version 2.0, double quotes, extra spaces, no trailing comma, Python 2 long, key order changed.
  auto v2 = npy_bytes(2, "{\"shape\": (2L,), \"fortran_order\": False, \"descr\": \"<i4\"}   \n", data);
  NpyArray a = parse_npy(v2, "v2");
  CHECK(a.dtype == DType::i32);
  CHECK(a.as<int32_t>() == std::vector<int32_t>{1, 2});
  auto u1 = npy_bytes(1, "{'descr': '<u1', 'fortran_order': False, 'shape': (2, 4), }\n", data);
  CHECK(parse_npy(u1, "u1").dtype == DType::u8);
}

TEST_CASE("npy: corrupt or unsupported files throw tally::Error naming the file and the problem") {
  fs::path dir = test::temp_dir("npy_bad");
  const std::vector<uint8_t> eight(8, 0);
  auto err = [&](const std::string& name, const std::vector<uint8_t>& bytes) {
    test::write_raw(dir / name, bytes);
    return error_message([&] { read_npy(dir / name); });
  };
  std::string msg = err("empty.npy", {});
  CHECK(contains(msg, "empty.npy"));
  CHECK(contains(msg, "truncated"));
  msg = err("magic.npy", std::vector<uint8_t>(20, 'x'));
  CHECK(contains(msg, "magic.npy"));
  CHECK(contains(msg, "not a .npy file"));
  auto good = npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n", eight);
  auto cut = good;
  cut[8] = 0xff;  // header length 255+ > what follows
  msg = err("hlen.npy", cut);
  CHECK(contains(msg, "hlen.npy"));
  CHECK(contains(msg, "header length"));
  msg = err("short.npy", std::vector<uint8_t>(good.begin(), good.end() - 1));
  CHECK(contains(msg, "short.npy"));
  CHECK(contains(msg, "size mismatch"));
  CHECK(contains(msg, "needs 8 data bytes, the file has 7"));
  CHECK(contains(err("ver.npy", npy_bytes(9, "{}", {})), "unsupported .npy format version 9.0"));
  CHECK(contains(err("fortran.npy", npy_bytes(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", eight)),
                 "Fortran-order"));
  CHECK(contains(err("be.npy", npy_bytes(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", eight)),
                 "big-endian"));
  CHECK(contains(err("c8.npy", npy_bytes(1, "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", eight)),
                 "unsupported dtype '<c8'"));
  CHECK(contains(err("neg.npy", npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", eight)),
                 "non-negative dimension"));
  CHECK(contains(err("big.npy", npy_bytes(1, "{'descr': '<f8', 'fortran_order': False, "
                                             "'shape': (4294967296, 4294967296), }", eight)),
                 "64 bits"));
  CHECK(contains(err("huge.npy", npy_bytes(1, "{'descr': '<f8', 'fortran_order': False, "
                                              "'shape': (99999999999999999999,), }", eight)),
                 "too large"));
  CHECK(contains(err("key.npy", npy_bytes(1, "{'descr': '<f4', 'order': False, 'shape': (2,), }", eight)),
                 "unexpected key 'order'"));
  CHECK(contains(err("lack.npy", npy_bytes(1, "{'descr': '<f4', 'shape': (2,), }", eight)), "lacks"));
  CHECK(contains(err("unterminated.npy", npy_bytes(1, "{'descr': '<f4", eight)), "unterminated string"));
  CHECK(contains(err("nobrace.npy", npy_bytes(1, "'descr'", eight)), "expected '{'"));
  msg = error_message([&] { read_npy(dir / "missing.npy"); });
  CHECK(contains(msg, "missing.npy"));
  CHECK(contains(msg, "does not exist"));
  fs::remove_all(dir);
}

}  // TEST_SUITE("io")
