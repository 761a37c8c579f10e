// libFuzzer target for the GPT-2 tokenizer files: the input is encoder.json, a NUL byte, then vocab.bpe. Any pair
// must build a tokenizer (which then encodes and decodes a sample exactly) or throw tally::Error naming the file;
// never crash or hang. Built only with -DTALLY_FUZZ=ON under clang; scripts/fuzz.sh runs it with
// tests/fuzz/corpus/fuzz_tokenizer_files.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

using namespace tally;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_nul({data, size});
  const std::string_view encoder = parts[0], vocab = parts.size() > 1 ? parts[1] : std::string_view();
  try {
    data::Tokenizer tok = data::Tokenizer::from_memory(encoder, vocab, "fuzz");
    const std::string text = "Hello, world! <|endoftext|> 123";
    if (tok.decode(tok.encode(text, data::SpecialTokens::allowed)) != text) std::abort();
  } catch (const Error&) {
  }
  return 0;
}
