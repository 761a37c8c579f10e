// Training checkpoints: round trip with dtypes kept, keep-last-N, refusal of NaN, and damaged or partial
// checkpoints (bit flips, truncation, missing manifest, full disk, a run directory that cannot be made or written)
// reported clearly.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "core/ops.h"
#include "tests/core/io_test_helpers.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

using namespace tally;
namespace fs = std::filesystem;

namespace {
train::CheckpointContent sample_content(float scale) {
  train::CheckpointContent c;
  c.model = {{"w", from_vector<float>({1 * scale, 2, 3, 4, 5, 6}, {2, 3})}, {"b", from_vector<float>({0.5f}, {1})}};
  c.optimizer = {{"w:exp_avg", from_vector<float>({0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f}, {2, 3}).to(DType::bf16)},
                 {"w:step", from_vector<int64_t>({7}, {1})}};
  c.state = {{"loader", {{"shard", 1}, {"offset", 4096}}}, {"note", "hello"}};
  return c;
}

void flip_byte(const fs::path& p, size_t at) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(long(at));
  char c;
  f.get(c);
  f.seekp(long(at));
  f.put(char(c ^ 0x10));
}
}  // namespace

TEST_SUITE("train") {

TEST_CASE("checkpoint: round trip keeps values and dtypes") {
  fs::path run = test::temp_dir("ckpt_roundtrip");
  fs::path dir = train::save_checkpoint(run, 12, sample_content(1.0f));
  CHECK(dir.filename() == "step-00000012");
  train::CheckpointContent c = train::load_checkpoint(dir);
  // Every tensor as saved: name, dtype, shape and value (widening to double is exact for f32, bf16 and these i64).
  const train::CheckpointContent want = sample_content(1.0f);
  for (const auto& [got, saved] : {std::pair{&c.model, &want.model}, std::pair{&c.optimizer, &want.optimizer}}) {
    REQUIRE(got->size() == saved->size());
    for (const auto& entry : *saved) {
      const Tensor t = io::find_tensor(*got, entry.first, "test");
      INFO(entry.first);
      CHECK(t.dtype() == entry.second.dtype());
      CHECK(t.shape() == entry.second.shape());
      CHECK(t.to_vector<double>() == entry.second.to_vector<double>());
    }
  }
  CHECK(io::find_tensor(c.optimizer, "w:exp_avg", "test").dtype() == DType::bf16);
  CHECK(io::find_tensor(c.optimizer, "w:step", "test").dtype() == DType::i64);
  CHECK(c.state["note"] == "hello");
  CHECK(c.state["loader"]["shard"] == 1);
  CHECK_THROWS_WITH_AS(io::find_tensor(c.model, "nope", "ckpt"), doctest::Contains("'ckpt' has no tensor named 'nope'"), Error);
  CHECK(c.state["step"] == 12);
  CHECK(c.state["loader"]["offset"] == 4096);
  CHECK(train::latest_checkpoint(run) == dir);
  fs::remove_all(run);
}

TEST_CASE("checkpoint: keep-last-N and the latest complete step") {
  fs::path run = test::temp_dir("ckpt_keep");
  for (int s = 1; s <= 5; ++s)
    train::save_checkpoint(run, s * 10, sample_content(float(s)), {.keep_last = 2, .keep_also = {}});
  CHECK_FALSE(fs::exists(run / "step-00000030"));
  CHECK(fs::exists(run / "step-00000040"));
  CHECK(fs::exists(run / "step-00000050"));
  // A checkpoint kept besides the last N (the trainer's last one known to be good) outlives the pruning.
  for (int s = 6; s <= 8; ++s)
    train::save_checkpoint(run, s * 10, sample_content(float(s)), {.keep_last = 2, .keep_also = run / "step-00000040"});
  CHECK(fs::exists(run / "step-00000040"));
  CHECK_FALSE(fs::exists(run / "step-00000050"));
  CHECK_FALSE(fs::exists(run / "step-00000060"));
  CHECK(fs::exists(run / "step-00000070"));
  CHECK(fs::exists(run / "step-00000080"));
  // A leftover temporary directory (a crash mid-save) is never taken for a checkpoint.
  fs::create_directory(run / ".tmp-step-00000090-1");
  CHECK(train::latest_checkpoint(run) == run / "step-00000080");
  CHECK(io::find_tensor(train::load_checkpoint(run / "step-00000080").model, "w", "t").to_vector<float>()[0] == 8.0f);
  fs::remove_all(run);
}

TEST_CASE("checkpoint: a save removes the temporary directories of savers that died, not those of live ones") {
  fs::path run = test::temp_dir("ckpt_stale");
  const pid_t child = test::gone_pid();
  REQUIRE(child > 0);
  const fs::path dead = run / cat(".tmp-step-00000007-", child), live = run / cat(".tmp-step-00000007-", ::getppid());
  fs::create_directories(dead);
  fs::create_directories(live);
  train::save_checkpoint(run, 8, sample_content(1.0f));
  CHECK_FALSE(fs::exists(dead));
  CHECK(fs::exists(live));
  CHECK(train::latest_checkpoint(run) == run / "step-00000008");
  fs::remove_all(run);
}

TEST_CASE("checkpoint: NaN and Inf are refused before anything is written") {
  fs::path run = test::temp_dir("ckpt_nan");
  train::CheckpointContent c = sample_content(1.0f);
  c.model[0].second = from_vector<float>({1, NAN, 3, 4, 5, 6}, {2, 3});
  CHECK_THROWS_WITH_AS(train::save_checkpoint(run, 1, c), doctest::Contains("model tensor 'w' holds nan at element 1"), Error);
  c = sample_content(1.0f);
  c.optimizer[0].second = from_vector<float>({INFINITY}, {1});
  CHECK_THROWS_WITH_AS(train::save_checkpoint(run, 1, c), doctest::Contains("optimizer tensor 'w:exp_avg' holds inf"), Error);
  CHECK_FALSE(train::latest_checkpoint(run).has_value());
  CHECK(fs::is_empty(run));  // not even a temporary directory
  fs::remove_all(run);
}

TEST_CASE("checkpoint: damage is detected and named") {
  fs::path run = test::temp_dir("ckpt_damage");
  fs::path dir = train::save_checkpoint(run, 3, sample_content(1.0f));
  SUBCASE("bit flip in the model") {
    flip_byte(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") - 3);
    CHECK_THROWS_WITH_AS(train::load_checkpoint(dir), doctest::Contains("model.safetensors' fails its checksum"), Error);
  }
  SUBCASE("truncated optimizer state") {
    fs::resize_file(dir / "optimizer.safetensors", 20);
    CHECK_THROWS_WITH_AS(train::load_checkpoint(dir), doctest::Contains("optimizer.safetensors' has 20 bytes, '"),
                         Error);
  }
  SUBCASE("missing manifest") {
    fs::remove(dir / "manifest.json");
    CHECK_THROWS_WITH_AS(train::load_checkpoint(dir), doctest::Contains("has no manifest.json"), Error);
  }
  SUBCASE("garbage manifest") {
    std::ofstream(dir / "manifest.json") << "{not json";
    CHECK_THROWS_WITH_AS(train::load_checkpoint(dir), doctest::Contains("manifest.json' is not valid JSON"), Error);
  }
  fs::remove_all(run);
}

TEST_CASE("checkpoint: a full disk leaves the previous checkpoint intact") {
  fs::path run = test::temp_dir("ckpt_full");
  train::save_checkpoint(run, 1, sample_content(1.0f));
  ::setenv("TALLY_FAULT_WRITE_AFTER_BYTES", "100", 1);
  CHECK_THROWS_WITH_AS(train::save_checkpoint(run, 2, sample_content(2.0f)), doctest::Contains("disk is full"), Error);
  ::unsetenv("TALLY_FAULT_WRITE_AFTER_BYTES");
  CHECK(train::latest_checkpoint(run) == run / "step-00000001");
  CHECK(io::find_tensor(train::load_checkpoint(run / "step-00000001").model, "w", "t").to_vector<float>()[0] == 1.0f);
  int leftovers = 0;
  for (const auto& e : fs::directory_iterator(run)) leftovers += e.path().filename().string().rfind(".tmp", 0) == 0;
  CHECK(leftovers == 0);
  fs::remove_all(run);
}

TEST_CASE("checkpoint: a run directory that cannot be made or written is a clear error") {
  fs::path base = test::temp_dir("ckpt_ro");
  // A run directory under a regular file cannot be made, by anyone (root included).
  test::write_raw(base / "a-file", std::string("x"));
  const fs::path under_file = base / "a-file" / "run";
  const std::string msg = test::error_message([&] { train::save_checkpoint(under_file, 1, sample_content(1.0f)); });
  CHECK(test::contains(msg, "[checkpoint] cannot create '" + under_file.string() + "'"));
  CHECK(test::contains(msg, "Not a directory"));
  // A read-only one: its step's temporary directory cannot be made (root writes anywhere: not checked then).
  if (::geteuid() == 0) {
    MESSAGE("running as root: the read-only directory's case is skipped (root writes anywhere)");
  } else {
    const fs::path run = base / "read-only";
    fs::create_directory(run);
    ::chmod(run.c_str(), 0555);
    const std::string ro = test::error_message([&] { train::save_checkpoint(run, 1, sample_content(1.0f)); });
    CHECK(test::contains(ro, "cannot create '" + (run / ".tmp-step-00000001").string()));
    CHECK(test::contains(ro, "is the directory writable?"));
    ::chmod(run.c_str(), 0755);
    CHECK(fs::is_empty(run));
  }
  fs::remove_all(base);
}

}  // TEST_SUITE
