// Tests of token shards (round trip, raw uint16, globbing, every corrupt-header case, the vocabulary check) and of
// the DataLoader (llm.c window arithmetic, shard switching, wrap-around, rank/world, shuffle determinism, the
// stream the same at every world in either order, exact resume from a saved position at any world).
// Synthetic data: the token at global position g across a set's shards is g % 50000.
#include <doctest/doctest.h>

#include <fstream>
#include <numeric>
#include <set>

#include "core/error.h"
#include "data/loader.h"
#include "data/shards.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace tally::data;

namespace {

constexpr int32_t kMod = 50000;

// Writes shards of the given sizes to dir/name_000.bin, ...; token at global position g is g % 50000.
std::vector<fs::path> write_synthetic(const fs::path& dir, const std::string& name, const std::vector<size_t>& sizes) {
  std::vector<fs::path> paths;
  size_t g = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    std::vector<uint16_t> t(sizes[k]);
    for (auto& x : t) x = static_cast<uint16_t>(g++ % kMod);
    char file[64];
    std::snprintf(file, sizeof file, "%s_%03zu.bin", name.c_str(), k);
    paths.push_back(dir / file);
    write_shard(paths.back(), t);
  }
  return paths;
}

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const tally::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Checks that batch b holds the windows starting at global token start (inputs) and start + 1 (targets).
void check_batch(const Batch& b, size_t start) {
  REQUIRE(b.inputs.size() == size_t(b.batch * b.seq_len));
  bool ok = true;
  for (size_t i = 0; i < b.inputs.size(); ++i) {
    ok &= b.inputs[i] == int32_t((start + i) % kMod);
    ok &= b.targets[i] == int32_t((start + i + 1) % kMod);
  }
  CHECK_MESSAGE(ok, "batch does not start at global token " << start << " (starts with " << b.inputs[0] << ")");
}

void poke_int32(const fs::path& p, size_t index, int32_t value) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(std::streamoff(index * 4));
  f.write(reinterpret_cast<const char*>(&value), 4);
}

void has(const std::string& msg, const std::string& part) {
  INFO("message: " << msg);
  CHECK(msg.find(part) != std::string::npos);
}

}  // namespace

TEST_SUITE("data") {

TEST_CASE("shards: write and read back, llm.c and raw uint16") {
  const fs::path dir = tally::test::temp_dir("shards_roundtrip");
  std::vector<int32_t> tokens(100003);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int32_t((i * 7919) % 50257);
  write_shard(dir / "a.bin", std::span<const int32_t>(tokens));
  CHECK(fs::file_size(dir / "a.bin") == 1024 + 2 * tokens.size());
  for (const auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename() == "a.bin");  // no temp file left

  const Shard s = Shard::open(dir / "a.bin", ShardFormat::llmc);
  REQUIRE(s.size() == tokens.size());
  CHECK(std::equal(tokens.begin(), tokens.end(), s.data()));

  // The same bytes without the header are a nanoGPT file.
  {
    std::ofstream raw(dir / "raw.bin", std::ios::binary);
    raw.write(reinterpret_cast<const char*>(s.data()), std::streamsize(2 * s.size()));
  }
  const Shard r = Shard::open(dir / "raw.bin", ShardFormat::raw_uint16);
  CHECK(r.size() == s.size());
  CHECK(std::equal(s.data(), s.data() + s.size(), r.data()));

  // Overwriting replaces the file whole.
  const std::vector<uint16_t> small = {1, 2, 3};
  write_shard(dir / "a.bin", small);
  CHECK(Shard::open(dir / "a.bin", ShardFormat::llmc).size() == 3);

  has(error_of([&] { write_shard(dir / "b.bin", std::vector<int32_t>{1, 70000}); }), "token 70000 at position 1");
  has(error_of([&] { write_shard(dir / "missing" / "c.bin", small); }), "does not exist");
  CHECK(!fs::exists(dir / "b.bin"));
  for (const auto& e : fs::directory_iterator(dir))  // the failed write left no temp file
    CHECK_MESSAGE(e.path().filename().string().find(".tmp") == std::string::npos, e.path().string());
  fs::remove_all(dir);
}

TEST_CASE("shards: globs are sorted; no match is an error") {
  const fs::path dir = tally::test::temp_dir("shards_glob");
  write_synthetic(dir, "train", {100, 200, 300});
  const ShardSet set = ShardSet::open((dir / "train_*.bin").string());
  REQUIRE(set.size() == 3);
  CHECK(set[0].size() == 100);
  CHECK(set[2].size() == 300);
  CHECK(set.total_tokens() == 600);
  CHECK(set[1][0] == 100);
  has(error_of([&] { ShardSet::open((dir / "val_*.bin").string()); }), "no files match");
  has(error_of([&] { ShardSet::open((dir / "nope.bin").string()); }), "cannot open");
  // A file whose name holds glob characters is that file: not a pattern ("train_[1].bin" would match train_1.bin),
  // nor "no files match" (a pattern "train_[1].bin" does not match itself).
  write_shard(dir / "train_1.bin", std::vector<uint16_t>{7});
  write_shard(dir / "train_[1].bin", std::vector<uint16_t>{8, 9});
  const ShardSet literal = ShardSet::open((dir / "train_[1].bin").string());
  REQUIRE(literal.size() == 1);
  CHECK(literal[0].size() == 2);
  write_shard(dir / "x*.bin", std::vector<uint16_t>{4});
  write_shard(dir / "x1.bin", std::vector<uint16_t>{5, 6});
  CHECK(ShardSet::open((dir / "x*.bin").string()).total_tokens() == 1);  // not also x*.bin's siblings
  fs::remove_all(dir);
}

TEST_CASE("shards: each corrupt header is an error naming the file and the problem") {
  const fs::path dir = tally::test::temp_dir("shards_corrupt");
  const std::vector<uint16_t> tokens(64, 7);
  auto fresh = [&](const std::string& name) {
    write_shard(dir / name, tokens);
    return dir / name;
  };
  auto open_err = [&](const fs::path& p, ShardFormat f = ShardFormat::llmc) {
    return error_of([&] { Shard::open(p, f); });
  };

  fs::path p = fresh("magic.bin");
  poke_int32(p, 0, 12345);
  std::string msg = open_err(p);
  has(msg, "magic.bin");
  has(msg, "bad magic: expected 20240520, found 12345");

  p = fresh("version.bin");
  poke_int32(p, 1, 2);
  msg = open_err(p);
  has(msg, "version.bin");
  has(msg, "unsupported version: expected 1, found 2");

  p = fresh("trailing.bin");
  std::ofstream(p, std::ios::app | std::ios::binary) << "xy";
  msg = open_err(p);
  has(msg, "trailing.bin");
  has(msg, "size mismatch: the header says 64 tokens, so the file should be 1024 + 2*64 = 1152 bytes, but it is 1154");

  p = fresh("truncated.bin");
  fs::resize_file(p, 1024 + 2 * 60);
  msg = open_err(p);
  has(msg, "truncated.bin");
  has(msg, "but it is 1144 bytes (truncated");

  p = fresh("short.bin");
  fs::resize_file(p, 500);
  msg = open_err(p);
  has(msg, "short.bin");
  has(msg, "file is 500 bytes, shorter than the 1024-byte llm.c header");

  p = fresh("count.bin");
  poke_int32(p, 2, 1 << 30);
  msg = open_err(p);
  has(msg, "count.bin");
  has(msg, "the header says 1073741824 tokens");
  has(msg, "header count is too large");

  p = fresh("negative.bin");
  poke_int32(p, 2, -5);
  has(open_err(p), "header token count is negative (-5)");

  p = dir / "odd.bin";
  std::ofstream(p, std::ios::binary) << "abc";
  msg = open_err(p, ShardFormat::raw_uint16);
  has(msg, "odd.bin");
  has(msg, "odd size");

  // A token outside the model's vocabulary is caught at load time, with its position.
  std::vector<uint16_t> bad(1000, 5);
  bad[517] = 50300;
  write_shard(dir / "vocab.bin", bad);
  const std::string vocab_bin = (dir / "vocab.bin").string();
  msg = error_of([&] { ShardSet::open(vocab_bin, {.format = ShardFormat::llmc, .vocab_limit = 50257}); });
  has(msg, "vocab.bin");
  has(msg, "token 50300 at position 517");
  has(msg, "expected ids < 50257");
  CHECK_NOTHROW(ShardSet::open(vocab_bin, {.format = ShardFormat::llmc, .vocab_limit = 50304}));
  // What was checked is remembered, for the loader's users to skip checking the ids again: the smallest limit.
  ShardSet checked = ShardSet::open(vocab_bin, {.format = ShardFormat::llmc, .vocab_limit = 60000});
  CHECK(checked.checked_vocab_limit() == 60000);
  checked.validate_vocab(50304);
  CHECK(checked.checked_vocab_limit() == 50304);
  checked.validate_vocab(70000);
  CHECK(checked.checked_vocab_limit() == 50304);
  CHECK(ShardSet::open(vocab_bin).checked_vocab_limit() == 0);
  fs::remove_all(dir);
}

TEST_CASE("loader: sequential batches follow llm.c's window arithmetic, switch shards and wrap") {
  const fs::path dir = tally::test::temp_dir("loader_seq");
  // Shard 1 crosses 50000 so values wrap inside a window; shard 2 has a remainder smaller than a window.
  const std::vector<size_t> sizes = {1000, 60001, 777};
  write_synthetic(dir, "s", sizes);
  const size_t offset[] = {0, 1000, 61001};
  DataLoader dl(ShardSet::open((dir / "s_*.bin").string()), {.batch = 2, .seq_len = 8});
  const size_t bt = 16;
  const int64_t w0 = (1000 - 1) / 16, w1 = (60001 - 1) / 16, w2 = (777 - 1) / 16;
  CHECK(dl.slices_in_shard(0) == w0);
  CHECK(dl.batches_per_epoch() == w0 + w1 + w2);

  std::vector<std::pair<size_t, size_t>> expect;  // (shard, window) of every batch of two epochs
  for (int e = 0; e < 2; ++e)
    for (size_t s = 0; s < 3; ++s)
      for (int64_t w = 0; w < dl.slices_in_shard(s); ++w) expect.emplace_back(s, size_t(w));
  Batch b;
  for (size_t i = 0; i < expect.size(); ++i) {
    dl.next(b);
    // Plain variables, not a structured binding: clang 14 (the sanitizer build) cannot capture those in INFO's lambda.
    const size_t s = expect[i].first, w = expect[i].second;
    if (i < 5 || (i + 3 > size_t(w0) && i < size_t(w0) + 3) || i % 997 == 0 || i + 5 > expect.size() ||
        (i + 2 > size_t(dl.batches_per_epoch()) && i < size_t(dl.batches_per_epoch()) + 2)) {
      INFO("batch " << i << " shard " << s << " window " << w);
      check_batch(b, offset[s] + w * bt);
    }
  }
  // The explicit values of the first batches.
  dl.reset();
  dl.next(b);
  CHECK(b.inputs[0] == 0);
  CHECK(b.targets[15] == 16);
  dl.next(b);
  CHECK(b.inputs[0] == 16);
  for (int64_t i = 2; i < w0; ++i) dl.next(b);
  check_batch(b, size_t(w0 - 1) * bt);  // last window of shard 0: tokens 976..992 (984 unused at the end)
  dl.next(b);
  CHECK(b.inputs[0] == 1000);  // first window of shard 1
  CHECK(dl.position().shard == 1);
  CHECK(dl.position().window == 1);
  // The window holding the 50000 wrap: global tokens 49,992..50,008 -> values ..., 49999, 0, 1, ...
  const size_t wrap_window = (49992 - 1000) / 16;
  for (size_t i = 1; i < wrap_window; ++i) dl.next(b);
  dl.next(b);
  CHECK(b.inputs[0] == 49992);
  CHECK(b.inputs[7] == 49999);
  CHECK(b.inputs[8] == 0);
  CHECK(b.targets[7] == 0);
  fs::remove_all(dir);
}

TEST_CASE("loader: sequential, rank r of W reads llm.c's slice r of each window until a shard's last window") {
  const fs::path dir = tally::test::temp_dir("loader_rank");
  write_synthetic(dir, "s", {5000, 3001});
  const int world = 3;
  const size_t bt = 4 * 16, stride = world * bt;
  std::vector<DataLoader> ranks;
  for (int r = 0; r < world; ++r)
    ranks.emplace_back(ShardSet::open((dir / "s_*.bin").string()),
                       LoaderConfig{.batch = 4, .seq_len = 16, .rank = r, .world = world});
  // llm.c: window i of a shard is the W*B*T+1 tokens at i*W*B*T, rank r reads the B*T+1 at i*W*B*T + r*B*T. The
  // first shard's 78 slices are 26 whole windows of 3.
  const int64_t w0 = (5000 - 1) / int64_t(stride);
  CHECK(ranks[0].slices_in_shard(0) == (5000 - 1) / int64_t(bt));
  for (int64_t i = 0; i < w0; ++i)
    for (int r = 0; r < world; ++r) {
      INFO("batch " << i << " rank " << r);
      check_batch(ranks[size_t(r)].next(), size_t(i) * stride + size_t(r) * bt);
    }
  // The second shard's 46 slices: 15 windows of 3, then one slice left, which rank 0 reads with the next epoch's
  // first two slices (llm.c would skip it).
  for (int64_t i = 0; i < 15; ++i)
    for (int r = 0; r < world; ++r) check_batch(ranks[size_t(r)].next(), 5000 + size_t(i) * stride + size_t(r) * bt);
  check_batch(ranks[0].next(), 5000 + 45 * bt);
  check_batch(ranks[1].next(), 0);
  check_batch(ranks[2].next(), bt);
  fs::remove_all(dir);
}

TEST_CASE("loader: shuffled order is a seeded permutation, deterministic per seed") {
  const fs::path dir = tally::test::temp_dir("loader_shuffle");
  write_synthetic(dir, "s", {3000, 2000, 4001, 1500});
  const std::string glob = (dir / "s_*.bin").string();
  auto loader = [&](uint64_t seed) {
    return DataLoader(ShardSet::open(glob), {.batch = 2, .seq_len = 16, .order = LoaderOrder::shuffled, .seed = seed});
  };
  DataLoader a = loader(42), b = loader(42), c = loader(43);
  DataLoader seq(ShardSet::open(glob), {.batch = 2, .seq_len = 16});
  const int64_t epoch = a.batches_per_epoch();
  std::multiset<int32_t> starts_shuffled, starts_seq;
  std::vector<int32_t> firsts_a, firsts_c;
  for (int64_t i = 0; i < 3 * epoch; ++i) {
    const Batch ba = a.next(), bb = b.next(), bc = c.next();
    CHECK(ba.inputs == bb.inputs);
    firsts_a.push_back(ba.inputs[0]);
    firsts_c.push_back(bc.inputs[0]);
    // Every shuffled batch is still a whole, aligned window: consecutive values.
    CHECK(ba.targets[31] == (ba.inputs[0] + 32) % kMod);
    if (i < epoch) {
      starts_shuffled.insert(ba.inputs[0]);
      starts_seq.insert(seq.next().inputs[0]);
    }
  }
  CHECK(starts_shuffled == starts_seq);  // one epoch visits every window exactly once
  CHECK(firsts_a != firsts_c);
  // Epochs are shuffled differently.
  CHECK(std::vector<int32_t>(firsts_a.begin(), firsts_a.begin() + epoch) !=
        std::vector<int32_t>(firsts_a.begin() + epoch, firsts_a.begin() + 2 * epoch));
  // Not the sequential order.
  std::vector<int32_t> seq_firsts;
  seq.reset();
  for (int64_t i = 0; i < epoch; ++i) seq_firsts.push_back(seq.next().inputs[0]);
  CHECK(std::vector<int32_t>(firsts_a.begin(), firsts_a.begin() + epoch) != seq_firsts);
  fs::remove_all(dir);
}

TEST_CASE(
    "loader: W processes deal out the stream of slices one process reads, at any W and position, in either order") {
  const fs::path dir = tally::test::temp_dir("loader_shuffle_world");
  // 62, 20, 2 and 125 slices of 16 tokens: 209 a epoch, which no W below divides, so the ranks' batches straddle
  // shards and epochs; the third shard has fewer slices than most worlds here.
  write_synthetic(dir, "s", {1000, 333, 40, 2001});
  const std::string glob = (dir / "s_*.bin").string();
  for (const LoaderOrder order : {LoaderOrder::sequential, LoaderOrder::shuffled}) {
    INFO("order " << std::string(order == LoaderOrder::shuffled ? "shuffled" : "sequential"));
    auto config = [order](int32_t rank, int32_t world) {
      return LoaderConfig{.batch = 2, .seq_len = 8, .rank = rank, .world = world, .order = order, .seed = 5};
    };
    DataLoader one(ShardSet::open(glob), config(0, 1));
    CHECK(one.batches_per_epoch() == 209);
    std::vector<std::vector<int32_t>> stream;  // what one process reads over three epochs and more
    std::vector<LoaderPosition> at;            // its position before each batch
    for (int i = 0; i < 3 * 209 + 40; ++i) {
      at.push_back(one.position());
      stream.push_back(one.next().inputs);
    }
    for (const int32_t world : {2, 3, 5}) {
      std::vector<DataLoader> ranks;
      for (int32_t r = 0; r < world; ++r) ranks.emplace_back(ShardSet::open(glob), config(r, world));
      CHECK(ranks[0].batches_per_epoch() == 209 / world);
      bool same = true, same_place = true;
      for (size_t round = 0; (round + 1) * size_t(world) <= stream.size(); ++round) {
        // Every rank stands where one process stood after round * W batches, and reads its share of the next W.
        for (int32_t r = 0; r < world; ++r) {
          const LoaderPosition p = ranks[size_t(r)].position(), q = at[round * size_t(world)];
          same_place &= p.epoch == q.epoch && p.shard == q.shard && p.window == q.window;
          same &= ranks[size_t(r)].next().inputs == stream[round * size_t(world) + size_t(r)];
        }
      }
      INFO("world " << world);
      CHECK(same);
      CHECK(same_place);
      // A position saved at this world continues exactly at another, and at one process.
      for (const int32_t other : {1, 2, 3, 5}) {
        DataLoader saver(ShardSet::open(glob), config(0, world));
        const size_t rounds = 211 / size_t(world) + 1;  // into the second epoch
        for (size_t i = 0; i < rounds; ++i) saver.next();
        const LoaderPosition saved = LoaderPosition::from_bytes(saver.position().to_bytes());
        bool continues = true;
        std::vector<DataLoader> resumed;
        for (int32_t r = 0; r < other; ++r) {
          resumed.emplace_back(ShardSet::open(glob), config(r, other));
          resumed.back().restore(saved);
        }
        for (size_t k = 0; k < 50; ++k)
          for (int32_t r = 0; r < other; ++r)
            continues &=
                resumed[size_t(r)].next().inputs == stream[rounds * size_t(world) + k * size_t(other) + size_t(r)];
        INFO("saved at world " << world << ", resumed at " << other);
        CHECK(continues);
      }
    }
  }
  fs::remove_all(dir);
}

TEST_CASE("loader: an older position (windows of W slices) reads as the same place in slices") {
  LoaderPosition p{.epoch = 1,
                   .shard = 2,
                   .window = 5,
                   .seed = 5,
                   .order = LoaderOrder::shuffled,
                   .batch = 2,
                   .seq_len = 8,
                   .world = 3,
                   .num_shards = 4};
  auto as_version = [](const LoaderPosition& q, uint8_t version) {
    std::vector<uint8_t> bytes = q.to_bytes();
    CHECK(bytes[4] == 5);  // the version, after the magic
    bytes[4] = version;
    if (version < 4) bytes.resize(LoaderPosition::kBytesBeforeVersion4);  // no data fields
    if (version == 4) bytes.resize(LoaderPosition::kBytesBeforeVersion5);  // no sampled tokens' hash
    return bytes;
  };
  // Version 1: shuffled and sequential positions in windows; version 2: sequential ones.
  struct Case {
    LoaderOrder order;
    int version;
    uint64_t window;  // as read
  };
  // Not a structured binding: INFO's lambda captures the names (clang 14 cannot capture bindings).
  for (const Case c :
       {Case{LoaderOrder::shuffled, 1, 15}, Case{LoaderOrder::shuffled, 2, 5}, Case{LoaderOrder::sequential, 1, 15},
        Case{LoaderOrder::sequential, 2, 15}, Case{LoaderOrder::sequential, 3, 5}}) {
    p.order = c.order;
    const LoaderPosition read = LoaderPosition::from_bytes(as_version(p, uint8_t(c.version)));
    INFO("version " << c.version << (c.order == LoaderOrder::shuffled ? " shuffled" : " sequential"));
    CHECK(read.window == c.window);
    CHECK(read.epoch == 1);
    CHECK(read.shard == 2);
  }
  has(error_of([&] { LoaderPosition::from_bytes(as_version(p, 6)); }), "unsupported version 6, expected 1 to 5");
  // The length goes with the version.
  std::vector<uint8_t> short_v5 = p.to_bytes();
  short_v5.resize(LoaderPosition::kBytesBeforeVersion5);
  has(error_of([&] { LoaderPosition::from_bytes(short_v5); }), "expected 104 bytes (version 5), found 96");
  std::vector<uint8_t> short_v4 = as_version(p, 4);
  short_v4.resize(LoaderPosition::kBytesBeforeVersion4);
  has(error_of([&] { LoaderPosition::from_bytes(short_v4); }), "expected 96 bytes (version 4), found 80");
  std::vector<uint8_t> long_v3 = as_version(p, 3);
  long_v3.resize(LoaderPosition::kBytes);
  has(error_of([&] { LoaderPosition::from_bytes(long_v3); }), "expected 80 bytes (version 3), found 104");
}

TEST_CASE("loader: a restored position yields exactly the batches of an uninterrupted loader") {
  const fs::path dir = tally::test::temp_dir("loader_resume");
  write_synthetic(dir, "s", {3000, 2000, 4001});
  const std::string glob = (dir / "s_*.bin").string();
  for (const LoaderOrder order : {LoaderOrder::sequential, LoaderOrder::shuffled}) {
    const LoaderConfig cfg{.batch = 3, .seq_len = 10, .rank = 1, .world = 2, .order = order, .seed = 7};
    DataLoader ref(ShardSet::open(glob), cfg);
    const int64_t epoch = ref.batches_per_epoch(), w0 = ref.slices_in_shard(0);
    std::vector<std::vector<int32_t>> expected;
    for (int64_t i = 0; i < 3 * epoch; ++i) expected.push_back(ref.next().inputs);
    // Stop mid-shard, exactly at a shard's end, at an epoch's end, and inside the second epoch.
    for (const int64_t stop : {int64_t(0), int64_t(5), w0, w0 + 1, epoch - 1, epoch, epoch + 17}) {
      INFO("order " << std::string(order == LoaderOrder::shuffled ? "shuffled" : "sequential") << ", stop after " << stop);
      DataLoader first(ShardSet::open(glob), cfg);
      for (int64_t i = 0; i < stop; ++i) first.next();
      const std::vector<uint8_t> saved = first.position().to_bytes();
      CHECK(saved.size() == LoaderPosition::kBytes);
      DataLoader resumed(ShardSet::open(glob), cfg);
      resumed.restore(LoaderPosition::from_bytes(saved));
      CHECK(resumed.position() == first.position());
      bool same = true;
      for (int64_t i = stop; i < stop + epoch + 3; ++i) same &= resumed.next().inputs == expected[size_t(i)];
      CHECK(same);
    }
    // reset() starts the walk over (the eval loader's use).
    ref.reset();
    CHECK(ref.next().inputs == expected[0]);
  }
  // A position from a differently configured loader is refused.
  DataLoader a(ShardSet::open(glob), {.batch = 3, .seq_len = 10});
  DataLoader b(ShardSet::open(glob), {.batch = 4, .seq_len = 10});
  has(error_of([&] { b.restore(a.position()); }), "saved by a loader with B=3");
  std::vector<uint8_t> junk = a.position().to_bytes();
  junk[0] ^= 1;
  has(error_of([&] { LoaderPosition::from_bytes(junk); }), "bad magic");
  has(error_of([&] { LoaderPosition::from_bytes(std::vector<uint8_t>(7)); }), "expected 104 bytes, found 7");
  fs::remove_all(dir);
}

TEST_CASE("loader: a position is refused over shards of other sizes, and a position without sizes is not checked") {
  const fs::path dir = tally::test::temp_dir("loader_data_changed");
  const LoaderConfig cfg{.batch = 2, .seq_len = 8, .order = LoaderOrder::shuffled, .seed = 3};
  write_synthetic(dir, "s", {400, 300});
  const std::string glob = (dir / "s_*.bin").string();
  DataLoader first(ShardSet::open(glob), cfg);
  for (int i = 0; i < 5; ++i) first.next();
  const LoaderPosition saved = LoaderPosition::from_bytes(first.position().to_bytes());
  CHECK(saved.data_tokens == 700);
  CHECK(saved.data_sizes_hash != 0);
  // Same data (reopened): continues.
  DataLoader same(ShardSet::open(glob), cfg);
  same.restore(saved);
  CHECK(same.next().inputs == first.next().inputs);
  // The first shard replaced by a longer one: the saved place would name other slices.
  write_synthetic(dir, "s", {500, 300});
  DataLoader grown(ShardSet::open(glob), cfg);
  has(error_of([&] { grown.restore(saved); }),
      "the data changed since the position was saved: its 2 shard(s) held 700 tokens, now 800");
  // The same total in other shards: refused too.
  write_synthetic(dir, "s", {300, 400});
  DataLoader swapped(ShardSet::open(glob), cfg);
  has(error_of([&] { swapped.restore(saved); }), "held 700 tokens, now 700 but in shards of other sizes");
  // A position saved before the sizes were recorded (version 3) is taken as it is.
  std::vector<uint8_t> v3 = saved.to_bytes();
  v3[4] = 3;
  v3.resize(LoaderPosition::kBytesBeforeVersion4);
  const LoaderPosition old = LoaderPosition::from_bytes(v3);
  CHECK(old.data_sizes_hash == 0);
  swapped.restore(old);
  CHECK(swapped.position().window == saved.window);
  fs::remove_all(dir);
}

TEST_CASE("loader: a position is refused over shards of the same sizes with other tokens where it samples them") {
  const fs::path dir = tally::test::temp_dir("loader_tokens_changed");
  const LoaderConfig cfg{.batch = 2, .seq_len = 8, .order = LoaderOrder::shuffled, .seed = 3};
  const std::vector<fs::path> paths = write_synthetic(dir, "s", {5000, 300});
  const std::string glob = (dir / "s_*.bin").string();
  DataLoader first(ShardSet::open(glob), cfg);
  for (int i = 0; i < 3; ++i) first.next();
  const LoaderPosition saved = LoaderPosition::from_bytes(first.position().to_bytes());
  CHECK(saved.data_sample_hash != 0);
  const ShardSet original = ShardSet::open(paths[0].string());
  const std::vector<uint16_t> tokens(original[0].data(), original[0].data() + original[0].size());
  // The same tokens written again: the same data, continues.
  write_shard(paths[0], tokens);
  DataLoader rewritten(ShardSet::open(glob), cfg);
  rewritten.restore(saved);
  CHECK(rewritten.next().inputs == first.next().inputs);
  // One token changed at a sampled place (the first, the last, one inside the 64 evenly spaced windows of 32): refused.
  const int64_t inside = (5000 - 32) * 40 / 63 + 17;
  for (const int64_t at : {int64_t(0), int64_t(4999), inside}) {
    std::vector<uint16_t> other = tokens;
    other[size_t(at)] ^= 1;
    write_shard(paths[0], other);
    DataLoader changed(ShardSet::open(glob), cfg);
    INFO("token " << at << " changed");
    has(error_of([&] { changed.restore(saved); }),
        "its 2 shard(s) held 5300 tokens, now 5300 in shards of the same sizes but with other tokens");
  }
  // Another tokenization of the same length: refused.
  std::vector<uint16_t> other(5000);
  for (size_t i = 0; i < other.size(); ++i) other[i] = uint16_t((i * 7919 + 11) % 50257);
  write_shard(paths[0], other);
  DataLoader retokenized(ShardSet::open(glob), cfg);
  has(error_of([&] { retokenized.restore(saved); }), "with other tokens");
  // A position saved before the samples were recorded (version 4) is checked by its sizes only.
  std::vector<uint8_t> v4 = saved.to_bytes();
  v4[4] = 4;
  v4.resize(LoaderPosition::kBytesBeforeVersion5);
  const LoaderPosition old = LoaderPosition::from_bytes(v4);
  CHECK(old.data_sample_hash == 0);
  CHECK(old.data_sizes_hash == saved.data_sizes_hash);
  retokenized.restore(old);
  CHECK(retokenized.position().window == saved.window);
  fs::remove_all(dir);
}

TEST_CASE("loader: a shard too small for one batch, and bad configurations, are clear errors") {
  const fs::path dir = tally::test::temp_dir("loader_small");
  write_synthetic(dir, "s", {1000, 64});
  const std::string glob = (dir / "s_*.bin").string();
  std::string msg = error_of([&] { DataLoader(ShardSet::open(glob), {.batch = 4, .seq_len = 16}); });
  has(msg, "s_001.bin has 64 tokens, too few for one batch");
  has(msg, "needs 65 tokens");
  CHECK_NOTHROW(DataLoader(ShardSet::open(glob), {.batch = 3, .seq_len = 21}));
  has(error_of([&] { DataLoader(ShardSet::open(glob), {.batch = 0, .seq_len = 16}); }), "must be positive");
  has(error_of([&] { DataLoader(ShardSet::open(glob), {.batch = 1, .seq_len = 4, .rank = 2, .world = 2}); }),
      "rank 2 of world 2");
  DataLoader dl(ShardSet::open(glob), {.batch = 1, .seq_len = 4});
  std::vector<int32_t> in(3), tg(4);
  has(error_of([&] { dl.next(in, tg); }), "expected buffers of B*T=4");
  fs::remove_all(dir);
}

}  // TEST_SUITE

TEST_CASE("shards: a set written together replaces none of its files when any of them fails") {
  const fs::path dir = tally::test::temp_dir("shards_pair");
  write_shard(dir / "train.bin", std::vector<uint16_t>(100, 1));
  write_shard(dir / "val.bin", std::vector<uint16_t>(50, 2));
  // The second shard's token does not fit uint16: the first, already written to its temp file, is not renamed in.
  const std::vector<int32_t> train(300, 3), bad_val = {4, 70000};
  const ShardTokens failing[] = {{dir / "train.bin", train}, {dir / "val.bin", bad_val}};
  has(error_of([&] { write_shards(failing); }), "token 70000 at position 1 does not fit uint16");
  CHECK(ShardSet::open((dir / "train.bin").string())[0].size() == 100);
  CHECK(ShardSet::open((dir / "val.bin").string())[0].size() == 50);
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}) == 2);  // no temp file left
  // Both good: both replaced.
  const std::vector<int32_t> val(60, 5);
  const ShardTokens good[] = {{dir / "train.bin", train}, {dir / "val.bin", val}};
  write_shards(good);
  CHECK(ShardSet::open((dir / "train.bin").string())[0].size() == 300);
  CHECK(ShardSet::open((dir / "val.bin").string())[0][0] == 5);
  fs::remove_all(dir);
}
