// Tests of the GPT-2 tokenizer: parity with tiktoken (tests/reference/tokenizer_reference.json), the whole Tiny
// Shakespeare count, round trips, special tokens, invalid UTF-8, parallel == serial, and corrupt tokenizer files.
// Needs GPT-2's files and Tiny Shakespeare where tally finds them (../shared/data in CI, else downloaded once into
// the cache); without them the parity tests skip with a visible message.
#include <doctest/doctest.h>
#include <omp.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "data/tokenizer.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using tally::data::SpecialTokens;
using tally::data::Tokenizer;

namespace {

using tally::data::DataFile;

// The directory holding both GPT-2 files as the tests find them (test::data_file); empty when they cannot be had.
fs::path gpt2_dir() {
  const fs::path enc = tally::test::data_file(DataFile::gpt2_encoder), bpe = tally::test::data_file(DataFile::gpt2_vocab);
  return !enc.empty() && !bpe.empty() && enc.parent_path() == bpe.parent_path() ? enc.parent_path() : fs::path();
}

// The tokenizer, loaded once for the whole binary; nullptr (with a message) when the GPT-2 files are absent.
const Tokenizer* gpt2() {
  static const std::optional<Tokenizer> tok = []() -> std::optional<Tokenizer> {
    if (gpt2_dir().empty()) return std::nullopt;
    return Tokenizer::load(gpt2_dir());
  }();
  if (!tok) MESSAGE("SKIPPED: GPT-2 tokenizer files (encoder.json, vocab.bpe) neither found nor downloaded");
  return tok ? &*tok : nullptr;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  REQUIRE_MESSAGE(f, "cannot open " << p.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const nlohmann::json& reference() {
  static const nlohmann::json ref =
      nlohmann::json::parse(slurp(tally::test::reference_dir() / "tokenizer_reference.json"));
  return ref;
}

// Runs f with OpenMP limited to n threads, restoring the previous limit.
template <class F>
auto with_threads(int n, F&& f) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(n);
  auto r = f();
  omp_set_num_threads(before);
  return r;
}

std::string error_of(auto&& f) {
  try {
    f();
  } catch (const tally::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_SUITE("data") {

TEST_CASE("tokenizer: parity with tiktoken on the reference strings") {
  const Tokenizer* tok = gpt2();
  if (!tok) return;
  CHECK(tok->vocab_size() == 50257);
  for (const auto& c : reference()["cases"]) {
    const std::string text = c["text"];
    const auto special = c["special"] == "allowed" ? SpecialTokens::allowed : SpecialTokens::disallowed;
    const std::vector<int32_t> expected = c["ids"];
    INFO("case " << c["name"].get<std::string>());
    const std::vector<int32_t> got = tok->encode(text, special);
    CHECK(got == expected);
    CHECK(tok->decode(got) == text);
  }
}

std::string utf8(uint32_t cp) {
  const int n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
  if (n == 1) return std::string(1, char(cp));
  std::string s(size_t(n), '\0');
  for (int i = n - 1; i > 0; --i, cp >>= 6) s[size_t(i)] = char(0x80 | (cp & 0x3F));
  s[0] = char(((0xFF00u >> n) & 0xFFu) | cp);  // lead byte: n high bits set (C0, E0, F0), then the rest of cp
  return s;
}

TEST_CASE("tokenizer: parity with tiktoken for every Unicode code point (hashed sweep)") {
  const Tokenizer* tok = gpt2();
  if (!tok) return;
  const auto& sweep = reference()["codepoint_sweep"];
  const std::string tmpl = sweep["template"];
  uint64_t h = 0xCBF29CE484222325ull;
  auto fold = [&](uint8_t b) { h = (h ^ b) * 0x100000001B3ull; };
  size_t count = 0;
  std::string text;
  for (uint32_t cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp < 0xE000) continue;
    const std::string c = utf8(cp);
    text.clear();
    for (size_t i = 0; i < tmpl.size(); ++i) {
      if (tmpl.compare(i, 3, "{c}") == 0) text += c, i += 2;
      else text += tmpl[i];
    }
    for (const int32_t id : tok->encode(text, SpecialTokens::disallowed))
      for (int k = 0; k < 4; ++k) fold(uint8_t(uint32_t(id) >> (8 * k)));
    for (int k = 0; k < 4; ++k) fold(0xFF);
    ++count;
  }
  CHECK(count == sweep["code_points"].get<size_t>());
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  CHECK(std::string(hex) == sweep["fnv1a64"].get<std::string>());
}

TEST_CASE("tokenizer: whole Tiny Shakespeare matches tiktoken's count, serial and parallel") {
  const Tokenizer* tok = gpt2();
  if (!tok) return;
  const fs::path text_path = tally::test::data_file(DataFile::tiny_shakespeare);
  if (text_path.empty()) {
    MESSAGE("SKIPPED: Tiny Shakespeare neither found nor downloaded");
    return;
  }
  const std::string text = slurp(text_path);
  const auto& ref = reference()["tinyshakespeare"];
  REQUIRE(text.size() == ref["bytes"].get<size_t>());
  const auto serial = with_threads(1, [&] { return tok->encode(text, SpecialTokens::disallowed); });
  const auto parallel = with_threads(4, [&] { return tok->encode(text, SpecialTokens::disallowed); });
  CHECK(serial.size() == ref["tokens_plain"].get<size_t>());
  CHECK(serial == parallel);
  const auto first = ref["first_tokens_plain"].get<std::vector<int32_t>>();
  const auto last = ref["last_tokens_plain"].get<std::vector<int32_t>>();
  CHECK(std::vector<int32_t>(serial.begin(), serial.begin() + 16) == first);
  CHECK(std::vector<int32_t>(serial.end() - 16, serial.end()) == last);
  CHECK(tok->decode(parallel) == text);

  const std::string_view whole = text;
  const auto with_eot = tok->encode_documents(std::span(&whole, 1));
  CHECK(with_eot.size() == ref["tokens_with_leading_eot"].get<size_t>());
  CHECK(with_eot.front() == Tokenizer::kEndOfText);
  CHECK(std::equal(serial.begin(), serial.end(), with_eot.begin() + 1));

  // llm.c's document split: EOT first and after every blank line (the blank line stays with its document).
  std::vector<std::string_view> docs;
  for (size_t start = 0; start < text.size();) {
    const size_t hit = text.find("\n\n", start);
    const size_t end = hit == std::string::npos ? text.size() : hit + 2;
    docs.push_back(whole.substr(start, end - start));
    start = end;
  }
  CHECK(tok->encode_documents(docs).size() == ref["tokens_llmc_split_docs"].get<size_t>());
}

TEST_CASE("tokenizer: chunked parallel encoding equals serial on whitespace-heavy text") {
  const Tokenizer* tok = gpt2();
  if (!tok) return;
  // Chunks end only after '\n' before an ASCII non-space; build text full of near-miss boundaries.
  std::string text;
  const char* lines[] = {"word \n", "  \n", "\n\n", "x\n", " \nY", "\t\n", "'s\n", "\u00a0\n", "12\n", "!\n ", "\r\n"};
  for (int i = 0; text.size() < (size_t(1) << 20); ++i) {
    text += lines[(i * 7) % 11];
    text += lines[(i * 3 + 1) % 11];
    if (i % 5 == 0) text += "The quick brown fox";
  }
  const auto serial = with_threads(1, [&] { return tok->encode(text, SpecialTokens::allowed); });
  const auto parallel = with_threads(3, [&] { return tok->encode(text, SpecialTokens::allowed); });
  CHECK(serial == parallel);
  CHECK(tok->decode(parallel) == text);
}

TEST_CASE("tokenizer: special token allowed or not") {
  const Tokenizer* tok = gpt2();
  if (!tok) return;
  CHECK(tok->encode("<|endoftext|>", SpecialTokens::allowed) == std::vector<int32_t>{50256});
  const auto ordinary = tok->encode("<|endoftext|>", SpecialTokens::disallowed);
  CHECK(ordinary.size() > 1);
  CHECK(std::find(ordinary.begin(), ordinary.end(), 50256) == ordinary.end());
  CHECK(tok->decode(std::vector<int32_t>{50256}) == "<|endoftext|>");
  CHECK(tok->token_bytes(50256) == "<|endoftext|>");
  // A literal EOT inside a document stays ordinary text; only the separators are special.
  const std::string_view docs[] = {"a<|endoftext|>b", "", "c"};
  const auto ids = tok->encode_documents(docs);
  CHECK(std::count(ids.begin(), ids.end(), 50256) == 3);
  CHECK(tok->decode(ids) == "<|endoftext|>a<|endoftext|>b<|endoftext|><|endoftext|>c");
}

TEST_CASE("tokenizer: invalid UTF-8 is an error naming the byte offset") {
  const Tokenizer* tok = gpt2();
  if (!tok) return;
  struct Bad {
    std::string text;
    size_t offset;
  };
  const Bad cases[] = {{"abc\xff", 3},           {"ok \xc3", 3},          {"x\xe2\x82", 1},
                       {"surrogate \xed\xa0\x80", 10}, {"overlong \xc0\xaf", 9}, {"toobig \xf4\x90\x80\x80", 7},
                       {"stray \x80 continuation", 6}, {std::string(100, 'a') + "\xe2\x28\xa1", 100}};
  for (const auto& c : cases) {
    INFO("text " << c.text);
    const std::string msg = error_of([&] { tok->encode(c.text, SpecialTokens::disallowed); });
    CHECK(msg.find("invalid UTF-8 at byte offset " + std::to_string(c.offset)) != std::string::npos);
  }
  CHECK(tally::data::first_invalid_utf8("h\xc3\xa9llo \xf0\x9f\x98\x80") == 11);
  const std::string_view docs[] = {"fine", "bad\xfe"};
  CHECK(error_of([&] { tok->encode_documents(docs); }).find("document 1: invalid UTF-8 at byte offset 3") !=
        std::string::npos);
}

TEST_CASE("tokenizer: a character split over two tokens is written whole through Utf8Stream") {
  const Tokenizer* tok = gpt2();
  if (!tok) return;
  // GPT-2 has no token for most emoji: their four bytes are spread over two or more tokens.
  const std::string text = "hi \xF0\x9F\xA6\x99!";  // U+1F999
  const std::vector<int32_t> ids = tok->encode(text, SpecialTokens::disallowed);
  size_t split = 0;  // tokens whose bytes are not valid UTF-8 on their own
  tally::data::Utf8Stream s;
  std::string out;
  for (int32_t id : ids) {
    const std::string_view bytes = tok->token_bytes(id);
    if (tally::data::first_invalid_utf8(bytes) != bytes.size()) ++split;
    const std::string piece = s.push(bytes);
    CHECK(tally::data::first_invalid_utf8(piece) == piece.size());
    out += piece;
  }
  out += s.finish();
  CHECK(split >= 2);
  CHECK(out == text);
}

TEST_CASE("tokenizer: decode rejects ids outside the vocabulary") {
  const Tokenizer* tok = gpt2();
  if (!tok) return;
  const std::string msg = error_of([&] { tok->decode(std::vector<int32_t>{1, 2, 50257}); });
  CHECK(msg.find("id 50257 at position 2") != std::string::npos);
  CHECK_THROWS_AS(tok->decode(std::vector<int32_t>{-1}), tally::Error);
}

TEST_CASE("tokenizer: long words and long runs stay fast and exact") {
  const Tokenizer* tok = gpt2();
  if (!tok) return;
  const auto t0 = std::chrono::steady_clock::now();
  for (const std::string& s : {std::string(1 << 20, 'a'), std::string(1 << 20, ' '), std::string(1 << 19, '\n'),
                               std::string(1 << 19, '7'), std::string(1 << 18, '!')}) {
    const auto ids = tok->encode(s, SpecialTokens::disallowed);
    CHECK(tok->decode(ids) == s);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK_MESSAGE(secs < 20.0, "long inputs took " << secs << " s");
}

TEST_CASE("tokenizer: TALLY_GPT2_DIR chooses the default directory; a wrong one is an error") {
  const char* before = std::getenv("TALLY_GPT2_DIR");
  const std::optional<std::string> saved = before ? std::optional<std::string>(before) : std::nullopt;
  ::setenv("TALLY_GPT2_DIR", "/nonexistent/gpt2", 1);
  const std::string msg = error_of([] { Tokenizer::default_dir(); });
  if (!gpt2_dir().empty()) {
    ::setenv("TALLY_GPT2_DIR", gpt2_dir().c_str(), 1);
    CHECK(Tokenizer::default_dir() == gpt2_dir());
  }
  if (saved) ::setenv("TALLY_GPT2_DIR", saved->c_str(), 1);
  else ::unsetenv("TALLY_GPT2_DIR");
  CHECK(msg.find("TALLY_GPT2_DIR=/nonexistent/gpt2 does not hold encoder.json and vocab.bpe") != std::string::npos);
}

TEST_CASE("tokenizer: corrupt tokenizer files are clear errors naming the file") {
  if (gpt2_dir().empty()) {
    MESSAGE("SKIPPED: GPT-2 tokenizer files (encoder.json, vocab.bpe) neither found nor downloaded");
    return;
  }
  const std::string enc = slurp(gpt2_dir() / "encoder.json"), bpe = slurp(gpt2_dir() / "vocab.bpe");
  const fs::path dir = tally::test::temp_dir("tokenizer_corrupt");
  auto load_with = [&](const std::string& e, const std::string& b) {
    std::ofstream(dir / "encoder.json", std::ios::binary) << e;
    std::ofstream(dir / "vocab.bpe", std::ios::binary) << b;
    return error_of([&] { Tokenizer::load(dir); });
  };
  auto has = [](const std::string& msg, const std::string& part) {
    INFO("message: " << msg);
    CHECK(msg.find(part) != std::string::npos);
  };

  std::string msg = load_with(enc.substr(0, enc.size() / 2), bpe);  // truncated JSON
  has(msg, "encoder.json");
  has(msg, "not valid JSON");

  msg = load_with("[1, 2, 3]", bpe);
  has(msg, "expected a JSON object");

  msg = load_with(enc, bpe.substr(0, bpe.rfind('\n', bpe.size() - 2) + 1));  // last merge missing
  has(msg, "vocab.bpe");
  has(msg, "49999 merges");

  std::string extra_line = bpe + "a b c\n";
  msg = load_with(enc, extra_line);
  has(msg, "vocab.bpe line 50002");
  has(msg, "two space-separated parts");

  msg = load_with(enc, bpe.substr(bpe.find('\n') + 1));  // no #version line
  has(msg, "'#version'");

  std::string renumbered = enc;  // "!": 0 -> "!": 7
  renumbered.replace(renumbered.find("\"!\": 0"), 6, "\"!\": 7");
  msg = load_with(renumbered, bpe);
  has(msg, "encoder.json: token '!' has id 7");

  std::string no_eot = enc;
  no_eot.replace(no_eot.find("<|endoftext|>"), 13, "<|endoftexx|>");
  msg = load_with(no_eot, bpe);
  has(msg, "no '<|endoftext|>' entry");

  fs::remove(dir / "vocab.bpe");
  msg = error_of([&] { Tokenizer::load(dir); });
  has(msg, "cannot open");
  has(msg, "vocab.bpe");
  fs::remove_all(dir);
}

}  // TEST_SUITE
