// Faults during training, end to end on the CPU with the tiny preset: a run that cannot fit in its memory budget
// is refused before it starts (with the plan and the largest batch that fits), and an allocation failure in the
// middle of a step is reported with the ledger and the same advice, never leaving a partial checkpoint.
#include <doctest/doctest.h>

#include <cstdlib>

#include "core/allocator.h"
#include "core/ledger.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

using namespace tally;
using namespace tally::train;
namespace fs = std::filesystem;

namespace {

RunConfig tiny_run(const std::vector<std::string>& extra, const fs::path& out) {
  Flags f("train", "", train_flags());
  std::vector<std::string> args = {"--model", "tiny", "--batch", "8", "--seq", "32", "--steps", "2", "--eval-every", "0",
                                   "--val-batches", "1", "--out", out.string(), "--threads", "1", "--warmup", "1"};
  args.insert(args.end(), extra.begin(), extra.end());
  f.parse(args);
  return run_config(f);
}

int64_t peak_at_batch(const RunConfig& c, int64_t batch) {
  return predict_step_memory(c.model, c.optimizer,
                             {.batch = batch, .seq = c.seq, .accumulation = c.accumulation, .grad_clip = c.grad_clip})
      .total_held;
}

// Sets an environment variable for one scope.
struct EnvVar {
  const char* name;
  EnvVar(const char* n, const std::string& value) : name(n) { ::setenv(n, value.c_str(), 1); }
  ~EnvVar() { ::unsetenv(name); }
};

// Names of the step and temporary directories under a run directory.
std::vector<std::string> step_dirs(const fs::path& run) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(run)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) == 0 || n.rfind(".tmp", 0) == 0) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_SUITE("train") {

TEST_CASE("out of memory: a run over its budget is refused before training, naming the largest batch that fits") {
  fs::path out = test::temp_dir("oom_refuse");
  const RunConfig c = tiny_run({}, out);
  const int64_t p3 = peak_at_batch(c, 3), p4 = peak_at_batch(c, 4), p8 = peak_at_batch(c, 8);
  REQUIRE(p3 < p4);
  REQUIRE(p4 < p8);
  SUBCASE("room for batch 3 exactly") {
    EnvVar limit("TALLY_MEMORY_LIMIT", std::to_string(p3));
    Trainer t(c);
    try {
      t.run();
      FAIL("the run should have been refused");
    } catch (const Error& e) {
      const std::string m = e.what();
      INFO(m);
      CHECK(m.find("out of memory: refusing to start training on cpu") != std::string::npos);
      CHECK(m.find("The largest --batch that fits is 3") != std::string::npos);
      // The tokens per optimizer step (8 x 32) kept in micro-batches that divide 8, never 3: those of 2 with their
      // accumulated gradients do not fit here, those of 1 do.
      CHECK(m.find("--batch 1 --total-batch 256 keeps the tokens per optimizer step") != std::string::npos);
      CHECK(m.find("--batch 3 --total-batch") == std::string::npos);
      CHECK(m.find(format_bytes_exact(p8)) != std::string::npos);                // the peak it needs
      CHECK(m.find("TALLY_MEMORY_LIMIT=" + std::to_string(p3)) != std::string::npos);  // the budget's source
      CHECK(m.find("memory plan (bytes requested)") != std::string::npos);     // the plan, category by category
      CHECK(m.find("optimizer state") != std::string::npos);
      CHECK(m.find("no checkpoint was written") != std::string::npos);
    }
    CHECK(step_dirs(out).empty());
  }
  SUBCASE("room for batch 4: the advice keeps the tokens per step") {
    EnvVar limit("TALLY_MEMORY_LIMIT", std::to_string(p4 + 63));
    Trainer t(c);
    CHECK_THROWS_WITH_AS(t.run(), doctest::Contains("largest --batch that fits is 4 (peak"), Error);
    CHECK_THROWS_WITH_AS(t.run(), doctest::Contains("--total-batch 256 keeps the tokens per optimizer step"), Error);
  }
  SUBCASE("not even batch 1") {
    EnvVar limit("TALLY_MEMORY_LIMIT", "1M");
    Trainer t(c);
    CHECK_THROWS_WITH_AS(t.run(), doctest::Contains("Not even --batch 1 fits"), Error);
    CHECK(step_dirs(out).empty());
  }
  SUBCASE("a malformed limit") {
    EnvVar limit("TALLY_MEMORY_LIMIT", "lots");
    Trainer t(c);
    CHECK_THROWS_WITH_AS(t.run(), doctest::Contains("TALLY_MEMORY_LIMIT: 'lots' is not a byte count"), Error);
  }
  fs::remove_all(out);
}

TEST_CASE("out of memory: the largest batch that fits is found where a smaller batch's peak is higher") {
  // At --seq 512, B = 1 and 2 hold their whole logits (B*T <= the loss's 1024-row chunk), B = 3 a chunk of them:
  // the peak of B = 3 is below B = 2's. Under a budget of B = 3's peak, 3 fits though 2 does not.
  fs::path out = test::temp_dir("oom_chunks");
  const RunConfig c = tiny_run({"--seq", "512", "--batch", "4"}, out);
  const int64_t p1 = peak_at_batch(c, 1), p2 = peak_at_batch(c, 2), p3 = peak_at_batch(c, 3), p4 = peak_at_batch(c, 4);
  REQUIRE(p3 < p2);
  REQUIRE(p3 < p4);
  const StepShape shape{.batch = 4, .seq = 512, .accumulation = 1, .grad_clip = c.grad_clip};
  CHECK(largest_fitting_batch(c.model, c.optimizer, shape, p3) == 3);
  CHECK(largest_fitting_batch(c.model, c.optimizer, shape, p4) == 4);
  CHECK(largest_fitting_batch(c.model, c.optimizer, shape, std::min(p1, p3) - 1) == 0);
  if (p1 < p3) CHECK(largest_fitting_batch(c.model, c.optimizer, shape, p3 - 1) == 1);  // B = 2 and 3 do not fit
  fs::remove_all(out);
}

TEST_CASE("out of memory: the plan is exact, so a budget of exactly the predicted peak is enough (and enforced)") {
  fs::path out = test::temp_dir("oom_exact");
  const RunConfig c = tiny_run({"--save-every", "1"}, out);
  const int64_t peak = peak_at_batch(c, 8);
  {
    // The allocator refuses anything beyond the limit during run(), so passing proves the plan held; and the run's
    // peak reaches the limit exactly, so the budget was no wider than it needed to be.
    EnvVar limit("TALLY_MEMORY_LIMIT", std::to_string(peak));
    Trainer t(c);
    ledger().reset_peaks();
    RunSummary s = t.run();
    CHECK(s.steps_done == 2);
    CHECK(ledger().total().peak_held == peak);
    CHECK(cpu_memory_limit() == 0);  // restored after the run
  }
  CHECK(step_dirs(out) == std::vector<std::string>{"step-00000001", "step-00000002"});
  fs::remove_all(out);
}

TEST_CASE("out of memory: an allocation failing mid-step is reported with the ledger and advice; checkpoints intact") {
  // TALLY_FAULT_OOM_AT_STEP stands in for malloc failing (memory taken by something else): the plan cannot see it.
  fs::path out = test::temp_dir("oom_step");
  {
    Trainer t(tiny_run({"--batch", "2", "--save-every", "2"}, out));
    t.run();
  }
  REQUIRE(step_dirs(out) == std::vector<std::string>{"step-00000002"});
  {
    Trainer t(tiny_run({"--batch", "2", "--steps", "4", "--save-every", "1"}, out));
    t.resume(out / "step-00000002");
    EnvVar fault("TALLY_FAULT_OOM_AT_STEP", "4");  // step 3 completes and is saved; step 4's allocations fail
    std::string m;
    try {
      t.run();
    } catch (const Error& e) {
      m = e.what();
    }
    CHECK(cpu_memory_limit() == 0);
    CHECK(m.find("out of memory on the CPU: could not allocate") != std::string::npos);
    CHECK(m.find("live requested") != std::string::npos);  // the ledger's table, category by category
    // The plan fits what the machine has: the advice says the memory went elsewhere.
    CHECK(m.find("The plan fits the budget at --batch 2") != std::string::npos);
    CHECK(m.find("MemAvailable in /proc/meminfo") != std::string::npos);
    CHECK(m.find("Nothing of the failed step was saved; earlier checkpoints are untouched") != std::string::npos);
  }
  CHECK(step_dirs(out) == std::vector<std::string>{"step-00000002", "step-00000003"});
  CHECK(train::latest_checkpoint(out) == out / "step-00000003");
  CHECK(train::load_checkpoint(out / "step-00000003").state["step"] == 3);
  fs::remove_all(out);
}

}  // TEST_SUITE
