// Low-level file I/O: whole-file reads, read-only memory maps, crash-safe atomic writes, and CRC-32C.
// Every failure throws tally::Error naming the file and the problem ("[io] 'run/ckpt.bin': ...").
// Used by checkpoints (llm.c format, safetensors, tally's own), golden-data loading in tests, and .npy export.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tally::io {

// ---- whole-file reads ----
// Errors say whether the file is missing, unreadable (permission), a directory, or failed mid-read.
std::vector<uint8_t> read_file(const std::filesystem::path& path);
std::string read_file_text(const std::filesystem::path& path);

// ---- read-only memory map ----
// Maps the whole file read-only (MAP_PRIVATE). An empty file is valid: size() == 0 and data() == nullptr.
// The mapping stays valid after the file is renamed or replaced (checkpoints are replaced by rename), but
// truncating a mapped file in place makes later reads fault: tally never truncates files it may have mapped.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void release() noexcept;
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// ---- what an interrupted process leaves behind ----
// While a guard lives, a signal that ends the process (SIGINT, SIGTERM or SIGHUP, those the process leaves at their
// default action) first removes the guards' paths: every file, then every directory (rmdir: the ones empty by
// then). For temp files and staging directories, which an interrupted write would otherwise leave behind. At most
// 64 files and 64 directories at once (more are not removed on a signal); SIGKILL cannot be caught.
class RemovedOnTermination {
 public:
  explicit RemovedOnTermination(const std::vector<std::filesystem::path>& files,
                                const std::vector<std::filesystem::path>& directories = {});
  ~RemovedOnTermination();
  RemovedOnTermination(const RemovedOnTermination&) = delete;
  RemovedOnTermination& operator=(const RemovedOnTermination&) = delete;

 private:
  std::vector<std::atomic<char*>*> held_;  // the handler's slots holding this guard's paths (null: none was free)
};

// Removes every live guard's paths, then ends the process by `sig` at its default action: for a program's own
// handler of SIGINT/SIGTERM that decides to die (async-signal-safe). Called in a handler of `sig`, the signal is
// delivered when the handler returns: return at once.
void die_by_signal(int sig);

// The path a symbolic link names, followed through every link (a relative target is read from the link's directory);
// the path itself when it is no link. The end may not exist (a dangling link: what writing through it creates). A
// chain of more than 40 links is a tally::Error, as the kernel's ELOOP.
std::filesystem::path through_links(const std::filesystem::path& path);

// ---- atomic replacement of a file ----
// Writes go to "<path>.tmp.<pid>" in the same directory (so the final rename never crosses filesystems).
// commit() flushes, fsyncs the temp file, renames it over <path> and fsyncs the directory, so after a crash
// <path> is either the complete old file or the complete new one. Destroying the writer without commit()
// (an exception unwound past it) removes the temp file and leaves <path> untouched.
// A failed write (short write, ENOSPC, EIO) throws at once, removes the temp file, and says that the previous
// <path> is intact; the writer is then dead and further write()/commit() calls throw.
// Small writes are buffered (256 KiB); large ones go straight to the kernel.
// If <path> is a symlink, the file it names is replaced (the link stays); a path that names no regular file (a
// device, a pipe) is refused. A process ended by SIGINT, SIGTERM or SIGHUP while writing (signals it does not handle
// itself) removes its temp files first.
// One process may not have two writers for the same path open at once (the temp names would collide): the
// second constructor throws.
//
// Fault injection for tests (core/faults.h): when the environment variable TALLY_FAULT_WRITE_AFTER_BYTES=N is set at
// construction, the writer behaves as if the disk filled up after N bytes reached the file: the write that
// would cross N fails exactly like a real ENOSPC (same message, temp file removed). N=0 fails the first write.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t n);
  void write(std::span<const uint8_t> bytes) { write(bytes.data(), bytes.size()); }
  void write(std::string_view text) { write(text.data(), text.size()); }
  // Flushes, fsyncs and closes the temp file: the slow, fallible part of commit(), which then only renames (files
  // written together sync all before any is renamed in). write() is refused afterwards.
  void sync();
  void commit();

  const std::filesystem::path& path() const { return path_; }
  const std::filesystem::path& temp_path() const { return temp_path_; }
  uint64_t bytes_written() const { return accepted_; }  // bytes handed to write() so far

 private:
  void flush_buffer();
  void write_to_fd(const uint8_t* p, size_t n);
  [[noreturn]] void fail_write(int err, size_t attempted);
  [[noreturn]] void fail_commit(const char* what, int err);  // abandons, then throws naming what failed
  void abandon() noexcept;  // close and unlink the temp file; the writer is dead afterwards

  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  enum class State { open, synced, committed, failed } state_ = State::open;
  std::vector<uint8_t> buffer_;
  uint64_t accepted_ = 0;  // bytes accepted from callers
  uint64_t on_disk_ = 0;   // bytes the kernel has taken
  int64_t fault_after_ = -1;  // from TALLY_FAULT_WRITE_AFTER_BYTES; -1 = no fault injection
  std::unique_ptr<RemovedOnTermination> removed_if_killed_;  // the temp file, while it may exist
};

// Writes bytes to path atomically (AtomicFileWriter + commit).
void write_file_atomic(const std::filesystem::path& path, std::span<const uint8_t> bytes);
void write_file_atomic(const std::filesystem::path& path, std::string_view text);
// Removes the temp files ("<path>.tmp.<pid>") that writers of `path` left when their process died while writing
// (SIGKILL, power loss); those of live processes stay.
void remove_stale_temporaries_of(const std::filesystem::path& path);
// True when `pid` (the decimal digits a temporary's name ends with) names no live process: its writer died while
// writing. False for anything else, a live process's and text that is not a pid included.
bool writer_is_gone(std::string_view pid);
// Best-effort fsync of a directory (or file) by path, retried on EINTR, for renames of whole directories (a
// checkpoint, an export) to be durable: a path that cannot be opened or synced is left as it is.
void fsync_path(const std::filesystem::path& path);
// Removes, with their contents, the entries of `dir` named "<prefix>...-<pid>" whose writer is gone (writer_is_gone):
// directories a process was filling when it died. Those of live processes stay.
void remove_stale_directories(const std::filesystem::path& dir, std::string_view prefix);

// ---- exclusive use of a directory ----
// Holds an advisory lock (flock, exclusive, non-blocking) on <dir>/<kLockFile> for its lifetime; the file records
// the holder's pid and command line. The kernel drops the lock when the holder dies, however it dies, so a file
// left behind never blocks anyone. A second holder (another process, or another DirectoryLock in this one: each
// opens the file afresh) is refused with a tally::Error naming the directory and the holding process.
class DirectoryLock {
 public:
  static constexpr const char* kLockFile = "tally.lock";
  // `what` names the user of the directory in the error ("run directory").
  DirectoryLock(const std::filesystem::path& dir, std::string_view what);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

// ---- CRC-32C (Castagnoli, as in iSCSI/ext4/Btrfs) ----
// crc32c("123456789") == 0xE3069283. Incremental: crc32c(b, crc32c(a)) == crc32c(a followed by b).
// Uses the SSE4.2 crc32 instruction when the CPU has it (checked at run time), else slicing-by-8 tables.
uint32_t crc32c(const void* data, size_t n, uint32_t previous = 0);
inline uint32_t crc32c(std::span<const uint8_t> bytes, uint32_t previous = 0) {
  return crc32c(bytes.data(), bytes.size(), previous);
}
// The portable table path alone (tests compare it with the hardware path).
uint32_t crc32c_portable(const void* data, size_t n, uint32_t previous = 0);
// 8 lowercase hex digits, e.g. "e3069283", for manifests.
std::string crc32c_hex(uint32_t crc);

}  // namespace tally::io
