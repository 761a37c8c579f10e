// The memory side of a training run: the figures of a step (parameters, gradients, optimizer state by kind,
// activations, workspace, inputs), the exact plan of one step (that very step run on the meta device: the same
// code allocates the same bytes, nothing is computed), the budget the device allows, the largest batch that fits,
// and the advice an out-of-memory error carries.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/ledger.h"
#include "models/gpt2.h"
#include "train/data_parallel.h"
#include "train/setup.h"

namespace tally::train {

struct MemoryFigures {
  int64_t parameters = 0;                        // live bytes (requested)
  int64_t gradients = 0;                         // peak during the step
  int64_t optimizer_state = 0;                   // live after the step
  std::map<std::string, int64_t> state_by_kind;  // optimizer state by state name ("exp_avg", ...)
  int64_t activations = 0;                       // peak during the step
  int64_t workspace = 0;                         // peak during the step
  int64_t other = 0;                             // peak (input batches, ...)
  int64_t total = 0;                             // peak of everything at once
  int64_t total_held = 0;                        // the same in held bytes (the allocator's 64-byte rounding)
  dist::Traffic comm;                            // data parallel: what a step hands to the collectives
  // The ledger by owner: each owner's peak in each category it allocated in (parameters and optimizer state are
  // live throughout, so their peak is their size; the owners' peaks need not coincide, so they do not sum to total).
  struct Owner {
    Category category;
    std::string name;  // "transformer.h.0.attn.c_attn.weight", "...:grad", "...:exp_avg", "transformer.h.0.mlp", ...
    int64_t bytes = 0;
  };
  std::vector<Owner> owners;
};
// As log.jsonl's memory record carries it: {"parameters", ..., "state_by_kind": {...}, "total", "total_held",
// "owners": {"<category>": {"<owner>": bytes}}}.
nlohmann::json to_json(const MemoryFigures& m);
// Reads a ledger after a step (peaks since the last reset_peaks()); state_by_kind from the optimizer.
MemoryFigures measure(const Ledger& l, const optim::Optimizer& optimizer);
std::string format_plan(const MemoryFigures& predicted, const MemoryFigures* measured);

// A data-parallel run: rank `rank` of `world` (its optimizer state cut for ZeRO 1, its communication buffer).
struct Parallelism {
  int world = 1, rank = 0;
  ZeroStage zero = ZeroStage::zero0;
  DType reduce_dtype = DType::f32;  // what the gradients are summed in (--reduce-dtype)
  bool launched = false;  // started by mpirun: the collectives run (and their buffer is held) even at one rank
};

struct StepShape {
  int64_t batch = 1, seq = 1, accumulation = 1;
  double grad_clip = 1.0;
  DType dtype = DType::f32;  // the model's parameters
  Parallelism parallel = {};
  DeviceKind device = DeviceKind::cpu;  // where the step runs: cpu or cuda (bf16 runs on CUDA only)
  bool inspected = false;               // the optimizer reports its internals (--log-optim): their buffers too
};
// The meta device that plans a step of this shape: its kernels' workspaces and its allocator's rounding are those of
// the step's device.
Device plan_device(const StepShape& shape);
// The exact memory of one training step (of one rank), predicted on the meta device. What the real step then
// measures equals it to the byte: every category's requested bytes, on the CPU and on a GPU (CUDA kernels' scratch
// and cuBLAS's workspace included). Held bytes too on the CPU; on a GPU the caching allocator may hand out a cached
// block up to 1/8 larger than a fresh one, so the measured held bytes can exceed the plan's by that much.
MemoryFigures predict_step_memory(const models::GPT2Config& model, const OptimizerChoice& optimizer, StepShape shape);

// The memory a run may hold on its device at its peak. bytes < 0: unknown (nothing is checked).
struct MemoryBudget {
  int64_t bytes = -1;
  std::string source;     // where the figure comes from, for messages
  bool enforced = false;  // TALLY_MEMORY_LIMIT on the CPU: also the allocator's ceiling for the run
};
// TALLY_MEMORY_LIMIT (bytes, or with a K/M/G/T suffix: powers of 1024) when set; else what the system has free
// (MemAvailable from /proc/meminfo on the CPU, cudaMemGetInfo on a GPU) plus `run_holds`, the bytes the run already
// holds; on the CPU never more than set_cpu_memory_limit allows beyond `held_before`, the bytes held before the
// run started.
MemoryBudget memory_budget(Device device, int64_t run_holds, int64_t held_before);
int64_t parse_byte_count(const std::string& text);  // "123", "512M", "8G"; throws tally::Error

// The largest micro-batch B <= shape.batch whose step's predicted peak (held bytes) is at most `bytes`; 0 when
// not even B = 1 fits. Predictions run on the meta device (nothing is allocated).
int64_t largest_fitting_batch(const models::GPT2Config& model, const OptimizerChoice& optimizer, StepShape shape,
                              int64_t bytes);
// What an out-of-memory error adds: the plan against the budget, the largest batch that fits (and the
// --total-batch that keeps the tokens per step), or else a smaller model, shorter sequences, or the optimizers whose
// state is smaller than this one's.
std::string memory_advice(const models::GPT2Config& model, const OptimizerChoice& optimizer, StepShape shape,
                          const MemoryFigures& predicted, const MemoryBudget& budget);

}  // namespace tally::train
