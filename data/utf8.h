// UTF-8: the validity check the tokenizer applies to its input, and the decoding of a byte stream that arrives in
// pieces (a token's bytes at a time) into valid UTF-8 for output. Token bytes are not text: a character may be split
// across tokens, and an untrained model may emit a lone continuation byte.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace tally::data {

// Offset of the first byte that does not continue valid UTF-8 (overlong forms, surrogates and code points above
// U+10FFFF are invalid), or text.size() when all of it is valid.
size_t first_invalid_utf8(std::string_view text);

// Bytes in, valid UTF-8 out, piece by piece. A character split across pieces is held back until its last byte
// arrives; every ill-formed sequence becomes U+FFFD, one per maximal subpart (Unicode's "substitution of maximal
// subparts", which is what Python's bytes.decode(errors="replace") and so tiktoken's decode do). The concatenation
// of every push() and finish() equals the whole stream decoded at once.
class Utf8Stream {
 public:
  // The complete characters so far; an unfinished sequence at the end of `bytes` is kept for the next push.
  std::string push(std::string_view bytes);
  // What is still held back (a sequence the stream ended in the middle of) as U+FFFD; empty when nothing is.
  std::string finish();

 private:
  std::string carry_;  // at most 3 bytes: the valid start of a character not complete yet
};

// The whole of `bytes` as valid UTF-8 (Utf8Stream's rules).
std::string to_valid_utf8(std::string_view bytes);

}  // namespace tally::data
