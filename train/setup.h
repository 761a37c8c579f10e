// Building blocks shared by the training subcommands (train, compare, memory, eval, sample, export, inspect):
// the model from flags or a checkpoint file, the optimizer from flags, and where the data comes from. The memory
// of a step is in memory_plan.h.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/shards.h"
#include "models/gpt2.h"
#include "optim/optimizer.h"
#include "optim/registry.h"
#include "train/flags.h"

namespace tally::train {

// ---- model ----
// Flags: --model PRESET, --layers L --heads H --width C (override the preset), --block T, --no-vocab-pad.
std::vector<FlagSpec> model_flags(const std::string& default_preset);
models::GPT2Config model_config(const Flags& flags);
// The vocabulary is padded to a multiple of this: 128, or 1 with --no-vocab-pad. Whatever a model file holds, a
// run's model is padded so (the optimizers see the real rows only either way: Tensor::padding_rows).
int64_t vocab_multiple(const Flags& flags);

// B*T, the tokens of one micro-batch of `batch` sequences of `seq` tokens (both positive). More than 2^31 - 1 is
// refused with a FlagError naming both flags: the kernels index the rows of (B*T, V) logits in 32 bits, and B*T
// itself must not overflow.
int64_t micro_batch_tokens(int64_t batch, int64_t seq);
// The attention's (B, H, T, T) scores of a micro-batch: more than 2^59 elements (their bytes, and the plan's sums of
// them, would pass 64 bits) is refused with a FlagError naming the flags, before a plan or a tensor is made.
void check_attention_fits(int64_t batch, int64_t heads, int64_t seq);
// The micro-batches each of `world` ranks accumulates per optimizer step: --total-batch (all ranks' tokens) over
// world*B*T, which must divide it (FlagError); 1 without it.
int64_t accumulation_of(const Flags& flags, int64_t batch, int64_t seq, int64_t world);

// A model file: a tally checkpoint directory (or a run directory: its latest checkpoint), an llm.c .bin, a
// .safetensors in Hugging Face naming, or a Hugging Face model directory (its model.safetensors, config.json beside it
// checked against the tensors). Returns the model on `device`.
std::unique_ptr<models::GPT2> load_model_file(const std::filesystem::path& path, Device device);
// The same with parameters of `dtype` (bf16: the weights rounded to nearest even).
std::unique_ptr<models::GPT2> load_model_file(const std::filesystem::path& path, Device device, DType dtype);
// --checkpoint: the model file of eval, export and sample (any of the forms above).
FlagSpec model_file_flag();
// `model` as `config` says (its vocabulary padded as config's, its dropout) with parameters of `dtype`: the same
// model when all already hold, else a copy (bf16: the weights rounded to nearest even; another padding: the
// vocabulary's rows moved). `source` names the file in errors.
std::unique_ptr<models::GPT2> converted_model(std::unique_ptr<models::GPT2> model, const models::GPT2Config& config,
                                              DType dtype, const std::string& source);

// ---- outputs ----
// A FlagError naming `flag` when `out` is one of a checkpoint's files (its manifest, weights, optimizer state or
// state.json) or a run directory's log.jsonl, config.json, lock file or tokenized data (data/train.bin, val.bin,
// source.txt): a command's output must not replace them.
void refuse_run_file_as_output(const std::filesystem::path& out, const std::string& flag);

// ---- device ----
// --device cpu | cuda and --dtype f32 | bf16 (bf16 computes on CUDA only), for the commands that run a model.
std::vector<FlagSpec> device_flags(const std::string& dtype_help);
// The flags' device (meta refused: it is for planning) and dtype; a bad value or combination is a FlagError.
Device device_flag(const Flags& flags);
DType dtype_flag(const Flags& flags, Device device);
// --f32-matmul: how CUDA's f32 matrix products run, for the whole process (cuda::set_fp32_matmul).
void use_f32_matmul(const Flags& flags);
// Refuses a device this process cannot compute on: for CUDA, a GPU must be present and the binary built with CUDA
// (a tally::Error saying which is missing).
void require_usable(Device device);

// ---- data parallel ----
// --reduce-dtype: what a data-parallel run sums its gradients in over the ranks, f32 (default) or bf16 (half the
// bytes, each partial sum rounded as NCCL rounds it); anything else is a FlagError.
FlagSpec reduce_dtype_flag();
DType reduce_dtype(const Flags& flags);

// ---- optimizer ----
// The optimizer of a run: its name in the registry (optim/registry.h) and the settings given for it (flags, a JSON
// config); what is not given takes the optimizer's default.
struct OptimizerChoice {
  std::string name = "came";
  optim::Settings settings = {};
  double lr() const;  // given, else the optimizer's default
  double weight_decay() const;
  std::unique_ptr<optim::Optimizer> make(const std::vector<Tensor>& params) const;
  // Closed-form state bytes from shapes alone (nothing allocated); ZeRO 1: rank shard.rank's part.
  std::vector<optim::TensorState> predict(const std::vector<optim::NamedShape>& params,
                                          optim::ShardOf shard = {}) const;

 private:
  optim::SettingsReader reader() const;
};
// Flags: --optimizer, and the settings of every optimizer in the registry, each name once.
std::vector<FlagSpec> optimizer_flags();
// `name` with the settings it reads that `flags` gives. An unknown name or a bad value: FlagError.
OptimizerChoice optimizer_choice(const Flags& flags, const std::string& name);

// ---- data ----
struct DataChoice {
  std::string train_pattern, val_pattern;  // shard paths or globs
  std::string description;                 // where it came from, for the log
};
// Lookup order: --train/--val, --text FILE, $TALLY_DATA (a text file or a directory with train.bin and val.bin),
// data/ in the checkout, ../shared/data/tinyshakespeare.txt, then Tiny Shakespeare downloaded once into the cache
// (data/fetch.h). Text is tokenized once into `cache_dir`. A failed download, or nothing found with
// TALLY_OFFLINE=1: a tally::Error saying exactly which file to provide and where to download it.
DataChoice resolve_data(const Flags& flags, const std::filesystem::path& cache_dir);
// Removes what tokenizing into cache_dir/data left when its process died (SIGKILL, a file-size limit, power loss):
// temp files of the shards and the stamp, and directories of text tokenized aside. Called by the process holding
// the run directory once every rank has resolved its data (a live writer's files stay).
void remove_stale_tokenizing(const std::filesystem::path& cache_dir);
// The fallback part of that order: the first candidate that exists (a directory with train.bin and val.bin, or a
// text file); none: Tiny Shakespeare from the download cache (data::fetch), or the error that says what to provide.
DataChoice resolve_data_from(const std::vector<std::filesystem::path>& candidates, int64_t val_tokens,
                             const std::filesystem::path& cache_dir);
// The data directory (data/ in the checkout, or $TALLY_CACHE_DIR) holding train.bin + val.bin, then
// tinyshakespeare.txt in each of data::search_dirs() (that directory, then ../shared/data or $TALLY_SHARED_DATA).
std::vector<std::filesystem::path> default_data_candidates();
std::vector<FlagSpec> data_flags();
// (B, T) i32 token ids on `device` from a batch's B*T values.
Tensor token_tensor(const std::vector<int32_t>& ids, int64_t B, int64_t T, Device device);
// How the model is to treat the ids of `loader`'s batches: already checked (TokenIds::checked_by_caller) when its
// shards were validated against a limit within the model's vocabulary of `vocab` (data::ShardSet::checked_vocab_limit),
// else checked on the host before use.
TokenIds loader_token_ids(const data::DataLoader& loader, int64_t vocab);
// The summed loss of this rank's share of the next `batches` batches of `loader` (batch i is rank i % world's),
// without gradients; the caller sets eval mode and sums over the ranks (ids as loader_token_ids says).
double rank_loss_sum(const models::GPT2& model, data::DataLoader& loader, int64_t batches, int rank, int world);

}  // namespace tally::train
