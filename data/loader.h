// DataLoader: (B, T) batches of int32 inputs and next-token targets from a ShardSet, as llm.c's loader does it —
// window i of a shard is the B*T+1 tokens at i*W*B*T + rank*B*T (W processes), shards in turn, wrapping — either
// in order or shuffled (a seeded permutation of the shards per epoch and of the windows per shard). Its position
// is a small value that can be saved and restored, so a resumed run sees exactly the batches it would have seen.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "data/shards.h"

namespace tally::data {

// sequential: llm.c's order (and the eval walk: reset(), then batches_per_epoch() batches).
// shuffled: shard order and window order permuted per epoch from the seed.
enum class LoaderOrder { sequential, shuffled };

struct LoaderConfig {
  int64_t batch = 0;    // B
  int64_t seq_len = 0;  // T
  int32_t rank = 0;     // this process, 0 <= rank < world
  int32_t world = 1;    // processes sharing the data; each reads its own B*T slice of every window
  LoaderOrder order = LoaderOrder::sequential;
  uint64_t seed = 0;    // for LoaderOrder::shuffled; every rank must use the same seed (they share the windows)
};

// Where a loader stands: the batch next() yields next. The shuffle RNG is counter-based (every permutation is a
// function of seed, epoch and shard), so these few integers are its whole state. The configuration fields are
// kept to refuse restoring into a loader that would cut the data differently.
struct LoaderPosition {
  uint64_t epoch = 0;   // completed passes over all shards
  uint64_t shard = 0;   // index into this epoch's shard order
  uint64_t window = 0;  // index into the current shard's window order (== its window count: shard used up)
  uint64_t seed = 0;
  LoaderOrder order = LoaderOrder::sequential;
  int64_t batch = 0, seq_len = 0;
  int32_t world = 1;
  uint64_t num_shards = 0;

  static constexpr size_t kBytes = 80;
  // Fixed-size little-endian encoding with a magic and version; from_bytes throws tally::Error on anything else.
  std::vector<uint8_t> to_bytes() const;
  static LoaderPosition from_bytes(std::span<const uint8_t> bytes);
  bool operator==(const LoaderPosition&) const = default;
};

struct Batch {
  int64_t batch = 0, seq_len = 0;
  std::vector<int32_t> inputs, targets;  // (B, T) row-major; targets[i] is the token after inputs[i]
};

class DataLoader {
 public:
  // Checks the configuration and that every shard holds at least world*B*T + 1 tokens (error naming the file).
  DataLoader(ShardSet shards, LoaderConfig config);

  // Fills B*T inputs and targets (spans of exactly B*T elements) with the next batch.
  void next(std::span<int32_t> inputs, std::span<int32_t> targets);
  void next(Batch& out);  // sizes out's vectors as needed
  Batch next();

  // Back to the first batch of epoch 0 (the eval walk starts here).
  void reset();
  LoaderPosition position() const;
  // Continues from a saved position; throws tally::Error if it was taken with a different B, T, order, seed or
  // number of shards, or lies outside this data. A position saved at another world moves to the same place in the
  // data (see restore's comment).
  void restore(const LoaderPosition& pos);

  int64_t windows_in_shard(size_t shard) const;  // batches this process reads from a shard (by file index)
  int64_t batches_per_epoch() const;             // summed over all shards
  const ShardSet& shards() const { return shards_; }
  const LoaderConfig& config() const { return config_; }

 private:
  void enter_shard();  // computes the current shard's window order
  void advance();      // to the next shard, or the next epoch after the last

  ShardSet shards_;
  LoaderConfig config_;
  int64_t stride_ = 0;  // world * B * T: tokens between window starts
  uint64_t epoch_ = 0, shard_ = 0, window_ = 0;
  std::vector<uint32_t> shard_order_;   // this epoch's file index for each shard slot
  std::vector<uint32_t> window_order_;  // shuffled: window index for each slot of the current shard
};

}  // namespace tally::data
