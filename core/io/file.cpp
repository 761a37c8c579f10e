// Whole-file reads, MappedFile, AtomicFileWriter (temp file + fsync + rename + directory fsync) and CRC-32C.
// POSIX file descriptors are used directly (not iostreams) so every failure reports the precise errno.
#include "core/io/file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <system_error>

#include "core/error.h"
#include "core/faults.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace tally::io {
namespace fs = std::filesystem;

namespace {

std::string errno_text(int err) { return std::system_category().message(err); }

// Why open(path) failed, in words a user can act on.
std::string open_problem(const fs::path& path, int err) {
  switch (err) {
    case ENOENT: return "does not exist";
    case EACCES: return "cannot be read: permission denied";
    case EISDIR: return "is a directory, expected a file";
    case ENOTDIR: return "has a parent that is not a directory";
    default: return cat("cannot be opened: ", errno_text(err));
  }
}

// What a reader takes: any file it can read through (a pipe's data too), or only a regular file (a memory map).
enum class Readable : uint8_t { any_file, regular_file };

// Opens path read-only and checks it is not a directory (nor anything but a regular file when `want` says so);
// returns the fd and fills st. A file that must be regular (to be mapped) is opened without blocking: a FIFO with no
// writer would otherwise hold open() forever before its type could be refused (O_NONBLOCK changes nothing for a
// regular file's reads).
int open_for_reading(const fs::path& path, struct stat& st, Readable want) {
  const int flags = O_RDONLY | O_CLOEXEC | (want == Readable::regular_file ? O_NONBLOCK : 0);
  int fd = ::open(path.c_str(), flags);
  if (fd < 0) fail("[io] '", path.string(), "' ", open_problem(path, errno));
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("[io] '", path.string(), "': cannot stat: ", errno_text(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail("[io] '", path.string(), "' is a directory, expected a file");
  }
  if (want == Readable::regular_file && !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("[io] '", path.string(), "' is not a regular file (a device, a pipe or a socket) and cannot be memory-mapped");
  }
  return fd;
}

template <class Container>
Container read_all(const fs::path& path) {
  struct stat st{};
  int fd = open_for_reading(path, st, Readable::any_file);
  Container out;
  // Regular files report their size, so one allocation suffices; pipes and /proc files report 0 and grow.
  if (S_ISREG(st.st_mode) && st.st_size > 0) out.resize(size_t(st.st_size));
  size_t filled = 0;
  for (;;) {
    if (filled == out.size()) out.resize(std::max<size_t>(out.size() * 2, 4096));
    ssize_t r = ::read(fd, out.data() + filled, out.size() - filled);
    if (r < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      fail("[io] '", path.string(), "': read failed after ", filled, " bytes: ", errno_text(err));
    }
    if (r == 0) break;
    filled += size_t(r);
  }
  ::close(fd);
  out.resize(filled);
  return out;
}

}  // namespace

std::vector<uint8_t> read_file(const fs::path& path) { return read_all<std::vector<uint8_t>>(path); }
std::string read_file_text(const fs::path& path) { return read_all<std::string>(path); }

// ---------------------------------------------------------------------------------------------------------
// DirectoryLock

namespace {

// "pid 1234: tally train --out runs/a", from /proc/self/cmdline (arguments joined by spaces).
std::string holder_text() {
  std::string cmd = read_file_text("/proc/self/cmdline");
  while (!cmd.empty() && cmd.back() == '\0') cmd.pop_back();
  std::replace(cmd.begin(), cmd.end(), '\0', ' ');
  return cat("pid ", ::getpid(), ": ", cmd, "\n");
}

}  // namespace

DirectoryLock::DirectoryLock(const fs::path& dir, std::string_view what) {
  const fs::path path = dir / kLockFile;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("[io] cannot lock the ", what, " '", dir.string(), "': '", path.string(), "' ", open_problem(path, errno));
  while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EINTR) continue;
    ::close(fd_);
    fd_ = -1;
    if (err != EWOULDBLOCK) fail("[io] cannot lock the ", what, " '", dir.string(), "': flock: ", errno_text(err));
    std::string holder;
    try {
      holder = read_file_text(path);
    } catch (const Error&) {
    }
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == '\0')) holder.pop_back();
    fail("the ", what, " '", dir.string(), "' is in use by another process (",
         holder.empty() ? std::string("it has not recorded its pid yet") : holder,
         "); wait for it to finish, stop it, or choose another directory");
  }
  // Ours now: record who holds it (for the message a second process gets).
  const std::string text = holder_text();
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, text.data(), text.size(), 0) != ssize_t(text.size())) {
    const int err = errno;
    ::close(fd_);  // a constructor that throws runs no destructor
    fd_ = -1;
    fail("[io] cannot write '", path.string(), "': ", errno_text(err));
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor of the open file releases the flock
}

// ---------------------------------------------------------------------------------------------------------
// MappedFile

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  struct stat st{};
  int fd = open_for_reading(path, st, Readable::regular_file);
  size_ = size_t(st.st_size);
  if (size_ > 0) {  // mmap of length 0 is an error (EINVAL); an empty file simply has no mapping
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail("[io] '", path.string(), "': cannot memory-map ", size_, " bytes: ", errno_text(err));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)), data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

void MappedFile::release() noexcept {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

// ---------------------------------------------------------------------------------------------------------
// AtomicFileWriter

namespace {

constexpr size_t kBufferBytes = size_t(256) << 10;
constexpr size_t kMaxSyscallBytes = size_t(1) << 30;  // Linux moves at most ~2 GiB per write() anyway

// Temp paths of live writers in this process: two writers for one path would share a temp file.
std::mutex g_live_mutex;
std::set<std::string> g_live_temps;

// Paths to remove when a signal ends the process (RemovedOnTermination): each slot holds a heap copy of one path;
// the handler only reads the slots and calls unlink, rmdir, sigaction and raise (async-signal-safe), then dies by
// the signal as it would have. Files first, so that a staging directory is empty when its turn comes.
constexpr int kRemovalSlots = 64;
std::atomic<char*> g_file_slots[kRemovalSlots], g_dir_slots[kRemovalSlots];

// Installed for the signals whose action is the default: a program that handles them itself (the trainer stops
// after its step and saves) keeps its handler.
void install_removal_handler() {
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction old {};
    if (sigaction(sig, nullptr, &old) != 0 || (old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) continue;
    struct sigaction sa {};
    sa.sa_handler = die_by_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, nullptr);
  }
}

// The slot now holding a copy of `path`, or null when every slot is taken.
std::atomic<char*>* hold(std::atomic<char*> (&slots)[kRemovalSlots], const fs::path& path) {
  char* copy = ::strdup(path.c_str());
  if (!copy) return nullptr;
  for (auto& slot : slots) {
    char* empty = nullptr;
    if (slot.compare_exchange_strong(empty, copy)) return &slot;
  }
  std::free(copy);
  return nullptr;
}

// A released path is not freed while the process runs: a handler on another thread may be reading it (a
// process-directed signal can land on any thread). A few bytes per write; freed at exit.
struct Retired {
  std::mutex mutex;
  std::vector<char*> paths;
  ~Retired() {
    for (char* p : paths) std::free(p);
  }
};
Retired g_retired;

void release(std::atomic<char*>* slot) {
  if (!slot) return;
  char* p = slot->exchange(nullptr);
  std::lock_guard lock(g_retired.mutex);
  g_retired.paths.push_back(p);
}

void forget_temp(const fs::path& temp) {
  std::lock_guard lock(g_live_mutex);
  g_live_temps.erase(temp.string());
}

fs::path directory_of(const fs::path& path) {
  fs::path dir = path.parent_path();
  return dir.empty() ? fs::path(".") : dir;
}

}  // namespace

void die_by_signal(int sig) {
  for (auto& slot : g_file_slots)
    if (const char* p = slot.load()) ::unlink(p);
  for (auto& slot : g_dir_slots)
    if (const char* p = slot.load()) ::rmdir(p);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(sig, &dfl, nullptr);
  ::raise(sig);
}

RemovedOnTermination::RemovedOnTermination(const std::vector<fs::path>& files,
                                           const std::vector<fs::path>& directories) {
  install_removal_handler();
  for (const fs::path& f : files) held_.push_back(hold(g_file_slots, f));
  for (const fs::path& d : directories) held_.push_back(hold(g_dir_slots, d));
}

RemovedOnTermination::~RemovedOnTermination() {
  for (std::atomic<char*>* slot : held_) release(slot);
}

fs::path through_links(const fs::path& path) {
  fs::path p = path;
  std::error_code ec;
  for (int hops = 0; fs::is_symlink(p, ec); ++hops) {
    TALLY_CHECK(hops < 40, "[io] '", path.string(), "': more than 40 symbolic links in a row (a loop?)");
    const fs::path target = fs::read_symlink(p, ec);
    TALLY_CHECK(!ec, "[io] '", p.string(), "': cannot read the symbolic link: ", ec.message());
    // Not normalised: "dir/../x" is the kernel's to resolve (dir may be a link itself, whose ".." is not its parent's).
    p = target.is_absolute() ? target : p.parent_path() / target;
  }
  return p;
}

AtomicFileWriter::AtomicFileWriter(fs::path path) : path_(std::move(path)) {
  TALLY_CHECK(!path_.empty(), "[io] AtomicFileWriter: empty path");
  TALLY_CHECK(path_.has_filename(), "[io] '", path_.string(), "': expected a file path, got a directory path");
  fault_after_ = faults::write_after_bytes();
  std::error_code ec;
  // A symbolic link is written through: the file it names is replaced (or made, when it names none), the link stays.
  path_ = through_links(path_);
  TALLY_CHECK(path_.has_filename(), "[io] '", path.string(), "' is a link to a directory path ('", path_.string(),
              "'), not to a file");
  if (fs::is_directory(path_, ec))
    fail("[io] '", path_.string(), "' is a directory; cannot replace it with a file");
  if (fs::exists(path_, ec) && !fs::is_regular_file(path_, ec))
    fail("[io] '", path_.string(), "' is not a regular file (a device, a pipe or a socket): tally writes a file by ",
         "replacing it whole, which would replace that; give the path of a file");
  fs::path dir = directory_of(path_);
  if (!fs::is_directory(dir, ec))
    fail("[io] '", path_.string(), "': cannot write: ",
         fs::exists(dir, ec) ? cat("'", dir.string(), "' is not a directory")
                             : cat("directory '", dir.string(), "' does not exist"));

  temp_path_ = path_;
  temp_path_ += cat(".tmp.", ::getpid());
  {
    std::lock_guard lock(g_live_mutex);
    if (!g_live_temps.insert(temp_path_.string()).second)
      fail("[io] '", path_.string(), "': another AtomicFileWriter in this process is already writing it");
  }
  removed_if_killed_ = std::make_unique<RemovedOnTermination>(std::vector<fs::path>{temp_path_});
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd_ < 0) {
    int err = errno;
    forget_temp(temp_path_);
    state_ = State::failed;
    fail("[io] '", path_.string(), "': cannot create temp file '", temp_path_.string(), "': ",
         err == EACCES ? "permission denied" : errno_text(err));
  }
}

AtomicFileWriter::~AtomicFileWriter() {
  if (state_ == State::open || state_ == State::synced) abandon();
}

void AtomicFileWriter::abandon() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(temp_path_.c_str());
  removed_if_killed_.reset();
  forget_temp(temp_path_);
  state_ = State::failed;
}

void AtomicFileWriter::fail_write(int err, size_t attempted) {
  abandon();
  std::error_code ec;
  std::string previous = fs::exists(path_, ec) ? cat("the previous '", path_.string(), "' is intact")
                                               : cat("'", path_.string(), "' was not created");
  if (err == ENOSPC || err == EDQUOT)
    fail("[io] '", path_.string(), "': cannot write: the disk is full (",
         err == ENOSPC ? "no space left on device" : "disk quota exceeded", ") after ", on_disk_,
         " bytes had been written; ", previous, " and the temp file '", temp_path_.string(), "' was removed");
  if (err == EFBIG)  // the process's file-size limit (SIGXFSZ is ignored: the write fails instead of the process)
    fail("[io] '", path_.string(), "': cannot write: the file would exceed this process's file-size limit (",
         "ulimit -f) after ", on_disk_, " bytes; ", previous, " and the temp file '", temp_path_.string(),
         "' was removed");
  fail("[io] '", path_.string(), "': writing ", attempted, " bytes to temp file '", temp_path_.string(),
       "' failed after ", on_disk_, " bytes: ", err == 0 ? "write() made no progress" : errno_text(err), "; ",
       previous, " and the temp file was removed");
}

void AtomicFileWriter::write_to_fd(const uint8_t* p, size_t n) {
  while (n > 0) {
    size_t want = std::min(n, kMaxSyscallBytes);
    if (fault_after_ >= 0) {  // injected "disk full": the kernel takes bytes up to the limit, then ENOSPC
      uint64_t limit = uint64_t(fault_after_);
      uint64_t room = on_disk_ < limit ? limit - on_disk_ : 0;
      if (room == 0) fail_write(ENOSPC, n);
      want = size_t(std::min<uint64_t>(want, room));
    }
    ssize_t r = ::write(fd_, p, want);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_write(errno, n);
    }
    if (r == 0) fail_write(0, n);
    p += r;
    n -= size_t(r);
    on_disk_ += uint64_t(r);
  }
}

void AtomicFileWriter::flush_buffer() {
  if (buffer_.empty()) return;
  write_to_fd(buffer_.data(), buffer_.size());
  buffer_.clear();
}

void AtomicFileWriter::write(const void* data, size_t n) {
  if (state_ == State::committed) fail("[io] '", path_.string(), "': write after commit()");
  if (state_ == State::failed) fail("[io] '", path_.string(), "': write after an earlier failure");
  if (state_ == State::synced) fail("[io] '", path_.string(), "': write after sync()");
  if (n == 0) return;
  TALLY_CHECK(data != nullptr, "[io] '", path_.string(), "': write of ", n, " bytes from a null pointer");
  const auto* p = static_cast<const uint8_t*>(data);
  accepted_ += n;
  if (buffer_.size() + n <= kBufferBytes) {
    if (buffer_.capacity() < kBufferBytes) buffer_.reserve(kBufferBytes);
    buffer_.insert(buffer_.end(), p, p + n);
    return;
  }
  flush_buffer();
  if (n >= kBufferBytes) {
    write_to_fd(p, n);
  } else {
    buffer_.insert(buffer_.end(), p, p + n);
  }
}

void AtomicFileWriter::fail_commit(const char* what, int err) {
  abandon();
  std::error_code ec;
  fail("[io] '", path_.string(), "': ", what, " of temp file '", temp_path_.string(), "' failed: ", errno_text(err),
       "; ",
       fs::exists(path_, ec) ? cat("the previous '", path_.string(), "' is intact")
                             : std::string("nothing was written"));
}

void AtomicFileWriter::sync() {
  if (state_ == State::committed) fail("[io] '", path_.string(), "': sync() after commit()");
  if (state_ == State::failed) fail("[io] '", path_.string(), "': sync() after an earlier failure");
  if (state_ == State::synced) return;
  flush_buffer();
  while (::fsync(fd_) != 0) {
    if (errno != EINTR) fail_commit("fsync", errno);
  }
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0 && errno != EINTR) fail_commit("close", errno);  // NFS reports late write errors here
  state_ = State::synced;
}

void AtomicFileWriter::commit() {
  if (state_ == State::committed) fail("[io] '", path_.string(), "': commit() called twice");
  if (state_ == State::failed) fail("[io] '", path_.string(), "': commit() after an earlier failure");
  sync();
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail_commit("rename", errno);
  removed_if_killed_.reset();
  forget_temp(temp_path_);
  state_ = State::committed;
  buffer_ = {};

  // Make the rename itself durable. Some filesystems cannot fsync a directory (EINVAL): nothing to do there.
  fs::path dir = directory_of(path_);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) fail("[io] '", path_.string(), "' was replaced, but its directory '", dir.string(),
                    "' could not be opened to fsync the rename: ", errno_text(errno));
  int rc;
  do rc = ::fsync(dfd); while (rc != 0 && errno == EINTR);
  int err = errno;
  ::close(dfd);
  if (rc != 0 && err != EINVAL && err != EROFS)
    fail("[io] '", path_.string(), "' was replaced, but fsync of directory '", dir.string(),
         "' failed, so the rename may not survive a crash: ", errno_text(err));
}

void remove_stale_temporaries_of(const fs::path& path) {
  const std::string prefix = cat(path.filename().string(), ".tmp.");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(directory_of(path), ec)) {
    const std::string name = e.path().filename().string();
    if (!name.starts_with(prefix)) continue;
    if (writer_is_gone(std::string_view(name).substr(prefix.size()))) fs::remove(e.path(), ec);
  }
}

bool writer_is_gone(std::string_view pid) {
  if (pid.empty() || pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string_view::npos) return false;
  const long id = std::stol(std::string(pid));
  return id > 0 && ::kill(pid_t(id), 0) != 0 && errno == ESRCH;
}

void fsync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  int rc;
  do rc = ::fsync(fd);
  while (rc != 0 && errno == EINTR);
  ::close(fd);
}

void remove_stale_directories(const fs::path& dir, std::string_view prefix) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with(prefix) && writer_is_gone(std::string_view(name).substr(name.rfind('-') + 1)))
      fs::remove_all(e.path(), ec);
  }
}

void write_file_atomic(const fs::path& path, std::span<const uint8_t> bytes) {
  AtomicFileWriter w(path);
  w.write(bytes);
  w.commit();
}

void write_file_atomic(const fs::path& path, std::string_view text) {
  AtomicFileWriter w(path);
  w.write(text);
  w.commit();
}

// ---------------------------------------------------------------------------------------------------------
// CRC-32C

namespace {

constexpr uint32_t kCastagnoliReflected = 0x82F63B78u;

using Crc32cTables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Crc32cTables make_tables() {
  Crc32cTables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kCastagnoliReflected : c >> 1;
    t[0][i] = c;
  }
  for (size_t s = 1; s < 8; ++s)
    for (uint32_t i = 0; i < 256; ++i) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
  return t;
}

constexpr Crc32cTables kTables = make_tables();

// Slicing-by-8 on the raw (pre-inverted) register.
uint32_t crc32c_tables(uint32_t crc, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
    v ^= crc;
    crc = kTables[7][v & 0xff] ^ kTables[6][(v >> 8) & 0xff] ^ kTables[5][(v >> 16) & 0xff] ^
          kTables[4][(v >> 24) & 0xff] ^ kTables[3][(v >> 32) & 0xff] ^ kTables[2][(v >> 40) & 0xff] ^
          kTables[1][(v >> 48) & 0xff] ^ kTables[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ kTables[0][(crc ^ *p++) & 0xff];
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  auto c32 = uint32_t(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

bool cpu_has_sse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif

}  // namespace

uint32_t crc32c_portable(const void* data, size_t n, uint32_t previous) {
  return ~crc32c_tables(~previous, static_cast<const uint8_t*>(data), n);
}

uint32_t crc32c(const void* data, size_t n, uint32_t previous) {
#if defined(__x86_64__)
  if (cpu_has_sse42()) return ~crc32c_sse42(~previous, static_cast<const uint8_t*>(data), n);
#endif
  return crc32c_portable(data, n, previous);
}

std::string crc32c_hex(uint32_t crc) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", crc);
  return buf;
}

}  // namespace tally::io
