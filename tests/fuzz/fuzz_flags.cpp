// libFuzzer target for command-line flags of `tally train` (Flags::parse, then the run configuration, without
// looking for data): the input is the argument list, one argument per NUL-separated part. Any list must configure
// a run or throw FlagError / HelpRequested / tally::Error; never crash. Built only with -DTALLY_FUZZ=ON under
// clang; scripts/fuzz.sh runs it with tests/fuzz/corpus/fuzz_flags.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "tests/fuzz/fuzz_util.h"
#include "train/flags.h"
#include "train/trainer.h"

using namespace tally;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args;
  for (std::string_view a : fuzz::split_nul({data, size})) args.emplace_back(a);
  train::Flags flags("train", "fuzz", train::train_flags());
  try {
    flags.parse(args);
    train::RunConfig c = train::run_config(flags, train::DataResolution::skip);
    c.model.validate();
    if (c.batch < 1 || c.seq < 1 || c.seq > c.model.block_size || c.accumulation < 1) std::abort();
  } catch (const train::FlagError&) {
  } catch (const train::HelpRequested&) {
  } catch (const Error&) {
  }
  return 0;
}
