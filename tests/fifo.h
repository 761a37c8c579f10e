// A FIFO (named pipe) for tests of inputs that must be refused at once rather than waited on: opening a FIFO that
// has no writer blocks, so a file reader that opened one before checking what it is would hang. A watchdog thread
// releases such a hang after `patience` by opening the FIFO for writing, and records that it had to (released()):
// a hang then fails its test instead of stopping the suite.
#pragma once
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace tally::test {

class Fifo {
 public:
  explicit Fifo(std::filesystem::path path, std::chrono::milliseconds patience = std::chrono::seconds(5))
      : path_(std::move(path)) {
    std::filesystem::remove(path_);
    if (::mkfifo(path_.c_str(), 0600) != 0) throw std::runtime_error("mkfifo " + path_.string() + " failed");
    watchdog_ = std::thread([this, patience] { watch(patience); });
  }
  ~Fifo() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    wake_.notify_all();
    watchdog_.join();
    std::error_code ignored;  // a destructor does not throw
    std::filesystem::remove(path_, ignored);
  }
  Fifo(const Fifo&) = delete;
  Fifo& operator=(const Fifo&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Whether a reader was found blocked in open() and released by the watchdog.
  bool released() const { return released_.load(); }

 private:
  void watch(std::chrono::milliseconds patience) {
    std::unique_lock lock(mutex_);
    if (wake_.wait_for(lock, patience, [this] { return done_; })) return;
    // Past the patience: a reader is blocked in open(), or the test is still busy elsewhere; try until the test ends.
    // A write-only open without blocking succeeds whenever a reader has the FIFO open (ENXIO otherwise): a reader
    // blocked in open(), or, rarely, one that opened it without blocking and is about to refuse it. So released() is
    // only a sure sign of a hang within the patience, which a test finishes well inside.
    while (!done_) {
      const int fd = ::open(path_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) {
        released_ = true;
        ::close(fd);
      }
      wake_.wait_for(lock, std::chrono::milliseconds(20), [this] { return done_; });
    }
  }

  std::filesystem::path path_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool done_ = false;
  std::atomic<bool> released_{false};
  std::thread watchdog_;
};

}  // namespace tally::test
