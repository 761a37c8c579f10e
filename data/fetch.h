// Tiny Shakespeare and GPT-2's tokenizer files (encoder.json, vocab.bpe): the places tally looks for them, and
// their download when no place has them. A download runs the curl command-line tool, streams into a temporary file
// beside its destination while hashing, and is renamed into place only when its size and SHA-256 equal the values
// pinned here: the cache never holds a partial or wrong file, and processes downloading at once cannot corrupt it.
// TALLY_OFFLINE=1 never touches the network; TALLY_DATA_URL replaces the canonical URLs (a mirror, a test server).
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tally::data {

enum class DataFile { tiny_shakespeare, gpt2_encoder, gpt2_vocab };

struct PinnedFile {
  std::string_view name;    // path under a data directory: "tinyshakespeare.txt", "gpt2/encoder.json", ...
  std::string_view url;     // the canonical public source
  int64_t bytes;            // its exact size
  std::string_view sha256;  // 64 lowercase hex digits
};
const PinnedFile& pinned(DataFile file);

// Directories searched, in order, before anything is downloaded: the data directory ($TALLY_CACHE_DIR, else data/
// in the checkout), then ../shared/data beside the checkout and beside the working directory ($TALLY_SHARED_DATA
// replaces those two).
std::vector<std::filesystem::path> search_dirs();
// Where downloads are kept: $TALLY_CACHE_DIR; else data/ in the checkout when it can be written; else
// $XDG_CACHE_HOME/tally (~/.cache/tally).
std::filesystem::path cache_dir();
// TALLY_OFFLINE set to anything but "", "0", "false", "no" or "off" (in any case).
bool offline();
// Where `file` is downloaded from: $TALLY_DATA_URL/<name> when that is set (http, https or file), else the
// canonical URL.
std::string download_url(DataFile file);

// The first search directory holding `file`. Its contents are not checked: a file placed by hand is used as it is.
std::optional<std::filesystem::path> find_local(DataFile file);
// cache_dir()/<name>: returned at once when it exists; else downloaded there, with a progress line on stderr, and
// checked against the pinned size and SHA-256. offline() and no cached copy: std::nullopt, and no network. A failed
// or mismatching download throws tally::Error naming the file, the URL, what was expected and what arrived, and how
// to place the file by hand; it leaves nothing in the cache.
std::optional<std::filesystem::path> fetch(DataFile file);
// find_local(), else fetch().
std::optional<std::filesystem::path> locate(DataFile file);

// A line for the "not found" messages given when offline() kept a download from happening.
std::string offline_note();

}  // namespace tally::data
