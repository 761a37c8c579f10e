// Building blocks shared by the training subcommands (train, compare, memory, eval, sample, export, inspect):
// the model from flags or a checkpoint file, the optimizer from flags, where the data comes from, and the exact
// memory plan of a training step (predicted by running that very step on the meta device).
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/shards.h"
#include "models/gpt2.h"
#include "optim/optimizer.h"
#include "train/flags.h"

namespace tally::cli {

// ---- model ----
// Flags: --model PRESET, --layers L --heads H --width C (override the preset), --block T, --no-vocab-pad.
std::vector<FlagSpec> model_flags(const std::string& default_preset);
models::GPT2Config model_config(const Flags& flags);
// The vocabulary is padded to a multiple of this: 128, or 1 with --no-vocab-pad. Whatever a model file holds, a
// run's model is padded so (the optimizers see the real rows only either way: Tensor::padding_rows).
int64_t vocab_multiple(const Flags& flags);

// A model file: a tally checkpoint directory (or a run directory: its latest checkpoint), an llm.c .bin, a
// .safetensors in Hugging Face naming, or a Hugging Face model directory (its model.safetensors, config.json beside it
// checked against the tensors). Returns the model on `device`.
std::unique_ptr<models::GPT2> load_model_file(const std::filesystem::path& path, Device device);

// ---- optimizer ----
enum class OptimizerKind { came, adamw, adafactor, sgd };
OptimizerKind parse_optimizer(const std::string& name);  // FlagError on unknown
const char* optimizer_name(OptimizerKind k);

struct OptimizerSpec {
  OptimizerKind kind = OptimizerKind::came;
  double lr = 0;
  double weight_decay = 0;
  optim::DecayRule decay_rule = optim::DecayRule::matrices;
  double beta1 = 0.9, beta2 = 0.999, beta3 = 0.9999;  // beta2 is AdamW's and CAME's; Adafactor uses decay_rate
  double eps = 1e-8;                                  // AdamW
  double eps1 = 1e-30, eps2 = 1e-16;                  // CAME (eps2 = Adafactor's second eps is unused there)
  double clip_threshold = 1.0;                        // CAME, Adafactor
  double decay_rate = -0.8;                           // Adafactor
  bool adafactor_beta1 = true;                        // Adafactor keeps a first moment (the paper's baseline)
  double momentum = 0.9;                              // SGD
  bool factor_two_largest = false;                    // CAME/Adafactor: optax's factoring rule
  bool bf16_exp_avg = false;                          // CAME: bf16 first moment
  bool confidence_ones = false;                       // CAME: R = C = 1 at the start
};
// Flags: --optimizer, --lr, --weight-decay, --decay (matrices|all|none), --beta1/2/3, --eps, --eps1, --eps2,
// --clip-threshold, --decay-rate, --no-adafactor-beta1, --momentum, --came-factor-largest, --came-bf16-m,
// --came-confidence-ones.
std::vector<FlagSpec> optimizer_flags();
// The spec for `kind` from flags; where --lr is not given, the kind's default learning rate.
OptimizerSpec optimizer_spec(const Flags& flags, OptimizerKind kind);
double default_lr(OptimizerKind kind);
std::unique_ptr<optim::Optimizer> make_optimizer(const OptimizerSpec& spec, const std::vector<Tensor>& params);
// Closed-form state bytes from shapes alone (nothing allocated).
std::vector<optim::TensorState> predict_optimizer_state(const OptimizerSpec& spec, const std::vector<optim::NamedShape>& params);

// ---- data ----
struct DataChoice {
  std::string train_pattern, val_pattern;  // shard paths or globs
  std::string description;                 // where it came from, for the log
};
// Lookup order: --train/--val, --text FILE, $TALLY_DATA (a text file or a directory with train.bin and val.bin),
// data/ in the checkout, ../shared/data/tinyshakespeare.txt. Text is tokenized once into `cache_dir`.
// Nothing found: a tally::Error saying exactly which file to provide and where to download it.
DataChoice resolve_data(const Flags& flags, const std::filesystem::path& cache_dir);
// The fallback part of that order: the first candidate that exists (a directory with train.bin and val.bin, or a
// text file); none: the error that says what to provide.
DataChoice resolve_data_from(const std::vector<std::filesystem::path>& candidates, int64_t val_tokens,
                             const std::filesystem::path& cache_dir);
// data/ in the checkout (train.bin + val.bin, or tinyshakespeare.txt), then ../shared/data/tinyshakespeare.txt.
std::vector<std::filesystem::path> default_data_candidates();
std::vector<FlagSpec> data_flags();

// ---- memory plan ----
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
};
// Reads a ledger after a step (peaks since the last reset_peaks()).
MemoryFigures measure(const Ledger& l);
std::string format_plan(const MemoryFigures& predicted, const MemoryFigures* measured);

}  // namespace tally::cli
