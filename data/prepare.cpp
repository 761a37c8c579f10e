// Text -> llm.c token shards (see prepare.h).
#include "data/prepare.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <span>
#include <sstream>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "data/utf8.h"

namespace tally::data {

namespace {

std::string read_text(const std::filesystem::path& path) {
  std::error_code ec;
  TALLY_CHECK(!std::filesystem::is_directory(path, ec), "[prepare] ", path.string(),
              " is a directory: give a UTF-8 text file");
  std::ifstream f(path, std::ios::binary);
  TALLY_CHECK(f, "[prepare] cannot open text file ", path.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  TALLY_CHECK(!f.bad(), "[prepare] error reading ", path.string());
  return ss.str();
}

// Documents of text split after each occurrence of sep (the separator stays at the end of its document, so the
// token stream equals llm.c's text.replace(sep, sep + "<|endoftext|>"): a text that ends with a separator ends with
// an empty document, whose tokens are that last end-of-text token alone).
std::vector<std::string_view> split_documents(std::string_view text, std::string_view sep) {
  std::vector<std::string_view> docs;
  if (sep.empty()) return {text};
  bool ended_by_sep = false;
  for (size_t start = 0; start < text.size();) {
    const size_t hit = text.find(sep, start);
    ended_by_sep = hit != std::string_view::npos;
    const size_t end = ended_by_sep ? hit + sep.size() : text.size();
    docs.push_back(text.substr(start, end - start));
    start = end;
  }
  if (ended_by_sep) docs.push_back(text.substr(text.size()));
  return docs;
}

}  // namespace

PrepareResult prepare_text(const std::filesystem::path& text_path, const std::filesystem::path& out_dir,
                           const PrepareOptions& options) {
  TALLY_CHECK(options.val_tokens > 0, "[prepare] val_tokens must be positive, got ", options.val_tokens);
  const std::string text = read_text(text_path);
  TALLY_CHECK(!text.empty(), "[prepare] ", text_path.string(), " is empty");
  // Not UTF-8: said here with the file's own offset and line (the tokenizer sees documents, not the file).
  if (const size_t bad = first_invalid_utf8(text); bad != text.size()) {
    const int64_t line = 1 + std::count(text.begin(), text.begin() + std::ptrdiff_t(bad), '\n');
    fail("[prepare] ", text_path.string(), " is not UTF-8 text: byte ", bad, " (line ", line, ") is 0x", std::hex,
         int(static_cast<unsigned char>(text[bad])), std::dec,
         ", not valid UTF-8 there; convert the file to UTF-8 (e.g. with iconv)");
  }
  const auto tok = Tokenizer::load(options.tokenizer_dir);
  PrepareResult r;
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<std::string_view> docs = split_documents(text, options.doc_separator);
  const std::vector<int32_t> tokens = tok.encode_documents(docs);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.bytes = text.size();
  r.documents = docs.size() - (docs.size() > 1 && docs.back().empty() ? 1 : 0);  // the closing end-of-text is none
  r.tokens = tokens.size();
  TALLY_CHECK(int64_t(tokens.size()) > options.val_tokens, "[prepare] ", text_path.string(), " has ", tokens.size(),
              " tokens; --val-tokens ", options.val_tokens, " leaves none for train.bin");
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  TALLY_CHECK(!ec, "[prepare] cannot create output directory ", out_dir.string(), ": ", ec.message());
  const std::span<const int32_t> all(tokens);
  const auto val = all.first(size_t(options.val_tokens)), train = all.subspan(size_t(options.val_tokens));
  r.val_path = out_dir / "val.bin";
  r.train_path = out_dir / "train.bin";
  // Both written before either replaces its file: a prepare interrupted while writing leaves the previous pair whole.
  const ShardTokens pair[] = {{r.train_path, train}, {r.val_path, val}};
  write_shards(pair);
  r.val_tokens = val.size();
  r.train_tokens = train.size();
  return r;
}

}  // namespace tally::data
