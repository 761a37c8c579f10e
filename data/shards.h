// Token shards on disk: llm.c's format (a 1024-byte header of 256 int32 — magic 20240520, version 1, token
// count — then the tokens as uint16) and nanoGPT's headerless uint16 files. Writing is atomic (temp file in the
// same directory, fsync, rename); reading memory-maps each file and checks its header against its size.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace tally::data {

enum class ShardFormat { llmc, raw_uint16 };

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 1024;

// Writes tokens as an llm.c shard at path, atomically. Every token must fit uint16 (the int32 overload checks and
// names the first offender); more than INT32_MAX tokens is an error (the header holds an int32 count).
void write_shard(const std::filesystem::path& path, std::span<const uint16_t> tokens);
void write_shard(const std::filesystem::path& path, std::span<const int32_t> tokens);
// Shards that belong together (a train/val pair): every one written in full and synced to its temp file before the
// first is renamed over its path, so a process stopped or failing while writing leaves the previous set whole (only
// the renames follow one another).
struct ShardTokens {
  std::filesystem::path path;
  std::span<const int32_t> tokens;
};
void write_shards(std::span<const ShardTokens> shards);

// One read-only, memory-mapped shard. Move-only; unmaps on destruction.
class Shard {
 public:
  // Maps path and checks it: for llmc, the magic, version and that the size is 1024 + 2 * count; for raw_uint16,
  // an even, non-zero size. Each mismatch throws tally::Error naming the file, what was expected and what was found.
  static Shard open(const std::filesystem::path& path, ShardFormat format);
  // The same checks on a file image already in memory (fuzzing, tests): nothing is copied, so bytes must outlive
  // the Shard and be 2-byte aligned; name appears in errors.
  static Shard from_memory(std::span<const uint8_t> bytes, ShardFormat format, const std::filesystem::path& name);

  Shard(Shard&& other) noexcept;
  Shard& operator=(Shard&& other) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard();

  const std::filesystem::path& path() const { return path_; }
  size_t size() const { return count_; }  // tokens
  const uint16_t* data() const { return tokens_; }
  std::span<const uint16_t> tokens() const { return {tokens_, count_}; }
  uint16_t operator[](size_t i) const { return tokens_[i]; }

 private:
  Shard() = default;
  std::filesystem::path path_;
  void* map_ = nullptr;  // null for from_memory
  size_t map_bytes_ = 0;
  const uint16_t* tokens_ = nullptr;
  size_t count_ = 0;
};

struct ShardSetOptions {
  ShardFormat format = ShardFormat::llmc;
  int32_t vocab_limit = 0;  // > 0: every token must be < vocab_limit (validate_vocab at load time)
};

// The shards a loader reads, in sorted path order: one file, or every file a glob pattern matches.
class ShardSet {
 public:
  // pattern: a file path or a glob ("dir/train_*.bin"); a path that exists is taken as it is, glob characters
  // included. No match is an error naming the pattern.
  static ShardSet open(const std::string& pattern, ShardSetOptions options = {});
  static ShardSet from_paths(const std::vector<std::filesystem::path>& paths, ShardSetOptions options = {});
  // Shards already open (e.g. Shard::from_memory); options.format is not used.
  static ShardSet from_shards(std::vector<Shard> shards, ShardSetOptions options = {});

  size_t size() const { return shards_.size(); }
  const Shard& operator[](size_t i) const { return shards_[i]; }
  const std::vector<Shard>& shards() const { return shards_; }
  size_t total_tokens() const;

  // Throws tally::Error naming the first file and token position holding an id >= limit; else records the limit.
  void validate_vocab(int32_t limit);
  // The smallest limit validate_vocab has checked every token against (0: none): ids from these shards are below it.
  int32_t checked_vocab_limit() const { return checked_vocab_limit_; }

 private:
  std::vector<Shard> shards_;
  int32_t checked_vocab_limit_ = 0;
};

}  // namespace tally::data
