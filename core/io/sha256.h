// SHA-256 (FIPS 180-4), incremental, for checking downloaded files against pinned digests.
// Portable C++ with no dependency: the library builds from carried packages where nothing can be installed
// (scripts/gpu_deps.sh), and a digest of a few MB a run needs no hardware acceleration.
// sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace tally::io {

class Sha256 {
 public:
  Sha256();
  // Feeds bytes; any split of a message into update() calls gives the same digest.
  void update(const void* data, size_t n);
  void update(std::string_view bytes) { update(bytes.data(), bytes.size()); }
  // The digest of everything fed so far as 64 lowercase hex digits. The object is spent afterwards (further
  // update() or hex() calls are an internal error).
  std::string hex();

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_ = 0;  // bytes fed
  bool finished_ = false;
};

std::string sha256_hex(std::string_view bytes);
// The digest of a whole file, read in chunks; errors name the file.
std::string sha256_file_hex(const std::filesystem::path& path);

}  // namespace tally::io
