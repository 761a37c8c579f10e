// DataLoader: (B, T) batches of int32 inputs and next-token targets from a ShardSet. A shard's slices are its B*T+1
// tokens at j*B*T (as llm.c cuts them); the loader reads one stream of slices, which W processes deal out (rank r
// takes slices r, r+W, ...), in one of two orders:
// - sequential, as llm.c's loader reads one process's data: the slices in turn, shards in turn, wrapping;
// - shuffled: the shards in a seeded permutation per epoch and each shard's slices in a seeded permutation.
// The stream does not depend on W, so W processes read what one process reads over W micro-batches, in the same
// order, at every position of every epoch. (llm.c's processes instead read slices r, r+W, ... of each shard and skip
// the shard's last slices when fewer than W are left: the same batches as here except at a shard's end.)
// Its position is a small value that can be saved and restored, so a resumed run sees exactly the batches it would
// have seen (and, shuffled, at another W too).
#pragma once
#include <array>
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
  int32_t world = 1;    // processes sharing the data, dealing out its slices
  LoaderOrder order = LoaderOrder::sequential;
  uint64_t seed = 0;    // for LoaderOrder::shuffled; every rank must use the same seed (they share the windows)
};

// Where a loader stands: the batch next() yields next. The shuffle RNG is counter-based (every permutation is a
// function of seed, epoch and shard), so these few integers are its whole state. The configuration fields are
// kept to refuse restoring into a loader that would cut the data differently.
struct LoaderPosition {
  uint64_t epoch = 0;  // completed passes over all shards
  uint64_t shard = 0;  // index into this epoch's shard order
  // Index into the shard's slice order (sequential: the slice itself) of the slice rank 0 reads next (the same at
  // every world). Equal to the count: the shard is used up.
  uint64_t window = 0;
  uint64_t seed = 0;
  LoaderOrder order = LoaderOrder::sequential;
  int64_t batch = 0, seq_len = 0;
  int32_t world = 1;
  uint64_t num_shards = 0;
  // The data it was taken over: the shards' tokens, in all and as a hash of each shard's count in order, so that a
  // shard replaced by one of another size is refused (the place would name other slices). 0 in a position saved
  // before they were recorded (versions 1 to 3): not checked.
  uint64_t data_tokens = 0;
  uint64_t data_sizes_hash = 0;
  // A hash of each shard's tokens at kSampleWindows evenly spaced places (the first and last tokens included), so
  // that a shard replaced by another of the same size is refused too unless the two agree at every sampled token
  // (reading every token would cost a pass over the data at each start). 0 before version 5: not checked.
  uint64_t data_sample_hash = 0;

  static constexpr size_t kBytes = 104;
  static constexpr size_t kBytesBeforeVersion5 = 96;
  static constexpr size_t kBytesBeforeVersion4 = 80;
  static constexpr int64_t kSampleWindows = 64, kSampleTokens = 32;  // per shard: 64 places of 32 tokens
  // Fixed-size little-endian encoding with a magic and version; from_bytes throws tally::Error on anything else.
  // Versions 1 and 2 counted a sequential position (version 1 a shuffled one too) in windows of W slices: read, it
  // becomes the same place in slices (the slices after it come in this version's order). Versions 1 to 3 are
  // kBytesBeforeVersion4 bytes (no data fields), version 4 kBytesBeforeVersion5 (no data_sample_hash).
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
  // Checks the configuration and that every shard holds at least B*T + 1 tokens (error naming the file).
  DataLoader(ShardSet shards, LoaderConfig config);

  // Fills B*T inputs and targets (spans of exactly B*T elements) with the next batch.
  void next(std::span<int32_t> inputs, std::span<int32_t> targets);
  void next(Batch& out);  // sizes out's vectors as needed
  Batch next();

  // Back to the first batch of epoch 0 (the eval walk starts here).
  void reset();
  LoaderPosition position() const;
  // Continues from a saved position; throws tally::Error if it was taken with a different B, T, order, seed,
  // number of shards, shard sizes or sampled tokens, or lies outside this data. A position saved at another world
  // continues at the same place.
  void restore(const LoaderPosition& pos);

  // A shard's (by file index) slices, which the processes share out.
  int64_t slices_in_shard(size_t shard) const;
  // This process's, over all shards: the epoch's slices / W, rounded down.
  int64_t batches_per_epoch() const;
  const ShardSet& shards() const { return shards_; }
  const LoaderConfig& config() const { return config_; }

 private:
  // A place in the walk: epoch, shard slot and slice in it, as in LoaderPosition.
  struct Place {
    uint64_t epoch = 0, slot = 0, window = 0;
  };
  uint32_t file_at(uint64_t epoch, uint64_t slot);   // the shard in that slot of that epoch's order
  uint64_t count_at(uint64_t epoch, uint64_t slot);  // its slices
  void settle(Place& p);                             // past a used-up shard, to the next one's start
  void forward(Place& p, uint64_t n);                // n slices on (stays at a shard's end)
  // Shuffled: the orders, each a function of (seed, epoch[, shard]), kept for the epoch (and shard) in use and the
  // one after, which a rank's slice may lie in.
  struct CachedOrder {
    uint64_t epoch = 0;
    uint32_t file = 0;
    uint64_t last_use = 0;  // 0: empty
    std::vector<uint32_t> order;
  };
  const std::vector<uint32_t>& cached(std::array<CachedOrder, 2>& cache, uint64_t epoch, uint32_t file, size_t n,
                                      uint64_t stream_key);

  ShardSet shards_;
  LoaderConfig config_;
  int64_t tokens_ = 0;  // B * T: one process's batch, and the tokens between slice starts
  Place next_;          // the slice rank 0 reads next
  std::array<CachedOrder, 2> shard_orders_, slice_orders_;
  uint64_t uses_ = 0;
  uint64_t data_tokens_ = 0, data_sizes_hash_ = 0, data_sample_hash_ = 0;  // LoaderPosition's data fields
};

}  // namespace tally::data
