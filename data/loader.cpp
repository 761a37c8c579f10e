// DataLoader (see loader.h): llm.c's slices of B*T+1 tokens, the counter-based shuffle, and position save/restore.
// Permutations come from SplitMix64 streams keyed by (seed, epoch, shard) with a portable unbiased bounded draw,
// so the same seed gives the same batches with any compiler or standard library.
#include "data/loader.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "core/error.h"
#include "core/fnv.h"

namespace tally::data {

namespace {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : s_(state) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n): rejection below 2^64 mod n keeps it unbiased.
  uint64_t below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;
    for (;;)
      if (const uint64_t x = next(); x >= threshold) return x % n;
  }

 private:
  uint64_t s_;
};

// An independent stream per (seed, epoch, which): each key is mixed through its own SplitMix64 step.
SplitMix64 stream(uint64_t seed, uint64_t epoch, uint64_t which) {
  SplitMix64 a(seed), b(epoch ^ 0x5851F42D4C957F2Dull), c(which ^ 0x14057B7EF767814Full);
  return SplitMix64(a.next() ^ (b.next() * 3) ^ (c.next() * 5));
}

constexpr uint64_t kShardOrderStream = ~0ull;

std::vector<uint32_t> permutation(size_t n, SplitMix64 rng) {
  std::vector<uint32_t> p(n);
  std::iota(p.begin(), p.end(), 0u);
  for (size_t i = n; i > 1; --i) std::swap(p[i - 1], p[rng.below(i)]);  // Fisher-Yates
  return p;
}

constexpr uint32_t kPositionMagic = 0x50444C54;  // "TLDP"
// 1 and 2: sequential positions in windows of W slices (each rank read its slice of the window, skipping a shard's
// last slices that fewer than W were left of); 1: shuffled positions in such windows too.
// 4: the data's token counts (data_tokens, data_sizes_hash) appended. 5: its sampled tokens' hash (data_sample_hash).
constexpr uint32_t kPositionVersion = 5;

// A recorded hash is never 0 (0 stands for "not recorded").
uint64_t recorded(const Fnv1a64& f) { return f.h + (f.h == 0); }

const char* order_name(LoaderOrder o) { return o == LoaderOrder::shuffled ? "shuffled" : "sequential"; }

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// LoaderPosition

std::vector<uint8_t> LoaderPosition::to_bytes() const {
  std::vector<uint8_t> out(kBytes);
  size_t at = 0;
  auto put = [&](auto v) {
    static_assert(std::is_integral_v<decltype(v)>);
    for (size_t i = 0; i < sizeof v; ++i) out[at++] = static_cast<uint8_t>(uint64_t(v) >> (8 * i));
  };
  put(kPositionMagic);
  put(kPositionVersion);
  put(epoch);
  put(shard);
  put(window);
  put(seed);
  put(uint64_t(order == LoaderOrder::shuffled ? 1 : 0));
  put(batch);
  put(seq_len);
  put(int64_t(world));
  put(num_shards);
  put(data_tokens);
  put(data_sizes_hash);
  put(data_sample_hash);
  TALLY_ASSERT(at == kBytes);
  return out;
}

LoaderPosition LoaderPosition::from_bytes(std::span<const uint8_t> bytes) {
  TALLY_CHECK(bytes.size() >= 8, "[loader] position: expected ", kBytes, " bytes, found ", bytes.size());
  size_t at = 0;
  auto get = [&](auto& v) {
    uint64_t x = 0;
    for (size_t i = 0; i < sizeof v; ++i) x |= uint64_t(bytes[at++]) << (8 * i);
    v = static_cast<std::remove_reference_t<decltype(v)>>(x);
  };
  uint32_t magic = 0, version = 0;
  get(magic);
  get(version);
  TALLY_CHECK(magic == kPositionMagic, "[loader] position: bad magic ", magic, " (not a saved loader position)");
  TALLY_CHECK(version >= 1 && version <= kPositionVersion, "[loader] position: unsupported version ", version,
              ", expected 1 to ", kPositionVersion);
  const size_t expected = version >= 5 ? kBytes : version == 4 ? kBytesBeforeVersion5 : kBytesBeforeVersion4;
  TALLY_CHECK(bytes.size() == expected, "[loader] position: expected ", expected, " bytes (version ", version,
              "), found ", bytes.size());
  LoaderPosition p;
  uint64_t order = 0;
  int64_t world = 0;
  get(p.epoch);
  get(p.shard);
  get(p.window);
  get(p.seed);
  get(order);
  get(p.batch);
  get(p.seq_len);
  get(world);
  get(p.num_shards);
  if (version >= 4) {
    get(p.data_tokens);
    get(p.data_sizes_hash);
  }
  if (version >= 5) get(p.data_sample_hash);
  TALLY_CHECK(order <= 1, "[loader] position: bad order code ", order);
  TALLY_CHECK(world >= 1 && world <= INT32_MAX, "[loader] position: bad world ", world);
  p.order = order ? LoaderOrder::shuffled : LoaderOrder::sequential;
  p.world = int32_t(world);
  // Windows of `world` slices: the same place in slices.
  if (version == 1 || (version == 2 && p.order == LoaderOrder::sequential)) {
    TALLY_CHECK(p.window <= UINT64_MAX / uint64_t(world), "[loader] position: window ", p.window, " out of range");
    p.window *= uint64_t(world);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------------------------
// DataLoader

DataLoader::DataLoader(ShardSet shards, LoaderConfig config) : shards_(std::move(shards)), config_(config) {
  const LoaderConfig& c = config_;
  TALLY_CHECK(c.batch > 0 && c.seq_len > 0, "[loader] batch size and sequence length must be positive, got B=",
              c.batch, " T=", c.seq_len);
  TALLY_CHECK(c.world >= 1 && c.rank >= 0 && c.rank < c.world, "[loader] rank ", c.rank, " of world ", c.world,
              " is not a process (expected 0 <= rank < world)");
  TALLY_CHECK(shards_.size() > 0, "[loader] no shards");
  TALLY_CHECK(shards_.size() <= UINT32_MAX, "[loader] too many shards (", shards_.size(), ")");
  tokens_ = c.batch * c.seq_len;
  for (const Shard& s : shards_.shards())
    TALLY_CHECK(int64_t(s.size()) >= tokens_ + 1, "[loader] ", s.path().string(), " has ", s.size(),
                " tokens, too few for one batch: B=", c.batch, " x T=", c.seq_len, " needs ", tokens_ + 1, " tokens");
  // The counts' bytes in order; the tokens of each shard's sampled windows in order (starts evenly spaced from the
  // first token to the last window's, which ends at the last token; windows overlap in a small shard).
  Fnv1a64 sizes, samples;
  constexpr int64_t S = LoaderPosition::kSampleWindows, W = LoaderPosition::kSampleTokens;
  for (const Shard& s : shards_.shards()) {
    data_tokens_ += s.size();
    sizes.add_le(s.size(), 8);
    const int64_t n = int64_t(s.size()), w = std::min(W, n), last = n - w;
    for (int64_t j = 0; j < S; ++j) {
      const int64_t start = last * j / (S - 1);  // last < 2^48 tokens: no overflow
      for (int64_t k = 0; k < w; ++k) samples.add_le(s.data()[start + k], 2);
    }
  }
  data_sizes_hash_ = recorded(sizes);
  data_sample_hash_ = recorded(samples);
  reset();
}

int64_t DataLoader::slices_in_shard(size_t shard) const {
  // llm.c: a slice takes B*T+1 tokens but the next starts B*T tokens later, hence the -1.
  return (int64_t(shards_[shard].size()) - 1) / tokens_;
}

int64_t DataLoader::batches_per_epoch() const {
  int64_t n = 0;
  for (size_t i = 0; i < shards_.size(); ++i) n += slices_in_shard(i);
  return n / config_.world;
}

const std::vector<uint32_t>& DataLoader::cached(std::array<CachedOrder, 2>& cache, uint64_t epoch, uint32_t file,
                                                size_t n, uint64_t stream_key) {
  for (CachedOrder& c : cache)
    if (c.last_use != 0 && c.epoch == epoch && c.file == file) {
      c.last_use = ++uses_;
      return c.order;
    }
  CachedOrder& slot = cache[0].last_use < cache[1].last_use ? cache[0] : cache[1];  // the one used longer ago
  slot = {.epoch = epoch,
          .file = file,
          .last_use = ++uses_,
          .order = permutation(n, stream(config_.seed, epoch, stream_key))};
  return slot.order;
}

uint32_t DataLoader::file_at(uint64_t epoch, uint64_t slot) {
  if (config_.order == LoaderOrder::sequential) return uint32_t(slot);
  return cached(shard_orders_, epoch, 0, shards_.size(), kShardOrderStream)[slot];
}

uint64_t DataLoader::count_at(uint64_t epoch, uint64_t slot) { return uint64_t(slices_in_shard(file_at(epoch, slot))); }

void DataLoader::settle(Place& p) {
  // llm.c: move on only when a batch is asked for and the current shard has none left.
  while (p.window >= count_at(p.epoch, p.slot)) {
    p.window = 0;
    if (++p.slot == shards_.size()) {
      p.slot = 0;
      ++p.epoch;
    }
  }
}

void DataLoader::forward(Place& p, uint64_t n) {
  for (;;) {
    const uint64_t count = count_at(p.epoch, p.slot);
    if (p.window + n <= count) {
      p.window += n;
      return;
    }
    n -= count - p.window;
    p.window = count;
    settle(p);
  }
}

void DataLoader::reset() {
  next_ = {};
  restore(position());
}

LoaderPosition DataLoader::position() const {
  return {.epoch = next_.epoch,
          .shard = next_.slot,
          .window = next_.window,
          .seed = config_.seed,
          .order = config_.order,
          .batch = config_.batch,
          .seq_len = config_.seq_len,
          .world = config_.world,
          .num_shards = shards_.size(),
          .data_tokens = data_tokens_,
          .data_sizes_hash = data_sizes_hash_,
          .data_sample_hash = data_sample_hash_};
}

void DataLoader::restore(const LoaderPosition& p) {
  const LoaderConfig& c = config_;
  TALLY_CHECK(p.batch == c.batch && p.seq_len == c.seq_len && p.world >= 1 && p.order == c.order &&
                  p.num_shards == shards_.size() && (c.order == LoaderOrder::sequential || p.seed == c.seed),
              "[loader] restore: the position was saved by a loader with B=", p.batch, " T=", p.seq_len, " world=",
              p.world, " order=", order_name(p.order), " seed=", p.seed, " over ", p.num_shards,
              " shard(s); this loader has B=", c.batch, " T=", c.seq_len, " world=", c.world, " order=",
              order_name(c.order), " seed=", c.seed, " over ", shards_.size(), " shard(s)");
  // Sizes recorded since version 4, sampled tokens since version 5.
  const bool same_sizes =
      p.data_sizes_hash == 0 || (p.data_tokens == data_tokens_ && p.data_sizes_hash == data_sizes_hash_);
  const bool same_samples = p.data_sample_hash == 0 || p.data_sample_hash == data_sample_hash_;
  TALLY_CHECK(same_sizes && same_samples, "[loader] restore: the data changed since the position was saved: its ",
              shards_.size(), " shard(s) held ", p.data_tokens, " tokens, now ", data_tokens_,
              !same_sizes ? (p.data_tokens == data_tokens_ ? " but in shards of other sizes" : "")
                          : " in shards of the same sizes but with other tokens",
              " (a shard replaced, cut or grown; resume over the data the run was saved with, or start a new run "
              "from the checkpoint's weights with --init)");
  TALLY_CHECK(p.shard < shards_.size(), "[loader] restore: shard slot ", p.shard, " is outside the ", shards_.size(),
              " shard(s)");
  const uint32_t file = file_at(p.epoch, p.shard);
  const uint64_t count = uint64_t(slices_in_shard(file));
  // The stream of slices is the same at every world: a place saved at another carries over as it is.
  TALLY_CHECK(p.window <= count, "[loader] restore: slice ", p.window, " is past the ", count, " slices of ",
              shards_[file].path().string());
  next_ = {.epoch = p.epoch, .slot = p.shard, .window = p.window};
}

void DataLoader::next(std::span<int32_t> inputs, std::span<int32_t> targets) {
  const int64_t bt = tokens_;
  TALLY_CHECK(int64_t(inputs.size()) == bt && int64_t(targets.size()) == bt, "[loader] next: expected buffers of B*T=",
              bt, " tokens, got ", inputs.size(), " inputs and ", targets.size(), " targets");
  settle(next_);
  // The rank-th slice of the stream from here on; the ranks' next batches start world slices later.
  Place mine = next_;
  forward(mine, uint64_t(config_.rank));
  settle(mine);
  const uint32_t file = file_at(mine.epoch, mine.slot);
  const uint64_t slice =
      config_.order == LoaderOrder::sequential
          ? mine.window
          : cached(slice_orders_, mine.epoch, file, size_t(slices_in_shard(file)), file)[mine.window];
  const uint16_t* p = shards_[file].data() + int64_t(slice) * bt;
  forward(next_, uint64_t(config_.world));
  for (int64_t i = 0; i < bt; ++i) {
    inputs[size_t(i)] = p[i];
    targets[size_t(i)] = p[i + 1];
  }
}

void DataLoader::next(Batch& out) {
  const auto bt = size_t(config_.batch * config_.seq_len);
  out.batch = config_.batch;
  out.seq_len = config_.seq_len;
  out.inputs.resize(bt);
  out.targets.resize(bt);
  next(out.inputs, out.targets);
}

Batch DataLoader::next() {
  Batch b;
  next(b);
  return b;
}

}  // namespace tally::data
