// libFuzzer target for a JSON configuration file of `tally train --config` (Flags::merge_json, then the run
// configuration the flags resolve to, without looking for data): any text must configure a run or throw a
// FlagError naming the file (or tally::Error); never crash. Built only with -DTALLY_FUZZ=ON under clang;
// scripts/fuzz.sh runs it with tests/fuzz/corpus/fuzz_config_json.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "train/flags.h"
#include "train/trainer.h"

using namespace tally;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  train::Flags flags("train", "fuzz", train::train_flags());
  try {
    flags.merge_json({reinterpret_cast<const char*>(data), size}, "config.json");
  } catch (const train::FlagError& e) {
    if (std::string(e.what()).find("config.json") == std::string::npos) std::abort();
    return 0;
  }
  try {
    train::RunConfig c = train::run_config(flags, train::DataResolution::skip);
    c.model.validate();
    if (c.batch < 1 || c.seq < 1 || c.seq > c.model.block_size || c.accumulation < 1) std::abort();
  } catch (const train::FlagError&) {
  } catch (const Error&) {
  }
  return 0;
}
