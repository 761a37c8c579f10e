// `tally prepare`: tokenizes a UTF-8 text file with GPT-2's BPE into llm.c token shards, DIR/val.bin (the first
// --val-tokens tokens) and DIR/train.bin (the rest), as llm.c's dev/data scripts do. The text is one document with
// <|endoftext|> first, or with --split-docs SEP many documents, each preceded by <|endoftext|>.
#include <cstdio>

#include <omp.h>

#include "core/error.h"
#include "data/prepare.h"
#include "train/commands.h"
#include "train/flags.h"
#include "train/setup.h"

namespace tally::train {

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
                   .help = "directory with encoder.json and vocab.bpe (default: $TALLY_GPT2_DIR, else gpt2/ in "
                           "data/ or ../shared/data, else downloaded once into the cache)",
                   .default_value = ""},
              });
  flags.parse(args);
  if (!flags.positional().empty()) throw FlagError("unexpected argument '" + flags.positional().front() + "'");
  const std::string text_path = flags.str("text");
  const std::filesystem::path out_dir = flags.str("out");
  const int64_t val_tokens = flags.integer("val-tokens");
  if (val_tokens <= 0) throw FlagError("--val-tokens must be positive, got " + std::to_string(val_tokens));
  if (flags.given("split-docs") && flags.str("split-docs").empty())
    throw FlagError("--split-docs '' names no separator: leave the flag out to keep the text one document");
  const std::string sep = unescape(flags.maybe("split-docs").value_or(""));
  // A run's or a checkpoint's own files are never the output (a run's data/ is what its --resume reads).
  for (const char* shard : {"train.bin", "val.bin"}) refuse_run_file_as_output(out_dir / shard, "--out");
  if (std::filesystem::exists(out_dir / "manifest.json"))
    throw FlagError("--out '" + out_dir.string() + "' is a checkpoint directory: give another directory");

  data::PrepareResult r = data::prepare_text(
      text_path, out_dir,
      {.val_tokens = val_tokens, .doc_separator = sep, .tokenizer_dir = flags.maybe("tokenizer-dir").value_or("")});
  std::printf("tokenized %s: %zu bytes, %zu document(s), %zu tokens in %.3f s (%.1f MB/s, %d thread(s))\n",
              text_path.c_str(), r.bytes, r.documents, r.tokens, r.seconds, double(r.bytes) / 1e6 / r.seconds,
              omp_get_max_threads());
  std::printf("wrote %s (%zu tokens) and %s (%zu tokens)\n", r.val_path.string().c_str(), r.val_tokens,
              r.train_path.string().c_str(), r.train_tokens);
  return 0;
}

}  // namespace tally::train
