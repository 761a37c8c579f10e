// libFuzzer target for tokenizer encoding of arbitrary bytes with the real GPT-2 files ($TALLY_GPT2_DIR, else
// ../shared/data/gpt2 beside the checkout): invalid UTF-8 must throw tally::Error naming the first bad offset, and
// valid text must encode (special token allowed or not) to ids that decode back to exactly the input; the same bytes
// as printed output (data::to_valid_utf8, and a Utf8Stream fed one byte at a time) are valid UTF-8, alike, and the
// input itself when it was valid.
// Built only with -DTALLY_FUZZ=ON under clang; scripts/fuzz.sh runs it with tests/fuzz/corpus/fuzz_tokenizer_encode.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "data/tokenizer.h"

using namespace tally;

namespace {
const data::Tokenizer& tokenizer() {
  static const data::Tokenizer tok = data::Tokenizer::load();
  return tok;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const data::Tokenizer& tok = tokenizer();
  const size_t bad = data::first_invalid_utf8(text);
  const std::string shown = data::to_valid_utf8(text);
  if (data::first_invalid_utf8(shown) != shown.size() || (bad == text.size() && shown != text)) std::abort();
  data::Utf8Stream stream;
  std::string streamed;
  for (char c : text) streamed += stream.push(std::string_view(&c, 1));
  if (streamed + stream.finish() != shown) std::abort();
  for (auto special : {data::SpecialTokens::allowed, data::SpecialTokens::disallowed}) {
    try {
      std::vector<int32_t> ids = tok.encode(text, special);
      if (bad != text.size()) std::abort();  // invalid UTF-8 accepted
      if (tok.decode(ids) != text) std::abort();
      for (int32_t id : ids)
        if (id < 0 || id >= tok.vocab_size() || (special == data::SpecialTokens::disallowed && id == tok.kEndOfText))
          std::abort();
    } catch (const Error& e) {
      if (bad == text.size()) std::abort();  // valid text refused
      if (std::string(e.what()).find(std::to_string(bad)) == std::string::npos) std::abort();  // offset not named
    }
  }
  return 0;
}
