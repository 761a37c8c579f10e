// libFuzzer target for llm.c token shards and the data loader over them. The first 6 bytes choose the shard
// format and a loader configuration (B, T, rank, world, order, seed); the rest is the shard file. Any input must
// load and yield in-range batches, or throw tally::Error; never crash, hang, or read outside the shard.
// Built only with -DTALLY_FUZZ=ON under clang; scripts/fuzz.sh runs it with tests/fuzz/corpus/fuzz_shards.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "data/loader.h"
#include "tests/fuzz/fuzz_util.h"

using namespace tally;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Cursor in{{data, size}};
  const uint8_t mode = in.byte();
  const auto format = (mode & 1) ? data::ShardFormat::raw_uint16 : data::ShardFormat::llmc;
  data::LoaderConfig config{.batch = 1 + in.byte() % 4,
                            .seq_len = 1 + in.byte() % 16,
                            .order = (mode & 2) ? data::LoaderOrder::shuffled : data::LoaderOrder::sequential,
                            .seed = in.byte()};
  const uint8_t w = in.byte();
  config.world = 1 + (w & 3);
  config.rank = (w >> 2) & 3;  // sometimes outside the world: must be refused
  const int32_t vocab = 1 + in.byte() * 300;
  // A copy keeps the tokens 2-byte aligned whatever the prefix length.
  std::vector<uint16_t> image((in.rest.size() + 1) / 2);
  if (!in.rest.empty()) std::memcpy(image.data(), in.rest.data(), in.rest.size());
  std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(image.data()), in.rest.size());
  try {
    std::vector<data::Shard> shards;
    shards.push_back(data::Shard::from_memory(bytes, format, "fuzz.bin"));
    const size_t n = shards[0].size();
    if (format == data::ShardFormat::llmc && 1024 + 2 * n != bytes.size()) std::abort();
    data::ShardSet set = data::ShardSet::from_shards(std::move(shards), {.vocab_limit = (mode & 4) ? vocab : 0});
    data::DataLoader loader(std::move(set), config);
    const int64_t bt = config.batch * config.seq_len;
    for (int i = 0; i < 6; ++i) {
      data::Batch b = loader.next();
      if (int64_t(b.inputs.size()) != bt || int64_t(b.targets.size()) != bt) std::abort();
      for (int64_t k = 0; k < bt; ++k)
        if (b.inputs[size_t(k)] < 0 || b.inputs[size_t(k)] > 65535 || ((mode & 4) && b.inputs[size_t(k)] >= vocab))
          std::abort();
    }
    // The position round-trips through its bytes and restores to the same next batch.
    const data::LoaderPosition pos = loader.position();
    if (data::LoaderPosition::from_bytes(pos.to_bytes()) != pos) std::abort();
    data::Batch expected = loader.next();
    loader.restore(pos);
    if (loader.next().inputs != expected.inputs) std::abort();
  } catch (const Error&) {
  }
  return 0;
}
