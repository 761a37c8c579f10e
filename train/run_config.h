// A training run's configuration: the flags of `tally train` (model, data, optimizer and run flags) and the
// RunConfig resolved and checked from them before anything is allocated; saved with the run for --resume.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "models/gpt2.h"
#include "train/flags.h"
#include "train/data_parallel.h"
#include "train/setup.h"

namespace tally::train {

// Everything a run is configured with (resolved from flags and saved with the run).
struct RunConfig {
  models::GPT2Config model;
  int64_t vocab_multiple = 128;  // the vocabulary is padded to a multiple of this (1: --no-vocab-pad), --init too
  std::string init;  // a model file to start from ("" = GPT-2 init from seed)
  // The model flags (--model, --layers, ...) given with --init on the command line or in --config: the model the
  // file holds must be theirs (a resumed run's saved flags are not listed: its checkpoint is checked instead).
  std::vector<std::string> model_flags_with_init;
  // A resumed run that was started with --init: the model its checkpoint records (resume_model_of), built in place
  // of reading the --init file again (which may be gone; the checkpoint holds every weight).
  std::optional<models::GPT2Config> model_of_checkpoint;
  // How a run stopped on request is continued, for its message (empty: tally train's --resume of its directory; a
  // comparison's run is continued with its comparison).
  std::string continue_with;
  OptimizerChoice optimizer;
  DataChoice data;
  int64_t batch = 8, seq = 128, steps = 100;
  int64_t accumulation = 1;  // micro-batches per optimizer step on each rank: --total-batch / (B x T x world)
  int32_t world = 1;         // the data-parallel ranks it was resolved for
  std::string schedule = "cosine";
  int64_t warmup = 10;
  double min_lr_ratio = 0.1, grad_clip = 1.0;
  int64_t eval_every = 50, val_batches = 8, sample_every = 0, sample_tokens = 64;
  int64_t save_every = 0, keep_last = 3, log_optim = 0, log_every = 10, max_bad_steps = 5;
  uint64_t seed = 1337;
  bool shuffle = true;
  Device device = Device::cpu();
  DType dtype = DType::f32;  // bf16: mixed precision on CUDA (bf16 model, f32 master weights in the optimizer)
  int threads = 0;
  ZeroStage zero = ZeroStage::zero0;  // data-parallel runs (mpirun -np N): ZeRO 1 cuts the optimizer state over ranks
  DType reduce_dtype = DType::f32;    // data-parallel runs: what the gradients are summed in
  std::filesystem::path out;
  nlohmann::json flags;  // the resolved flags as given/defaulted
};

// Flags for `tally train` (model, data, optimizer and run flags).
std::vector<FlagSpec> train_flags();
// skip: leave config.data empty (no files are looked at or tokenized; the flag fuzz target).
enum class DataResolution { resolve, skip };
// `world`: the ranks that share each optimizer step (mpirun -np N). --total-batch counts all of their tokens; when
// it is not given, it is resolved to one micro-batch per rank (B x T x world) and recorded so in config.flags, so
// that a run resumed at another world keeps its tokens per step.
RunConfig run_config(const Flags& flags, DataResolution data = DataResolution::resolve, int32_t world = 1);

// The flags of the run a --resume continues (a run directory, or one of its checkpoints): the run directory's
// config.json, else those its checkpoint was saved with; an empty object when neither is there. A damaged
// config.json is a tally::Error.
nlohmann::json saved_run_flags(const std::filesystem::path& resume);
// Takes a resumed run's saved flags into `flags` where not given now (flags given now win: more --steps, say), all
// but "out" and "resume" (the saved "out" is where the run was, not where it is now: a moved or copied run
// continues in place). Data given now one way replaces the saved data given the other way.
void take_saved_flags(Flags& flags, const nlohmann::json& saved);
// What --resume continues with `config`: when the run was started with --init, the model of the checkpoint it resumes
// from (a run directory's latest, or the checkpoint named) goes into config.model_of_checkpoint.
void resume_model_of(RunConfig& config, const std::filesystem::path& resume);

}  // namespace tally::train
