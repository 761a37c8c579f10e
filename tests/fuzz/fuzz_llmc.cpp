// libFuzzer target for llm.c GPT-2 model files (models/checkpoint_llmc): any byte string must load into a model
// whose configuration the header states and whose weights fill the file exactly, or throw tally::Error; never
// crash, overflow a size computation, or allocate more than the file could fill.
// Built only with -DTALLY_FUZZ=ON under clang; scripts/fuzz.sh runs it with tests/fuzz/corpus/fuzz_llmc.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "models/checkpoint_llmc.h"

using namespace tally;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const models::LlmcFileInfo info = models::parse_llmc_info({data, size}, "fuzz.bin");
    auto model = models::load_llmc_from_memory({data, size}, "fuzz.bin");
    if (model->config().num_parameters() != info.config.num_parameters()) std::abort();
    const size_t element = info.precision == models::LlmcPrecision::f32 ? 4 : 2;
    if (1024 + size_t(model->num_parameters()) * element != size) std::abort();
  } catch (const Error&) {
  }
  return 0;
}
