// llm.c / nanoGPT token shards (see shards.h): the atomic writer, the memory-mapped reader with its header and
// size checks, shard sets from a path or glob, and the vocabulary check.
#include "data/shards.h"

#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <memory>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <utility>

#include "core/error.h"
#include "core/io/file.h"

namespace tally::data {

namespace fs = std::filesystem;

// The header and tokens are little-endian on disk and read in place.
static_assert(std::endian::native == std::endian::little, "tally's shard reader assumes a little-endian host");

namespace {

std::string sys_error() { return std::strerror(errno); }

// Closes a file descriptor on every path out.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Writes the header, then the tokens block by block (convert fills a uint16 block from the caller's tokens), into
// an io::AtomicFileWriter: a temp file beside its path, fsynced and renamed over it by commit() (nothing left of a
// failed or interrupted write).
template <class Convert>
void fill_shard(io::AtomicFileWriter& out, size_t count, Convert convert) {
  const fs::path& path = out.path();
  TALLY_CHECK(count <= size_t(std::numeric_limits<int32_t>::max()), "[shards] write_shard: ", path.string(), ": ",
              count, " tokens do not fit the header's int32 count (at most ", std::numeric_limits<int32_t>::max(), ")");
  std::array<int32_t, kShardHeaderBytes / 4> header{};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = int32_t(count);
  out.write(header.data(), sizeof header);
  std::vector<uint16_t> block(std::min<size_t>(count, size_t(1) << 20));
  for (size_t at = 0; at < count; at += block.size()) {
    const size_t n = std::min(block.size(), count - at);
    convert(at, std::span<uint16_t>(block.data(), n));
    out.write(block.data(), n * sizeof(uint16_t));
  }
}

void fill_shard(io::AtomicFileWriter& out, std::span<const int32_t> tokens) {
  fill_shard(out, tokens.size(), [&](size_t at, std::span<uint16_t> block) {
    for (size_t i = 0; i < block.size(); ++i) {
      const int32_t t = tokens[at + i];
      TALLY_CHECK(t >= 0 && t <= 65535, "[shards] write_shard: ", out.path().string(), ": token ", t, " at position ",
                  at + i, " does not fit uint16 (llm.c shards hold ids 0..65535)");
      block[i] = static_cast<uint16_t>(t);
    }
  });
}

}  // namespace

void write_shard(const fs::path& path, std::span<const uint16_t> tokens) {
  io::AtomicFileWriter out(path);
  fill_shard(out, tokens.size(), [&](size_t at, std::span<uint16_t> block) {
    std::copy_n(tokens.begin() + std::ptrdiff_t(at), block.size(), block.begin());
  });
  out.commit();
}

void write_shard(const fs::path& path, std::span<const int32_t> tokens) {
  io::AtomicFileWriter out(path);
  fill_shard(out, tokens);
  out.commit();
}

void write_shards(std::span<const ShardTokens> shards) {
  std::vector<std::unique_ptr<io::AtomicFileWriter>> out;
  for (const ShardTokens& s : shards) {
    out.push_back(std::make_unique<io::AtomicFileWriter>(s.path));
    fill_shard(*out.back(), s.tokens);
  }
  for (auto& w : out) w->sync();  // every file on disk before the first rename
  for (auto& w : out) w->commit();
}

// ---------------------------------------------------------------------------------------------------------------

namespace {

// Where the tokens of a shard file of `bytes` bytes start and how many there are. head holds the file's first
// bytes (at least 12 of them when the file has that many): the header fields checked against the size.
struct ShardLayout {
  size_t header_bytes = 0, count = 0;
};

ShardLayout shard_layout(std::span<const uint8_t> head, size_t bytes, ShardFormat format, const std::string& name) {
  ShardLayout l;
  if (format == ShardFormat::llmc) {
    TALLY_CHECK(bytes >= kShardHeaderBytes, "[shards] ", name, ": file is ", bytes, " bytes, shorter than the ",
                kShardHeaderBytes, "-byte llm.c header (truncated, or not an llm.c shard)");
    std::array<int32_t, 3> h{};
    TALLY_ASSERT(head.size() >= sizeof h);
    std::memcpy(h.data(), head.data(), sizeof h);
    TALLY_CHECK(h[0] == kShardMagic, "[shards] ", name, ": bad magic: expected ", kShardMagic, ", found ", h[0],
                h[0] == 20240326 ? " (a model checkpoint)" : " (not an llm.c token shard)");
    TALLY_CHECK(h[1] == kShardVersion, "[shards] ", name, ": unsupported version: expected ", kShardVersion,
                ", found ", h[1]);
    TALLY_CHECK(h[2] >= 0, "[shards] ", name, ": header token count is negative (", h[2], ")");
    l.header_bytes = kShardHeaderBytes;
    l.count = size_t(h[2]);
    const size_t expected = kShardHeaderBytes + 2 * l.count;
    TALLY_CHECK(bytes == expected, "[shards] ", name, ": size mismatch: the header says ", l.count,
                " tokens, so the file should be 1024 + 2*", l.count, " = ", expected, " bytes, but it is ", bytes,
                " bytes (", bytes < expected ? "truncated, or the header count is too large" : "trailing bytes", ")");
  } else {
    TALLY_CHECK(bytes > 0, "[shards] ", name, ": empty file (expected raw uint16 tokens)");
    TALLY_CHECK(bytes % 2 == 0, "[shards] ", name, ": ", bytes,
                " bytes is an odd size; raw uint16 token files have an even size");
    l.count = bytes / 2;
  }
  return l;
}

}  // namespace

Shard Shard::open(const fs::path& path, ShardFormat format) {
  const std::string name = path.string();
  // Without blocking: a FIFO with no writer would hold open() forever before the check below could refuse it.
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)};
  TALLY_CHECK(f.fd >= 0, "[shards] cannot open ", name, ": ", sys_error());
  struct stat st {};
  TALLY_CHECK(::fstat(f.fd, &st) == 0, "[shards] cannot stat ", name, ": ", sys_error());
  TALLY_CHECK(S_ISREG(st.st_mode), "[shards] ", name, " is not a regular file");
  const size_t bytes = size_t(st.st_size);

  std::array<uint8_t, 12> head{};
  if (format == ShardFormat::llmc && bytes >= kShardHeaderBytes)
    TALLY_CHECK(::pread(f.fd, head.data(), head.size(), 0) == ssize_t(head.size()), "[shards] cannot read the header of ",
                name, ": ", sys_error());
  const ShardLayout l = shard_layout(head, bytes, format, name);

  Shard s;
  s.path_ = path;
  s.map_bytes_ = bytes;
  s.map_ = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, f.fd, 0);
  if (s.map_ == MAP_FAILED) {
    s.map_ = nullptr;
    fail("[shards] cannot memory-map ", name, " (", bytes, " bytes): ", sys_error());
  }
  s.tokens_ = reinterpret_cast<const uint16_t*>(static_cast<const char*>(s.map_) + l.header_bytes);
  s.count_ = l.count;
  return s;
}

Shard Shard::from_memory(std::span<const uint8_t> bytes, ShardFormat format, const fs::path& name) {
  TALLY_CHECK(reinterpret_cast<uintptr_t>(bytes.data()) % alignof(uint16_t) == 0, "[shards] ", name.string(),
              ": an in-memory shard must be 2-byte aligned");
  const ShardLayout l = shard_layout(bytes.first(std::min<size_t>(bytes.size(), 12)), bytes.size(), format, name.string());
  Shard s;
  s.path_ = name;
  s.tokens_ = reinterpret_cast<const uint16_t*>(bytes.data() + l.header_bytes);
  s.count_ = l.count;
  return s;
}

Shard::Shard(Shard&& o) noexcept { *this = std::move(o); }

Shard& Shard::operator=(Shard&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_bytes_);
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_bytes_ = std::exchange(o.map_bytes_, 0);
    tokens_ = std::exchange(o.tokens_, nullptr);
    count_ = std::exchange(o.count_, 0);
  }
  return *this;
}

Shard::~Shard() {
  if (map_) ::munmap(map_, map_bytes_);
}

// ---------------------------------------------------------------------------------------------------------------

ShardSet ShardSet::from_paths(const std::vector<fs::path>& paths, ShardSetOptions options) {
  TALLY_CHECK(!paths.empty(), "[shards] no shard files given");
  ShardSet set;
  set.shards_.reserve(paths.size());
  for (const auto& p : paths) set.shards_.push_back(Shard::open(p, options.format));
  if (options.vocab_limit > 0) set.validate_vocab(options.vocab_limit);
  return set;
}

ShardSet ShardSet::from_shards(std::vector<Shard> shards, ShardSetOptions options) {
  TALLY_CHECK(!shards.empty(), "[shards] no shards given");
  ShardSet set;
  set.shards_ = std::move(shards);
  if (options.vocab_limit > 0) set.validate_vocab(options.vocab_limit);
  return set;
}

ShardSet ShardSet::open(const std::string& pattern, ShardSetOptions options) {
  // A path that exists is that file, whatever it holds ("runs/r[1]/data/train.bin": a run's own shards under an
  // --out with glob characters), never a pattern that could match other runs' files too.
  std::error_code ec;
  if (pattern.find_first_of("*?[") == std::string::npos || fs::exists(fs::path(pattern), ec))
    return from_paths({fs::path(pattern)}, options);
  glob_t g{};
  const int rc = ::glob(pattern.c_str(), GLOB_ERR, nullptr, &g);
  std::vector<fs::path> paths;
  for (size_t i = 0; rc == 0 && i < g.gl_pathc; ++i) paths.emplace_back(g.gl_pathv[i]);
  ::globfree(&g);
  TALLY_CHECK(rc == 0 || rc == GLOB_NOMATCH, "[shards] glob '", pattern, "' failed (code ", rc, ")");
  TALLY_CHECK(!paths.empty(), "[shards] no files match '", pattern, "'");
  std::sort(paths.begin(), paths.end());  // byte order, not the locale's collation
  return from_paths(paths, options);
}

size_t ShardSet::total_tokens() const {
  size_t n = 0;
  for (const auto& s : shards_) n += s.size();
  return n;
}

void ShardSet::validate_vocab(int32_t limit) {
  TALLY_CHECK(limit > 0, "[shards] validate_vocab: the limit must be positive, got ", limit);
  const auto checked = [&] {
    if (checked_vocab_limit_ == 0 || limit < checked_vocab_limit_) checked_vocab_limit_ = limit;
  };
  if (limit > 65535) return checked();  // every uint16 fits
  const auto lim = static_cast<uint16_t>(limit);
  for (const Shard& s : shards_) {
    const uint16_t* t = s.data();
    const auto n = int64_t(s.size());
    int64_t first = n;
#pragma omp parallel for reduction(min : first) schedule(static)
    for (int64_t i = 0; i < n; ++i)
      if (t[i] >= lim && i < first) first = i;
    TALLY_CHECK(first == n, "[shards] ", s.path().string(), ": token ", t[first], " at position ", first,
                " is outside the model's vocabulary (expected ids < ", limit, ")");
  }
  checked();
}

}  // namespace tally::data
