// End to end on the CPU with the tiny preset: the loss falls, log.jsonl is well formed, the memory plan equals the
// measured bytes, a resumed run is bit-identical to an uninterrupted one, a NaN step is skipped with the optimizer
// untouched, and bad flags or data are refused with the promised messages.
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <nlohmann/json.hpp>

#include "core/autograd/node.h"
#include "core/io/file.h"
#include "core/ledger.h"
#include "optim/registry.h"
#include "tests/models/test_helpers.h"
#include "tests/test_util.h"
#include "train/trainer.h"

using namespace tally;
using namespace tally::train;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

RunConfig config_from(const std::vector<std::string>& extra, const fs::path& out, int32_t world = 1) {
  Flags f("train", "", train_flags());
  std::vector<std::string> args = {"--model", "tiny", "--batch", "2", "--seq", "32", "--steps", "8", "--eval-every", "4",
                                   "--val-batches", "2", "--out", out.string(), "--threads", "1", "--lr", "3e-3",
                                   "--warmup", "2"};
  args.insert(args.end(), extra.begin(), extra.end());
  f.parse(args);
  return run_config(f, DataResolution::resolve, world);
}

std::vector<json> read_log(const fs::path& p) {
  std::vector<json> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));  // throws on a malformed line
  return out;
}

std::map<int64_t, double> losses(const std::vector<json>& log) {
  std::map<int64_t, double> m;
  for (const auto& j : log)
    if (j.contains("loss") && !j.contains("skipped")) m[j["step"].get<int64_t>()] = j["loss"].get<double>();
  return m;
}

}  // namespace

TEST_SUITE("train") {

TEST_CASE("train: the loss falls, the log is well formed, the plan equals the measured bytes") {
  fs::path out = test::temp_dir("train_e2e");
  RunConfig c = config_from({"--steps", "30", "--eval-every", "10"}, out);
  Trainer t(c);
  MemoryFigures predicted = t.predict_memory();
  RunSummary s = t.run();
  CHECK(s.steps_done == 30);
  std::vector<json> log = read_log(out / "log.jsonl");
  auto l = losses(log);
  REQUIRE(l.size() == 30);
  CHECK(l[30] < l[1] - 0.5);  // from ~10.8 (uniform over 50k tokens) clearly down
  int evals = 0, memory_records = 0;
  for (const auto& j : log) {
    if (j.contains("val_loss")) {
      ++evals;
      CHECK(j["val_loss"].is_number());
    }
    if (j.contains("loss")) {
      for (const char* k : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "ms"}) CHECK_MESSAGE(j.contains(k), k);
    }
    if (j.contains("memory_predicted")) {
      ++memory_records;
      CHECK(j["memory_difference"] == 0);
      CHECK(j["memory_measured"] == j["memory_predicted"]);
    }
  }
  CHECK(evals == 3);
  CHECK(memory_records > 0);
  CHECK(predicted.total > 0);
  CHECK(fs::exists(out / "config.json"));
  CHECK(fs::exists(s.last_checkpoint / "manifest.json"));
  fs::remove_all(out);
}

TEST_CASE("train: the plan predicted on the meta device equals the CPU step, category by category and owner") {
  fs::path out = test::temp_dir("train_plan");
  // Each registered optimizer at 64 positions per micro-batch, plain and with an inspected step (its buffers too);
  // and CAME at 1,280, where GPT-2's head and loss run in chunks of 1,024 rows (linear_cross_entropy: a chunk's
  // logits as workspace, the head's gradient made in the forward pass).
  std::vector<std::vector<std::string>> runs;
  for (const optim::OptimizerEntry& e : optim::optimizers()) {
    runs.push_back({"--optimizer", e.name, "--total-batch", "128"});
    runs.push_back({"--optimizer", e.name, "--total-batch", "128", "--log-optim", "1"});
  }
  runs.push_back({"--optimizer", "came", "--seq", "640", "--total-batch", "1280", "--val-batches", "1"});
  for (size_t run = 0; run < runs.size(); ++run) {
    std::vector<std::string> args = runs[run];
    const bool chunked = run + 1 == runs.size();  // the last run
    const std::string opt = args[1] + (chunked ? " B*T 1280" : args.size() > 4 ? " --log-optim 1" : "");
    args.insert(args.end(), {"--steps", "1"});
    const fs::path dir = out / std::to_string(run);  // a run directory each (one holding a run is not trained into)
    RunConfig c = config_from(args, dir);
    Trainer t(c);
    MemoryFigures p = t.predict_memory();
    RunSummary s = t.run();
    // run() measured after its first step; repeat the comparison here from its log.
    auto log = read_log(dir / "log.jsonl");
    bool seen = false;
    for (const auto& j : log)
      if (j.contains("memory_predicted")) {
        seen = true;
        CHECK_MESSAGE(j["memory_predicted"] == p.total, opt);
        CHECK_MESSAGE(j["memory_difference"] == 0, opt);
        // The record's figures: the plan's, and measured equal to them category by category and owner by owner
        // (an inspected step's statistics buffer included).
        const json& predicted = j["memory"]["predicted"];
        const json& measured = j["memory"]["measured"];
        CHECK_MESSAGE(predicted == to_json(p), opt);
        for (const char* k : {"parameters", "gradients", "optimizer_state", "state_by_kind", "activations",
                              "workspace", "other", "total", "total_held"})
          CHECK_MESSAGE(measured[k] == predicted[k], opt, " ", k);
        for (const char* k : {"parameter", "gradient", "optimizer_state", "activation", "workspace", "other"}) {
          CHECK_MESSAGE(predicted["owners"][k].size() > 0, opt, " ", k);
          CHECK_MESSAGE(measured["owners"][k] == predicted["owners"][k], opt, " ", k);
        }
        // The chunked head's one chunk of (1,024, Vp) f32 logits and its log-sum-exp, as planned and as measured.
        if (chunked)
          for (const json* figures : {&predicted, &measured})
            CHECK_MESSAGE((*figures)["owners"]["workspace"].value("linear_cross_entropy", int64_t(0)) ==
                              1024 * 50304 * 4 + 1024 * 4,
                          opt);
      }
    CHECK(seen);
    CHECK(s.optimizer_state_bytes == p.optimizer_state);
  }
  fs::remove_all(out);
}

TEST_CASE("train: a resumed run is bit-identical to an uninterrupted one") {
  fs::path a = test::temp_dir("train_resume_a"), b = test::temp_dir("train_resume_b");
  Trainer whole(config_from({"--save-every", "3", "--keep-last", "5"}, a));
  whole.run();
  REQUIRE(fs::exists(a / "step-00000003"));
  Trainer resumed(config_from({}, b));
  resumed.resume(a / "step-00000003");
  resumed.run();
  auto la = losses(read_log(a / "log.jsonl")), lb = losses(read_log(b / "log.jsonl"));
  REQUIRE(lb.size() == 5);  // steps 4..8
  for (const auto& entry : lb) {  // not a structured binding: CHECK_MESSAGE's lambda captures it (clang 14)
    const auto step = entry.first;
    CHECK_MESSAGE(entry.second == la[step], "step ", step);  // exact, not approximate
  }
  // And where the runs end: every parameter and every optimizer state tensor, bit for bit (widening to double is
  // exact), and the step counts.
  // (Loops without structured bindings: CHECK_MESSAGE's lambda captures the names, which clang 14 refuses.)
  for (const auto& named : whole.model().named_parameters()) {
    const std::string& name = named.first;
    CHECK_MESSAGE(named.second.to_vector<double>() == resumed.model().parameter(name).to_vector<double>(), name);
  }
  const optim::OptimizerState sa = whole.optimizer().state_dict(), sb = resumed.optimizer().state_dict();
  CHECK(sa.steps == sb.steps);
  CHECK(sa.param_steps == sb.param_steps);
  REQUIRE(sa.tensors.size() == sb.tensors.size());
  for (const auto& entry : sa.tensors) {
    const std::string& key = entry.first;
    REQUIRE_MESSAGE(sb.tensors.contains(key), key);
    CHECK_MESSAGE(entry.second.to_vector<double>() == sb.tensors.at(key).to_vector<double>(), key);
  }
  fs::remove_all(a);
  fs::remove_all(b);
}

TEST_CASE("train: a NaN step is skipped, the optimizer untouched; too many stop the run") {
  fs::path out = test::temp_dir("train_nan");
  ::setenv("TALLY_FAULT_NAN_AT_STEP", "3", 1);
  {
    Trainer t(config_from({"--steps", "5"}, out));
    RunSummary s = t.run();
    CHECK(s.skipped_steps == 1);
    CHECK(s.steps_done == 5);
    CHECK(t.optimizer().steps() == 4);  // the skipped step never reached the optimizer
  }
  auto log = read_log(out / "log.jsonl");
  bool skipped = false;
  for (const auto& j : log)
    if (j.contains("skipped")) {
      skipped = true;
      CHECK(j["step"] == 3);
      CHECK(j["loss"].is_null());
    }
  CHECK(skipped);
  {
    Trainer t(config_from({"--steps", "5", "--max-bad-steps", "1"}, out / "stopped"));
    CHECK_THROWS_WITH_AS(t.run(), doctest::Contains("training stopped: 1 non-finite steps in a row"), Error);
  }
  ::unsetenv("TALLY_FAULT_NAN_AT_STEP");
  fs::remove_all(out);
}

TEST_CASE("train: a stop requested during setup trains nothing and writes no log, so the same command starts again") {
  // As a signal during loading or planning sets it (the handlers are installed before the trainer is made).
  struct StopRequested {
    StopRequested() { g_stop_requested = true; }
    ~StopRequested() { g_stop_requested = false; }
  };
  const fs::path out = test::temp_dir("train_stop_in_setup");
  {
    Trainer t(config_from({"--steps", "2", "--save-every", "2"}, out));
    StopRequested stop;
    const RunSummary s = t.run();
    CHECK(s.interrupted);
    CHECK(s.stopped_before_training);
    CHECK(s.steps_done == 0);
    CHECK(s.last_checkpoint.empty());
    CHECK(t.optimizer().steps() == 0);
  }
  CHECK_FALSE(fs::exists(out / "log.jsonl"));
  CHECK_FALSE(train::latest_checkpoint(out).has_value());
  CHECK_NOTHROW(refuse_new_run_into(out));  // not a run yet: the same command may train there
  {
    Trainer t(config_from({"--steps", "2", "--save-every", "2"}, out));
    CHECK(t.run().steps_done == 2);
  }
  // Resumed and stopped during setup: the checkpoint and the log as they were.
  const std::string log = io::read_file_text(out / "log.jsonl");
  const std::optional<fs::path> checkpoint = train::latest_checkpoint(out);
  REQUIRE(checkpoint.has_value());
  {
    Trainer t(config_from({"--steps", "4"}, out));
    t.resume(out);
    StopRequested stop;
    const RunSummary s = t.run();
    CHECK(s.stopped_before_training);
    CHECK(s.steps_done == 2);
    CHECK(s.last_checkpoint == *checkpoint);
  }
  CHECK(io::read_file_text(out / "log.jsonl") == log);
  CHECK(train::latest_checkpoint(out) == checkpoint);
  fs::remove_all(out);
}

TEST_CASE("train: --total-batch counts the tokens of every rank and is recorded resolved") {
  fs::path out = test::temp_dir("train_total_batch");
  // B x T = 64 tokens a micro-batch.
  RunConfig one = config_from({}, out), two = config_from({}, out, 2);
  CHECK(one.accumulation == 1);
  CHECK(one.flags["total-batch"] == "64");
  CHECK(two.accumulation == 1);  // one micro-batch on each rank when not given
  CHECK(two.flags["total-batch"] == "128");
  CHECK(config_from({"--total-batch", "256"}, out).accumulation == 4);
  CHECK(config_from({"--total-batch", "256"}, out, 2).accumulation == 2);
  CHECK(config_from({"--total-batch", "256"}, out, 4).accumulation == 1);
  // The resolved total, given back (a resume reads it from config.json), keeps the tokens per step at another world.
  CHECK(config_from({"--total-batch", two.flags["total-batch"].get<std::string>()}, out, 1).accumulation == 2);
  CHECK_THROWS_WITH_AS(config_from({"--total-batch", "192"}, out, 2),
                       doctest::Contains("--total-batch 192 must be a positive multiple of B*T = 64 x 2 ranks = 128"),
                       FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--total-batch", "64"}, out, 2), doctest::Contains("x 2 ranks = 128"), FlagError);
  CHECK_THROWS_AS(config_from({}, out, 0), FlagError);
  // A trainer refuses a configuration resolved for another number of ranks than its run's (here one).
  CHECK_THROWS_WITH_AS(Trainer{two}, doctest::Contains("resolved for 2 rank(s), but this run has 1"), Error);
  fs::remove_all(out);
}

TEST_CASE("train: bad flags and missing data are refused clearly") {
  fs::path out = test::temp_dir("train_flags");
  CHECK_THROWS_WITH_AS(config_from({"--optimizer", "no-such-optimizer"}, out),
                       doctest::Contains("unknown optimizer 'no-such-optimizer'"), FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--seq", "5000"}, out), doctest::Contains("--seq 5000 exceeds the model's block size"),
                       FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--total-batch", "100"}, out), doctest::Contains("must be a positive multiple of B*T = 64"),
                       FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--model", "gpt5"}, out), doctest::Contains("gpt5"), FlagError);
  // A value forgotten before the next flag is refused (the flag after it was taken for the value, and lost);
  // a value that starts with -- is given with =.
  CHECK_THROWS_WITH_AS(config_from({"--out", "--came-bf16-m"}, out),
                       doctest::Contains("--out needs a value, got the flag --came-bf16-m (a value that starts with -- "
                                         "is given as --out=VALUE)"),
                       FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--log-optim", "--steps", "2"}, out),
                       doctest::Contains("--log-optim needs a value, got the flag --steps"), FlagError);
  CHECK(config_from({"--out=" + (out / "--odd").string()}, out).out == out / "--odd");
  CHECK_THROWS_WITH_AS(config_from({"--out", "--help"}, out), doctest::Contains("--out needs a value"), FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--out", "--steps=3"}, out), doctest::Contains("got the flag --steps=3"),
                       FlagError);
  // A value that starts with -- but names no flag is a value (a prompt "-- a comment", a separator "---").
  Flags values("train", "", train_flags());
  values.parse({"--out", "-- not a flag"});
  CHECK(values.str("out") == "-- not a flag");
  // Numbers a double cannot hold (an underflow reads as 0, an overflow as inf) and non-finite ones are refused by name.
  for (const char* lr : {"1e-332", "1e400", "nan", "inf", "0", "-1e-3"})
    CHECK_THROWS_AS(config_from({"--lr", lr}, out), FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--lr", "1e-332"}, out),
                       doctest::Contains("setting 'lr' expects a finite number within double's range, got '1e-332'"),
                       FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--optimizer", "adamw", "--beta2", "1e999"}, out),
                       doctest::Contains("[adamw] setting 'beta2' expects a finite number"), FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--weight-decay", "-1e-400"}, out), doctest::Contains("'weight-decay'"), FlagError);
  // B*T past the kernels' 32-bit row index, and past int64 itself, is refused before it is multiplied.
  CHECK_THROWS_WITH_AS(config_from({"--batch", "67108864", "--seq", "32"}, out),
                       doctest::Contains("--batch 67108864 x --seq 32 is more than the 2147483647 tokens"), FlagError);
  CHECK_NOTHROW(config_from({"--batch", "67108863", "--seq", "32"}, out));  // 2^31 - 32 tokens: allowed
  CHECK_THROWS_WITH_AS(config_from({"--batch", "9223372036854775807", "--total-batch", "256"}, out),
                       doctest::Contains("--batch 9223372036854775807 x --seq"), FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--train", "x.bin"}, out), doctest::Contains("--train and --val go together"), FlagError);
  CHECK_THROWS_WITH_AS(config_from({"--text", (out / "missing.txt").string()}, out), doctest::Contains("does not exist"), Error);
  CHECK_THROWS_WITH_AS(Trainer(config_from({"--train", (out / "no.bin").string(), "--val", (out / "no.bin").string()}, out)),
                       doctest::Contains("no.bin"), Error);
  const char* before = std::getenv("TALLY_DATA");  // set where the shared data is carried (scripts/gpu_check.sh)
  const std::optional<std::string> saved = before ? std::optional<std::string>(before) : std::nullopt;
  ::setenv("TALLY_DATA", (out / "nowhere.txt").string().c_str(), 1);
  CHECK_THROWS_WITH_AS(config_from({}, out), doctest::Contains("nowhere.txt' does not exist"), Error);
  ::unsetenv("TALLY_DATA");
  {
    // Nothing in the candidates and nothing cached: offline, the message says what to provide and why nothing came.
    test::ScopedEnv offline("TALLY_OFFLINE", "1"), cache("TALLY_CACHE_DIR", (out / "cache").string());
    CHECK_THROWS_WITH_AS(resolve_data_from({}, 32768, out), doctest::Contains("no training data found"), Error);
    CHECK_THROWS_WITH_AS(resolve_data_from({}, 32768, out), doctest::Contains("tinyshakespeare/input.txt"), Error);
    CHECK_THROWS_WITH_AS(resolve_data_from({}, 32768, out), doctest::Contains("TALLY_OFFLINE is set"), Error);
    // Each place looked in is named: TALLY_SHARED_DATA's, which replaces ../shared/data, included.
    test::ScopedEnv shared("TALLY_SHARED_DATA", (out / "elsewhere").string());
    CHECK_THROWS_WITH_AS(resolve_data_from({}, 32768, out),
                         doctest::Contains((out / "elsewhere" / "tinyshakespeare.txt").string().c_str()), Error);
    CHECK_THROWS_WITH_AS(resolve_data_from({}, 32768, out),
                         doctest::Contains((out / "cache" / "tinyshakespeare.txt").string().c_str()), Error);
  }
  if (saved) ::setenv("TALLY_DATA", saved->c_str(), 1);
  fs::remove_all(out);
}

TEST_CASE("train: with no data in any place, Tiny Shakespeare is downloaded into the cache and tokenized") {
  {
    test::ScopedEnv cache("TALLY_CACHE_DIR", "/c"), shared("TALLY_SHARED_DATA", "/s");
    CHECK(default_data_candidates() == std::vector<fs::path>{"/c", "/c/tinyshakespeare.txt", "/s/tinyshakespeare.txt"});
  }
  // The mirror serves all three files: with the cache moved, tokenizing downloads GPT-2's files too where no
  // ../shared/data has them.
  const fs::path real = test::data_file(data::DataFile::tiny_shakespeare),
                 encoder = test::data_file(data::DataFile::gpt2_encoder),
                 vocab = test::data_file(data::DataFile::gpt2_vocab);
  if (real.empty() || encoder.empty() || vocab.empty()) {
    MESSAGE("SKIPPED: the data files were neither found nor downloaded");
    return;
  }
  const fs::path out = test::temp_dir("train_fetch");
  fs::create_directories(out / "mirror" / "gpt2");
  fs::copy_file(real, out / "mirror" / "tinyshakespeare.txt");
  fs::copy_file(encoder, out / "mirror" / "gpt2" / "encoder.json");
  fs::copy_file(vocab, out / "mirror" / "gpt2" / "vocab.bpe");
  {
    test::ScopedEnv cache("TALLY_CACHE_DIR", (out / "cache").string()),
        url("TALLY_DATA_URL", "file://" + (out / "mirror").string()), offline("TALLY_OFFLINE", std::nullopt);
    const DataChoice d = resolve_data_from({}, 32768, out);
    CHECK(d.description.find("cached " + (out / "cache" / "tinyshakespeare.txt").string()) != std::string::npos);
    CHECK(fs::file_size(out / "cache" / "tinyshakespeare.txt") == fs::file_size(real));
    CHECK(fs::file_size(d.val_pattern) == 1024 + 2 * 32768);
  }
  fs::remove_all(out);
}

}  // TEST_SUITE

TEST_SUITE("train") {
TEST_CASE("train: --log-optim writes CAME's internals for every tensor") {
  fs::path out = test::temp_dir("train_log_optim");
  std::set<std::string> params;  // every trained parameter's name
  {
    Trainer t(config_from({"--steps", "4", "--log-optim", "2"}, out));
    for (const auto& [name, p] : t.model().named_parameters()) params.insert(name);
    t.run();
  }
  REQUIRE(params.size() > 2);
  int entries = 0;
  for (const auto& j : read_log(out / "log.jsonl")) {
    if (!j.contains("optim")) continue;
    ++entries;
    CHECK((j["step"] == 2 || j["step"] == 4));
    REQUIRE(j["optim"].is_array());
    bool saw_confidence = false;
    std::multiset<std::string> logged;
    for (const auto& e : j["optim"]) {
      REQUIRE(e.contains("param"));
      logged.insert(e["param"].get<std::string>());
      CHECK(e["update_rms"].is_number());
      CHECK(e["clipped"].is_boolean());
      if (e.contains("confidence_scale")) {
        saw_confidence = true;
        CHECK(e["confidence_scale"]["min"].get<double>() <= e["confidence_scale"]["max"].get<double>());
      }
    }
    CHECK(saw_confidence);  // CAME's factored tensors report their confidence factors
    CHECK(logged == std::multiset<std::string>(params.begin(), params.end()));  // each tensor once, none left out
  }
  CHECK(entries == 2);
  fs::remove_all(out);
}

TEST_CASE(
    "evaluation: rank_loss_sum equals the model's losses; ids are checked unless the shards were validated "
    "against the model's vocabulary") {
  const models::GPT2 model(test::tiny_config(), {.seed = 3});  // vocabulary 500
  const std::filesystem::path dir = test::temp_dir("rank_loss_sum");
  std::vector<uint16_t> tokens(4 * 2 * 8 + 1);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = uint16_t((i * 37) % 500);
  data::write_shard(dir / "ok.bin", tokens);
  tokens[20] = 600;  // outside the model's 500
  data::write_shard(dir / "bad.bin", tokens);
  const data::LoaderConfig two_by_eight{.batch = 2, .seq_len = 8};
  {
    data::DataLoader loader(data::ShardSet::open((dir / "ok.bin").string(), {.vocab_limit = 500}), two_by_eight);
    data::DataLoader again(data::ShardSet::open((dir / "ok.bin").string()), two_by_eight);
    double want = 0;
    for (int i = 0; i < 3; ++i) {
      const data::Batch b = again.next();
      NoGradGuard no_grad;
      want += model
                  .loss(train::token_tensor(b.inputs, 2, 8, Device::cpu()),
                        train::token_tensor(b.targets, 2, 8, Device::cpu()))
                  .item();
    }
    CHECK(train::rank_loss_sum(model, loader, 3, 0, 1) == doctest::Approx(want).epsilon(1e-12));
    // At two ranks, rank 1 takes batch 1 of 3.
    loader.reset();
    again.reset();
    again.next();
    const data::Batch second = again.next();
    NoGradGuard no_grad;
    const double batch1 = model
                              .loss(train::token_tensor(second.inputs, 2, 8, Device::cpu()),
                                    train::token_tensor(second.targets, 2, 8, Device::cpu()))
                              .item();
    CHECK(train::rank_loss_sum(model, loader, 3, 1, 2) == doctest::Approx(batch1).epsilon(1e-12));
  }
  // Validated against a larger vocabulary than the model's (or not at all): the host check still runs.
  for (int32_t limit : {1000, 0}) {
    data::DataLoader loader(data::ShardSet::open((dir / "bad.bin").string(), {.vocab_limit = limit}), two_by_eight);
    CHECK_THROWS_WITH_AS(train::rank_loss_sum(model, loader, 2, 0, 1), doctest::Contains("token 600"), Error);
  }
  std::filesystem::remove_all(dir);
}
}  // TEST_SUITE
