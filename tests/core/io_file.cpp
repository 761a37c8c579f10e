// Tests of core/io/file.h: read_file and MappedFile errors (a FIFO refused where a file is mapped, read where it is
// read through), AtomicFileWriter (commit, abandon, injected disk full leaving the previous file intact),
// DirectoryLock, and CRC-32C known vectors and hardware/portable agreement.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <numeric>
#include <random>
#include <thread>

#include "core/io/file.h"
#include "core/io/safetensors.h"
#include "data/shards.h"
#include "tests/core/io_test_helpers.h"
#include "tests/fifo.h"
#include "tests/test_util.h"

using namespace tally;
using namespace tally::io;
using tally::test::contains;
using tally::test::error_message;
namespace fs = std::filesystem;

namespace {

// Sets TALLY_FAULT_WRITE_AFTER_BYTES for one scope and always clears it afterwards.
struct FaultAfterBytes {
  explicit FaultAfterBytes(const char* n) { ::setenv("TALLY_FAULT_WRITE_AFTER_BYTES", n, 1); }
  ~FaultAfterBytes() { ::unsetenv("TALLY_FAULT_WRITE_AFTER_BYTES"); }
};

std::vector<uint8_t> pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(i * 131 + 7);
  return v;
}

// Runs `body` in a child process with `sig` at its default action (as in the tally command; the test runner handles
// it itself), where body raises it; returns the signal that ended the child, or 0.
template <class Body>
int signal_ending_child(int sig, Body body) {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, nullptr);
    body();
    ::_exit(0);  // not reached when body raised the signal
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

}  // namespace

TEST_SUITE("io") {

TEST_CASE("read_file and read_file_text return the bytes; errors say what is wrong") {
  fs::path dir = test::temp_dir("io_read");
  test::write_raw(dir / "a.bin", std::string("hello\0world", 11));
  CHECK(read_file(dir / "a.bin") == std::vector<uint8_t>{'h', 'e', 'l', 'l', 'o', 0, 'w', 'o', 'r', 'l', 'd'});
  CHECK(read_file_text(dir / "a.bin") == std::string("hello\0world", 11));

  test::write_raw(dir / "empty", std::string());
  CHECK(read_file(dir / "empty").empty());
  CHECK(read_file_text(dir / "empty").empty());

  std::string msg = error_message([&] { read_file(dir / "missing.bin"); });
  CHECK(contains(msg, "missing.bin"));
  CHECK(contains(msg, "does not exist"));

  msg = error_message([&] { read_file(dir); });
  CHECK(contains(msg, dir.string()));
  CHECK(contains(msg, "is a directory"));

  if (::geteuid() == 0) {
    MESSAGE("running as root: the permission-denied check is skipped (root reads anything)");
  } else {
    test::write_raw(dir / "secret", std::string("x"));
    ::chmod((dir / "secret").c_str(), 0);
    msg = error_message([&] { read_file(dir / "secret"); });
    CHECK(contains(msg, "secret"));
    CHECK(contains(msg, "permission denied"));
  }
  fs::remove_all(dir);
}

TEST_CASE("MappedFile maps contents, handles empty files, names the file in errors") {
  fs::path dir = test::temp_dir("io_map");
  auto bytes = pattern(10000);
  test::write_raw(dir / "data.bin", bytes);
  MappedFile m(dir / "data.bin");
  REQUIRE(m.size() == bytes.size());
  CHECK(std::equal(bytes.begin(), bytes.end(), m.data()));
  CHECK(m.path() == dir / "data.bin");

  MappedFile moved = std::move(m);
  CHECK(moved.size() == bytes.size());
  CHECK(moved.bytes()[9999] == bytes[9999]);
  CHECK(m.size() == 0);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  CHECK(m.data() == nullptr);

  test::write_raw(dir / "empty", std::string());
  MappedFile e(dir / "empty");
  CHECK(e.size() == 0);
  CHECK(e.data() == nullptr);
  CHECK(e.bytes().empty());

  std::string msg = error_message([&] { MappedFile x(dir / "nope.safetensors"); });
  CHECK(contains(msg, "nope.safetensors"));
  CHECK(contains(msg, "does not exist"));
  msg = error_message([&] { MappedFile x(dir); });
  CHECK(contains(msg, "is a directory"));
  fs::remove_all(dir);
}

TEST_CASE("a FIFO where a file to map is expected is refused at once, not waited on; read_file reads a pipe") {
  fs::path dir = test::temp_dir("io_fifo");
  {
    test::Fifo fifo(dir / "model.bin");
    std::string msg = error_message([&] { MappedFile x(fifo.path()); });
    CHECK(contains(msg, fifo.path().string()));
    CHECK(contains(msg, "not a regular file"));
    msg = error_message([&] { (void)read_safetensors_header(fifo.path()); });
    CHECK(contains(msg, fifo.path().string()));
    CHECK(contains(msg, "not a regular file"));
    msg = error_message([&] { (void)data::Shard::open(fifo.path(), data::ShardFormat::llmc); });
    CHECK(contains(msg, fifo.path().string()));
    CHECK(contains(msg, "not a regular file"));
    CHECK_FALSE(fifo.released());  // no open() waited for a writer
  }
  {
    // read_file takes what a pipe carries (a shell's <(...) is one): it waits for the writer, by design.
    test::Fifo fifo(dir / "text");
    // The writer opens without blocking, retrying until the reader is there (ENXIO before), and gives up after
    // 10 s: it never waits for a reader that the watchdog already released. No assertion in the thread (a throwing
    // one would end the process); the read checks it all.
    std::thread writer([&] {
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      int fd = -1;
      while ((fd = ::open(fifo.path().c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC)) < 0 &&
             std::chrono::steady_clock::now() < give_up)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (fd < 0) return;
      [[maybe_unused]] const ssize_t written = ::write(fd, "through a pipe", 14);  // fits the pipe's buffer
      ::close(fd);
    });
    CHECK(read_file_text(fifo.path()) == "through a pipe");
    writer.join();
  }
  fs::remove_all(dir);
}

TEST_CASE("AtomicFileWriter: commit replaces the file; nothing is left behind") {
  fs::path dir = test::temp_dir("io_atomic");
  fs::path p = dir / "out.bin";
  write_file_atomic(p, std::string_view("first version"));
  CHECK(test::slurp(p) == "first version");

  // Many small writes (buffered) and one large write (direct) interleaved.
  auto big = pattern(3 << 20);
  {
    AtomicFileWriter w(p);
    CHECK(w.temp_path().parent_path() == p.parent_path());
    CHECK(contains(w.temp_path().filename().string(), "out.bin.tmp."));
    for (int i = 0; i < 1000; ++i) w.write(std::string_view("abc"));
    w.write(big);
    w.write(std::string_view("end"));
    CHECK(w.bytes_written() == 3000 + big.size() + 3);
    CHECK(test::slurp(p) == "first version");  // untouched until commit
    w.commit();
  }
  std::string got = test::slurp(p);
  REQUIRE(got.size() == 3000 + big.size() + 3);
  CHECK(got.substr(0, 6) == "abcabc");
  CHECK(std::equal(big.begin(), big.end(), reinterpret_cast<const uint8_t*>(got.data()) + 3000));
  CHECK(got.substr(got.size() - 3) == "end");
  CHECK(test::count_temp_files(dir) == 0);

  // Relative path in the current directory.
  fs::path old_cwd = fs::current_path();
  fs::current_path(dir);
  write_file_atomic("rel.txt", std::string_view("relative"));
  fs::current_path(old_cwd);
  CHECK(test::slurp(dir / "rel.txt") == "relative");

  // An empty file is fine.
  write_file_atomic(dir / "empty", std::span<const uint8_t>());
  CHECK(fs::file_size(dir / "empty") == 0);
  fs::remove_all(dir);
}

TEST_CASE("AtomicFileWriter: without commit the temp file is removed and the old file kept") {
  fs::path dir = test::temp_dir("io_abandon");
  fs::path p = dir / "state.json";
  write_file_atomic(p, std::string_view("old"));
  try {
    AtomicFileWriter w(p);
    w.write(std::string_view("new, but never committed"));
    CHECK(fs::exists(w.temp_path()));
    throw std::runtime_error("simulated failure while writing");
  } catch (const std::runtime_error&) {
  }
  CHECK(test::slurp(p) == "old");
  CHECK(test::count_temp_files(dir) == 0);

  {  // a file that did not exist stays absent
    AtomicFileWriter w(dir / "never.bin");
    w.write(std::string_view("x"));
  }
  CHECK(!fs::exists(dir / "never.bin"));
  CHECK(test::count_temp_files(dir) == 0);
  fs::remove_all(dir);
}

TEST_CASE("AtomicFileWriter: a symbolic link is written through, dangling or chained; the links stay") {
  fs::path dir = test::temp_dir("io_links");
  fs::create_directories(dir / "sub");
  fs::create_symlink("sub/target.bin", dir / "dangling");  // relative, naming no file yet
  fs::create_symlink(dir / "dangling", dir / "chain");     // a link to that link
  write_file_atomic(dir / "chain", std::string_view("one"));
  CHECK(fs::is_symlink(dir / "chain"));
  CHECK(fs::is_symlink(dir / "dangling"));
  CHECK(test::slurp(dir / "sub" / "target.bin") == "one");
  write_file_atomic(dir / "dangling", std::string_view("two"));  // now a link to a file: replaced through it
  CHECK(test::slurp(dir / "sub" / "target.bin") == "two");
  CHECK(fs::is_symlink(dir / "dangling"));
  CHECK(through_links(dir / "sub" / "target.bin") == dir / "sub" / "target.bin");
  // A relative link read through a linked directory: its ".." is the linked directory's parent, as the kernel has it
  // (proj/cur -> ../real/a, and a/m.bin -> ../shared/m.bin names real/shared/m.bin, not proj/shared/m.bin).
  for (const char* d : {"real/a", "real/shared", "proj/shared"}) fs::create_directories(dir / d);
  fs::create_symlink("../real/a", dir / "proj" / "cur");
  fs::create_symlink("../shared/m.bin", dir / "real" / "a" / "m.bin");
  write_file_atomic(dir / "proj" / "cur" / "m.bin", std::string_view("three"));
  CHECK(test::slurp(dir / "real" / "shared" / "m.bin") == "three");
  CHECK_FALSE(fs::exists(dir / "proj" / "shared" / "m.bin"));
  // A link to a directory path is no file to write.
  fs::create_symlink("sub/", dir / "to-dir");
  CHECK_THROWS_WITH_AS(write_file_atomic(dir / "to-dir", std::string_view("x")),
                       doctest::Contains("is a link to a directory path"), Error);
  fs::create_symlink("loop-b", dir / "loop-a");
  fs::create_symlink("loop-a", dir / "loop-b");
  CHECK_THROWS_WITH_AS(write_file_atomic(dir / "loop-a", std::string_view("x")),
                       doctest::Contains("more than 40 symbolic links in a row"), Error);
  fs::remove_all(dir);
}

TEST_CASE("remove_stale_temporaries_of: the temp files of dead writers go, those of live ones and others stay") {
  fs::path dir = test::temp_dir("io_stale");
  const pid_t child = test::gone_pid();
  REQUIRE(child > 0);
  const fs::path p = dir / "report.md";
  for (const std::string& name : {cat("report.md.tmp.", child), cat("report.md.tmp.", ::getpid()),
                                  cat("summary.json.tmp.", child), std::string("report.md.tmp.x1")})
    test::write_raw(dir / name, std::string("partial"));
  remove_stale_temporaries_of(p);
  CHECK(!fs::exists(dir / cat("report.md.tmp.", child)));
  CHECK(fs::exists(dir / cat("report.md.tmp.", ::getpid())));  // a live writer's
  CHECK(fs::exists(dir / cat("summary.json.tmp.", child)));    // another file's
  CHECK(fs::exists(dir / "report.md.tmp.x1"));                 // not a pid
  fs::remove_all(dir);
}

TEST_CASE("AtomicFileWriter: a process ended by SIGTERM or SIGINT while writing leaves no temp file") {
  fs::path dir = test::temp_dir("io_signal");
  for (int sig : {SIGTERM, SIGINT}) {
    const fs::path p = dir / "model.bin";
    write_file_atomic(p, std::string_view("old"));
    CHECK(signal_ending_child(sig, [&] {
            AtomicFileWriter w(p);
            w.write(pattern(size_t(1) << 20));
            ::raise(sig);
          }) == sig);
    CHECK(test::count_temp_files(dir) == 0);
    CHECK(test::slurp(p) == "old");
  }
  fs::remove_all(dir);
}

TEST_CASE("RemovedOnTermination: a staging directory and its files go with a process ended by a signal") {
  fs::path dir = test::temp_dir("io_signal_stage");
  const fs::path stage = dir / ".export.tmp-1", kept = dir / "kept.bin";
  write_file_atomic(kept, std::string_view("kept"));
  CHECK(signal_ending_child(SIGTERM, [&] {
          fs::create_directory(stage);
          const RemovedOnTermination guard({stage / "a.bin", stage / "b.json"}, {stage});
          write_file_atomic(stage / "a.bin", std::string_view("a"));
          AtomicFileWriter w(stage / "b.json");  // its temp file is in the directory too
          w.write(std::string_view("{}"));
          ::raise(SIGTERM);
        }) == SIGTERM);
  CHECK(!fs::exists(stage));
  CHECK(test::slurp(kept) == "kept");
  // A guard that has ended removes nothing when the signal comes later.
  fs::create_directory(stage);
  CHECK(signal_ending_child(SIGTERM, [&] {
          { const RemovedOnTermination guard({}, {stage}); }
          ::raise(SIGTERM);
        }) == SIGTERM);
  CHECK(fs::exists(stage));
  fs::remove_all(dir);
}

TEST_CASE("AtomicFileWriter: misuse and bad destinations give clear errors") {
  fs::path dir = test::temp_dir("io_misuse");
  fs::path p = dir / "f.bin";
  {
    AtomicFileWriter w(p);
    std::string msg = error_message([&] { AtomicFileWriter second(p); });
    CHECK(contains(msg, "f.bin"));
    CHECK(contains(msg, "already writing"));
    w.write(std::string_view("ok"));
    w.commit();
    CHECK(contains(error_message([&] { w.write(std::string_view("more")); }), "after commit"));
    CHECK(contains(error_message([&] { w.commit(); }), "twice"));
  }
  CHECK(test::slurp(p) == "ok");

  std::string msg = error_message([&] { write_file_atomic(dir / "no_such_dir" / "x.bin", std::string_view("x")); });
  CHECK(contains(msg, "no_such_dir"));
  CHECK(contains(msg, "does not exist"));

  fs::create_directories(dir / "adir");
  msg = error_message([&] { write_file_atomic(dir / "adir", std::string_view("x")); });
  CHECK(contains(msg, "adir"));
  CHECK(contains(msg, "is a directory"));
  fs::remove_all(dir);
}

TEST_CASE("AtomicFileWriter: an injected full disk fails clearly and leaves the previous file intact") {
  fs::path dir = test::temp_dir("io_fault");
  fs::path p = dir / "ckpt.bin";
  auto old_bytes = pattern(5000);
  write_file_atomic(p, old_bytes);

  SUBCASE("one large write crosses the limit") {
    FaultAfterBytes fault("100000");
    auto big = pattern(1 << 20);
    std::string msg = error_message([&] { write_file_atomic(p, big); });
    CHECK(contains(msg, p.string()));
    CHECK(contains(msg, "disk is full"));
    CHECK(contains(msg, "after 100000 bytes"));
    CHECK(contains(msg, "previous"));
    CHECK(contains(msg, "intact"));
  }
  SUBCASE("small buffered writes fail at commit") {
    FaultAfterBytes fault("50");
    AtomicFileWriter w(p);
    for (int i = 0; i < 20; ++i) w.write(std::string_view("0123456789"));
    std::string msg = error_message([&] { w.commit(); });
    CHECK(contains(msg, "disk is full"));
    CHECK(contains(msg, "intact"));
    CHECK(!fs::exists(w.temp_path()));
    CHECK(contains(error_message([&] { w.write(std::string_view("x")); }), "earlier failure"));
    CHECK(contains(error_message([&] { w.commit(); }), "earlier failure"));
  }
  SUBCASE("a limit of 0 fails the first byte") {
    FaultAfterBytes fault("0");
    CHECK(contains(error_message([&] { write_file_atomic(p, std::string_view("x")); }), "disk is full"));
  }
  SUBCASE("a new file is reported as not created") {
    FaultAfterBytes fault("3");
    std::string msg = error_message([&] { write_file_atomic(dir / "fresh.bin", std::string_view("0123456789")); });
    CHECK(contains(msg, "disk is full"));
    CHECK(contains(msg, "was not created"));
    CHECK(!fs::exists(dir / "fresh.bin"));
  }
  SUBCASE("a bad variable value is an error, not ignored") {
    FaultAfterBytes fault("lots");
    CHECK(contains(error_message([&] { AtomicFileWriter w(p); }), "TALLY_FAULT_WRITE_AFTER_BYTES"));
  }
  SUBCASE("exactly at the limit succeeds") {
    FaultAfterBytes fault("10");
    write_file_atomic(dir / "ten.bin", std::string_view("0123456789"));
    CHECK(test::slurp(dir / "ten.bin") == "0123456789");
  }

  // Whatever failed above, the previous checkpoint is byte-for-byte the old one and no temp file is left.
  CHECK(read_file(p) == old_bytes);
  CHECK(test::count_temp_files(dir) == 0);
  fs::remove_all(dir);
}

TEST_CASE("DirectoryLock: one holder at a time, the second refused naming the holder; released with the holder") {
  const fs::path dir = test::temp_dir("dir_lock");
  {
    DirectoryLock first(dir, "run directory");
    const std::string holder = read_file_text(dir / DirectoryLock::kLockFile);
    CHECK(holder.rfind(cat("pid ", ::getpid(), ": "), 0) == 0);  // the holder's pid and command line
    const std::string msg = error_message([&] { DirectoryLock second(dir, "run directory"); });
    CHECK(contains(msg, cat("the run directory '", dir.string(), "' is in use by another process (pid ", ::getpid())));
    CHECK(contains(msg, "choose another directory"));
  }
  DirectoryLock again(dir, "run directory");  // the file stays behind; the lock went with its holder
  CHECK(contains(error_message([&] { DirectoryLock bad(dir / "missing" / "deeper", "run directory"); }),
                 "cannot lock the run directory"));
  fs::remove_all(dir);
}

TEST_CASE("crc32c: known vectors, incremental use, hex formatting") {
  const std::string check = "123456789";
  CHECK(crc32c(check.data(), check.size()) == 0xE3069283u);
  CHECK(crc32c_portable(check.data(), check.size()) == 0xE3069283u);
  CHECK(crc32c(nullptr, 0) == 0u);
  CHECK(crc32c_hex(0xE3069283u) == "e3069283");
  CHECK(crc32c_hex(0x0000abcdu) == "0000abcd");

  // RFC 3720 (iSCSI) appendix B.4 vectors.
  std::vector<uint8_t> v(32, 0);
  CHECK(crc32c(v) == 0x8A9136AAu);
  std::fill(v.begin(), v.end(), 0xff);
  CHECK(crc32c(v) == 0x62A8AB43u);
  std::iota(v.begin(), v.end(), uint8_t(0));
  CHECK(crc32c(v) == 0x46DD794Eu);
  std::reverse(v.begin(), v.end());
  CHECK(crc32c(v) == 0x113FDB5Cu);

  // Incremental == one shot, for every split point.
  for (size_t split = 0; split <= check.size(); ++split) {
    uint32_t a = crc32c(check.data(), split);
    CHECK(crc32c(check.data() + split, check.size() - split, a) == 0xE3069283u);
  }
}

TEST_CASE("crc32c: the hardware path agrees with the portable tables at every length and alignment") {
  std::mt19937 rng(1234);
  std::vector<uint8_t> buf(5000);
  for (auto& b : buf) b = uint8_t(rng());
  for (size_t offset = 0; offset < 9; ++offset)
    for (size_t len : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(9), size_t(63), size_t(64), size_t(1000),
                       size_t(4991)}) {
      CAPTURE(offset);
      CAPTURE(len);
      CHECK(crc32c(buf.data() + offset, len) == crc32c_portable(buf.data() + offset, len));
      CHECK(crc32c(buf.data() + offset, len, 0xdeadbeefu) == crc32c_portable(buf.data() + offset, len, 0xdeadbeefu));
    }
}

}  // TEST_SUITE("io")
