// UTF-8 output from token bytes: ill-formed sequences become U+FFFD exactly as Python's bytes.decode("utf-8",
// errors="replace") (and so tiktoken's decode) makes them (the expected strings below are Python's answers), a
// character split across pieces comes out whole, and the output is always valid UTF-8.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "data/utf8.h"

using tally::data::first_invalid_utf8;
using tally::data::to_valid_utf8;
using tally::data::Utf8Stream;

namespace {

const std::string R = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

TEST_SUITE("data") {

TEST_CASE("utf8: ill-formed bytes become U+FFFD, one per maximal subpart, as Python's errors=\"replace\"") {
  struct Case {
    std::string in, out;
  };
  const Case cases[] = {
      {"plain ascii", "plain ascii"},
      {"h\xC3\xA9llo \xF0\x9F\x98\x80", "h\xC3\xA9llo \xF0\x9F\x98\x80"},  // valid: unchanged
      {"\xE2\x82", R},                                                       // truncated 3-byte: one
      {"\xFF\xFE", R + R},                                                   // bytes UTF-8 never uses
      {"\xE0\x80\x80", R + R + R},                                           // overlong: E0 needs A0..BF
      {"\xED\xA0\x80", R + R + R},                                           // a surrogate
      {"a\x80" "b", "a" + R + "b"},                                          // a lone continuation byte
      {"\xF0\x9F\x98", R},                                                   // truncated 4-byte
      {"\xE2\x82\xAC\x80", "\xE2\x82\xAC" + R},                              // euro sign, then a stray byte
      {"\xF4\x90\x80\x80", R + R + R + R},                                   // above U+10FFFF
      {"\xC0\xAF", R + R},                                                   // overlong 2-byte
      {"\xE2(\xA1", R + "(" + R},                                            // the break restarts at '('
      {"\xF1\x80\x80\xE2\x82\xAC", R + "\xE2\x82\xAC"},                      // cut short by a new lead
  };
  for (const Case& c : cases) {
    INFO("input bytes: " << c.in);
    const std::string out = to_valid_utf8(c.in);
    CHECK(out == c.out);
    CHECK(first_invalid_utf8(out) == out.size());
  }
}

TEST_CASE("utf8: a stream cut anywhere gives the same text as decoding the whole, and holds split characters back") {
  const std::string whole = "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \x80\xE2\x82 end \xF0\x9F";
  const std::string expected = to_valid_utf8(whole);
  for (size_t cut1 = 0; cut1 <= whole.size(); ++cut1)
    for (size_t cut2 = cut1; cut2 <= whole.size(); ++cut2) {
      Utf8Stream s;
      std::vector<std::string> pieces = {s.push(whole.substr(0, cut1)), s.push(whole.substr(cut1, cut2 - cut1)),
                                         s.push(whole.substr(cut2)), s.finish()};
      std::string joined;
      for (const std::string& p : pieces) {
        CHECK(first_invalid_utf8(p) == p.size());  // every piece printed on its own is valid
        joined += p;
      }
      CHECK(joined == expected);
    }
  // Byte by byte: the emoji appears whole, with its last byte, and nothing before.
  Utf8Stream s;
  CHECK(s.push("\xF0") == "");
  CHECK(s.push("\x9F") == "");
  CHECK(s.push("\x98") == "");
  CHECK(s.push("\x80") == "\xF0\x9F\x98\x80");
  CHECK(s.push("\xE2\x82") == "");
  CHECK(s.finish() == R);  // the stream ended inside a character
  CHECK(s.finish() == "");
}

}  // TEST_SUITE
