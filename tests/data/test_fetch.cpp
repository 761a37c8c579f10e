// Tests of data/fetch.h without a network: file:// mirrors (TALLY_DATA_URL) serving good, truncated, altered,
// oversized and missing files, a refused connection for a server that is down, TALLY_OFFLINE=1, a missing curl,
// and the search order. Downloads go to a temporary TALLY_CACHE_DIR; tests/cli/fetch.sh does the same end to end
// over HTTP with the executable.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/io/sha256.h"
#include "data/fetch.h"
#include "data/tokenizer.h"
#include "tests/core/io_test_helpers.h"
#include "tests/test_util.h"

using namespace tally;
using namespace tally::data;
using tally::test::contains;
using tally::test::error_message;
namespace fs = std::filesystem;

namespace {

// A temporary cache and mirror, with the environment pointing at them for the test's lifetime: TALLY_CACHE_DIR,
// TALLY_DATA_URL=file://<mirror>, TALLY_SHARED_DATA at a directory that does not exist (no shared copy is found),
// TALLY_OFFLINE and TALLY_GPT2_DIR unset.
struct Sandbox {
  fs::path root, cache, mirror;
  test::ScopedEnv cache_env, url_env, shared_env, offline_env, gpt2_env;
  explicit Sandbox(const std::string& name)
      : root(test::temp_dir(name)),
        cache(root / "cache"),
        mirror(root / "mirror"),
        cache_env("TALLY_CACHE_DIR", cache.string()),
        url_env("TALLY_DATA_URL", "file://" + mirror.string()),
        shared_env("TALLY_SHARED_DATA", (root / "no-shared").string()),
        offline_env("TALLY_OFFLINE", std::nullopt),
        gpt2_env("TALLY_GPT2_DIR", std::nullopt) {
    fs::create_directories(mirror / "gpt2");
  }
  ~Sandbox() { fs::remove_all(root); }
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  void serve(DataFile f, const std::string& bytes) const { test::write_raw(mirror / pinned(f).name, bytes); }
  void serve_copy(DataFile f, const fs::path& from) const {
    fs::copy_file(from, mirror / pinned(f).name, fs::copy_options::overwrite_existing);
  }
  std::string url(DataFile f) const { return "file://" + (mirror / pinned(f).name).string(); }
  // Every file under the cache (temporary files included).
  std::vector<fs::path> cached() const {
    std::vector<fs::path> out;
    if (fs::exists(cache))
      for (const auto& e : fs::recursive_directory_iterator(cache))
        if (!e.is_directory()) out.push_back(e.path());
    return out;
  }
};

// The three real files, found (or downloaded) before any sandbox changes where tally looks; empty when absent.
struct RealFiles {
  fs::path text = test::data_file(DataFile::tiny_shakespeare);
  fs::path encoder = test::data_file(DataFile::gpt2_encoder);
  fs::path vocab = test::data_file(DataFile::gpt2_vocab);
  bool all() const { return !text.empty() && !encoder.empty() && !vocab.empty(); }
};

}  // namespace

TEST_SUITE("fetch") {

TEST_CASE("fetch: the pinned sizes and digests are those of the files as found") {
  const RealFiles real;
  if (!real.all()) {
    MESSAGE("SKIPPED: the data files were neither found nor downloaded");
    return;
  }
  for (const auto& entry : {std::pair{DataFile::tiny_shakespeare, real.text},
                            std::pair{DataFile::gpt2_encoder, real.encoder},
                            std::pair{DataFile::gpt2_vocab, real.vocab}}) {
    const DataFile file = entry.first;  // not structured bindings: doctest's CHECK captures them in a lambda (clang)
    const fs::path path = entry.second;
    CHECK_MESSAGE(int64_t(fs::file_size(path)) == pinned(file).bytes, path.string());
    CHECK_MESSAGE(io::sha256_file_hex(path) == pinned(file).sha256, path.string());
  }
}

TEST_CASE("fetch: search order, cache directory, URLs and TALLY_OFFLINE follow the environment") {
  {
    test::ScopedEnv cache("TALLY_CACHE_DIR", "/c"), shared("TALLY_SHARED_DATA", "/s");
    CHECK(search_dirs() == std::vector<fs::path>{"/c", "/s"});
    CHECK(cache_dir() == fs::path("/c"));
  }
  {
    test::ScopedEnv cache("TALLY_CACHE_DIR", std::nullopt), shared("TALLY_SHARED_DATA", std::nullopt);
    const fs::path source = TALLY_SOURCE_DIR;
    const std::vector<fs::path> dirs = search_dirs();
    REQUIRE(dirs.size() >= 2);
    CHECK(dirs[0] == source / "data");
    CHECK(dirs[1] == source.parent_path() / "shared" / "data");
    if (::access((source / "data").c_str(), W_OK) == 0) CHECK(cache_dir() == source / "data");
  }
  {
    test::ScopedEnv url("TALLY_DATA_URL", std::nullopt);
    CHECK(download_url(DataFile::tiny_shakespeare) ==
          "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt");
    CHECK(download_url(DataFile::gpt2_vocab) == "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/vocab.bpe");
  }
  {
    test::ScopedEnv url("TALLY_DATA_URL", "http://127.0.0.1:8000/mirror/");
    CHECK(download_url(DataFile::gpt2_encoder) == "http://127.0.0.1:8000/mirror/gpt2/encoder.json");
  }
  for (const auto& entry : {std::pair{"", false}, std::pair{"0", false}, std::pair{"false", false},
                            std::pair{"No", false}, std::pair{"OFF", false}, std::pair{"1", true},
                            std::pair{"yes", true}, std::pair{"true", true}, std::pair{"offline", true}}) {
    const char* value = entry.first;
    const bool expected = entry.second;
    test::ScopedEnv env("TALLY_OFFLINE", value);
    CHECK_MESSAGE(offline() == expected, "TALLY_OFFLINE=", value);
  }
}

TEST_CASE("fetch: a good file is downloaded, checked and cached; later calls download nothing") {
  const RealFiles real;
  if (!real.all()) {
    MESSAGE("SKIPPED: the data files were neither found nor downloaded");
    return;
  }
  Sandbox sb("fetch_good");
  sb.serve_copy(DataFile::tiny_shakespeare, real.text);
  sb.serve_copy(DataFile::gpt2_encoder, real.encoder);
  sb.serve_copy(DataFile::gpt2_vocab, real.vocab);
  CHECK_FALSE(find_local(DataFile::tiny_shakespeare).has_value());

  const auto text = fetch(DataFile::tiny_shakespeare);
  REQUIRE(text.has_value());
  CHECK(*text == sb.cache / "tinyshakespeare.txt");
  CHECK(io::sha256_file_hex(*text) == pinned(DataFile::tiny_shakespeare).sha256);
  CHECK(sb.cached() == std::vector<fs::path>{*text});  // no temporary file left beside it

  // The mirror is gone: a second download would fail, so these calls show that nothing is downloaded again.
  fs::remove(sb.mirror / "tinyshakespeare.txt");
  CHECK(fetch(DataFile::tiny_shakespeare) == text);
  CHECK(locate(DataFile::tiny_shakespeare) == text);

  // The tokenizer's default directory: both files downloaded into the cache's gpt2/, and they load.
  CHECK(Tokenizer::default_dir() == sb.cache / "gpt2");
  CHECK(Tokenizer::load().vocab_size() == 50257);
  CHECK(sb.cached().size() == 3);
}

TEST_CASE("fetch: truncated, altered, oversized and missing files are refused, saying what and how, keeping nothing") {
  Sandbox sb("fetch_bad");
  const PinnedFile& text = pinned(DataFile::tiny_shakespeare);
  const std::string by_hand = "To place the file by hand: download " + std::string(text.url) +
                              ", check that `sha256sum` prints " + std::string(text.sha256) + ", and save it as " +
                              (sb.cache / "tinyshakespeare.txt").string();
  const std::string expected = "expected 1,115,394 bytes with SHA-256 " + std::string(text.sha256);

  const std::string truncated(1000, 'x');
  sb.serve(DataFile::tiny_shakespeare, truncated);
  std::string msg = error_message([] { fetch(DataFile::tiny_shakespeare); });
  CHECK(contains(msg, "tinyshakespeare.txt from " + sb.url(DataFile::tiny_shakespeare) + ": " + expected));
  CHECK(contains(msg, "got 1,000 bytes with SHA-256 " + io::sha256_hex(truncated) + "; nothing was kept"));
  CHECK(contains(msg, by_hand));
  CHECK(sb.cached().empty());

  // The right size, other bytes.
  const std::string altered(size_t(text.bytes), 'x');
  sb.serve(DataFile::tiny_shakespeare, altered);
  msg = error_message([] { fetch(DataFile::tiny_shakespeare); });
  CHECK(contains(msg, expected + ", got 1,115,394 bytes with SHA-256 " + io::sha256_hex(altered)));
  CHECK(contains(msg, by_hand));
  CHECK(sb.cached().empty());

  // Longer than the pinned size: refused (by curl's --max-filesize, or when the bytes pass the size).
  sb.serve(DataFile::tiny_shakespeare, std::string(size_t(text.bytes) + 300000, 'x'));
  msg = error_message([] { fetch(DataFile::tiny_shakespeare); });
  CHECK(contains(msg, "tinyshakespeare.txt"));
  CHECK(contains(msg, sb.url(DataFile::tiny_shakespeare)));
  CHECK(contains(msg, expected));
  CHECK(contains(msg, by_hand));
  CHECK(sb.cached().empty());

  // Not served at all: curl's own reason.
  msg = error_message([] { fetch(DataFile::gpt2_vocab); });
  CHECK(contains(msg, "gpt2/vocab.bpe: downloading " + sb.url(DataFile::gpt2_vocab) + " failed after 0 bytes (curl: ("));
  CHECK(contains(msg, "expected 456,318 bytes with SHA-256 " + std::string(pinned(DataFile::gpt2_vocab).sha256)));
  CHECK(contains(msg, "save it as " + (sb.cache / "gpt2" / "vocab.bpe").string()));
  CHECK(sb.cached().empty());
}

TEST_CASE("fetch: a server that is down is a clear error naming the URL") {
  Sandbox sb("fetch_down");
  // A socket bound to a port but not listening: a connection to it is refused, and no other process can take it.
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(s >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  REQUIRE(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  const std::string base = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  test::ScopedEnv url("TALLY_DATA_URL", base);
  const std::string msg = error_message([] { fetch(DataFile::gpt2_encoder); });
  ::close(s);
  // curl's exit status 7: "Failed to connect to host".
  CHECK(contains(msg, "gpt2/encoder.json: downloading " + base + "/gpt2/encoder.json failed after 0 bytes (curl: (7)"));
  CHECK(contains(msg, "To place the file by hand: download " + std::string(pinned(DataFile::gpt2_encoder).url)));
  CHECK(sb.cached().empty());
}

TEST_CASE("fetch: TALLY_OFFLINE=1 downloads nothing, and still uses what is cached") {
  Sandbox sb("fetch_offline");
  test::ScopedEnv offline_env("TALLY_OFFLINE", "1");
  // The mirror serves a wrong file: any attempt to download would throw.
  sb.serve(DataFile::tiny_shakespeare, "wrong");
  CHECK_FALSE(fetch(DataFile::tiny_shakespeare).has_value());
  CHECK_FALSE(locate(DataFile::tiny_shakespeare).has_value());
  CHECK(sb.cached().empty());
  const std::string msg = error_message([] { Tokenizer::default_dir(); });
  CHECK(contains(msg, "GPT-2 files (encoder.json, vocab.bpe) not found"));
  CHECK(contains(msg, "TALLY_OFFLINE is set, so nothing was downloaded"));
  CHECK(sb.cached().empty());

  // A file already in the cache (placed by hand here) is used as it is.
  fs::create_directories(sb.cache);
  test::write_raw(sb.cache / "tinyshakespeare.txt", std::string("placed by hand"));
  CHECK(fetch(DataFile::tiny_shakespeare) == sb.cache / "tinyshakespeare.txt");
  CHECK(locate(DataFile::tiny_shakespeare) == sb.cache / "tinyshakespeare.txt");
}

TEST_CASE("fetch: without curl on PATH the error says how to install it") {
  Sandbox sb("fetch_no_curl");
  test::ScopedEnv path("PATH", (sb.root / "empty-bin").string());
  sb.serve(DataFile::tiny_shakespeare, "x");
  const std::string msg = error_message([] { fetch(DataFile::tiny_shakespeare); });
  CHECK(contains(msg, "tinyshakespeare.txt: the curl command-line tool is not installed (scripts/install-deps.sh"));
  CHECK(sb.cached().empty());
}

}  // TEST_SUITE
