// Shared set-up of the training subcommands (see setup.h).
#include "train/setup.h"

#include <omp.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/io/file.h"
#include "core/autograd/node.h"
#include "core/ledger.h"
#include "data/fetch.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "models/checkpoint_llmc.h"
#include "models/safetensors_gpt2.h"
#include "train/checkpoint.h"
#include "train/run_state.h"

#ifdef TALLY_HAS_CUDA
#include "core/cuda/runtime.h"
#endif

namespace fs = std::filesystem;

namespace tally::train {

// ---- model ----

std::vector<FlagSpec> model_flags(const std::string& default_preset) {
  std::string presets;
  for (const auto& n : models::GPT2Config::preset_names()) presets += (presets.empty() ? "" : ", ") + n;
  return {
      {"model", "model preset: " + presets, default_preset},
      {"layers", "number of transformer blocks L (overrides the preset)", ""},
      {"heads", "attention heads NH (overrides the preset)", ""},
      {"width", "channels C (overrides the preset)", ""},
      {"block", "maximum sequence length (rows of the position embedding)", ""},
      {"no-vocab-pad", "do not pad the vocabulary to a multiple of 128", "", FlagKind::switch_},
      {"dropout", "dropout probability in training", "0"},
  };
}

models::GPT2Config model_config(const Flags& f) {
  models::GPT2Config c;
  try {
    c = models::GPT2Config::preset(f.str("model"));
  } catch (const Error& e) {
    throw FlagError(e.what());
  }
  if (f.given("layers")) c.n_layer = f.integer("layers");
  if (f.given("heads")) c.n_head = f.integer("heads");
  if (f.given("width")) c.n_embd = f.integer("width");
  if (f.given("block")) c.block_size = f.integer("block");
  c.padded_vocab_size = models::padded_vocab(c.vocab_size, vocab_multiple(f));
  c.dropout = f.number("dropout");
  try {
    c.validate();
  } catch (const Error& e) {
    throw FlagError(e.what());
  }
  return c;
}

int64_t vocab_multiple(const Flags& f) { return f.on("no-vocab-pad") ? 1 : 128; }

std::unique_ptr<models::GPT2> load_model_file(const fs::path& path_in, Device device) {
  fs::path path = path_in;
  TALLY_CHECK(fs::exists(path), "model file '", path.string(), "' does not exist");
  // A Hugging Face model directory (save_pretrained's or `tally export --format hf`'s): its weights, with
  // config.json beside them checked against the tensors. A tally checkpoint has a manifest; a run directory has
  // checkpoints under it and no weights of its own.
  if (fs::is_directory(path) && !fs::exists(path / "manifest.json") && fs::exists(path / "model.safetensors"))
    path /= "model.safetensors";
  // A tally checkpoint's model.safetensors (tally's own layout, not Hugging Face's): the checkpoint.
  if (const fs::path dir = fs::absolute(path).parent_path();
      path.filename() == "model.safetensors" && !fs::is_directory(path) && fs::exists(dir / "manifest.json") &&
      fs::exists(dir / "state.json"))
    path = dir;
  if (fs::is_directory(path)) {
    if (!fs::exists(path / "manifest.json")) {
      auto latest = train::latest_checkpoint(path);
      TALLY_CHECK(latest.has_value() || !fs::exists(path / "model.safetensors.index.json"), "'", path.string(),
                  "' holds a Hugging Face model whose weights are split in shards (model.safetensors.index.json), ",
                  "which tally does not read: save it as one file (save_pretrained(DIR, max_shard_size=\"100GB\"))");
      TALLY_CHECK(latest.has_value(), "'", path.string(),
                  "' is neither a tally checkpoint, a run directory holding one, nor a Hugging Face model directory "
                  "(model.safetensors and config.json)");
      path = *latest;
    }
    train::CheckpointContent c = train::load_checkpoint(path);
    const fs::path state_path = path / "state.json", model_path = path / "model.safetensors";
    TALLY_CHECK(c.state.is_object() && c.state.contains("model_config"), "checkpoint '", state_path.string(),
                "' does not record its model configuration");
    models::GPT2Config config = train::model_config_from_json(c.state["model_config"], state_path.string());
    {
      // Every parameter's shape and presence against the recorded configuration before anything is allocated,
      // so a configuration that disagrees with the tensors is an error rather than a huge allocation.
      models::GPT2 plan(config, models::GPT2Options{.device = Device::meta(), .init = models::Init::none});
      std::set<std::string> needed;
      for (const auto& [name, t] : plan.named_parameters()) {
        const Tensor& saved = io::find_tensor(c.model, name, model_path.string());
        TALLY_CHECK(saved.shape() == t.shape(), "checkpoint '", model_path.string(), "': tensor '", name, "' is ",
                    shape_str(saved.shape()), " but the model configuration ", config.str(), " in '",
                    state_path.string(), "' needs ", shape_str(t.shape()));
        needed.insert(name);
      }
      // Tensors the configuration has no place for (a layer more than it says): the two disagree.
      io::require_no_other_tensors(c.model, needed, "checkpoint ", model_path.string(),
                                   cat("the model configuration ", config.str(), " in '", state_path.string(), "'"));
    }
    auto model = std::make_unique<models::GPT2>(config, models::GPT2Options{.device = device, .init = models::Init::none});
    for (const auto& [name, t] : model->named_parameters())
      model->load_parameter(name, io::find_tensor(c.model, name, model_path.string()), model_path.string());
    return model;
  }
  std::string ext = path.extension().string();
  if (ext == ".safetensors") return models::load_safetensors_gpt2(path, {.device = device});
  return models::load_llmc(path, {.device = device});
}

std::unique_ptr<models::GPT2> converted_model(std::unique_ptr<models::GPT2> model, const models::GPT2Config& config,
                                              DType dtype, const std::string& source) {
  if (dtype == model->dtype() && config.padded_vocab_size == model->config().padded_vocab_size &&
      config.dropout == model->config().dropout)
    return model;
  auto converted = std::make_unique<models::GPT2>(config, models::GPT2Options{.device = model->options().device,
                                                                              .dtype = dtype,
                                                                              .seed = model->options().seed,
                                                                              .init = models::Init::none});
  for (const auto& [name, t] : model->named_parameters()) converted->load_parameter(name, t, source);
  return converted;
}

void refuse_run_file_as_output(const fs::path& out, const std::string& flag) {
  std::error_code ec;
  const fs::path path = fs::weakly_canonical(out, ec);
  if (ec) return;  // a path that cannot be resolved is no existing run's file; the write reports its own error
  const fs::path dir = path.parent_path();
  const std::string name = path.filename().string();
  const bool checkpoint_file =
      fs::exists(dir / "manifest.json", ec) && (name == "manifest.json" || name == "model.safetensors" ||
                                                name == "optimizer.safetensors" || name == "state.json");
  const bool run_file = (name == "log.jsonl" || name == "config.json" || name == "tally.lock") && train::holds_run(dir);
  // The token shards a run tokenized its text into (OUT/data), which it reads again when resumed.
  const bool run_data = (name == "train.bin" || name == "val.bin" || name == "source.txt") &&
                        dir.filename() == "data" && train::holds_run(dir.parent_path());
  if (checkpoint_file)
    throw FlagError(cat(flag, " '", out.string(), "' is the ", name, " of checkpoint '", dir.string(),
                        "': writing it would damage the checkpoint; give another file"));
  if (run_file || run_data)
    throw FlagError(cat(flag, " '", out.string(), "' is the ", name, " of run '",
                        (run_data ? dir.parent_path() : dir).string(),
                        "': writing it would damage the run; give another file"));
}

std::unique_ptr<models::GPT2> load_model_file(const fs::path& path, Device device, DType dtype) {
  auto model = load_model_file(path, device);
  const models::GPT2Config config = model->config();
  return converted_model(std::move(model), config, dtype, path.string());
}

FlagSpec model_file_flag() {
  return {"checkpoint",
          "model: tally checkpoint/run directory, Hugging Face model directory, llm.c .bin or .safetensors", ""};
}

std::vector<FlagSpec> device_flags(const std::string& dtype_help) {
  return {{"device", "cpu | cuda", "cpu"},
          {"dtype", dtype_help, "f32"},
          {"f32-matmul",
           "CUDA with --dtype f32: tf32 (matrix products on TF32 tensor cores: inputs rounded to 10 mantissa bits, "
           "f32 sums, about 3e-4 relative error, as PyTorch's allow_tf32) | strict (full f32 products, slower); the "
           "CPU's are f32",
           "tf32"}};
}

void use_f32_matmul(const Flags& f) {
  const std::string mode = f.str("f32-matmul");
  if (mode != "tf32" && mode != "strict")
    throw FlagError(cat("--f32-matmul must be tf32 or strict, got '", mode, "'", f.origin("f32-matmul")));
#ifdef TALLY_HAS_CUDA
  cuda::set_fp32_matmul(mode == "strict" ? cuda::Fp32Matmul::strict : cuda::Fp32Matmul::tf32);
#endif
}

Device device_flag(const Flags& f) {
  Device device;
  try {
    device = Device::parse(f.str("device"));
  } catch (const Error& e) {
    throw FlagError(e.what());
  }
  if (device.is_meta()) throw FlagError("--device meta is for memory planning only");
  return device;
}

DType dtype_flag(const Flags& f, Device device) {
  const std::string dtype = f.str("dtype");
  if (dtype != "f32" && dtype != "bf16") throw FlagError("--dtype must be f32 or bf16, got '" + dtype + "'");
  if (dtype == "bf16" && !device.is_cuda())
    throw FlagError(f.given("resume") ? "--resume: the run trains with --dtype bf16, which computes on CUDA only: "
                                        "resume it with --device cuda (eval, sample and export read its checkpoints "
                                        "on the CPU)"
                                      : "--dtype bf16 computes on CUDA only: add --device cuda, or use f32 on the CPU");
  return dtype == "bf16" ? DType::bf16 : DType::f32;
}

void require_usable(Device device) {
  if (!device.is_cuda()) return;
#ifdef TALLY_HAS_CUDA
  constexpr const char* kBuiltWithCuda = "yes";
#else
  constexpr const char* kBuiltWithCuda = "no: configure with -DTALLY_CUDA=ON";
#endif
  TALLY_CHECK(cuda_available(), "--device ", device.str(),
              ": no CUDA device is available (built with CUDA: ", kBuiltWithCuda, ")");
  const int count = cuda_device_count();
  TALLY_CHECK(device.index < count, "--device ", device.str(), ": this machine has ", count, " CUDA device",
              count == 1 ? " (cuda:0)" : cat("s (cuda:0 to cuda:", count - 1, ")"));
}

int64_t accumulation_of(const Flags& f, int64_t batch, int64_t seq, int64_t world) {
  const int64_t per = micro_batch_tokens(batch, seq);
  if (per > INT64_MAX / world) throw FlagError(cat("B*T = ", per, " tokens on each of ", world, " ranks overflows"));
  const int64_t per_step = per * world;  // one micro-batch on every rank
  if (!f.given("total-batch")) return 1;
  const int64_t total = f.integer("total-batch");
  if (total < per_step || total % per_step != 0)
    throw FlagError(cat("--total-batch ", total, f.origin("total-batch"), " must be a positive multiple of B*T = ", per,
                        world > 1 ? cat(" x ", world, " ranks = ", per_step) : "",
                        f.given("resume") ? " (a resumed run keeps its tokens per step: give --total-batch to change "
                                            "them, or ranks that divide them)"
                                          : ""));
  return total / per_step;
}

int64_t micro_batch_tokens(int64_t batch, int64_t seq) {
  TALLY_ASSERT(batch > 0 && seq > 0);
  constexpr int64_t kMaxTokens = INT32_MAX;
  if (batch > kMaxTokens / seq)
    throw FlagError(cat("--batch ", batch, " x --seq ", seq, " is more than the ", kMaxTokens,
                        " tokens a micro-batch may hold (rows of its logits are indexed in 32 bits)"));
  return batch * seq;
}

void check_attention_fits(int64_t batch, int64_t heads, int64_t seq) {
  TALLY_ASSERT(batch > 0 && heads > 0 && seq > 0);
  constexpr int64_t kMostScores = int64_t(1) << 59;
  const long double scores = (long double)batch * (long double)heads * (long double)seq * (long double)seq;
  if (scores > (long double)kMostScores)
    throw FlagError(cat("--batch ", batch, " x ", heads, " heads x --seq ", seq, " x ", seq,
                        ": the attention's scores would hold ", double(scores), " elements, more than the ",
                        kMostScores,
                        " a step's memory can be planned with (the plan's sums of bytes would pass 64 bits)"));
  // The CPU attention's scratch: two (seq, seq) blocks per thread.
  const long double scratch = (long double)omp_get_max_threads() * 2 * (long double)seq * (long double)seq;
  if (scratch > (long double)kMostScores)
    throw FlagError(cat("--seq ", seq, " x ", seq, " x 2 x ", omp_get_max_threads(),
                        " threads: the CPU attention's "
                        "scratch would hold ",
                        double(scratch), " elements, more than the ", kMostScores,
                        " a step's memory can be planned with (fewer --threads, or a shorter --seq)"));
}

// ---- data parallel ----

FlagSpec reduce_dtype_flag() {
  return {"reduce-dtype",
          "data-parallel runs: what the gradients are summed in over the ranks: f32 (bf16 gradients widened, rounded "
          "once after the sum) | bf16 (half the bytes; every partial sum rounded to bf16, as NCCL and llm.c sum them)",
          "f32"};
}

DType reduce_dtype(const Flags& flags) {
  const std::string s = flags.str("reduce-dtype");
  if (s != "f32" && s != "bf16") throw FlagError("--reduce-dtype must be f32 or bf16, got '" + s + "'");
  return s == "bf16" ? DType::bf16 : DType::f32;
}

// ---- optimizer ----

// Read as the optimizer's entry reads them (its defaults; a malformed or out-of-range value throws tally::Error).
double OptimizerChoice::lr() const { return reader().number("lr"); }

double OptimizerChoice::weight_decay() const { return reader().number("weight-decay"); }

optim::SettingsReader OptimizerChoice::reader() const {
  return optim::SettingsReader(name, optim::find_optimizer(name).settings, settings);
}

std::unique_ptr<optim::Optimizer> OptimizerChoice::make(const std::vector<Tensor>& params) const {
  return optim::make_optimizer(name, params, settings);
}

std::vector<optim::TensorState> OptimizerChoice::predict(const std::vector<optim::NamedShape>& params,
                                                        optim::ShardOf shard) const {
  return optim::predict_optimizer_state(name, params, settings, shard);
}

std::vector<FlagSpec> optimizer_flags() {
  std::vector<FlagSpec> out = {{"optimizer", optim::optimizer_names(" | "), "came"}};
  for (const optim::Setting& s : optim::all_settings())
    out.push_back({s.name, s.help, s.default_value,
                   s.kind == optim::SettingKind::switch_ ? FlagKind::switch_ : FlagKind::value});
  return out;
}

OptimizerChoice optimizer_choice(const Flags& f, const std::string& name) {
  OptimizerChoice c{.name = name};
  try {
    const optim::OptimizerEntry& e = optim::find_optimizer(name);
    for (const optim::Setting& s : e.settings)
      if (f.given(s.name)) c.settings.set(s.name, s.kind == optim::SettingKind::switch_ ? (f.on(s.name) ? "true" : "false")
                                                                                     : f.str(s.name));
    e.check(c.settings);
  } catch (const Error& err) {
    throw FlagError(cat(err.what(), f.origin("optimizer")));
  }
  if (!(c.lr() > 0)) throw FlagError("--lr must be positive");
  return c;
}

// ---- data ----

std::vector<FlagSpec> data_flags() {
  return {
      {"train", "training token shards (llm.c format; a path or a glob)", ""},
      {"val", "validation token shards (llm.c format; a path or a glob)", ""},
      {"text", "a UTF-8 text file to tokenize (val = its first --val-tokens tokens)", ""},
      {"val-tokens", "validation tokens taken from the start of --text", "32768"},
  };
}

namespace {

const char* kDownloadHint =
    "no training data found. Provide one of:\n"
    "  --train SHARDS --val SHARDS   llm.c token shards (make them with `tally prepare --text FILE --out DIR`)\n"
    "  --text FILE                   any UTF-8 text file\n"
    "  TALLY_DATA=FILE_OR_DIR        a text file, or a directory holding train.bin and val.bin\n"
    "  tinyshakespeare.txt           in one of the places looked in (below), e.g. downloaded from\n"
    "      https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt";

bool same_bytes(const fs::path& a, const fs::path& b) {
  const io::MappedFile x(a), y(b);
  return x.size() == y.size() && (x.size() == 0 || std::memcmp(x.data(), y.data(), x.size()) == 0);
}

// Tokenizes `text_path` into cache_dir/{train,val}.bin once (reused while the text's size and time match; shards
// there that this did not write, without its source.txt stamp, are refused, never replaced; those of a run there are
// compared with the text's tokens, never replaced).
DataChoice from_text(const fs::path& text_path, int64_t val_tokens, const fs::path& cache_dir, const std::string& why) {
  TALLY_CHECK(fs::exists(text_path), "text file '", text_path.string(), "' does not exist");
  TALLY_CHECK(fs::is_regular_file(text_path), "text file '", text_path.string(), "' is ",
              fs::is_directory(text_path) ? "a directory" : "not a regular file", ", not a text file");
  fs::path dir = cache_dir / "data";
  fs::path train = dir / "train.bin", val = dir / "val.bin", stamp = dir / "source.txt";
  std::ostringstream id;
  id << fs::absolute(text_path).string() << "\n"
     << fs::file_size(text_path) << "\n"
     << fs::last_write_time(text_path).time_since_epoch().count() << "\n"
     << val_tokens << "\n";
  std::string have;
  if (fs::exists(stamp)) {
    std::ifstream in(stamp);
    std::stringstream ss;
    ss << in.rdbuf();
    have = ss.str();
  }
  if (have != id.str() && fs::exists(stamp) && fs::exists(train) && fs::exists(val) && train::holds_run(cache_dir)) {
    // A run trained on these shards (resumed now, or refused later as a run already there): they are never replaced.
    // The text is tokenized aside and compared: the same tokens (the file touched, copied back) only renew the stamp.
    const fs::path aside = dir / cat(".tokenizing-", ::getpid());  // remove_stale_tokenizing knows the name
    std::error_code ec;
    fs::remove_all(aside, ec);
    const io::RemovedOnTermination removed_if_killed({aside / "train.bin", aside / "val.bin"}, {aside});
    bool same = false;
    try {
      fs::create_directories(aside);
      data::prepare_text(text_path, aside, {.val_tokens = val_tokens});
      same = same_bytes(aside / "train.bin", train) && same_bytes(aside / "val.bin", val);
    } catch (...) {
      fs::remove_all(aside, ec);
      throw;
    }
    fs::remove_all(aside, ec);
    TALLY_CHECK(same, why, " ", text_path.string(), " no longer tokenizes to the shards in '", dir.string(),
                "' that the run in '", cache_dir.string(),
                "' was trained on (the text or --val-tokens changed): "
                "restore it, or train on those shards with --train ",
                train.string(), " --val ", val.string(), "; nothing was changed");
    io::write_file_atomic(stamp, id.str());
  } else if (have != id.str() || !fs::exists(train) || !fs::exists(val)) {
    // Shards there without the stamp are not this cache's: someone's own data, never replaced.
    TALLY_CHECK(fs::exists(stamp) || (!fs::exists(train) && !fs::exists(val)), "'", dir.string(),
                "' holds train.bin or val.bin that tally did not tokenize there (no source.txt beside them), which ",
                "tokenizing ", text_path.string(), " would replace: train on them with --train and --val, or give ",
                "another --out; nothing was changed");
    // The stamp comes first, marked unfinished: shards that appear here later are this cache's even if tokenizing is
    // interrupted (or another rank of the run tokenizes beside this one), and an unfinished stamp never matches.
    fs::create_directories(dir);
    io::write_file_atomic(stamp, "tokenizing, unfinished\n" + id.str());
    data::prepare_text(text_path, dir, {.val_tokens = val_tokens});
    io::write_file_atomic(stamp, id.str());
  }
  return {train.string(), val.string(), why + " " + text_path.string() + " (tokenized into " + dir.string() + ")"};
}

DataChoice from_dir(const fs::path& d, const std::string& why) {
  return {(d / "train.bin").string(), (d / "val.bin").string(), why + " " + d.string()};
}

}  // namespace

void remove_stale_tokenizing(const fs::path& cache_dir) {
  const fs::path dir = cache_dir / "data";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  for (const char* name : {"train.bin", "val.bin", "source.txt"}) io::remove_stale_temporaries_of(dir / name);
  io::remove_stale_directories(dir, ".tokenizing-");  // from_text's directory of a text tokenized aside
}

DataChoice resolve_data(const Flags& f, const fs::path& cache_dir) {
  const int64_t val_tokens = f.integer("val-tokens");
  if (val_tokens <= 0) throw FlagError("--val-tokens must be positive");
  if (f.given("train") || f.given("val")) {
    if (!f.given("train") || !f.given("val")) throw FlagError("--train and --val go together");
    if (f.given("text"))
      throw FlagError(
          "--text and --train/--val are two ways to give the data: give one (--text is tokenized into "
          "OUT/data/train.bin and val.bin)");
    return {f.str("train"), f.str("val"), "shards " + f.str("train") + " / " + f.str("val")};
  }
  if (f.given("text")) return from_text(f.str("text"), val_tokens, cache_dir, "--text");
  if (const char* env = std::getenv("TALLY_DATA"); env && *env) {
    fs::path p = env;
    if (fs::is_directory(p)) {
      TALLY_CHECK(fs::exists(p / "train.bin") && fs::exists(p / "val.bin"), "TALLY_DATA='", p.string(),
                  "' is a directory without train.bin and val.bin");
      return from_dir(p, "TALLY_DATA");
    }
    return from_text(p, val_tokens, cache_dir, "TALLY_DATA");
  }
  return resolve_data_from(default_data_candidates(), val_tokens, cache_dir);
}

std::vector<fs::path> default_data_candidates() {
  const std::vector<fs::path> dirs = data::search_dirs();
  std::vector<fs::path> candidates = {dirs.front()};  // the data directory may hold train.bin and val.bin
  for (const fs::path& d : dirs) candidates.push_back(d / data::pinned(data::DataFile::tiny_shakespeare).name);
  return candidates;
}

DataChoice resolve_data_from(const std::vector<fs::path>& candidates, int64_t val_tokens, const fs::path& cache_dir) {
  for (const fs::path& p : candidates) {
    if (fs::is_directory(p) && fs::exists(p / "train.bin") && fs::exists(p / "val.bin")) return from_dir(p, "found");
    if (fs::is_regular_file(p)) return from_text(p, val_tokens, cache_dir, "found");
  }
  // None of them: Tiny Shakespeare from the download cache, downloaded there once (not with TALLY_OFFLINE=1).
  if (auto text = data::fetch(data::DataFile::tiny_shakespeare)) return from_text(*text, val_tokens, cache_dir, "cached");
  std::string looked_in;  // where Tiny Shakespeare was looked for, as data::fetch looks (TALLY_SHARED_DATA's included)
  for (const fs::path& d : data::search_dirs()) looked_in += cat("\n  ", (d / "tinyshakespeare.txt").string());
  fail(kDownloadHint, "\nLooked for tinyshakespeare.txt in:", looked_in, "\n", data::offline_note());
}

Tensor token_tensor(const std::vector<int32_t>& ids, int64_t B, int64_t T, Device device) {
  return from_vector(ids, {B, T}, {.dtype = DType::i32, .device = device});
}

TokenIds loader_token_ids(const data::DataLoader& loader, int64_t vocab) {
  const int32_t limit = loader.shards().checked_vocab_limit();
  return limit > 0 && limit <= vocab ? TokenIds::checked_by_caller : TokenIds::check;
}

double rank_loss_sum(const models::GPT2& model, data::DataLoader& loader, int64_t batches, int rank, int world) {
  NoGradGuard no_grad;
  const TokenIds ids = loader_token_ids(loader, model.config().vocab_size);
  const int64_t B = loader.config().batch, T = loader.config().seq_len;
  double sum = 0;
  data::Batch b;
  for (int64_t i = 0; i < batches; ++i) {
    loader.next(b);
    if (i % world != rank) continue;
    MemoryScope scope(Category::other, "eval");
    sum += model.loss(token_tensor(b.inputs, B, T, model.device()), token_tensor(b.targets, B, T, model.device()), ids)
               .item();
  }
  return sum;
}

}  // namespace tally::train
