// `tally train`: trains a GPT-2 (default: the d4 preset on Tiny Shakespeare with CAME, on the CPU), printing the
// exact memory plan first and the measured figures beside it after step 1, a progress line, evaluations and
// samples; writes DIR/log.jsonl, DIR/config.json, checkpoints and DIR/report.html (train/report.h).
// SIGINT/SIGTERM/SIGHUP finish the step and save.
#include <cstdio>
#include <fstream>

#include "core/dist/communicator.h"
#include "core/io/file.h"
#include "optim/registry.h"
#include "train/checkpoint.h"
#include "train/commands.h"
#include "train/report.h"
#include "train/trainer.h"

namespace tally::train {

namespace {

// A run training in `dir` is named (a tally::Error): its lock is taken and dropped. Without a lock file nothing holds
// it, and none is created (a refused run leaves nothing behind).
void refuse_if_in_use(const std::filesystem::path& dir) {
  if (!std::filesystem::exists(dir / io::DirectoryLock::kLockFile)) return;
  const io::DirectoryLock in_use_elsewhere(dir, "run directory");
}

// What --resume names must be a run directory holding a checkpoint, or one of its checkpoints: checked before
// anything is read or written (a mistyped path would otherwise become a directory of freshly tokenized data, and a
// model file or export would be read as a run's configuration).
void check_resume_target(const std::filesystem::path& r, int rank) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(r, ec);
  const std::string kWhat = "it names a run directory, or one of its step-NNNNNNNN checkpoints";
  if (!fs::exists(st))
    fail("--resume '", r.string(),
         "': ", st.type() == fs::file_type::not_found ? std::string("no such file or directory") : ec.message(), " (",
         kWhat, "); nothing was changed");
  if (!fs::is_directory(st))
    fail("--resume '", r.string(), "' is a file, not a run (", kWhat,
         "); to start a new run from a model file, use --init ", r.string(), "; nothing was changed");
  if (fs::exists(r / "manifest.json") || !checkpoints_newest_first(r).empty()) return;
  std::string hint;
  if (fs::exists(r / "log.jsonl")) {
    // A run's directory: one still training there is named first (rank 0 takes and drops its lock: rank 0 owns it).
    if (rank == 0) refuse_if_in_use(r);
    hint = "; its run stopped before its first checkpoint: start it again (move its log.jsonl away, or another --out)";
  } else if (holds_model_only(r))
    hint = cat("; it holds a model, not a run: to start a new run from it, use --init ", r.string());
  fail("--resume '", r.string(), "': no complete checkpoint there (", kWhat, ")", hint, "; nothing was changed");
}

// A setting that only other optimizers read would be ignored without a word (`--eps2` with AdamW): refused, naming
// the optimizers that read it. (compare and memory take several optimizers at once and pass each its own.)
void refuse_settings_of_other_optimizers(const std::string& optimizer,
                                         const std::vector<std::pair<std::string, std::string>>& given) {
  const optim::OptimizerEntry* mine = nullptr;
  for (const optim::OptimizerEntry& e : optim::optimizers())
    if (e.name == optimizer) mine = &e;
  if (!mine) return;  // an unknown --optimizer: refused with the known ones by the run's configuration
  for (const auto& [name, origin] : given) {
    bool read = false;
    for (const optim::Setting& s : mine->settings) read = read || s.name == name;
    if (read) continue;
    std::string readers;
    for (const optim::OptimizerEntry& e : optim::optimizers())
      for (const optim::Setting& s : e.settings)
        if (s.name == name) readers += (readers.empty() ? "" : ", ") + e.name;
    throw FlagError(cat("--", name, origin, " is a setting of ", readers, ", not of ", optimizer,
                        " (this run's --optimizer): leave it out, or choose an optimizer that reads it"));
  }
}

}  // namespace

int cmd_train(const Args& args) {
  // Data-parallel (mpirun -np N tally train ...): rank 0 alone prints; the others' errors still reach stderr.
  dist::Communicator& ranks = dist::process_group();
  if (ranks.rank() != 0 && !std::freopen("/dev/null", "w", stdout)) fail("rank ", ranks.rank(), ": cannot quiet stdout");
  Flags flags("train", "train a GPT-2 (defaults: preset d4 on Tiny Shakespeare with CAME on the CPU)", train_flags());
  flags.parse(args);
  if (!flags.positional().empty()) throw FlagError("unexpected argument '" + flags.positional().front() + "'");
  if (auto cfg = flags.maybe("config")) flags.merge_json_file(*cfg);
  // The optimizer settings given now (not a resumed run's saved ones): each must be one the run's optimizer reads.
  // (A switch given as off asks for nothing.) Each with where it was given, for the error.
  std::vector<std::pair<std::string, std::string>> settings_given;
  for (const optim::Setting& s : optim::all_settings())
    if (flags.given(s.name) && (s.kind != optim::SettingKind::switch_ || flags.on(s.name)))
      settings_given.push_back({s.name, flags.origin(s.name)});
  // Before a resumed run's saved flags join the given ones: the model flags given with --init, or given now to a
  // resumed run (a run started with --init checks them against its checkpoint's model).
  std::vector<std::string> model_flags_with_init;
  if (flags.given("init") || flags.given("resume"))
    for (const char* name : {"model", "layers", "heads", "width", "block"})
      if (flags.given(name)) model_flags_with_init.push_back(name);
  std::optional<std::filesystem::path> resume;
  if (auto r = flags.maybe("resume")) {
    if (flags.given("init"))
      throw FlagError(cat("--init", flags.origin("init"),
                          " starts a new run from a model file and --resume continues a run from its checkpoint, whose "
                          "weights it loads: give one of them (a resumed run keeps the flags it was started with, "
                          "--init and --config's included)"));
    // "run/step-00000003/" names the same checkpoint as "run/step-00000003" (its parent is the run directory).
    resume = std::filesystem::path(*r).lexically_normal();
    if (resume->filename().empty()) resume = resume->parent_path();
    check_resume_target(*resume, ranks.rank());
    // A resumed run takes its saved flags; flags given now win (e.g. more --steps).
    take_saved_flags(flags, saved_run_flags(*resume));
    // --resume names a run directory or one of its checkpoints; either way the run goes on in the run directory.
    if (!flags.given("out"))
      flags.set("out", std::filesystem::exists(*resume / "manifest.json") ? resume->parent_path().string() : resume->string());
  }
  refuse_settings_of_other_optimizers(flags.str("optimizer"), settings_given);
  // A new run (or one resumed elsewhere than its own directory) into a directory holding a run: refused before the
  // data is resolved (tokenizing a text writes OUT/data), by every rank (each would resolve the data).
  const std::filesystem::path out = flags.str("out");
  std::error_code ec;
  const bool own_directory =
      resume && std::filesystem::equivalent(
                    std::filesystem::exists(*resume / "manifest.json") ? resume->parent_path() : *resume, out, ec);
  if (!own_directory && std::filesystem::is_directory(out)) {
    if (ranks.rank() == 0) refuse_if_in_use(out);  // a run training there is named first (rank 0 owns the lock)
    refuse_new_run_into(out);
  }
  // The rank's share of the CPUs (as the trainer keeps it) before anything computes: tokenizing a --text does.
  use_threads(thread_count(flags), &ranks);
  check_before_data(ranks, flags);
  RunConfig config = run_config(flags, DataResolution::resolve, ranks.world());
  config.model_flags_with_init = model_flags_with_init;
  if (resume) resume_model_of(config, *resume);
  install_stop_handlers();
  Trainer trainer(config);
  if (resume) trainer.resume(*resume);
  trainer.check_before_run();
  std::printf("tally train: resolved configuration (written to %s/config.json as training starts)\n",
              config.out.c_str());
  for (const auto& [k, v] : config.flags.items()) std::printf("  --%s %s\n", k.c_str(), v.get<std::string>().c_str());
  RunSummary s = trainer.run();
  if (s.stopped_before_training) return 0;  // said by the trainer; nothing to report
  if (ranks.rank() == 0) {  // the page of this run, also of one stopped early
    // The training is done and saved: a page that cannot be written (a damaged log line, a full disk) is a warning.
    try {
      write_report({config.out}, config.out / "report.html");
      std::printf("report: %s/report.html\n", config.out.c_str());
    } catch (const Error& e) {
      std::fprintf(stderr, "tally train: warning: the run finished, but its report was not written: %s\n", e.what());
    }
  }
  if (s.interrupted) return 0;
  // The last finite loss: the last step's, unless the steps after it were skipped as non-finite.
  const int64_t loss_step = s.train_curve.empty() ? -1 : s.train_curve.back().first;
  const std::string loss_note = loss_step >= 0 && loss_step != s.steps_done
                                    ? cat(" (step ", loss_step, "'s: the steps after it were not finite)")
                                    : "";
  std::printf("\nfinal: train loss %.4f%s, val loss %.4f, %.0f ms/step%s, optimizer state %s, %lld skipped step(s)\n",
              s.final_train_loss, loss_note.c_str(), s.final_val_loss, s.ms_per_step,
              s.ms_from_first_step ? " (one step, its warm-up included)" : "",
              format_bytes_exact(s.optimizer_state_bytes).c_str(), (long long)s.skipped_steps);
  if (ranks.rank() != 0) return 0;
  std::printf("\nsamples:\n");
  try {
    for (uint64_t i = 0; i < 2; ++i)
      std::printf("--- %llu ---\n%s\n", (unsigned long long)i + 1,
                  trainer.sample("", config.sample_tokens, config.seed + 1000 + i).c_str());
  } catch (const Error& e) {  // the run is saved; say why there is no sample
    std::printf("(none: %s)\n", e.what());
  }
  std::printf("---\nlog: %s/log.jsonl\ncheckpoint: %s\n", config.out.c_str(), s.last_checkpoint.c_str());
  return 0;
}

}  // namespace tally::train
