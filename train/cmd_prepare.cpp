// `tally prepare`: tokenizes a UTF-8 text file with GPT-2's BPE into llm.c token shards, DIR/val.bin (the first
// --val-tokens tokens) and DIR/train.bin (the rest), as llm.c's dev/data scripts do. The text is one document with
// <|endoftext|> first, or with --split-docs SEP many documents, each preceded by <|endoftext|>.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <omp.h>

#include "core/error.h"
#include "data/shards.h"
#include "data/tokenizer.h"
#include "train/commands.h"
#include "train/flags.h"

namespace tally::cli {

namespace {

// "\n\n" on a command line is four characters; turn the escapes \n \r \t \\ into the characters they name.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    if (i + 1 == s.size()) throw FlagError("--split-docs ends with a lone backslash");
    switch (s[++i]) {
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case '\\': out += '\\'; break;
      default: throw FlagError(std::string("--split-docs: unknown escape \\") + s[i] + " (use \\n \\r \\t \\\\)");
    }
  }
  return out;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  TALLY_CHECK(f, "[prepare] cannot open --text file ", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  TALLY_CHECK(!f.bad(), "[prepare] error reading ", path);
  return ss.str();
}

// Documents of text split after each occurrence of sep (the separator stays at the end of its document, so the
// token stream equals llm.c's text.replace(sep, sep + "<|endoftext|>")).
std::vector<std::string_view> split_documents(std::string_view text, std::string_view sep) {
  std::vector<std::string_view> docs;
  if (sep.empty()) return {text};
  for (size_t start = 0; start < text.size();) {
    const size_t hit = text.find(sep, start);
    const size_t end = hit == std::string_view::npos ? text.size() : hit + sep.size();
    docs.push_back(text.substr(start, end - start));
    start = end;
  }
  return docs;
}

}  // namespace

int cmd_prepare(const Args& args) {
  Flags flags("prepare",
              "Tokenize a UTF-8 text file with GPT-2's BPE into llm.c token shards: DIR/val.bin holds the first N "
              "tokens, DIR/train.bin the rest.",
              {
                  {.name = "text", .help = "the UTF-8 text file to tokenize (required)", .default_value = ""},
                  {.name = "out", .help = "output directory, created if missing (required)", .default_value = ""},
                  {.name = "val-tokens", .help = "tokens in val.bin", .default_value = "32768"},
                  {.name = "split-docs",
                   .help = "document separator (escapes \\n \\t \\r \\\\): <|endoftext|> goes before each "
                           "document and the separator stays at its end, as llm.c's tinyshakespeare.py with '\\n\\n'",
                   .default_value = ""},
                  {.name = "tokenizer-dir",
                   .help = "directory with encoder.json and vocab.bpe (default: $TALLY_GPT2_DIR, else "
                           "../shared/data/gpt2)",
                   .default_value = ""},
              });
  flags.parse(args);
  if (!flags.positional().empty()) throw FlagError("unexpected argument '" + flags.positional().front() + "'");
  const std::string text_path = flags.str("text");
  const std::filesystem::path out_dir = flags.str("out");
  const int64_t val_tokens = flags.integer("val-tokens");
  if (val_tokens <= 0) throw FlagError("--val-tokens must be positive, got " + std::to_string(val_tokens));
  const std::string sep = unescape(flags.maybe("split-docs").value_or(""));

  const std::string text = read_text(text_path);
  TALLY_CHECK(!text.empty(), "[prepare] ", text_path, " is empty");
  const auto tok = data::Tokenizer::load(flags.maybe("tokenizer-dir").value_or(""));

  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<std::string_view> docs = split_documents(text, sep);
  const std::vector<int32_t> tokens = tok.encode_documents(docs);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("tokenized %s: %zu bytes, %zu document(s), %zu tokens in %.3f s (%.1f MB/s, %d thread(s))\n",
              text_path.c_str(), text.size(), docs.size(), tokens.size(), secs, double(text.size()) / 1e6 / secs,
              omp_get_max_threads());

  TALLY_CHECK(int64_t(tokens.size()) > val_tokens, "[prepare] ", text_path, " has ", tokens.size(),
              " tokens; --val-tokens ", val_tokens, " leaves none for train.bin");
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  TALLY_CHECK(!ec, "[prepare] cannot create --out directory ", out_dir.string(), ": ", ec.message());
  const std::span<const int32_t> all(tokens);
  const auto val = all.first(size_t(val_tokens)), train = all.subspan(size_t(val_tokens));
  data::write_shard(out_dir / "val.bin", val);
  data::write_shard(out_dir / "train.bin", train);
  std::printf("wrote %s (%zu tokens) and %s (%zu tokens)\n", (out_dir / "val.bin").string().c_str(), val.size(),
              (out_dir / "train.bin").string().c_str(), train.size());
  return 0;
}

}  // namespace tally::cli
