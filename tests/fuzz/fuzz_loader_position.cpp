// libFuzzer target for a saved data-loader position (LoaderPosition::from_bytes, then DataLoader::restore): any
// 104 bytes (96 or 80 of an older version; or any other length) must restore a loader whose batches stay inside its
// shards, or throw tally::Error. The loader reads two small in-memory shards; the input's first byte picks its order.
// Built only with -DTALLY_FUZZ=ON under clang; scripts/fuzz.sh runs it with tests/fuzz/corpus/fuzz_loader_position.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/error.h"
#include "data/loader.h"

using namespace tally;

namespace {
// An llm.c shard image of n tokens 0, 1, 2, ...
std::vector<uint16_t> shard_image(int32_t n) {
  std::vector<uint16_t> v(512 + size_t(n));
  const int32_t header[3] = {data::kShardMagic, data::kShardVersion, n};
  std::memcpy(v.data(), header, sizeof header);
  std::iota(v.begin() + 512, v.end(), uint16_t(0));
  return v;
}
const std::vector<uint16_t> kA = shard_image(97), kB = shard_image(61);
std::span<const uint8_t> bytes_of(const std::vector<uint16_t>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * 2};
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto order = (data[0] & 1) ? data::LoaderOrder::shuffled : data::LoaderOrder::sequential;
  try {
    const data::LoaderPosition pos = data::LoaderPosition::from_bytes({data + 1, size - 1});
    std::vector<data::Shard> shards;
    shards.push_back(data::Shard::from_memory(bytes_of(kA), data::ShardFormat::llmc, "a.bin"));
    shards.push_back(data::Shard::from_memory(bytes_of(kB), data::ShardFormat::llmc, "b.bin"));
    data::DataLoader loader(data::ShardSet::from_shards(std::move(shards)),
                            {.batch = 2, .seq_len = 4, .order = order, .seed = 7});
    loader.restore(pos);
    for (int i = 0; i < 40; ++i) {
      data::Batch b = loader.next();
      for (size_t k = 0; k < b.inputs.size(); ++k)
        if (b.targets[k] != b.inputs[k] + 1) std::abort();  // consecutive tokens of one shard
    }
  } catch (const Error&) {
  }
  return 0;
}
