// Interop with Python: files written here must load in Python's safetensors and numpy with exact values (and
// match Python's safetensors output byte for byte), and .npy files NumPy writes must read back here.
// Runs tests/reference/check_cpp_io.py; skips visibly when python3, numpy or safetensors is missing.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <sys/wait.h>

#include "core/io/npy.h"
#include "core/io/safetensors.h"
#include "tests/core/io_test_helpers.h"
#include "tests/test_util.h"

using namespace tally;
using namespace tally::io;
namespace fs = std::filesystem;

TEST_SUITE("io") {

TEST_CASE("io interop: Python reads tally's safetensors and .npy files exactly, and tally reads NumPy's") {
  fs::path dir = test::temp_dir("io_python");
  // The same values as expected() in check_cpp_io.py.
  std::vector<float> w = {-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f};
  std::vector<double> d = {1.0 / 3.0, -1e300};
  std::vector<uint16_t> h = {0x3C00, 0x0001, 0xFC00};  // f16: 1, 2^-24, -inf
  std::vector<int32_t> i32 = {-7, 2147483647};
  std::vector<int64_t> i64 = {std::numeric_limits<int64_t>::min(), 42};
  std::vector<uint16_t> u16 = {0, 65535, 50256};
  std::vector<uint8_t> u8 = {9};
  float scalar = 2.5f;
  std::vector<bf16> b;
  for (float x : {1.0f, -0.1f, 3e38f, 0.15625f}) b.push_back(float_to_bf16(x));

  std::vector<SafetensorsTensor> common = {
      {.name = "w", .dtype = SafeDType::f32, .shape = {2, 3}, .data = w.data()},
      {.name = "d", .dtype = SafeDType::f64, .shape = {2}, .data = d.data()},
      {.name = "h", .dtype = SafeDType::f16, .shape = {3, 1}, .data = h.data()},
      {.name = "i32", .dtype = SafeDType::i32, .shape = {2}, .data = i32.data()},
      {.name = "i64", .dtype = SafeDType::i64, .shape = {1, 2}, .data = i64.data()},
      {.name = "u16", .dtype = SafeDType::u16, .shape = {3}, .data = u16.data()},
      {.name = "u8", .dtype = SafeDType::u8, .shape = {1, 1, 1}, .data = u8.data()},
      {.name = "scalar", .dtype = SafeDType::f32, .shape = {}, .data = &scalar},
      {.name = "empty", .dtype = SafeDType::f32, .shape = {0, 4}, .data = nullptr},
  };
  write_safetensors(dir / "cpp_numpy.safetensors", common, {.metadata = {{"writer", "tally"}}});
  auto with_bf16 = common;
  with_bf16.push_back({.name = "b", .dtype = SafeDType::bf16, .shape = {4}, .data = b.data()});
  write_safetensors(dir / "cpp.safetensors", with_bf16, {.metadata = {{"format", "pt"}, {"writer", "tally"}}});

  for (const auto& t : common) {
    if (t.dtype == SafeDType::f16) continue;  // no f16 in tally's DType
    write_npy(dir / (t.name + ".npy"), *to_tally_dtype(t.dtype), t.shape, t.data);
  }
  write_npy(dir / "b.npy", DType::bf16, std::vector<int64_t>{4}, b.data());

  std::string cmd = "python3 '" + (test::reference_dir() / "check_cpp_io.py").string() + "' '" + dir.string() + "'";
  int status = std::system(cmd.c_str());
  int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (rc == 77 || rc == 127) {
    MESSAGE("SKIPPED: python3 with numpy and safetensors is not available (exit ", rc, ")");
    fs::remove_all(dir);
    return;
  }
  REQUIRE_MESSAGE(rc == 0, "check_cpp_io.py failed (exit ", rc, "); its stderr above says which file and value");

  // The files NumPy just wrote.
  NpyArray pf = read_npy(dir / "py_f32.npy");
  CHECK(pf.dtype == DType::f32);
  CHECK(pf.shape == std::vector<int64_t>{2, 3});
  CHECK(pf.as<float>() == w);
  NpyArray pi = read_npy(dir / "py_i64.npy");
  CHECK(pi.shape == std::vector<int64_t>{1, 2});
  CHECK(pi.as<int64_t>() == i64);
  NpyArray ps = read_npy(dir / "py_scalar.npy");
  CHECK(ps.shape.empty());
  CHECK(ps.as<float>() == std::vector<float>{2.5f});
  NpyArray pu = read_npy(dir / "py_u8.npy");
  CHECK(pu.dtype == DType::u8);
  CHECK(pu.as<uint8_t>() == u8);
  fs::remove_all(dir);
}

}  // TEST_SUITE("io")
