// UTF-8 validity and stream decoding (see utf8.h).
#include "data/utf8.h"

#include <cstdint>
#include <cstring>

namespace tally::data {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// What a byte allows as the start of a character: the sequence length (0: it cannot start one) and the range of
// the second byte, which excludes overlong forms (E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and code points
// above U+10FFFF (F4 90..BF). Every later byte is 80..BF.
struct Lead {
  size_t len = 0;
  unsigned lo = 0x80, hi = 0xBF;
};

Lead lead_of(unsigned c) {
  if (c >= 0xC2 && c <= 0xDF) return {2};
  if (c == 0xE0) return {3, 0xA0, 0xBF};
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return {3};
  if (c == 0xED) return {3, 0x80, 0x9F};
  if (c == 0xF0) return {4, 0x90, 0xBF};
  if (c >= 0xF1 && c <= 0xF3) return {4};
  if (c == 0xF4) return {4, 0x80, 0x8F};
  return {};
}

// How many bytes of the sequence starting at p[0] (a byte >= 0x80) are a valid prefix of a character, looking at
// no more than `avail` bytes: the whole length when the character is complete and valid.
size_t valid_prefix(const unsigned char* p, size_t avail, const Lead& lead) {
  size_t k = 1;
  for (; k < lead.len && k < avail; ++k) {
    const unsigned lo = k == 1 ? lead.lo : 0x80, hi = k == 1 ? lead.hi : 0xBF;
    if (p[k] < lo || p[k] > hi) break;
  }
  return k;
}

}  // namespace

size_t first_invalid_utf8(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {  // ASCII fast path, 8 bytes at a time
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (!(w & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const Lead lead = lead_of(p[i]);
    if (lead.len == 0 || valid_prefix(p + i, n - i, lead) != lead.len) return i;
    i += lead.len;
  }
  return n;
}

std::string Utf8Stream::push(std::string_view bytes) {
  std::string in = carry_;
  in.append(bytes);
  carry_.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  const size_t n = in.size();
  std::string out;
  out.reserve(n + 8);
  size_t i = 0;
  while (i < n) {
    if (p[i] < 0x80) {
      out.push_back(char(p[i++]));
      continue;
    }
    const Lead lead = lead_of(p[i]);
    if (lead.len == 0) {  // a continuation byte without a lead, or a byte UTF-8 never uses
      out.append(kReplacement);
      ++i;
      continue;
    }
    const size_t ok = valid_prefix(p + i, n - i, lead);
    if (ok == lead.len) {
      out.append(in, i, ok);
    } else if (i + ok == n) {  // valid so far, cut short by the end of this piece: wait for the rest
      carry_.assign(in, i, ok);
    } else {  // the maximal subpart p[i, i+ok) is one U+FFFD; the byte that broke it starts afresh
      out.append(kReplacement);
    }
    i += ok;
  }
  return out;
}

std::string Utf8Stream::finish() {
  const bool held = !carry_.empty();
  carry_.clear();
  return held ? std::string(kReplacement) : std::string();
}

std::string to_valid_utf8(std::string_view bytes) {
  Utf8Stream s;
  std::string out = s.push(bytes);
  out += s.finish();
  return out;
}

}  // namespace tally::data
