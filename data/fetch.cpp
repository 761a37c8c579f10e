// The data files' lookup and download (see fetch.h). curl runs as a child process (posix_spawnp, no shell) with
// the body on one pipe and its messages on another; the body goes through io::AtomicFileWriter (temp file beside
// the destination, fsync, rename, removed unless committed) and io::Sha256 as it arrives.
#include "data/fetch.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <system_error>

#include "core/error.h"
#include "core/io/file.h"
#include "core/io/sha256.h"
#include "core/ledger.h"  // format_count, format_bytes_human

extern char** environ;

namespace tally::data {

namespace fs = std::filesystem;

namespace {

// The values ../shared/data/README.md records. The GPT-2 files are the 124M model's, as nanoGPT and llm.c fetch
// them (tiktoken's gpt2 encoding pins the same digests).
constexpr std::array<PinnedFile, 3> kPinned = {{
    {"tinyshakespeare.txt", "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
     1115394, "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"},
    {"gpt2/encoder.json", "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/encoder.json", 1042301,
     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"},
    {"gpt2/vocab.bpe", "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/vocab.bpe", 456318,
     "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"},
}};

std::string env_or_empty(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// One line of what curl wrote to stderr (its last non-empty line: "curl: (7) Failed to connect ...").
std::string last_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  const size_t nl = text.find_last_of('\n');
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

// How to do by hand what the download would have done.
std::string by_hand(const PinnedFile& f, const fs::path& dest) {
  return cat("To place the file by hand: download ", f.url, ", check that `sha256sum` prints ", f.sha256,
             ", and save it as ", dest.string(), " (or set TALLY_DATA_URL to a mirror that serves ", f.name, ").");
}

std::string expected_text(const PinnedFile& f) {
  return cat(format_count(f.bytes), " bytes with SHA-256 ", f.sha256);
}

// The progress line on stderr. On a terminal it is rewritten in place (at most ten times a second) with the share
// received so far; elsewhere (logs) it is written once when the download starts.
class Progress {
 public:
  Progress(const PinnedFile& f, const std::string& url) : total_(f.bytes), tty_(::isatty(STDERR_FILENO) == 1) {
    head_ = cat("downloading ", f.name, " (", format_bytes_human(f.bytes), ") from ", url);
    std::fprintf(stderr, "%s%s", head_.c_str(), tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void update(int64_t received) {
    if (!tty_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    std::fprintf(stderr, "\r%s: %3d%%", head_.c_str(), int(100 * std::min(received, total_) / total_));
    std::fflush(stderr);
  }
  // Ends the line; `outcome` follows the share on a terminal, or stands on its own line elsewhere.
  void finish(const std::string& outcome) {
    if (tty_) std::fprintf(stderr, "\r%s: %s\n", head_.c_str(), outcome.c_str());
    else std::fprintf(stderr, "  %s\n", outcome.c_str());
    std::fflush(stderr);
  }

 private:
  std::string head_;
  int64_t total_;
  bool tty_;
  std::chrono::steady_clock::time_point last_{};
};

// A file descriptor closed when it goes out of scope.
struct Fd {
  int fd = -1;
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// The curl child: killed and reaped if it is still running when this goes out of scope (an error unwinding).
struct Child {
  pid_t pid = -1;
  ~Child() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      wait();
    }
  }
  int wait() {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    pid = -1;
    return status;
  }
};

struct Transfer {
  int64_t bytes = 0;         // body bytes received (at most the pinned size + one read)
  bool too_long = false;     // more than the pinned size arrived; curl was stopped
  int status = 0;            // curl's wait status
  std::string curl_message;  // curl's stderr
};

// Runs curl for `url`, handing each piece of the body to `sink` and stopping curl once more than `limit` bytes
// have arrived. Throws when curl cannot be started.
template <class Sink>
Transfer run_curl(const std::string& url, int64_t limit, const std::string& what, Sink&& sink) {
  const std::string max_size = std::to_string(limit);
  // Bounded waits (no connection in 30 s, or under 1 KB/s for a minute, gives up); no shell, no config file. No
  // --retry: a retried transfer would append a second copy of the body to the pipe.
  std::vector<std::string> args = {"curl",
                                   "--disable",
                                   "--silent",
                                   "--show-error",
                                   "--fail",
                                   "--location",
                                   "--proto",
                                   "=http,https,file",
                                   "--proto-redir",
                                   "=http,https",
                                   "--connect-timeout",
                                   "30",
                                   "--speed-limit",
                                   "1024",
                                   "--speed-time",
                                   "60",
                                   "--max-filesize",
                                   max_size,
                                   "--url",
                                   url};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::array<int, 2> body_pipe{-1, -1}, message_pipe{-1, -1};
  TALLY_CHECK(::pipe2(body_pipe.data(), O_CLOEXEC) == 0 && ::pipe2(message_pipe.data(), O_CLOEXEC) == 0, "[fetch] ",
              what, ": cannot create a pipe for curl: ", std::system_category().message(errno));
  Fd body{body_pipe[0]}, body_w{body_pipe[1]}, messages{message_pipe[0]}, messages_w{message_pipe[1]};

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, body_w.fd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, messages_w.fd, STDERR_FILENO);
  Child child;
  const int err = ::posix_spawnp(&child.pid, "curl", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) {
    child.pid = -1;
    if (err == ENOENT)
      fail("[fetch] ", what, ": the curl command-line tool is not installed (scripts/install-deps.sh installs it; "
           "or `apt-get install curl`)");
    fail("[fetch] ", what, ": cannot start curl: ", std::system_category().message(err));
  }
  body_w.reset();
  messages_w.reset();

  Transfer t;
  std::array<char, 1 << 16> buf;
  std::array<pollfd, 2> fds = {pollfd{body.fd, POLLIN, 0}, pollfd{messages.fd, POLLIN, 0}};
  int open_pipes = 2;
  while (open_pipes > 0) {
    if (::poll(fds.data(), fds.size(), -1) < 0) {  // curl's own limits bound the wait
      TALLY_CHECK(errno == EINTR, "[fetch] ", what, ": poll failed: ", std::system_category().message(errno));
      continue;
    }
    for (pollfd& p : fds) {
      if (p.fd < 0 || p.revents == 0) continue;
      const ssize_t n = ::read(p.fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {  // end of file (curl exited or closed it), or a read error: this pipe is done
        p.fd = -1;
        --open_pipes;
        continue;
      }
      if (p.fd == messages.fd) {
        if (t.curl_message.size() < 4096) t.curl_message.append(buf.data(), size_t(n));
        continue;
      }
      t.bytes += n;
      if (t.bytes > limit) {  // a wrong file: stop here rather than receive an endless stream
        t.too_long = true;
        ::kill(child.pid, SIGTERM);
        p.fd = -1;
        --open_pipes;
        body.reset();
        continue;
      }
      sink(buf.data(), size_t(n), t.bytes);
    }
  }
  t.status = child.wait();
  return t;
}

fs::path download(DataFile file, const fs::path& dest) {
  const PinnedFile& f = pinned(file);
  const std::string url = download_url(file);
  std::error_code ec;
  fs::create_directories(dest.parent_path(), ec);
  TALLY_CHECK(!ec, "[fetch] ", f.name, ": cannot create the cache directory ", dest.parent_path().string(), ": ",
              ec.message(), "; set TALLY_CACHE_DIR to a directory that can be written. ", by_hand(f, dest));

  io::AtomicFileWriter out(dest);  // removed unless committed: a failure below leaves nothing behind
  io::Sha256 sha;
  Progress progress(f, url);
  Transfer t;
  try {
    t = run_curl(url, f.bytes, std::string(f.name), [&](const char* p, size_t n, int64_t so_far) {
      out.write(p, n);
      sha.update(p, n);
      progress.update(so_far);
    });
  } catch (const Error& e) {  // curl could not run, or the cache could not take the bytes
    progress.finish("failed");
    fail(e.what(), "; nothing was kept. ", by_hand(f, dest));
  }

  const bool curl_ok = WIFEXITED(t.status) && WEXITSTATUS(t.status) == 0;
  if (t.too_long) {
    progress.finish("refused");
    fail("[fetch] ", f.name, " from ", url, ": expected ", expected_text(f), ", got more than ", format_count(f.bytes),
         " bytes (stopped there); nothing was kept. ", by_hand(f, dest));
  }
  if (!curl_ok) {
    progress.finish("failed");
    std::string why = last_line(t.curl_message);
    if (why.empty())
      why = WIFSIGNALED(t.status) ? cat("curl was killed by signal ", WTERMSIG(t.status))
                                  : cat("curl exited with status ", WEXITSTATUS(t.status));
    fail("[fetch] ", f.name, ": downloading ", url, " failed after ", format_count(t.bytes), " bytes (", why,
         "); expected ", expected_text(f), "; nothing was kept. ", by_hand(f, dest));
  }
  const std::string got = sha.hex();
  if (t.bytes != f.bytes || got != f.sha256) {
    progress.finish("refused");
    fail("[fetch] ", f.name, " from ", url, ": expected ", expected_text(f), ", got ", format_count(t.bytes),
         " bytes with SHA-256 ", got, "; nothing was kept. ", by_hand(f, dest));
  }
  out.commit();
  progress.finish(cat(format_count(t.bytes), " bytes, SHA-256 as pinned, saved as ", dest.string()));
  return dest;
}

}  // namespace

const PinnedFile& pinned(DataFile file) { return kPinned.at(size_t(file)); }

std::vector<fs::path> search_dirs() {
  const fs::path source = TALLY_SOURCE_DIR;
  std::vector<fs::path> dirs;
  const std::string cache = env_or_empty("TALLY_CACHE_DIR"), shared = env_or_empty("TALLY_SHARED_DATA");
  dirs.push_back(cache.empty() ? source / "data" : fs::path(cache));
  if (!shared.empty()) {
    dirs.push_back(shared);
  } else {
    for (const fs::path& d : {source.parent_path() / "shared" / "data",
                              fs::current_path().parent_path() / "shared" / "data"})
      if (std::find(dirs.begin(), dirs.end(), d) == dirs.end()) dirs.push_back(d);
  }
  return dirs;
}

fs::path cache_dir() {
  if (const std::string dir = env_or_empty("TALLY_CACHE_DIR"); !dir.empty()) return dir;
  const fs::path in_checkout = fs::path(TALLY_SOURCE_DIR) / "data";
  if (::access(in_checkout.c_str(), W_OK) == 0) return in_checkout;
  // XDG base directories: a relative XDG_CACHE_HOME is invalid and ignored.
  if (const fs::path xdg = env_or_empty("XDG_CACHE_HOME"); xdg.is_absolute()) return xdg / "tally";
  const std::string home = env_or_empty("HOME");
  TALLY_CHECK(!home.empty(), "[fetch] no cache directory for downloads: ", in_checkout.string(),
              " cannot be written and neither XDG_CACHE_HOME nor HOME is set; set TALLY_CACHE_DIR");
  return fs::path(home) / ".cache" / "tally";
}

bool offline() {
  // Set and not a "no" (0, false, no, off, any case): offline. Another value errs on the side of no network.
  std::string v = env_or_empty("TALLY_OFFLINE");
  for (char& ch : v) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  return !v.empty() && v != "0" && v != "false" && v != "no" && v != "off";
}

std::string download_url(DataFile file) {
  const PinnedFile& f = pinned(file);
  std::string base = env_or_empty("TALLY_DATA_URL");
  if (base.empty()) return std::string(f.url);
  while (!base.empty() && base.back() == '/') base.pop_back();
  return cat(base, '/', f.name);
}

std::optional<fs::path> find_local(DataFile file) {
  const PinnedFile& f = pinned(file);
  for (const fs::path& d : search_dirs())
    if (fs::is_regular_file(d / f.name)) return (d / f.name).lexically_normal();
  return std::nullopt;
}

std::optional<fs::path> fetch(DataFile file) {
  const PinnedFile& f = pinned(file);
  const fs::path dest = cache_dir() / f.name;
  if (fs::is_regular_file(dest)) return dest;
  if (offline()) return std::nullopt;
  return download(file, dest);
}

std::optional<fs::path> locate(DataFile file) {
  if (auto p = find_local(file)) return p;
  return fetch(file);
}

std::string offline_note() {
  return cat("TALLY_OFFLINE is set, so nothing was downloaded; without it the file is downloaded into ",
             cache_dir().string(), " and checked against its pinned SHA-256.");
}

}  // namespace tally::data
