// Text -> llm.c token shards, the work behind `tally prepare` (and `tally train --text`): tokenize a UTF-8 file
// with GPT-2's BPE (one document with <|endoftext|> first, or documents split after a separator, each preceded by
// <|endoftext|>), then write DIR/val.bin (the first val_tokens tokens) and DIR/train.bin (the rest).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

namespace tally::data {

struct PrepareOptions {
  int64_t val_tokens = 32768;
  std::string doc_separator = {};           // "" = the whole file is one document
  std::filesystem::path tokenizer_dir = {};  // "" = Tokenizer::default_dir()
};

struct PrepareResult {
  size_t bytes = 0, documents = 0, tokens = 0, val_tokens = 0, train_tokens = 0;
  double seconds = 0;  // tokenizing time
  std::filesystem::path val_path, train_path;
};

PrepareResult prepare_text(const std::filesystem::path& text_path, const std::filesystem::path& out_dir,
                           const PrepareOptions& options = {});

}  // namespace tally::data
