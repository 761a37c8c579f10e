// log.jsonl of a training run: one JSON object per line, the only writer of the file. Each record is written and
// flushed whole, so a killed run loses at most the line it was writing; a resumed run appends, after the records of
// the steps it trains again are set aside (set_aside_records_after), so each step appears once. Records:
//   {"step", "loss", "lr", "grad_norm", "tokens_per_s", "ms"}             a training step
//   {"step", "skipped": true, "loss", "grad_norm"}                          a non-finite step (null for NaN/inf)
//   {"step", "val_loss"}                                                   an evaluation
//   {"step", "memory_predicted", "memory_measured", "memory_difference",   after the first step (CPU): totals, and
//    "memory": {"predicted": {...}, "measured": {...}}}                     each side by category and owner (to_json)
//   {"step", "comm_bytes_predicted", "comm_bytes_measured",                after the first step (data parallel): what
//    "collectives_predicted", "collectives_measured"}                       it handed to the collectives, and in how
//                                                                           many calls
//   {"step", "optim": [{"param", "update_rms", ...}]}                      the optimizer's internals (--log-optim)
#pragma once
#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <vector>

#include "optim/optimizer.h"
#include "train/memory_plan.h"

namespace tally::train {

struct StepRecord {
  int64_t step = 0;
  double loss = 0, lr = 0, grad_norm = 0, ms = 0, tokens_per_s = 0;
  bool skipped = false;  // non-finite loss or gradient norm: the optimizer did not run
  bool stop = false;     // a stop was requested (and, data-parallel, every rank knows it): the run stops after this step
};

enum class LogStart { fresh, append };

// A run resumed from its checkpoint at `step` trains the steps after it again (the process that logged them was
// killed before its next checkpoint, or stopped without saving), perhaps on another schedule (more --steps): their
// records, and an unfinished last line, move from `log` to a file beside it (returned; empty when there were none),
// "log.superseded-after-step-N-TIME.jsonl", so that the log holds each step once, as the model saw it, and nothing
// is lost. The side file is written before the log is replaced (both atomically): a kill in between leaves the
// records in both, never in neither.
std::filesystem::path set_aside_records_after(const std::filesystem::path& log, int64_t step);

// The highest step with a training-step record (trained or skipped) in the log; 0 for none or no log.
int64_t last_step_recorded(const std::filesystem::path& log);

// A name for a file kept aside in `dir`: "<stem>-<unix time>.jsonl", or with "-2", "-3", ... when that is taken.
std::filesystem::path unused_aside_path(const std::filesystem::path& dir, const std::string& stem);

class RunLog {
 public:
  RunLog(std::filesystem::path path, LogStart start);
  ~RunLog();
  RunLog(const RunLog&) = delete;
  RunLog& operator=(const RunLog&) = delete;

  void step(const StepRecord& r);
  void validation(int64_t step, double loss);
  void memory(int64_t step, const MemoryFigures& predicted, const MemoryFigures& measured);
  void communication(int64_t step, const dist::Traffic& predicted, const dist::Traffic& measured);
  void optimizer_internals(int64_t step, const std::vector<optim::TensorInternals>& internals);
  // The records so far on the disk (fsync): done as a checkpoint is saved, so that a power loss that keeps the
  // checkpoint keeps the log records of the steps before it.
  void sync();

 private:
  void write(const nlohmann::json& record);
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

}  // namespace tally::train
