// Tests of core/io/sha256.h: the FIPS 180-4 / NIST example messages, every padding boundary (lengths around 55,
// 56 and 64 bytes, digests from Python's hashlib), any split into update() calls, and whole files.
#include <doctest/doctest.h>

#include <string>

#include "core/io/sha256.h"
#include "tests/core/io_test_helpers.h"
#include "tests/test_util.h"

using namespace tally;
using namespace tally::io;
namespace fs = std::filesystem;

namespace {

// Bytes (7 i + 3) mod 256: a message with every byte value, the same as the Python that made the digests below.
std::string pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = char((i * 7 + 3) % 256);
  return s;
}

}  // namespace

TEST_CASE("sha256: NIST example messages") {
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopq"
                   "rstnopqrstu") == "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  CHECK(sha256_hex(std::string(1000000, 'a')) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("sha256: every padding boundary, and any split into update() calls") {
  const std::pair<size_t, const char*> expected[] = {
      {55, "e7313d333c272e639f790978283f9eb392e843d0f29b7016828bb1daa4aac70b"},
      {56, "4324d65f3c103567f5589c710bc08f8523f929a9272e3af36fc968e52abc6c27"},
      {57, "35df609437dcfea3279283ab79fd554e2bf78f8f7ae2de532d8ee300b09e8f73"},
      {63, "81c80242132f230c3bd41b3e63bbcff16107339549214a99614ff26664625055"},
      {64, "39e3d7b6b5d075d37d053ad89b24b41bef4f3c29760c84447cab3f3be1882241"},
      {65, "aacca6ff74fdbb296d165a45cecfa04e5127bc008770fbbdd48006f2d2fae95e"},
      {119, "9ce7368e4daf32341631b492e80359dc9f594b48453cd0dd5bf0b19279cc177e"},
      {120, "7836b787757e95e58b3ca5aec90b1b004e8deba1e50e9675af9cabf1a13a04b5"},
      {128, "d2742f1f4ac6bb7ca2b239ee18402ba8b3f9f8e652d2a72973c2b9ba11c08cf6"},
      {1000, "1e9bc38cbf860b9ec31918b065f9b52476c549a782e0e7990bed8ce3868d2371"},
  };
  for (const auto& entry : expected) {  // not a structured binding: doctest's CHECK captures it in a lambda (clang)
    const auto n = entry.first;
    const std::string digest = entry.second;
    const std::string m = pattern(n);
    CHECK_MESSAGE(sha256_hex(m) == digest, n, " bytes");
    for (size_t cut = 0; cut <= n; cut += (n < 130 ? 1 : 37)) {  // two pieces, and one byte at a time after the cut
      Sha256 s;
      s.update(std::string_view(m).substr(0, cut));
      for (size_t i = cut; i < n; ++i) s.update(&m[i], 1);
      CHECK_MESSAGE(s.hex() == digest, n, " bytes cut at ", cut);
    }
  }
}

TEST_CASE("sha256: whole files; a missing file is an error naming it") {
  const fs::path dir = test::temp_dir("sha256");
  const std::string big = pattern(200000);  // several read chunks
  test::write_raw(dir / "big", big);
  CHECK(sha256_file_hex(dir / "big") == sha256_hex(big));
  test::write_raw(dir / "empty", std::string());
  CHECK(sha256_file_hex(dir / "empty") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(test::contains(test::error_message([&] { sha256_file_hex(dir / "missing"); }), "missing' cannot be opened"));
  fs::remove_all(dir);
}
