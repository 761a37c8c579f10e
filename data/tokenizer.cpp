// GPT-2 BPE tokenizer (see tokenizer.h): file loading and consistency checks, the PCRE2 pre-tokenizer, the merge
// loop, the per-call word cache, and the parallel chunking of large inputs.
// Parity target: tiktoken's `gpt2` encoding; tests/reference/tokenizer_reference.json holds its answers.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/tokenizer.h"

#include <omp.h>
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "data/fetch.h"
#include "data/utf8.h"

namespace tally::data {

namespace fs = std::filesystem;

namespace {

std::string hex_byte(unsigned char b) {
  static const char* digits = "0123456789ABCDEF";
  return std::string("0x") + digits[b >> 4] + digits[b & 15];
}

void check_utf8(std::string_view text, const std::string& what) {
  const size_t bad = first_invalid_utf8(text);
  if (bad != text.size())
    fail("[tokenizer] encode: ", what, "invalid UTF-8 at byte offset ", bad, " (byte ",
         hex_byte(static_cast<unsigned char>(text[bad])), ")");
}

// GPT-2 stores token bytes as printable characters ("data gym" form): the 188 printable bytes stand for
// themselves, the other 68 map in increasing order to U+0100..U+0143. This is also the order of the 256 single-byte
// ranks (tiktoken's rank_to_intbyte).
bool gym_printable(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174; }

struct ByteMaps {
  std::array<int16_t, 324> byte_of_codepoint{};  // -1: not a data-gym character
  std::array<uint8_t, 256> byte_of_rank{};
  ByteMaps() {
    byte_of_codepoint.fill(-1);
    int rank = 0, extra = 0;
    for (int b = 0; b < 256; ++b) {
      if (!gym_printable(b)) continue;
      byte_of_codepoint[b] = static_cast<int16_t>(b);
      byte_of_rank[rank++] = static_cast<uint8_t>(b);
    }
    for (int b = 0; b < 256; ++b) {
      if (gym_printable(b)) continue;
      byte_of_codepoint[256 + extra++] = static_cast<int16_t>(b);
      byte_of_rank[rank++] = static_cast<uint8_t>(b);
    }
  }
};
const ByteMaps& byte_maps() {
  static const ByteMaps maps;
  return maps;
}

// Decodes one data-gym token string into its bytes; false when it holds a character outside the mapping.
bool gym_to_bytes(std::string_view s, std::string& out) {
  out.clear();
  const auto& map = byte_maps().byte_of_codepoint;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp;
    if (p[i] < 0x80) cp = p[i], i += 1;
    else if ((p[i] & 0xE0) == 0xC0 && i + 1 < s.size()) cp = ((p[i] & 0x1Fu) << 6) | (p[i + 1] & 0x3Fu), i += 2;
    else return false;  // every data-gym character is below U+0800
    if (cp >= map.size() || map[cp] < 0) return false;
    out.push_back(static_cast<char>(map[cp]));
  }
  return true;
}

std::string read_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  TALLY_CHECK(f, "[tokenizer] cannot open ", path.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  TALLY_CHECK(!f.bad(), "[tokenizer] error reading ", path.string());
  return ss.str();
}

// Open-addressing map from a pair of token ids to the id of their concatenation (tiktoken's rank of the merged
// bytes). Looked up once per adjacent pair in the merge loop, so it is a flat array rather than a node map.
class PairMap {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, -1);
    mask_ = cap - 1;
  }
  void insert(int32_t a, int32_t b, int32_t merged) {
    const uint64_t k = key(a, b);
    for (size_t i = slot(k);; i = (i + 1) & mask_) {
      if (keys_[i] == kEmpty || keys_[i] == k) {
        keys_[i] = k, vals_[i] = merged;
        return;
      }
    }
  }
  // The merged id, or kNone when a+b is not a token.
  int32_t find(int32_t a, int32_t b) const {
    const uint64_t k = key(a, b);
    for (size_t i = slot(k);; i = (i + 1) & mask_) {
      if (keys_[i] == k) return vals_[i];
      if (keys_[i] == kEmpty) return kNone;
    }
  }
  static constexpr int32_t kNone = std::numeric_limits<int32_t>::max();

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  size_t slot(uint64_t k) const { return size_t((k * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
  std::vector<uint64_t> keys_;
  std::vector<int32_t> vals_;
  size_t mask_ = 0;
};

// Open-addressing map from token bytes to id, probed once or twice per pre-tokenized piece (the hottest lookup
// of an encode). A slot holds the first 8 bytes and the length inline, so most probes touch one cache line and never
// the token bytes; longer keys compare their tail against the token store.
class TokenTable {
 public:
  // Indexes tokens 0..count-1 of the store; returns the first id whose bytes repeat an earlier token's, or -1.
  int32_t build(const std::string& bytes, const std::vector<uint32_t>& offset, int32_t count) {
    base_ = bytes.data();
    offset_ = offset.data();
    size_t cap = 16;
    while (cap < 3 * size_t(count)) cap <<= 1;
    slots_.assign(cap, Slot{0, 0, -1});
    mask_ = cap - 1;
    for (int32_t id = 0; id < count; ++id) {
      const std::string_view key(base_ + offset_[id], offset_[id + 1] - offset_[id]);
      const uint64_t head = head_of(key);
      size_t i = hash(key, head) & mask_;
      for (; slots_[i].id >= 0; i = (i + 1) & mask_)
        if (equal(slots_[i], key, head)) return id;
      slots_[i] = Slot{head, uint32_t(key.size()), id};
    }
    return -1;
  }
  int32_t find(std::string_view key) const {
    const uint64_t head = head_of(key);
    for (size_t i = hash(key, head) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.id < 0) return -1;
      if (equal(s, key, head)) return s.id;
    }
  }

 private:
  struct Slot {
    uint64_t head;  // the first min(8, len) bytes, zero-padded
    uint32_t len;
    int32_t id;  // -1: empty
  };
  static uint64_t head_of(std::string_view k) {
    uint64_t h = 0;
    if (k.size() >= 8) std::memcpy(&h, k.data(), 8);
    else
      for (size_t i = 0; i < k.size(); ++i) h |= uint64_t(static_cast<unsigned char>(k[i])) << (8 * i);
    return h;
  }
  static uint64_t hash(std::string_view k, uint64_t head) {
    uint64_t h = (head ^ (uint64_t(k.size()) << 56)) * 0x9E3779B97F4A7C15ull;
    for (size_t i = 8; i < k.size(); i += 8) {
      uint64_t w = 0;
      std::memcpy(&w, k.data() + i, std::min<size_t>(8, k.size() - i));
      h = (h ^ (h >> 29) ^ w) * 0xBF58476D1CE4E5B9ull;
    }
    return h ^ (h >> 31);
  }
  bool equal(const Slot& s, std::string_view k, uint64_t head) const {
    return s.head == head && s.len == k.size() &&
           (k.size() <= 8 || std::memcmp(base_ + offset_[s.id] + 8, k.data() + 8, k.size() - 8) == 0);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  const char* base_ = nullptr;
  const uint32_t* offset_ = nullptr;
};

// Unicode White_Space, which is what tiktoken's regex engine means by \s. PCRE2's \s under PCRE2_UCP also takes
// U+180E (no longer White_Space since Unicode 6.3), so the class is spelled out.
constexpr const char* kSpace =
    R"(\t\n\x{0B}\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Letters and numbers assigned after Unicode 14. tiktoken's regex engine has Unicode 16 tables, PCRE2 10.42 has
// Unicode 14's, where these are unassigned and would fall into the "other" class. Generated by
// tests/reference/unicode_newer_classes.py; a newer PCRE2 already has them, and listing them again is harmless.
// 9272 code points
constexpr const char* kNewerLetters =
    R"(\x{1C89}-\x{1C8A}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3}\x{10D4A}-\x{10D65})"
    R"(\x{10D6F}-\x{10D85}\x{10EC2}-\x{10EC4}\x{1123F}-\x{11240}\x{11380}-\x{11389}\x{1138B}\x{1138E})"
    R"(\x{11390}-\x{113B5}\x{113B7}\x{113D1}\x{113D3}\x{11BC0}-\x{11BE0}\x{11F02}\x{11F04}-\x{11F10})"
    R"(\x{11F12}-\x{11F33}\x{1342F}\x{13441}-\x{13446}\x{13460}-\x{143FA}\x{16100}-\x{1611D})"
    R"(\x{16D40}-\x{16D6C}\x{18CFF}\x{1B132}\x{1B155}\x{1DF25}-\x{1DF2A}\x{1E030}-\x{1E06D})"
    R"(\x{1E4D0}-\x{1E4EB}\x{1E5D0}-\x{1E5ED}\x{1E5F0}\x{2B739}\x{2EBF0}-\x{2EE5D}\x{31350}-\x{323AF})";
// 120 code points
constexpr const char* kNewerNumbers =
    R"(\x{10D40}-\x{10D49}\x{116D0}-\x{116E3}\x{11BF0}-\x{11BF9}\x{11F50}-\x{11F59}\x{16130}-\x{16139})"
    R"(\x{16D70}-\x{16D79}\x{1CCF0}-\x{1CCF9}\x{1D2C0}-\x{1D2D3}\x{1E4F0}-\x{1E4F9}\x{1E5F1}-\x{1E5FA})";

// Which letter/number tables a compiled pattern uses: PCRE2's own, or PCRE2's plus the newer code points above.
// The extended classes make PCRE2's JIT code about a quarter slower, so a chunk without any of those code points
// (checked by a byte scan) uses the plain pattern; on such text both patterns match identically.
enum class LetterTables { pcre2, extended };

// GPT-2's pattern  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+  with \s spelled
// out (and, for LetterTables::extended, \p{L} and \p{N} widened as above).
std::string gpt2_pattern(LetterTables tables) {
  const bool ext = tables == LetterTables::extended;
  const std::string s = kSpace, l = std::string("\\p{L}") + (ext ? kNewerLetters : ""),
                    n = std::string("\\p{N}") + (ext ? kNewerNumbers : "");
  return "'s|'t|'re|'ve|'m|'ll|'d| ?[" + l + "]+| ?[" + n + "]+| ?[^" + s + l + n + "]+|[" + s + "]+(?![^" + s +
         "])|[" + s + "]+";
}

// The ranges of a "\x{A}-\x{B}\x{C}..." class body, for the byte scan.
std::vector<std::pair<uint32_t, uint32_t>> parse_ranges(std::string_view body) {
  std::vector<std::pair<uint32_t, uint32_t>> out;
  auto code = [&](size_t& i) {
    const size_t close = body.find('}', i);
    const auto v = uint32_t(std::stoul(std::string(body.substr(i + 3, close - i - 3)), nullptr, 16));
    i = close + 1;
    return v;
  };
  for (size_t i = 0; i < body.size();) {
    const uint32_t a = code(i);
    uint32_t b = a;
    if (i < body.size() && body[i] == '-') ++i, b = code(i);
    out.emplace_back(a, b);
  }
  return out;
}

// A compiled pattern (JIT-compiled when PCRE2 supports it here).
struct Regex {
  pcre2_code* code = nullptr;
  bool jit = false;
  explicit Regex(LetterTables tables) {
    const std::string pat = gpt2_pattern(tables);
    int err = 0;
    PCRE2_SIZE erroff = 0;
    // ANCHORED: every position starts a match (the alternatives cover every character), so the scan never needs
    // PCRE2 to search forward; anchoring skips that machinery.
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pat.c_str()), pat.size(), PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED,
                         &err, &erroff, nullptr);
    if (!code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("[tokenizer] PCRE2 could not compile the GPT-2 pattern at offset ", erroff, ": ",
           reinterpret_cast<const char*>(msg));
    }
    jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Regex() { pcre2_code_free(code); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
};

// A range of one segment to pre-tokenize and merge, or a special token to emit as is.
struct Work {
  std::string_view segment;  // the regex subject: a whole run of text between special tokens
  size_t begin = 0, end = 0;  // the part of it this item covers (end > begin), at match boundaries
  int32_t special = -1;       // >= 0: emit this id and ignore the text
  static Work token(int32_t id) { return {.segment = {}, .begin = 0, .end = 0, .special = id}; }
};

// Below this many bytes in total, an encode runs on the calling thread only.
constexpr size_t kParallelMinBytes = size_t(1) << 17;
constexpr size_t kMinChunkBytes = size_t(1) << 16;
// Pieces longer than this are merged without consulting or filling the word cache.
constexpr size_t kMaxCachedPiece = 128;
// The merge loop switches from the array scan (quadratic, fast for short words) to a heap above this length.
constexpr size_t kShortPiece = 64;

// PCRE2 match data, match context and JIT stack for one thread. The pattern has no capture groups, so one
// ovector pair serves any tokenizer; created on a thread's first encode and freed when the thread ends.
struct PcreState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  PcreState() {
    md = pcre2_match_data_create(1, nullptr);
    mctx = pcre2_match_context_create(nullptr);
    // Runs of one character class do not grow the JIT stack, but a generous one keeps odd inputs from failing.
    stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
    if (!md || !mctx || !stack) throw Error("[tokenizer] out of memory creating PCRE2 match data");
    pcre2_jit_stack_assign(mctx, nullptr, stack);
  }
  ~PcreState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(mctx);
    pcre2_match_data_free(md);
  }
  PcreState(const PcreState&) = delete;
  PcreState& operator=(const PcreState&) = delete;
  static const PcreState& for_this_thread() {
    thread_local const PcreState state;
    return state;
  }
};

bool ascii_non_space(unsigned char c) { return c < 0x80 && c != ' ' && (c < '\t' || c > '\r'); }

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Impl

struct Tokenizer::Impl {
  fs::path dir;
  std::string bytes;             // every token's bytes, back to back
  std::vector<uint32_t> offset;  // token id -> [offset[id], offset[id+1]) in bytes
  TokenTable rank_of;            // ordinary token bytes -> id
  std::array<int32_t, 256> byte_token{};
  PairMap pairs;
  Regex plain{LetterTables::pcre2}, extended{LetterTables::extended};
  std::vector<std::pair<uint32_t, uint32_t>> newer = newer_ranges();

  std::string_view token(int32_t id) const { return {bytes.data() + offset[id], offset[id + 1] - offset[id]}; }
  int32_t vocab() const { return int32_t(offset.size() - 1); }

  // Per-thread state of one encode call: the PCRE2 match state (kept per thread across calls, since creating it
  // costs more than encoding a sentence) and the word -> tokens cache. The cache keys are views into the caller's
  // text, which outlives the call; an empty cache allocates nothing, so short calls pay nothing for it.
  struct Scratch {
    const PcreState& pcre = PcreState::for_this_thread();
    std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;  // -> [offset, length) in pool
    std::vector<int32_t> pool;
  };

  static std::vector<std::pair<uint32_t, uint32_t>> newer_ranges() {
    auto r = parse_ranges(kNewerLetters), n = parse_ranges(kNewerNumbers);
    r.insert(r.end(), n.begin(), n.end());
    std::sort(r.begin(), r.end());
    return r;
  }

  // Whether text holds a code point of the newer tables. Only three lead bytes can start one: E1 and EA (the
  // 3-byte ones, U+1C89.. and U+A7CB..) and F0 (all others are U+105C0..U+323AF); the text is valid UTF-8.
  bool has_newer(std::string_view text) const {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    for (size_t i = 0; i < n; ++i) {
      // Skip 8 bytes at a time while none is >= 0xE0 (bits 7, 6 and 5 all set).
      while (i + 8 <= n) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (w & (w << 1) & (w << 2) & 0x8080808080808080ull) break;
        i += 8;
      }
      if (i >= n) break;
      const unsigned c = p[i];
      if (c != 0xE1 && c != 0xEA && c != 0xF0) continue;
      uint32_t cp;
      if (c == 0xF0) {
        if (i + 3 >= n) break;
        cp = ((p[i + 1] & 0x3Fu) << 12) | ((p[i + 2] & 0x3Fu) << 6) | (p[i + 3] & 0x3Fu);
      } else {
        if (i + 2 >= n) break;
        cp = ((c & 0x0Fu) << 12) | ((p[i + 1] & 0x3Fu) << 6) | (p[i + 2] & 0x3Fu);
      }
      auto it = std::upper_bound(newer.begin(), newer.end(), std::pair<uint32_t, uint32_t>{cp, UINT32_MAX});
      if (it != newer.begin() && std::prev(it)->second >= cp) return true;
    }
    return false;
  }

  // Appends the tokens of one pre-tokenized piece that is not itself a token: repeatedly merge the adjacent pair
  // whose concatenation has the lowest rank (ties: leftmost), exactly tiktoken's _byte_pair_merge.
  void merge(std::string_view piece, std::vector<int32_t>& out) const {
    const size_t n = piece.size();
    if (n <= kShortPiece) {
      int32_t ids[kShortPiece], ranks[kShortPiece];  // ranks[i]: merged id of (ids[i], ids[i+1]); last = none
      for (size_t i = 0; i < n; ++i) ids[i] = byte_token[static_cast<unsigned char>(piece[i])];
      for (size_t i = 0; i + 1 < n; ++i) ranks[i] = pairs.find(ids[i], ids[i + 1]);
      ranks[n - 1] = PairMap::kNone;
      size_t m = n;
      while (m > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < m; ++i)
          if (ranks[i] < ranks[best]) best = i;
        if (ranks[best] == PairMap::kNone) break;
        ids[best] = ranks[best];
        std::memmove(ids + best + 1, ids + best + 2, (m - best - 2) * sizeof(int32_t));
        std::memmove(ranks + best + 1, ranks + best + 2, (m - best - 2) * sizeof(int32_t));
        --m;
        ranks[best] = best + 1 < m ? pairs.find(ids[best], ids[best + 1]) : PairMap::kNone;
        if (best > 0) ranks[best - 1] = pairs.find(ids[best - 1], ids[best]);
      }
      out.insert(out.end(), ids, ids + m);
      return;
    }
    merge_long(piece, out);
  }

  // The same rule for long pieces in O(n log n): a doubly linked list of parts and a min-heap of candidate pairs
  // keyed (rank, left position); an entry is stale once either part has changed (version counters).
  void merge_long(std::string_view piece, std::vector<int32_t>& out) const {
    const int32_t n = int32_t(piece.size());
    std::vector<int32_t> id(n), next(n), prev(n);
    std::vector<uint32_t> version(n, 0);
    struct Cand {
      int32_t rank, left, right;
      uint32_t vl, vr;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    for (int32_t i = 0; i < n; ++i)
      id[i] = byte_token[static_cast<unsigned char>(piece[i])], next[i] = i + 1 < n ? i + 1 : -1, prev[i] = i - 1;
    auto push = [&](int32_t l) {
      if (l < 0 || next[l] < 0) return;
      const int32_t r = next[l], rank = pairs.find(id[l], id[r]);
      if (rank != PairMap::kNone) heap.push({rank, l, r, version[l], version[r]});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      if (version[c.left] != c.vl || version[c.right] != c.vr) continue;
      id[c.left] = c.rank;
      ++version[c.left];
      ++version[c.right];  // removed
      next[c.left] = next[c.right];
      if (next[c.right] >= 0) prev[next[c.right]] = c.left;
      push(prev[c.left]);
      push(c.left);
    }
    for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(id[i]);
  }

  void piece_tokens(std::string_view piece, Scratch& s, std::vector<int32_t>& out) const {
    if (const int32_t id = rank_of.find(piece); id >= 0) {  // tiktoken's shortcut: a whole-token piece
      out.push_back(id);
      return;
    }
    if (piece.size() > kMaxCachedPiece) {
      merge(piece, out);
      return;
    }
    if (auto it = s.cache.find(piece); it != s.cache.end()) {
      const auto [off, len] = it->second;
      out.insert(out.end(), s.pool.begin() + off, s.pool.begin() + off + len);
      return;
    }
    const size_t before = out.size();
    merge(piece, out);
    const auto off = uint32_t(s.pool.size()), len = uint32_t(out.size() - before);
    s.pool.insert(s.pool.end(), out.begin() + std::ptrdiff_t(before), out.end());
    s.cache.emplace(piece, std::pair{off, len});
  }

  void encode_work(const Work& w, Scratch& s, std::vector<int32_t>& out) const {
    if (w.special >= 0) {
      out.push_back(w.special);
      return;
    }
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(w.segment.data());
    const size_t len = w.segment.size();
    // The look-ahead past w.end reads one white-space test, which both patterns answer alike.
    const Regex& re = has_newer(w.segment.substr(w.begin, w.end - w.begin)) ? extended : plain;
    size_t at = w.begin;
    while (at < w.end) {
      // The subject is the whole segment so that the look-ahead of \s+(?!\S) sees past a chunk's end exactly as
      // the serial scan would.
      const int rc = re.jit ? pcre2_jit_match(re.code, subject, len, at, 0, s.pcre.md, s.pcre.mctx)
                            : pcre2_match(re.code, subject, len, at, PCRE2_NO_UTF_CHECK, s.pcre.md, s.pcre.mctx);
      TALLY_CHECK(rc > 0, "[tokenizer] encode: PCRE2 found no token at byte ", at, " (code ", rc, ")");
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.pcre.md);
      TALLY_ASSERT(ov[0] == at && ov[1] > at);
      piece_tokens(w.segment.substr(at, ov[1] - at), s, out);
      at = ov[1];
    }
  }

  // Splits one text segment into work items of about chunk bytes. A chunk may end only before an ASCII
  // non-space that follows '\n': the whitespace run holding that '\n' cannot take the next character, so a match
  // boundary is there in the serial scan too, and scanning restarts identically.
  static void add_segment(std::string_view seg, size_t chunk, std::vector<Work>& work) {
    size_t begin = 0;
    while (begin < seg.size()) {
      size_t end = seg.size();
      for (size_t p = begin + chunk; p < seg.size(); ++p) {
        if (seg[p - 1] == '\n' && ascii_non_space(static_cast<unsigned char>(seg[p]))) {
          end = p;
          break;
        }
      }
      work.push_back({.segment = seg, .begin = begin, .end = end, .special = -1});
      begin = end;
    }
  }

  std::vector<int32_t> run(const std::vector<Work>& work, size_t total_bytes) const {
    const int threads = omp_get_max_threads();
    std::vector<int32_t> result;
    if (threads == 1 || total_bytes < kParallelMinBytes || work.size() < 2) {
      Scratch s;
      result.reserve(total_bytes / 3 + 16);
      for (const Work& w : work) encode_work(w, s, result);
      return result;
    }
    std::vector<std::vector<int32_t>> parts(work.size());
    std::exception_ptr error;
#pragma omp parallel
    {
      try {
        Scratch s;
#pragma omp for schedule(dynamic, 1)
        for (size_t i = 0; i < work.size(); ++i) {
          parts[i].reserve((work[i].end - work[i].begin) / 3 + 4);
          encode_work(work[i], s, parts[i]);
        }
      } catch (...) {
#pragma omp critical(tally_tokenizer_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
    std::vector<size_t> at(parts.size() + 1, 0);
    for (size_t i = 0; i < parts.size(); ++i) at[i + 1] = at[i] + parts[i].size();
    result.resize(at.back());
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < parts.size(); ++i)
      std::copy(parts[i].begin(), parts[i].end(), result.begin() + std::ptrdiff_t(at[i]));
    return result;
  }

  static size_t chunk_bytes(size_t total) {
    return std::max(kMinChunkBytes, total / (size_t(std::max(1, omp_get_max_threads())) * 8));
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Loading

fs::path Tokenizer::default_dir() {
  std::vector<fs::path> tried;
  auto ok = [](const fs::path& d) { return fs::exists(d / "encoder.json") && fs::exists(d / "vocab.bpe"); };
  if (const char* env = std::getenv("TALLY_GPT2_DIR"); env && *env) {
    // An explicit setting that is wrong is an error, not a reason to look elsewhere.
    TALLY_CHECK(ok(env), "[tokenizer] TALLY_GPT2_DIR=", env, " does not hold encoder.json and vocab.bpe");
    return env;
  }
  for (const fs::path& searched : search_dirs()) {
    const fs::path d = (searched / "gpt2").lexically_normal();
    if (ok(d)) return d;
    tried.push_back(d);
  }
  // None has both: the two from the download cache, downloaded there once (not with TALLY_OFFLINE=1).
  const auto encoder = fetch(DataFile::gpt2_encoder), vocab = fetch(DataFile::gpt2_vocab);
  if (encoder && vocab) return encoder->parent_path();
  std::string msg =
      "[tokenizer] GPT-2 files (encoder.json, vocab.bpe) not found; set TALLY_GPT2_DIR to a directory "
      "holding both (tally prepare also takes --tokenizer-dir). Tried:";
  for (const auto& d : tried) msg += cat(' ', d.string());
  throw Error(cat(msg, ". ", offline_note()));
}

Tokenizer Tokenizer::load(const fs::path& dir_arg) {
  const fs::path dir = dir_arg.empty() ? default_dir() : dir_arg;
  const fs::path enc_path = dir / "encoder.json", bpe_path = dir / "vocab.bpe";
  return build(read_file(enc_path), read_file(bpe_path), dir);
}

Tokenizer Tokenizer::from_memory(std::string_view encoder_json, std::string_view vocab_bpe, const fs::path& dir) {
  return build(encoder_json, vocab_bpe, dir);
}

Tokenizer Tokenizer::build(std::string_view enc_text, std::string_view bpe_text, const fs::path& dir) {
  const fs::path enc_path = dir / "encoder.json", bpe_path = dir / "vocab.bpe";
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  const ByteMaps& maps = byte_maps();

  // vocab.bpe: "#version" line, then one merge "left right" per line; merge i makes token 256 + i. As tiktoken
  // (data_gym_to_mergeable_bpe_ranks), the single bytes take ranks 0..255 in data-gym order.
  std::vector<std::string> ordinary;  // rank -> bytes
  ordinary.reserve(50256);
  for (int r = 0; r < 256; ++r) ordinary.emplace_back(1, static_cast<char>(maps.byte_of_rank[r]));
  {
    const std::string_view text = bpe_text;
    const auto where = [&](size_t line) { return cat("[tokenizer] ", bpe_path.string(), " line ", line, ": "); };
    size_t pos = text.find('\n');
    TALLY_CHECK(text.rfind("#version", 0) == 0 && pos != std::string::npos, "[tokenizer] ", bpe_path.string(),
                ": expected a '#version' first line (a GPT-2 vocab.bpe), found '",
                text.substr(0, std::min<size_t>(40, pos)), "'");
    ++pos;
    std::string left, right;
    for (size_t line = 2; pos < text.size(); ++line) {
      size_t eol = text.find('\n', pos);
      if (eol == std::string::npos) eol = text.size();
      const std::string_view l(text.data() + pos, eol - pos);
      pos = eol + 1;
      std::vector<std::string_view> fields;
      for (size_t i = 0; i < l.size();) {
        while (i < l.size() && (l[i] == ' ' || l[i] == '\t' || l[i] == '\r')) ++i;
        size_t j = i;
        while (j < l.size() && l[j] != ' ' && l[j] != '\t' && l[j] != '\r') ++j;
        if (j > i) fields.push_back(l.substr(i, j - i));
        i = j;
      }
      if (fields.empty() && pos >= text.size()) break;  // the final newline
      TALLY_CHECK(fields.size() == 2, where(line), "expected a merge of two space-separated parts, found '", l, "'");
      TALLY_CHECK(gym_to_bytes(fields[0], left) && gym_to_bytes(fields[1], right), where(line),
                  "a part holds a character outside GPT-2's byte alphabet: '", l, "'");
      ordinary.push_back(left + right);
    }
  }

  // encoder.json: token string -> id. It must agree with the ranks from vocab.bpe; <|endoftext|> is the only
  // special token.
  nlohmann::json enc;
  try {
    enc = nlohmann::json::parse(enc_text);
  } catch (const nlohmann::json::exception& e) {
    fail("[tokenizer] ", enc_path.string(), ": not valid JSON: ", e.what());
  }
  TALLY_CHECK(enc.is_object(), "[tokenizer] ", enc_path.string(), ": expected a JSON object of token -> id, found a ",
              enc.type_name());
  const int64_t merges = int64_t(ordinary.size()) - 256;
  TALLY_CHECK(enc.contains(std::string(kEndOfTextText)), "[tokenizer] ", enc_path.string(), ": no '",
              kEndOfTextText, "' entry");
  TALLY_CHECK(int64_t(enc.size()) == int64_t(ordinary.size()) + 1, "[tokenizer] ", enc_path.string(), " has ",
              enc.size(), " entries but ", bpe_path.string(), " has ", merges, " merges (expected ", enc.size() - 257,
              " merges: entries = 256 bytes + merges + <|endoftext|>)");
  const int32_t vocab = int32_t(ordinary.size()) + 1;

  impl->offset.assign(size_t(vocab) + 1, 0);
  for (size_t r = 0; r < ordinary.size(); ++r) impl->offset[r + 1] = impl->offset[r] + uint32_t(ordinary[r].size());
  impl->offset[size_t(vocab)] = impl->offset[size_t(vocab) - 1] + uint32_t(kEndOfTextText.size());
  impl->bytes.reserve(impl->offset.back());
  for (const auto& o : ordinary) impl->bytes += o;
  impl->bytes += kEndOfTextText;
  const int32_t repeat = impl->rank_of.build(impl->bytes, impl->offset, vocab - 1);
  TALLY_CHECK(repeat < 0, "[tokenizer] ", bpe_path.string(), " line ", repeat - 256 + 2,
              ": this merge makes a token an earlier merge already made");

  std::string key_bytes;
  for (const auto& [key, value] : enc.items()) {
    TALLY_CHECK(value.is_number_integer(), "[tokenizer] ", enc_path.string(), ": id of '", key,
                "' is not an integer (", value.dump(), ")");
    const int64_t id = value.get<int64_t>();
    if (key == kEndOfTextText) {
      TALLY_CHECK(id == vocab - 1 && id == kEndOfText, "[tokenizer] ", enc_path.string(), ": '", key, "' has id ", id,
                  ", expected ", kEndOfText, " (the last id)");
      continue;
    }
    TALLY_CHECK(gym_to_bytes(key, key_bytes), "[tokenizer] ", enc_path.string(), ": token '", key,
                "' holds a character outside GPT-2's byte alphabet");
    const int32_t rank = impl->rank_of.find(key_bytes);
    TALLY_CHECK(rank >= 0, "[tokenizer] ", enc_path.string(), ": token '", key, "' (id ", id,
                ") is not made by any merge in ", bpe_path.string());
    TALLY_CHECK(rank == id, "[tokenizer] ", enc_path.string(), ": token '", key, "' has id ", id, " but ",
                bpe_path.string(), " gives it rank ", rank);
  }

  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    impl->byte_token[size_t(b)] = impl->rank_of.find(std::string_view(&c, 1));
  }
  // Every split of a token into two tokens is a pair the merge loop may join (tiktoken looks up the concatenated
  // bytes; a pair table keyed by the two ids is the same test without hashing strings).
  impl->pairs.reserve(size_t(vocab) * 4);
  for (int32_t t = 256; t + 1 < vocab; ++t) {
    const std::string_view s = impl->token(t);
    for (size_t k = 1; k < s.size(); ++k) {
      const int32_t a = impl->rank_of.find(s.substr(0, k));
      if (a < 0) continue;
      const int32_t b = impl->rank_of.find(s.substr(k));
      if (b >= 0) impl->pairs.insert(a, b, t);
    }
  }
  return Tokenizer(std::move(impl));
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

int32_t Tokenizer::vocab_size() const { return impl_->vocab(); }
const fs::path& Tokenizer::dir() const { return impl_->dir; }

std::string_view Tokenizer::token_bytes(int32_t id) const {
  TALLY_CHECK(id >= 0 && id < impl_->vocab(), "[tokenizer] token_bytes: id ", id, " is outside the vocabulary [0, ",
              impl_->vocab(), ")");
  return impl_->token(id);
}

// ---------------------------------------------------------------------------------------------------------------
// Encode / decode

std::vector<int32_t> Tokenizer::encode(std::string_view text, SpecialTokens special) const {
  check_utf8(text, "");
  const size_t chunk = Impl::chunk_bytes(text.size());
  std::vector<Work> work;
  if (special == SpecialTokens::disallowed) {
    Impl::add_segment(text, chunk, work);
  } else {
    // As tiktoken: the text between special tokens is pre-tokenized on its own (the regex does not see across).
    size_t start = 0;
    while (start <= text.size()) {
      const size_t hit = text.find(kEndOfTextText, start);
      const size_t end = hit == std::string_view::npos ? text.size() : hit;
      if (end > start) Impl::add_segment(text.substr(start, end - start), chunk, work);
      if (hit == std::string_view::npos) break;
      work.push_back(Work::token(kEndOfText));
      start = hit + kEndOfTextText.size();
    }
  }
  return impl_->run(work, text.size());
}

std::vector<int32_t> Tokenizer::encode_documents(std::span<const std::string_view> docs) const {
  size_t total = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    check_utf8(docs[i], cat("document ", i, ": "));
    total += docs[i].size();
  }
  const size_t chunk = Impl::chunk_bytes(total);
  std::vector<Work> work;
  work.reserve(docs.size() * 2);
  for (std::string_view d : docs) {
    work.push_back(Work::token(kEndOfText));
    if (!d.empty()) Impl::add_segment(d, chunk, work);
  }
  return impl_->run(work, total);
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  const int32_t vocab = impl_->vocab();
  size_t n = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    TALLY_CHECK(ids[i] >= 0 && ids[i] < vocab, "[tokenizer] decode: id ", ids[i], " at position ", i,
                " is outside the vocabulary [0, ", vocab, ")");
    n += impl_->offset[size_t(ids[i]) + 1] - impl_->offset[size_t(ids[i])];
  }
  std::string out;
  out.reserve(n);
  for (int32_t id : ids) out += impl_->token(id);
  return out;
}

}  // namespace tally::data
