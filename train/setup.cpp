// Shared set-up of the training subcommands (see setup.h).
#include "train/setup.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/ledger.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "models/checkpoint_llmc.h"
#include "models/safetensors_gpt2.h"
#include "optim/adafactor.h"
#include "optim/adamw.h"
#include "optim/came.h"
#include "optim/sgd.h"
#include "train/checkpoint.h"
#include "train/run_state.h"

namespace fs = std::filesystem;

namespace tally::cli {

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
  if (fs::is_directory(path)) {
    if (!fs::exists(path / "manifest.json")) {
      auto latest = train::latest_checkpoint(path);
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
      for (const auto& [name, t] : plan.named_parameters()) {
        const Tensor& saved = io::find_tensor(c.model, name, model_path.string());
        TALLY_CHECK(saved.shape() == t.shape(), "checkpoint '", model_path.string(), "': tensor '", name, "' is ",
                    shape_str(saved.shape()), " but the model configuration ", config.str(), " in '",
                    state_path.string(), "' needs ", shape_str(t.shape()));
      }
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

// ---- optimizer ----

OptimizerKind parse_optimizer(const std::string& name) {
  if (name == "came") return OptimizerKind::came;
  if (name == "adamw") return OptimizerKind::adamw;
  if (name == "adafactor") return OptimizerKind::adafactor;
  if (name == "sgd") return OptimizerKind::sgd;
  throw FlagError("unknown optimizer '" + name + "' (expected came, adamw, adafactor or sgd)");
}

const char* optimizer_name(OptimizerKind k) {
  switch (k) {
    case OptimizerKind::came: return "came";
    case OptimizerKind::adamw: return "adamw";
    case OptimizerKind::adafactor: return "adafactor";
    case OptimizerKind::sgd: return "sgd";
  }
  return "?";
}

double default_lr(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::came: return 1e-3;      // the authors: about 0.5-0.9x of AdamW's
    case OptimizerKind::adamw: return 1.5e-3;
    case OptimizerKind::adafactor: return 1.5e-3;
    case OptimizerKind::sgd: return 0.1;
  }
  return 1e-3;
}

std::vector<FlagSpec> optimizer_flags() {
  return {
      {"optimizer", "came | adamw | adafactor | sgd", "came"},
      {"lr", "peak learning rate (default: came 1e-3, adamw 1.5e-3, adafactor 1.5e-3, sgd 0.1)", ""},
      {"weight-decay", "decoupled weight decay (SGD: L2)", "0"},
      {"decay", "which tensors get weight decay: matrices (2+ dims) | all | none", "matrices"},
      {"beta1", "first-moment decay (came, adamw, adafactor)", "0.9"},
      {"beta2", "second-moment decay (came, adamw)", "0.999"},
      {"beta3", "CAME's instability decay", "0.9999"},
      {"eps", "AdamW's epsilon", "1e-8"},
      {"eps1", "CAME/Adafactor epsilon added to g^2", "1e-30"},
      {"eps2", "CAME epsilon added to the instability", "1e-16"},
      {"clip-threshold", "CAME/Adafactor RMS clip of the update", "1"},
      {"decay-rate", "Adafactor's second-moment schedule exponent", "-0.8"},
      {"no-adafactor-beta1", "Adafactor without a first moment", "", FlagKind::switch_},
      {"momentum", "SGD momentum", "0.9"},
      {"came-factor-largest", "CAME/Adafactor: factor the two largest dims when the smaller is >= 128 (optax)", "",
       FlagKind::switch_},
      {"came-bf16-m", "CAME: keep the first moment in bf16", "", FlagKind::switch_},
      {"came-confidence-ones", "CAME: start the confidence factors at one instead of zero", "", FlagKind::switch_},
  };
}

OptimizerSpec optimizer_spec(const Flags& f, OptimizerKind kind) {
  OptimizerSpec s;
  s.kind = kind;
  s.lr = f.given("lr") ? f.number("lr") : default_lr(kind);
  if (!(s.lr > 0)) throw FlagError("--lr must be positive");
  s.weight_decay = f.number("weight-decay");
  std::string decay = f.str("decay");
  if (decay == "matrices") s.decay_rule = optim::DecayRule::matrices;
  else if (decay == "all") s.decay_rule = optim::DecayRule::all;
  else if (decay == "none") s.decay_rule = optim::DecayRule::none;
  else throw FlagError("--decay must be matrices, all or none, got '" + decay + "'");
  s.beta1 = f.number("beta1");
  s.beta2 = f.number("beta2");
  s.beta3 = f.number("beta3");
  for (double b : {s.beta1, s.beta2, s.beta3})
    if (!(b >= 0 && b < 1)) throw FlagError("betas must lie in [0, 1)");
  s.eps = f.number("eps");
  s.eps1 = f.number("eps1");
  s.eps2 = f.number("eps2");
  s.clip_threshold = f.number("clip-threshold");
  s.decay_rate = f.number("decay-rate");
  s.adafactor_beta1 = !f.on("no-adafactor-beta1");
  s.momentum = f.number("momentum");
  s.factor_two_largest = f.on("came-factor-largest");
  s.bf16_exp_avg = f.on("came-bf16-m");
  s.confidence_ones = f.on("came-confidence-ones");
  return s;
}

namespace {

optim::CameConfig came_config(const OptimizerSpec& s) {
  optim::CameConfig c;
  c.lr = s.lr;
  c.betas = {s.beta1, s.beta2, s.beta3};
  c.eps = {s.eps1, s.eps2};
  c.clip_threshold = s.clip_threshold;
  c.weight_decay = s.weight_decay;
  if (s.factor_two_largest) c.factoring = optim::Factoring::two_largest_dims;
  if (s.bf16_exp_avg) c.exp_avg_dtype = DType::bf16;
  if (s.confidence_ones) c.confidence_init = optim::ConfidenceInit::ones;
  return c;
}

optim::AdamWConfig adamw_config(const OptimizerSpec& s) {
  optim::AdamWConfig c;
  c.lr = s.lr;
  c.betas = {s.beta1, s.beta2};
  c.eps = s.eps;
  c.weight_decay = s.weight_decay;
  return c;
}

optim::AdafactorConfig adafactor_config(const OptimizerSpec& s) {
  optim::AdafactorConfig c;
  c.lr = s.lr;
  c.eps = {s.eps1, 1e-3};
  c.clip_threshold = s.clip_threshold;
  c.decay_rate = s.decay_rate;
  if (s.adafactor_beta1) c.beta1 = s.beta1;
  c.weight_decay = s.weight_decay;
  if (s.factor_two_largest) c.factoring = optim::Factoring::two_largest_dims;
  return c;
}

optim::SgdConfig sgd_config(const OptimizerSpec& s) {
  optim::SgdConfig c;
  c.lr = s.lr;
  c.momentum = s.momentum;
  c.weight_decay = s.weight_decay;
  return c;
}

}  // namespace

std::unique_ptr<optim::Optimizer> make_optimizer(const OptimizerSpec& s, const std::vector<Tensor>& params) {
  switch (s.kind) {
    case OptimizerKind::came: return std::make_unique<optim::Came>(optim::decay_groups(params, came_config(s), s.decay_rule));
    case OptimizerKind::adamw: return std::make_unique<optim::AdamW>(optim::decay_groups(params, adamw_config(s), s.decay_rule));
    case OptimizerKind::adafactor:
      return std::make_unique<optim::Adafactor>(optim::decay_groups(params, adafactor_config(s), s.decay_rule));
    case OptimizerKind::sgd: return std::make_unique<optim::Sgd>(optim::decay_groups(params, sgd_config(s), s.decay_rule));
  }
  fail("unknown optimizer kind");
}

std::vector<optim::TensorState> predict_optimizer_state(const OptimizerSpec& s, const std::vector<optim::NamedShape>& params) {
  // Weight decay does not change the state; one config serves every group.
  switch (s.kind) {
    case OptimizerKind::came: return optim::Came::predict_state_bytes(params, came_config(s));
    case OptimizerKind::adamw: return optim::AdamW::predict_state_bytes(params, adamw_config(s));
    case OptimizerKind::adafactor: return optim::Adafactor::predict_state_bytes(params, adafactor_config(s));
    case OptimizerKind::sgd: return optim::Sgd::predict_state_bytes(params, sgd_config(s));
  }
  fail("unknown optimizer kind");
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
    "  data/tinyshakespeare.txt      in the checkout, e.g. downloaded from\n"
    "      https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt\n"
    "  ../shared/data/tinyshakespeare.txt beside the checkout";

// Tokenizes `text_path` into cache_dir/{train,val}.bin once (reused while the text's size and time match).
DataChoice from_text(const fs::path& text_path, int64_t val_tokens, const fs::path& cache_dir, const std::string& why) {
  TALLY_CHECK(fs::is_regular_file(text_path), "text file '", text_path.string(), "' does not exist");
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
  if (have != id.str() || !fs::exists(train) || !fs::exists(val)) {
    data::prepare_text(text_path, dir, {.val_tokens = val_tokens});
    std::ofstream(stamp) << id.str();
  }
  return {train.string(), val.string(), why + " " + text_path.string() + " (tokenized into " + dir.string() + ")"};
}

DataChoice from_dir(const fs::path& d, const std::string& why) {
  return {(d / "train.bin").string(), (d / "val.bin").string(), why + " " + d.string()};
}

}  // namespace

DataChoice resolve_data(const Flags& f, const fs::path& cache_dir) {
  const int64_t val_tokens = f.integer("val-tokens");
  if (val_tokens <= 0) throw FlagError("--val-tokens must be positive");
  if (f.given("train") || f.given("val")) {
    if (!f.given("train") || !f.given("val")) throw FlagError("--train and --val go together");
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
  const fs::path source = TALLY_SOURCE_DIR;
  return {source / "data", source / "data" / "tinyshakespeare.txt",
          source.parent_path() / "shared" / "data" / "tinyshakespeare.txt",
          fs::current_path().parent_path() / "shared" / "data" / "tinyshakespeare.txt"};
}

DataChoice resolve_data_from(const std::vector<fs::path>& candidates, int64_t val_tokens, const fs::path& cache_dir) {
  for (const fs::path& p : candidates) {
    if (fs::is_directory(p) && fs::exists(p / "train.bin") && fs::exists(p / "val.bin")) return from_dir(p, "found");
    if (fs::is_regular_file(p)) return from_text(p, val_tokens, cache_dir, "found");
  }
  fail(kDownloadHint);
}

// ---- memory plan ----

MemoryFigures measure(const Ledger& l) {
  MemoryFigures m;
  m.parameters = l.category(Category::parameter).live_requested;
  m.gradients = l.category(Category::gradient).peak_requested;
  m.optimizer_state = l.category(Category::optimizer_state).live_requested;
  m.activations = l.category(Category::activation).peak_requested;
  m.workspace = l.category(Category::workspace).peak_requested;
  m.other = l.category(Category::other).peak_requested;
  m.total = l.total().peak_requested;
  m.total_held = l.total().peak_held;
  return m;
}

std::string format_plan(const MemoryFigures& p, const MemoryFigures* m) {
  std::string out;
  char line[256];
  auto row = [&](const std::string& name, int64_t predicted, const int64_t* measured) {
    if (measured)
      std::snprintf(line, sizeof line, "  %-28s %20s %20s %16s\n", name.c_str(), format_bytes_exact(predicted).c_str(),
                    format_bytes_exact(*measured).c_str(), format_bytes_exact(*measured - predicted).c_str());
    else
      std::snprintf(line, sizeof line, "  %-28s %20s %12s\n", name.c_str(), format_bytes_exact(predicted).c_str(),
                    format_bytes_human(predicted).c_str());
    out += line;
  };
  if (m)
    std::snprintf(line, sizeof line, "  %-28s %20s %20s %16s\n", "memory (bytes requested)", "predicted", "measured",
                  "difference");
  else
    std::snprintf(line, sizeof line, "  %-28s %20s\n", "memory plan (bytes requested)", "predicted");
  out += line;
  row("parameters", p.parameters, m ? &m->parameters : nullptr);
  row("gradients (peak)", p.gradients, m ? &m->gradients : nullptr);
  row("optimizer state", p.optimizer_state, m ? &m->optimizer_state : nullptr);
  for (const auto& [kind, bytes] : p.state_by_kind) {
    const int64_t* mk = nullptr;
    if (m)
      if (auto it = m->state_by_kind.find(kind); it != m->state_by_kind.end()) mk = &it->second;
    int64_t zero = 0;
    row("  " + kind, bytes, m ? (mk ? mk : &zero) : nullptr);
  }
  row("activations (peak)", p.activations, m ? &m->activations : nullptr);
  row("workspace (peak)", p.workspace, m ? &m->workspace : nullptr);
  row("inputs and other (peak)", p.other, m ? &m->other : nullptr);
  row("total (peak, all at once)", p.total, m ? &m->total : nullptr);
  return out;
}

}  // namespace tally::cli
