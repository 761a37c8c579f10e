// libFuzzer target for the GPT-2 import from .safetensors in Hugging Face naming (models/safetensors_gpt2): any
// byte string must import into a model whose every tensor the file supplied, or throw tally::Error; never crash,
// and never allocate a model larger than the tensors in the file (the shapes are checked before allocating).
// Built only with -DTALLY_FUZZ=ON under clang; scripts/fuzz.sh runs it with tests/fuzz/corpus/fuzz_safetensors_gpt2.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "models/safetensors_gpt2.h"

using namespace tally;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto model = models::load_safetensors_gpt2_from_memory({data, size}, "fuzz.safetensors", {.vocab_multiple = 8});
    // Every parameter but wte's padding rows came from the file: at least 2 bytes (F16/BF16) per parameter.
    const auto& c = model->config();
    if (size_t(model->num_parameters() - (c.padded_vocab_size - c.vocab_size) * c.n_embd) * 2 > size) std::abort();
  } catch (const Error&) {
  }
  return 0;
}
