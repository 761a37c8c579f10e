// The GPT-2 byte-level BPE tokenizer, exact to tiktoken's `gpt2` encoding (encode_ordinary, and encode with
// <|endoftext|> allowed). Loaded from GPT-2's encoder.json + vocab.bpe; pre-tokenizes with GPT-2's regex via PCRE2
// and merges by tiktoken's rule (lowest-ranked adjacent pair whose concatenation is a token, leftmost first).
// Large inputs are encoded in parallel chunks (OpenMP) split only where the serial regex scan restarts anyway.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/utf8.h"  // first_invalid_utf8, and Utf8Stream for decoded output

namespace tally::data {

// Whether "<|endoftext|>" in the text becomes the special token 50256 (tiktoken's encode with it allowed) or is
// encoded as the ordinary characters it is made of (tiktoken's encode_ordinary).
enum class SpecialTokens { allowed, disallowed };

class Tokenizer {
 public:
  static constexpr int32_t kEndOfText = 50256;
  static constexpr std::string_view kEndOfTextText = "<|endoftext|>";

  // Where the GPT-2 files are looked for when load() gets no directory: $TALLY_GPT2_DIR, else gpt2/ in each of
  // data::search_dirs() (data/ in the checkout, ../shared/data), else the download cache, where they are downloaded
  // once and checked (data/fetch.h). A failed download, or nothing found with TALLY_OFFLINE=1, throws tally::Error
  // (with TALLY_OFFLINE=1 it lists what was tried).
  static std::filesystem::path default_dir();
  // Reads dir/encoder.json and dir/vocab.bpe (an empty path means default_dir()). Corrupt or inconsistent files
  // throw tally::Error naming the file and what was expected.
  static Tokenizer load(const std::filesystem::path& dir = {});
  // The same from the two files' contents in memory (fuzzing, tests); errors name dir/encoder.json and dir/vocab.bpe.
  static Tokenizer from_memory(std::string_view encoder_json, std::string_view vocab_bpe,
                               const std::filesystem::path& dir = "<memory>");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Token ids of UTF-8 text. Invalid UTF-8 throws tally::Error naming the byte offset. Thread-safe (const).
  std::vector<int32_t> encode(std::string_view text, SpecialTokens special) const;
  // <|endoftext|> before each document, each document encoded as ordinary text (a literal "<|endoftext|>" inside
  // one stays text). Parallel over documents and within long ones.
  std::vector<int32_t> encode_documents(std::span<const std::string_view> docs) const;
  // The bytes the ids stand for: not necessarily valid UTF-8 for an arbitrary id sequence (text shown to people
  // goes through Utf8Stream or to_valid_utf8). An id outside [0, vocab_size()) throws tally::Error naming its
  // position.
  std::string decode(std::span<const int32_t> ids) const;
  // The bytes of one token ("<|endoftext|>" for the special one).
  std::string_view token_bytes(int32_t id) const;

  int32_t vocab_size() const;  // 50257 for GPT-2
  const std::filesystem::path& dir() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  static Tokenizer build(std::string_view encoder_json, std::string_view vocab_bpe, const std::filesystem::path& dir);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally::data
