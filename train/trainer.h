// One training run, the engine of `tally train` and `tally compare`: model, optimizer, data loaders, schedule,
// the step (micro-batches, gradient accumulation, global-norm clipping, non-finite skipping), evaluation,
// sampling, checkpoints with bit-exact resume, the log, and the memory plan measured against its prediction.
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
#include "train/setup.h"

namespace tally::cli {

// Everything a run is configured with (resolved from flags and saved with the run).
struct RunConfig {
  models::GPT2Config model;
  int64_t vocab_multiple = 128;  // the vocabulary is padded to a multiple of this (1: --no-vocab-pad), --init too
  std::string init;  // a model file to start from ("" = GPT-2 init from seed)
  OptimizerChoice optimizer;
  DataChoice data;
  int64_t batch = 8, seq = 128, accumulation = 1, steps = 100;
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
  std::filesystem::path out;
  nlohmann::json flags;  // the resolved flags as given/defaulted
};

// Flags for `tally train` (model, data, optimizer and run flags).
std::vector<FlagSpec> train_flags();
// skip: leave config.data empty (no files are looked at or tokenized; the flag fuzz target).
enum class DataResolution { resolve, skip };
RunConfig run_config(const Flags& flags, DataResolution data = DataResolution::resolve);

struct StepRecord {
  int64_t step = 0;
  double loss = 0, lr = 0, grad_norm = 0, ms = 0, tokens_per_s = 0;
  bool skipped = false;  // non-finite loss or gradient norm: the optimizer did not run
};

struct RunSummary {
  int64_t steps_done = 0;
  double final_train_loss = NAN, final_val_loss = NAN, ms_per_step = NAN;
  int64_t optimizer_state_bytes = 0;
  int64_t skipped_steps = 0;
  bool interrupted = false;
  std::filesystem::path last_checkpoint;
  std::vector<std::pair<int64_t, double>> train_curve, val_curve;
};

// The exact memory of one training step (parameters, gradients, optimizer state, activations, workspace, inputs),
// predicted by running that step on the meta device: the same code path allocates the same bytes, nothing is
// computed. What the real step then measures on the CPU equals it to the byte.
struct StepShape {
  int64_t batch = 1, seq = 1, accumulation = 1;
  double grad_clip = 1.0;
  DType dtype = DType::f32;  // the model's parameters
};
MemoryFigures predict_step_memory(const models::GPT2Config& model, const OptimizerChoice& optimizer, StepShape shape);

// The memory a run may hold on its device at its peak (see Trainer::memory_budget). bytes < 0: unknown (no check).
struct MemoryBudget {
  int64_t bytes = -1;
  std::string source;  // where the figure comes from, for messages
};
int64_t parse_byte_count(const std::string& text);  // "123", "512M", "8G"; throws tally::Error

// The largest micro-batch B <= shape.batch whose step's predicted peak (held bytes) is at most `bytes`; 0 when
// not even B = 1 fits. Predictions run on the meta device (nothing is allocated).
int64_t largest_fitting_batch(const models::GPT2Config& model, const OptimizerChoice& optimizer, StepShape shape,
                              int64_t bytes);

// Set by SIGINT/SIGTERM: the run finishes its step, saves a checkpoint and returns.
extern std::atomic<bool> g_stop_requested;
void install_stop_handlers();

class Trainer {
 public:
  explicit Trainer(RunConfig config);
  ~Trainer();
  // Continues from a checkpoint directory (model, optimizer state, loader position, step, RNG).
  void resume(const std::filesystem::path& checkpoint_dir);
  RunSummary run();

  // The exact memory plan of one training step (run on the meta device), and its rendering.
  MemoryFigures predict_memory() const;
  double evaluate(int64_t batches);
  std::string sample(const std::string& prompt, int64_t tokens, uint64_t seed);
  models::GPT2& model() { return *model_; }
  optim::Optimizer& optimizer() { return *optimizer_; }

 private:
  StepRecord train_step(int64_t step);
  void run_steps(RunSummary& s, const MemoryFigures& predicted);  // the loop of run()
  // This run's budget: TALLY_MEMORY_LIMIT (bytes, or with a K/M/G/T suffix: powers of 1024) when set -- on the
  // CPU it is then also enforced by the allocator for the length of run() -- else what the system has free
  // (MemAvailable from /proc/meminfo on the CPU, cudaMemGetInfo on a GPU) plus what this run already holds; on
  // the CPU never more than set_cpu_memory_limit allows. Bytes held before the Trainer was built do not count.
  MemoryBudget memory_budget() const;
  // Refuses to start when the predicted peak exceeds the budget; the message has the plan and the batch that fits.
  void check_memory(const MemoryFigures& predicted) const;
  // The advice added to an out-of-memory error: budget, plan, largest batch that fits.
  std::string memory_advice(const MemoryFigures& predicted, const MemoryBudget& budget) const;
  int64_t run_live() const;  // bytes this run holds on its device now
  std::filesystem::path save(int64_t step);
  void log(const nlohmann::json& j);

  RunConfig c_;
  std::unique_ptr<io::DirectoryLock> lock_;  // c_.out, held for the Trainer's lifetime
  std::unique_ptr<models::GPT2> model_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::unique_ptr<data::DataLoader> train_loader_, val_loader_;
  std::optional<optim::LrSchedule> schedule_;
  int64_t start_step_ = 0;  // steps already done (resume)
  int64_t baseline_live_ = 0;  // bytes live on the device before this run allocated anything
  int64_t skipped_total_ = 0, skipped_in_row_ = 0;
  std::FILE* log_ = nullptr;
};

}  // namespace tally::cli
