// One training run, the engine of `tally train` and `tally compare`: model, optimizer, data loaders and schedule
// made from a RunConfig (run_config.h); the loop of steps (step.h), each measured against the memory plan
// (memory_plan.h) and logged (run_log.h); evaluation, sampling, and checkpoints with bit-exact resume.
#pragma once
#include <nlohmann/json.hpp>

#include <atomic>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "core/io/file.h"
#include "data/loader.h"
#include "models/gpt2.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"
#include "train/memory_plan.h"
#include "train/run_config.h"
#include "train/run_log.h"
#include "train/setup.h"
#include "train/step.h"

namespace tally::train {

struct RunSummary {
  int64_t steps_done = 0;
  double final_train_loss = NAN, final_val_loss = NAN, ms_per_step = NAN;
  bool ms_from_first_step = false;  // ms_per_step is the session's only step, warm-up (allocations, caches) included
  int64_t optimizer_state_bytes = 0;
  int64_t skipped_steps = 0;
  bool interrupted = false;
  bool stopped_before_training = false;  // interrupted during setup: no step trained, no log or checkpoint written
                                         // (config.json only)
  std::filesystem::path last_checkpoint;
  std::vector<std::pair<int64_t, double>> train_curve, val_curve;
  std::string stopped;  // why training stopped before --steps on non-finite steps (--max-bad-steps); else empty
};

// Thrown by Trainer::run when training stops on --max-bad-steps non-finite steps in a row (the model they started
// from saved): what() says why and what to try; summary() is the run so far (compare reports it beside the others).
class TrainingStopped : public Error {
 public:
  TrainingStopped(const std::string& what, RunSummary summary) : Error(what), summary_(std::move(summary)) {}
  const RunSummary& summary() const { return summary_; }

 private:
  RunSummary summary_;
};

// Set by SIGINT/SIGTERM/SIGHUP (and a broken stdout pipe): the run finishes its step, saves a checkpoint and returns;
// set before the first step (during setup), the run returns without training or writing a log or checkpoint (its
// config.json is written, as a run refused for memory writes it).
extern std::atomic<bool> g_stop_requested;

// Every rank's `mine` against rank 0's (a collective): a tally::Error on every rank naming the first rank that
// differs and its entries (each named key_prefix + key), "the ranks of this run <what> ... <advice>".
void check_same_on_every_rank(dist::Communicator& ranks, const nlohmann::json& mine, const char* key_prefix,
                              const std::string& what, const std::string& advice);
// The flags every rank was started with (a JSON object of name: value), but --out, against rank 0's. train and
// compare check those resolved from the command line before any rank resolves its data (ranks of different --text
// would tokenize into one OUT/data at once); the Trainer checks its run's configuration again.
void check_same_flags(dist::Communicator& ranks, nlohmann::json flags);
// What train and compare check before resolving their data (tokenizing a --text writes): at N ranks, that every rank
// has the same flags; alone, that its --device can compute (at N ranks each Trainer checks its rank's own).
void check_before_data(dist::Communicator& ranks, const Flags& flags);
void install_stop_handlers();

// Refuses (tally::Error) a new run into `out` when it holds a run: its log or a checkpoint.
void refuse_new_run_into(const std::filesystem::path& out);

class Trainer {
 public:
  explicit Trainer(RunConfig config);
  ~Trainer();
  // Continues from a checkpoint directory (model, optimizer state, loader position, step, RNG).
  void resume(const std::filesystem::path& checkpoint_dir);
  // Refuses a run that would train nothing (resumed at or past --steps) or write into a directory holding another
  // run, or another continuation of this one (a FlagError or tally::Error; nothing written). run() checks first too.
  void check_before_run() const;
  RunSummary run();

  // The exact memory plan of one training step (run on the meta device), and its rendering.
  MemoryFigures predict_memory() const;
  double evaluate(int64_t batches);
  std::string sample(const std::string& prompt, int64_t tokens, uint64_t seed);
  models::GPT2& model() { return *model_; }
  optim::Optimizer& optimizer() { return *optimizer_; }

 private:
  StepRecord train_step(int64_t step);
  void run_steps(RunSummary& s);  // the loop of run()
  StepShape step_shape() const;   // of the first step of this process
  bool inspected(int64_t step) const { return c_.log_optim > 0 && step % c_.log_optim == 0; }  // --log-optim's steps
  int64_t run_holds() const { return ledger(c_.device).total().live_held - held_before_; }
  std::filesystem::path save(int64_t step);  // every rank calls it; rank 0 writes
  std::filesystem::path write_checkpoint(int64_t step, train::CheckpointContent c, const optim::OptimizerState& st);

  // Resolved flags compared over the ranks: refuses (naming the flags) a rank started differently from rank 0.
  void check_same_configuration();
  void check_same_data();
  // Resumed from a checkpoint of --out's own run (not one continued into another directory).
  bool resumed_in_own_directory() const;
  // How a user continues this run after a stop: --resume OUT, or what the caller said (compare's --resume DIR).
  std::string continue_command() const;

  RunConfig c_;
  dist::Communicator& comm_;                  // the ranks of a data-parallel run (one: a single process)
  std::unique_ptr<io::DirectoryLock> lock_;  // c_.out, held by rank 0 for the Trainer's lifetime
  struct Faults {
    int64_t nan_at_step = -1, oom_at_step = -1;
  } faults_;  // core/faults.h, read when run() starts
  std::unique_ptr<models::GPT2> model_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::unique_ptr<data::DataLoader> train_loader_, val_loader_;
  std::optional<optim::LrSchedule> schedule_;
  std::unique_ptr<DataParallel> parallel_;  // more than one rank
  std::unique_ptr<RunLog> log_;  // opened by run(), on rank 0
  MemoryFigures predicted_;      // the plan of one step, made by run()
  int64_t start_step_ = 0;       // steps already done (resume)
  std::filesystem::path resumed_from_;  // the checkpoint resume() loaded, if any
  std::string resume_note_;             // what run() prints about it
  std::filesystem::path last_saved_;    // the newest checkpoint of this run (written or resumed), and its step
  int64_t last_saved_step_ = -1;
  std::filesystem::path good_checkpoint_;  // the newest one followed by a finite step (rank 0)
  int64_t held_before_ = 0;      // bytes live on the device before this run allocated anything
  int64_t skipped_total_ = 0, skipped_in_row_ = 0;
};

}  // namespace tally::train
