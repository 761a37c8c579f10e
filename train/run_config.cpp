// `tally train`'s flags and the RunConfig resolved from them (see run_config.h).
#include "train/run_config.h"

#include <cmath>
#include <fstream>
#include <utility>

#include "core/error.h"
#include "train/checkpoint.h"
#include "train/run_state.h"

namespace tally::train {

namespace {
RunConfig run_config_unchecked(const Flags& f, DataResolution data, int32_t world);

// The "flags" object of a run's config.json or a checkpoint's state.json; empty when the file is not there.
nlohmann::json flags_in(const std::filesystem::path& file) {
  if (!std::filesystem::exists(file)) return nlohmann::json::object();
  nlohmann::json j = nlohmann::json::parse(std::ifstream(file), nullptr, false);
  if (!std::filesystem::is_regular_file(file) || !j.is_object() || !j.contains("flags") || !j["flags"].is_object())
    return nullptr;  // damaged
  return j["flags"];
}

// The checkpoint a --resume continues from: the one it names, or its run directory's latest (none: nullopt).
std::optional<std::filesystem::path> checkpoint_named_by(const std::filesystem::path& resume) {
  if (std::filesystem::exists(resume / "manifest.json")) return resume;
  return latest_checkpoint(resume);
}

}  // namespace

std::vector<FlagSpec> train_flags() {
  std::vector<FlagSpec> f = model_flags("d4");
  f.push_back({"init",
               "start from a model file: llm.c .bin, .safetensors (HF naming), a Hugging Face model directory or a "
               "tally checkpoint",
               ""});
  for (auto& s : data_flags()) f.push_back(s);
  for (auto& s : optimizer_flags()) f.push_back(s);
  std::vector<FlagSpec> run = {
      {"batch", "micro-batch size B", "8"},
      {"seq", "sequence length T", "128"},
      {"total-batch", "tokens per optimizer step, all ranks' (a multiple of B*T*ranks: gradient accumulation)", ""},
      {"steps", "optimizer steps", "200"},
      {"schedule", "cosine (linear warmup, cosine decay to --min-lr-ratio) | constant", "cosine"},
      {"warmup", "warmup steps (at most --steps: a shorter run warms up throughout)", "20"},
      {"min-lr-ratio", "final lr as a fraction of the peak (cosine)", "0.1"},
      {"grad-clip", "global gradient-norm clip (0: off)", "1"},
      {"eval-every", "evaluate every N steps (0: only at the end)", "50"},
      {"val-batches", "validation batches per evaluation", "8"},
      {"sample-every", "sample a few lines every N steps (0: only at the end)", "0"},
      {"sample-tokens", "tokens per sample", "64"},
      {"out", "run directory (log.jsonl, config.json, checkpoints)", "runs/latest"},
      {"save-every", "checkpoint every N steps (0: only at the end)", "0"},
      {"keep-last", "checkpoints kept, the latest (0: all)", "3"},
      {"resume", "continue a run from its directory or a checkpoint directory", ""},
      {"seed", "seed for initialisation and data order", "1337"},
      {"no-shuffle", "read the training data in order (as llm.c)", "", FlagKind::switch_},
      {"threads", "CPU threads (0: all, or with several ranks this rank's share of its machine's CPUs)", "0"},
      {"zero",
       "data-parallel runs (mpirun -np N tally train ...): 0 every rank keeps the whole optimizer state | "
       "1 each rank keeps and steps its part of it (ZeRO stage 1)",
       "0"},
      reduce_dtype_flag(),
      {"log-optim", "log the optimizer's internals every N steps (0: off)", "0"},
      {"log-every", "print a progress line every N steps when not on a terminal", "10"},
      {"max-bad-steps", "stop after this many non-finite steps in a row", "5"},
      {"config", "a JSON file of flags (command-line flags win)", ""},
  };
  f.insert(f.end(), run.begin(), run.end());
  for (auto& s : device_flags("f32 | bf16 (mixed precision, CUDA only: bf16 parameters, activations and gradients; "
                              "f32 master weights and optimizer state; checkpoints hold both)"))
    f.push_back(s);
  return f;
}

RunConfig run_config(const Flags& f, DataResolution data, int32_t world) {
  // An error about a value that came from a --config file says so, naming the file.
  try {
    return run_config_unchecked(f, data, world);
  } catch (const FlagError& e) {
    const std::string sources = f.config_sources();
    if (sources.empty() || std::string_view(e.what()).find("config file '") != std::string_view::npos) throw;
    throw FlagError(cat(e.what(), " (", sources, ")"));
  }
}

namespace {

RunConfig run_config_unchecked(const Flags& f, DataResolution data, int32_t world) {
  RunConfig c;
  c.model = model_config(f);
  c.vocab_multiple = vocab_multiple(f);
  c.init = f.maybe("init").value_or("");
  c.optimizer = optimizer_choice(f, f.str("optimizer"));
  c.batch = f.integer("batch");
  c.seq = f.integer("seq");
  c.steps = f.integer("steps");
  if (c.batch < 1 || c.seq < 1 || c.steps < 1) throw FlagError("--batch, --seq and --steps must be positive");
  if (c.seq > c.model.block_size)
    throw FlagError("--seq " + std::to_string(c.seq) + " exceeds the model's block size " + std::to_string(c.model.block_size));
  if (world < 1) throw FlagError("the data-parallel world must be at least 1 rank, got " + std::to_string(world));
  c.world = world;
  c.accumulation = accumulation_of(f, c.batch, c.seq, world);
  check_attention_fits(c.batch, c.model.n_head, c.seq);
  const int64_t per_step = c.batch * c.seq * world;  // one micro-batch on every rank
  c.schedule = f.str("schedule");
  if (c.schedule != "cosine" && c.schedule != "constant") throw FlagError("--schedule must be cosine or constant");
  c.warmup = std::min(f.integer("warmup"), c.steps);  // a run shorter than its warmup warms up throughout
  c.min_lr_ratio = f.number("min-lr-ratio");
  c.grad_clip = f.number("grad-clip");
  c.eval_every = f.integer("eval-every");
  c.val_batches = f.integer("val-batches");
  c.sample_every = f.integer("sample-every");
  c.sample_tokens = f.integer("sample-tokens");
  c.save_every = f.integer("save-every");
  c.keep_last = int(f.integer("keep-last"));
  c.log_optim = f.integer("log-optim");
  c.log_every = std::max<int64_t>(1, f.integer("log-every"));
  c.max_bad_steps = f.integer("max-bad-steps");
  c.seed = uint64_t(f.integer("seed"));
  c.shuffle = !f.on("no-shuffle");
  c.device = device_flag(f);
  c.dtype = dtype_flag(f, c.device);
  use_f32_matmul(f);
  c.threads = thread_count(f);
  if (c.warmup < 0 || c.val_batches < 1 || c.max_bad_steps < 1 || c.keep_last < 0)
    throw FlagError("--warmup, --keep-last must be >= 0; --val-batches, --max-bad-steps >= 1");
  // Counts and intervals of which 0 means "none" or "off": never negative.
  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"eval-every", c.eval_every},
                                    {"sample-every", c.sample_every},
                                    {"sample-tokens", c.sample_tokens},
                                    {"save-every", c.save_every},
                                    {"log-optim", c.log_optim}})
    if (value < 0) throw FlagError(cat("--", name, " must be >= 0, got ", value, f.origin(name)));
  if (!(c.min_lr_ratio >= 0 && c.min_lr_ratio <= 1))
    throw FlagError(cat("--min-lr-ratio must be in [0, 1] (the final learning rate over the peak), got ", c.min_lr_ratio,
                        f.origin("min-lr-ratio")));
  if (!(c.grad_clip >= 0) || !std::isfinite(c.grad_clip))
    throw FlagError(cat("--grad-clip must be >= 0 (0: off), got ", c.grad_clip, f.origin("grad-clip")));
  const std::string zero = f.str("zero");
  if (zero != "0" && zero != "1") throw FlagError("--zero must be 0 or 1, got '" + zero + "'");
  c.zero = zero == "1" ? ZeroStage::zero1 : ZeroStage::zero0;
  c.reduce_dtype = reduce_dtype(f);
  c.out = f.str("out");
  if (data == DataResolution::resolve) c.data = resolve_data(f, c.out);
  for (const auto& [k, v] : f.resolved()) c.flags[k] = v;
  c.flags["total-batch"] = std::to_string(per_step * c.accumulation);  // the tokens per step, at any world
  return c;
}

}  // namespace

// The flags of the run a --resume continues (a run directory, or one of its checkpoints): the run directory's
// config.json (the flags it was last started with: more --steps, say), else, for a checkpoint taken out of its run
// directory, those the checkpoint was saved with (its state.json); an empty object when neither is there (a damaged
// state.json is then the checkpoint's own checks' to name).
nlohmann::json saved_run_flags(const std::filesystem::path& resume) {
  namespace fs = std::filesystem;
  const bool is_checkpoint = fs::exists(resume / "manifest.json");
  const fs::path config = (is_checkpoint ? resume.parent_path() : resume) / "config.json";
  nlohmann::json flags = flags_in(config);
  if (flags.is_null())
    fail("--resume: '", config.string(), "' holds no {\"flags\": {...}} object (damaged?), so the run's flags cannot ",
         "be read back; restore it, or move it away to continue with the flags its checkpoint was saved with");
  if (!flags.empty()) return flags;
  const std::optional<fs::path> checkpoint = checkpoint_named_by(resume);
  flags = checkpoint ? flags_in(*checkpoint / "state.json") : flags;
  return flags.is_null() ? nlohmann::json::object() : flags;
}

void resume_model_of(RunConfig& config, const std::filesystem::path& resume) {
  if (config.init.empty()) return;
  const std::optional<std::filesystem::path> checkpoint = checkpoint_named_by(resume);
  if (!checkpoint) return;  // Trainer::resume names what is missing
  const std::filesystem::path state = *checkpoint / "state.json";
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(state), nullptr, false);
  if (!j.is_object() || !j.contains("model_config")) return;  // damaged: load_checkpoint's checks name it
  config.model_of_checkpoint = model_config_from_json(j["model_config"], state.string());
}

void take_saved_flags(Flags& flags, const nlohmann::json& saved) {
  // Data given now one way replaces the saved data given the other way: --text drops a saved --train and --val,
  // --train or --val a saved --text (a --text run resumed on its own shards, say).
  const bool text_given = flags.given("text"), shards_given = flags.given("train") || flags.given("val");
  for (const auto& [k, v] : saved.items()) {
    const bool replaced = (text_given && (k == "train" || k == "val")) || (shards_given && k == "text");
    if (!flags.given(k) && !replaced && k != "resume" && k != "out" && v.is_string())
      flags.set(k, v.get<std::string>());
  }
}

}  // namespace tally::train
