// One training run (see trainer.h).
#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "core/autograd/node.h"
#include "core/io/file.h"
#include "core/ledger.h"
#include "core/ops.h"
#include "data/tokenizer.h"
#include "models/generate.h"
#include "optim/clip.h"
#include "train/checkpoint.h"
#include "train/run_state.h"

#ifdef TALLY_HAS_CUDA
#include "core/cuda/runtime.h"
#endif

namespace fs = std::filesystem;
using nlohmann::json;

namespace tally::cli {

std::atomic<bool> g_stop_requested{false};

namespace {

void on_stop_signal(int) { g_stop_requested.store(true); }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string duration_str(double s) {
  char b[32];
  if (!std::isfinite(s) || s < 0) return "?";
  if (s < 60) std::snprintf(b, sizeof b, "%.0fs", s);
  else if (s < 3600) std::snprintf(b, sizeof b, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(b, sizeof b, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return b;
}

// One step's arithmetic, shared by the real run and the meta-device prediction: `next_batch` fills (B, T) i32
// inputs and targets for each micro-batch.
struct StepOutcome {
  double loss = 0;  // mean over micro-batches (NaN on meta)
  double grad_norm = 0;
  bool finite = true;
};

template <class NextBatch>
StepOutcome step_core(models::GPT2& model, optim::Optimizer& opt, int64_t accumulation, double grad_clip,
                      NextBatch&& next_batch, bool inject_nan) {
  const bool meta = model.device().is_meta();
  opt.zero_grad(optim::ZeroGrad::set_to_none);
  double loss_sum = 0;
  for (int64_t micro = 0; micro < accumulation; ++micro) {
    Tensor x, y;
    {
      MemoryScope scope(Category::other, "batch");
      next_batch(x, y);
    }
    Tensor loss = model.loss(x, y);
    if (!meta) loss_sum += loss.item();
    if (accumulation > 1) loss = loss * (1.0 / double(accumulation));
    loss.backward();
  }
  StepOutcome out;
  out.loss = meta ? NAN : loss_sum / double(accumulation);
  if (inject_nan) out.loss = NAN;
  out.grad_norm = optim::grad_norm(model.parameters());
  out.finite = meta || (std::isfinite(out.loss) && std::isfinite(out.grad_norm));
  if (!out.finite) {
    opt.zero_grad(optim::ZeroGrad::set_to_none);  // the optimizer state stays untouched
    return out;
  }
  double coef = grad_clip > 0 ? optim::clip_coefficient(out.grad_norm, grad_clip) : 1.0;
  opt.step({.grad_scale = coef});
  // Past the update the gradients are dead: freeing them now keeps evaluation, sampling and checkpointing between
  // steps inside the step's predicted peak (the budget check covers the whole run, not only the step).
  opt.zero_grad(optim::ZeroGrad::set_to_none);
  return out;
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoll(v) : fallback;
}

}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

// ---- flags ----

RunConfig run_config_unchecked(const Flags& f, DataResolution data);

std::vector<FlagSpec> train_flags() {
  std::vector<FlagSpec> f = model_flags("d4");
  f.push_back({"init", "start from a model file: llm.c .bin, .safetensors (HF naming) or a tally checkpoint", ""});
  for (auto& s : data_flags()) f.push_back(s);
  for (auto& s : optimizer_flags()) f.push_back(s);
  std::vector<FlagSpec> run = {
      {"batch", "micro-batch size B", "8"},
      {"seq", "sequence length T", "128"},
      {"total-batch", "tokens per optimizer step (a multiple of B*T: gradient accumulation)", ""},
      {"steps", "optimizer steps", "200"},
      {"schedule", "cosine (linear warmup, cosine decay to --min-lr-ratio) | constant", "cosine"},
      {"warmup", "warmup steps", "20"},
      {"min-lr-ratio", "final lr as a fraction of the peak (cosine)", "0.1"},
      {"grad-clip", "global gradient-norm clip (0: off)", "1"},
      {"eval-every", "evaluate every N steps (0: only at the end)", "50"},
      {"val-batches", "validation batches per evaluation", "8"},
      {"sample-every", "sample a few lines every N steps (0: only at the end)", "0"},
      {"sample-tokens", "tokens per sample", "64"},
      {"out", "run directory (log.jsonl, config.json, checkpoints)", "runs/latest"},
      {"save-every", "checkpoint every N steps (0: only at the end)", "0"},
      {"keep-last", "checkpoints kept", "3"},
      {"resume", "continue a run from its directory or a checkpoint directory", ""},
      {"seed", "seed for initialisation and data order", "1337"},
      {"no-shuffle", "read the training data in order (as llm.c)", "", FlagKind::switch_},
      {"device", "cpu | cuda", "cpu"},
      {"dtype", "f32 | bf16 (mixed precision, CUDA only: bf16 parameters, activations and gradients; f32 master "
                "weights and optimizer state; checkpoints hold both)", "f32"},
      {"threads", "CPU threads (0: all)", "0"},
      {"log-optim", "log the optimizer's internals every N steps (0: off)", "0"},
      {"log-every", "print a progress line every N steps when not on a terminal", "10"},
      {"max-bad-steps", "stop after this many non-finite steps in a row", "5"},
      {"config", "a JSON file of flags (command-line flags win)", ""},
  };
  f.insert(f.end(), run.begin(), run.end());
  return f;
}

RunConfig run_config(const Flags& f, DataResolution data) {
  // An error about a value that came from a --config file says so, naming the file.
  try {
    return run_config_unchecked(f, data);
  } catch (const FlagError& e) {
    const std::string sources = f.config_sources();
    if (sources.empty() || std::string_view(e.what()).find("config file '") != std::string_view::npos) throw;
    throw FlagError(cat(e.what(), " (", sources, ")"));
  }
}

RunConfig run_config_unchecked(const Flags& f, DataResolution data) {
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
  if (f.given("total-batch")) {
    int64_t total = f.integer("total-batch"), per = c.batch * c.seq;
    if (total < per || total % per != 0)
      throw FlagError("--total-batch " + std::to_string(total) + " must be a positive multiple of B*T = " + std::to_string(per));
    c.accumulation = total / per;
  }
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
  try {
    c.device = Device::parse(f.str("device"));
  } catch (const Error& e) {
    throw FlagError(e.what());
  }
  if (c.device.is_meta()) throw FlagError("--device meta is for memory planning only");
  const std::string dtype = f.str("dtype");
  if (dtype != "f32" && dtype != "bf16") throw FlagError("--dtype must be f32 or bf16, got '" + dtype + "'");
  c.dtype = dtype == "bf16" ? DType::bf16 : DType::f32;
  if (c.dtype == DType::bf16 && !c.device.is_cuda())
    throw FlagError("--dtype bf16 computes on CUDA only: add --device cuda, or train in f32 on the CPU");
  c.threads = int(f.integer("threads"));
  if (c.warmup < 0 || c.val_batches < 1 || c.threads < 0 || c.max_bad_steps < 1 || c.keep_last < 0)
    throw FlagError("--warmup, --threads, --keep-last must be >= 0; --val-batches, --max-bad-steps >= 1");
  c.out = f.str("out");
  if (data == DataResolution::resolve) c.data = resolve_data(f, c.out);
  for (const auto& [k, v] : f.resolved()) c.flags[k] = v;
  return c;
}

// ---- the trainer ----

namespace {

// The run directory first: a second run given the same --out is refused before this one reads or writes anything.
std::unique_ptr<io::DirectoryLock> lock_run_directory(const fs::path& out) {
  std::error_code ec;
  fs::create_directories(out, ec);
  TALLY_CHECK(!ec, "cannot create the run directory '", out.string(), "': ", ec.message());
  return std::make_unique<io::DirectoryLock>(out, "run directory");
}

}  // namespace

Trainer::Trainer(RunConfig config) : c_(std::move(config)), lock_(lock_run_directory(c_.out)) {
  if (c_.threads > 0) omp_set_num_threads(c_.threads);
  baseline_live_ = c_.device.is_cuda() && !cuda_available() ? 0 : ledger(c_.device).total().live_held;
#ifdef TALLY_HAS_CUDA
  constexpr const char* kBuiltWithCuda = "yes";
#else
  constexpr const char* kBuiltWithCuda = "no: configure with -DTALLY_CUDA=ON";
#endif
  if (c_.device.is_cuda())
    TALLY_CHECK(cuda_available(), "--device cuda: no CUDA device is available (built with CUDA: ", kBuiltWithCuda, ")");
  if (!c_.init.empty()) {
    MemoryScope scope(Category::parameter, "init");
    model_ = load_model_file(c_.init, c_.device);
    models::GPT2Config loaded = model_->config();
    loaded.dropout = c_.model.dropout;
    loaded.padded_vocab_size = models::padded_vocab(loaded.vocab_size, c_.vocab_multiple);
    c_.model = loaded;
    // bf16 from a file: the loaded weights rounded to nearest even; another padding: the vocabulary's rows moved.
    if (c_.dtype != model_->dtype() || c_.model.padded_vocab_size != model_->config().padded_vocab_size) {
      auto converted = std::make_unique<models::GPT2>(c_.model, models::GPT2Options{.device = c_.device, .dtype = c_.dtype,
                                                                                    .seed = model_->options().seed,
                                                                                    .init = models::Init::none});
      for (const auto& [name, t] : model_->named_parameters()) converted->load_parameter(name, t, c_.init);
      model_ = std::move(converted);
    }
  } else {
    model_ = std::make_unique<models::GPT2>(
        c_.model, models::GPT2Options{.device = c_.device, .dtype = c_.dtype, .seed = c_.seed});
  }
  optimizer_ = c_.optimizer.make(model_->parameters());
  const double peak = c_.optimizer.lr();
  schedule_ = c_.schedule == "constant"
                  ? optim::LrSchedule::constant(peak)
                  : optim::LrSchedule::warmup_cosine({.peak_lr = peak, .warmup_steps = c_.warmup, .total_steps = c_.steps,
                                                      .min_lr = peak * c_.min_lr_ratio});
  const int32_t vocab = int32_t(c_.model.vocab_size);
  data::ShardSet train = data::ShardSet::open(c_.data.train_pattern, {.vocab_limit = vocab});
  data::ShardSet val = data::ShardSet::open(c_.data.val_pattern, {.vocab_limit = vocab});
  train_loader_ = std::make_unique<data::DataLoader>(
      std::move(train), data::LoaderConfig{.batch = c_.batch, .seq_len = c_.seq,
                                           .order = c_.shuffle ? data::LoaderOrder::shuffled : data::LoaderOrder::sequential,
                                           .seed = c_.seed});
  val_loader_ = std::make_unique<data::DataLoader>(std::move(val), data::LoaderConfig{.batch = c_.batch, .seq_len = c_.seq});
}

Trainer::~Trainer() {
  if (log_) std::fclose(log_);
}

void Trainer::log(const json& j) {
  if (!log_) {
    log_ = std::fopen((c_.out / "log.jsonl").c_str(), start_step_ > 0 ? "a" : "w");
    TALLY_CHECK(log_, "cannot write '", (c_.out / "log.jsonl").string(), "'");
  }
  std::string line = j.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), log_);
  std::fflush(log_);
}

MemoryFigures predict_step_memory(const models::GPT2Config& config, const OptimizerChoice& optimizer, StepShape shape) {
  Ledger& meta = ledger(Device::meta());
  TALLY_ASSERT(meta.total().live_requested == 0);
  MemoryFigures p;
  {
    models::GPT2 model(config, {.device = Device::meta(), .dtype = shape.dtype});
    auto opt = optimizer.make(model.parameters());
    opt->init_state();
    meta.reset_peaks();
    step_core(model, *opt, shape.accumulation, shape.grad_clip,
              [&](Tensor& x, Tensor& y) {
                x = empty({shape.batch, shape.seq}, {.dtype = DType::i32, .device = Device::meta()});
                y = empty({shape.batch, shape.seq}, {.dtype = DType::i32, .device = Device::meta()});
              },
              false);
    p = measure(meta);
    for (const auto& ts : opt->state_bytes())
      for (const auto& s : ts.states) p.state_by_kind[s.name] += s.bytes();
  }
  return p;
}

int64_t parse_byte_count(const std::string& text) {
  size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
  }
  int shift = 0;
  const std::string suffix = used <= text.size() ? text.substr(used) : "";
  if (suffix == "K" || suffix == "k") shift = 10;
  else if (suffix == "M") shift = 20;
  else if (suffix == "G") shift = 30;
  else if (suffix == "T") shift = 40;
  else if (!suffix.empty()) v = -1;
  TALLY_CHECK(v >= 0 && v <= (INT64_MAX >> shift), "'", text,
              "' is not a byte count (a non-negative integer, optionally with K, M, G or T)");
  return int64_t(v) << shift;
}

int64_t Trainer::run_live() const { return ledger(c_.device).total().live_held - baseline_live_; }

MemoryBudget Trainer::memory_budget() const {
  MemoryBudget b;
  const int64_t live = run_live();
  if (const char* env = std::getenv("TALLY_MEMORY_LIMIT"); env && *env) {
    try {
      b.bytes = parse_byte_count(env);
    } catch (const Error& e) {
      fail("TALLY_MEMORY_LIMIT: ", e.what());
    }
    b.source = cat("TALLY_MEMORY_LIMIT=", env);
    return b;
  }
  if (c_.device.is_cpu()) {
    long long kib = -1;
    if (std::FILE* f = std::fopen("/proc/meminfo", "r")) {
      char line[256];
      while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "MemAvailable: %lld kB", &kib) == 1) break;
      std::fclose(f);
    }
    if (kib >= 0) {
      b.bytes = int64_t(kib) * 1024 + live;
      b.source = cat("MemAvailable in /proc/meminfo, ", format_bytes_human(int64_t(kib) * 1024), ", + ",
                     format_bytes_human(live), " this run already holds");
    }
    if (const int64_t limit = cpu_memory_limit(); limit > 0 && (b.bytes < 0 || limit - baseline_live_ < b.bytes)) {
      b.bytes = limit - baseline_live_;
      b.source = "the CPU allocator's limit (set_cpu_memory_limit)";
    }
  }
#ifdef TALLY_HAS_CUDA
  if (c_.device.is_cuda()) {
    int64_t free_bytes = 0, total_bytes = 0;
    cuda::memory_info(&free_bytes, &total_bytes);
    b.bytes = free_bytes + live;
    b.source = cat("free memory on ", c_.device.str(), " (cudaMemGetInfo: ", format_bytes_human(free_bytes), " of ",
                   format_bytes_human(total_bytes), ") + ", format_bytes_human(live), " this run already holds");
  }
#endif
  return b;
}

int64_t largest_fitting_batch(const models::GPT2Config& model, const OptimizerChoice& optimizer, StepShape shape,
                              int64_t bytes) {
  // The peak grows with B (activations are proportional to it), so a binary search over [1, B] finds the edge.
  int64_t lo = 0, hi = shape.batch;  // lo fits (0 trivially), everything above hi does not
  auto fits = [&](int64_t b) {
    StepShape s = shape;
    s.batch = b;
    return predict_step_memory(model, optimizer, s).total_held <= bytes;
  };
  if (fits(hi)) return hi;
  --hi;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

std::string Trainer::memory_advice(const MemoryFigures& predicted, const MemoryBudget& budget) const {
  std::string out = cat("One training step of this run needs ", format_bytes_exact(predicted.total_held), " (",
                        format_bytes_human(predicted.total_held), ") at its peak, predicted exactly on the meta device; ",
                        "the budget is ", format_bytes_exact(budget.bytes), " (", format_bytes_human(budget.bytes),
                        ", ", budget.source, ").\n");
  const StepShape shape{.batch = c_.batch, .seq = c_.seq, .accumulation = c_.accumulation, .grad_clip = c_.grad_clip};
  const int64_t fit = largest_fitting_batch(c_.model, c_.optimizer, shape, budget.bytes);
  if (fit >= c_.batch) {
    out += cat("The plan fits the budget at --batch ", c_.batch, ": memory is used outside the training step (or by "
               "another process); lower --batch or --val-batches, or free memory.\n");
  } else if (fit > 0) {
    StepShape s = shape;
    s.batch = fit;
    const MemoryFigures at = predict_step_memory(c_.model, c_.optimizer, s);
    out += cat("The largest --batch that fits is ", fit, " (peak ", format_bytes_human(at.total_held), ")");
    out += (c_.batch * c_.accumulation) % fit == 0
               ? cat("; --total-batch ", c_.batch * c_.seq * c_.accumulation,
                     " keeps the tokens per optimizer step (gradient accumulation).\n")
               : ".\n";
  } else {
    StepShape s = shape;
    s.batch = 1;
    // Optimizers whose state (at their defaults) is smaller than this run's, for this model.
    std::vector<optim::NamedShape> shapes;
    for (const Tensor& p : model_->parameters()) shapes.push_back(optim::named_shape(p));
    const int64_t ours = optim::total_bytes(c_.optimizer.predict(shapes));
    std::string smaller;
    for (const optim::OptimizerEntry& e : optim::optimizers())
      if (optim::total_bytes(e.predict(shapes, {})) < ours) smaller += (smaller.empty() ? "" : ", ") + e.name;
    out += cat("Not even --batch 1 fits (peak ",
               format_bytes_human(predict_step_memory(c_.model, c_.optimizer, s).total_held),
               "): use a smaller model or --seq",
               smaller.empty() ? std::string() : cat(", or an optimizer with less state (", smaller, ")"), ".\n");
  }
  out += "\n" + format_plan(predicted, nullptr);
  return out;
}

void Trainer::check_memory(const MemoryFigures& predicted) const {
  const MemoryBudget budget = memory_budget();
  if (budget.bytes < 0 || predicted.total_held <= budget.bytes) return;
  fail("out of memory: refusing to start training on ", c_.device.str(), ". ", memory_advice(predicted, budget),
       "Nothing was trained and no checkpoint was written.");
}

MemoryFigures Trainer::predict_memory() const {
  return predict_step_memory(c_.model, c_.optimizer, {.batch = c_.batch, .seq = c_.seq, .accumulation = c_.accumulation,
                                                      .grad_clip = c_.grad_clip, .dtype = c_.dtype});
}

double Trainer::evaluate(int64_t batches) {
  NoGradGuard no_grad;
  model_->eval();
  val_loader_->reset();
  batches = std::min(batches, val_loader_->batches_per_epoch());
  double sum = 0;
  data::Batch b;
  for (int64_t i = 0; i < batches; ++i) {
    val_loader_->next(b);
    MemoryScope scope(Category::other, "eval");
    Tensor x = from_vector(b.inputs, {c_.batch, c_.seq}, {.dtype = DType::i32, .device = c_.device});
    Tensor y = from_vector(b.targets, {c_.batch, c_.seq}, {.dtype = DType::i32, .device = c_.device});
    sum += model_->loss(x, y).item();
  }
  model_->train();
  return sum / double(batches);
}

std::string Trainer::sample(const std::string& prompt, int64_t tokens, uint64_t seed) {
  static std::optional<data::Tokenizer> tok;
  if (!tok) tok.emplace(data::Tokenizer::load());
  NoGradGuard no_grad;
  model_->eval();
  std::vector<int32_t> ids = prompt.empty() ? std::vector<int32_t>{data::Tokenizer::kEndOfText}
                                            : tok->encode(prompt, data::SpecialTokens::allowed);
  int64_t room = c_.model.block_size - int64_t(ids.size());
  MemoryScope scope(Category::other, "sample");
  auto out = models::generate(*model_, {ids}, {.max_new_tokens = std::max<int64_t>(0, std::min(tokens, room)),
                                               .temperature = 1.0, .top_k = 40, .seed = seed});
  model_->train();
  std::vector<int32_t> all = ids;
  all.insert(all.end(), out[0].begin(), out[0].end());
  if (prompt.empty()) all.erase(all.begin());
  return data::to_valid_utf8(tok->decode(all));  // printed: bytes that are no UTF-8 become U+FFFD
}

StepRecord Trainer::train_step(int64_t step) {
  StepRecord r;
  r.step = step;
  r.lr = schedule_->lr(step - 1);
  optimizer_->set_lr_factor(schedule_->factor(step - 1));
  const bool inspect = c_.log_optim > 0 && step % c_.log_optim == 0;
  if (inspect) optimizer_->set_inspect(optim::Inspect::summary);
  // Fault injection for tests: TALLY_FAULT_OOM_AT_STEP=k makes step k's allocations fail as a refused malloc
  // would (the CPU allocator's ceiling is set to what is live), for that step only.
  struct OomFault {
    bool on;
    int64_t previous = 0;
    explicit OomFault(bool enable) : on(enable) {
      if (!on) return;
      previous = cpu_memory_limit();
      set_cpu_memory_limit(ledger(Device::cpu()).total().live_held);
    }
    ~OomFault() {
      if (on) set_cpu_memory_limit(previous);
    }
  } oom_fault(c_.device.is_cpu() && env_int("TALLY_FAULT_OOM_AT_STEP", -1) == step);
  auto t0 = std::chrono::steady_clock::now();
  data::Batch b;
  StepOutcome o = step_core(*model_, *optimizer_, c_.accumulation, c_.grad_clip,
                            [&](Tensor& x, Tensor& y) {
                              train_loader_->next(b);
                              x = from_vector(b.inputs, {c_.batch, c_.seq}, {.dtype = DType::i32, .device = c_.device});
                              y = from_vector(b.targets, {c_.batch, c_.seq}, {.dtype = DType::i32, .device = c_.device});
                            },
                            env_int("TALLY_FAULT_NAN_AT_STEP", -1) == step);
  r.ms = seconds_since(t0) * 1000;
  r.loss = o.loss;
  r.grad_norm = o.grad_norm;
  r.skipped = !o.finite;
  r.tokens_per_s = double(c_.batch * c_.seq * c_.accumulation) / (r.ms / 1000);
  if (inspect) {
    json entries = json::array();
    for (const auto& t : optimizer_->internals()) {
      json e = {{"param", t.param}, {"update_rms", t.update_rms}, {"clipped_update_rms", t.clipped_update_rms},
                {"clipped", t.clipped}, {"exp_avg_rms", t.exp_avg_rms}, {"applied_rms", t.applied_rms}};
      if (t.has_confidence) {
        auto sj = [](const optim::Summary& s) { return json{{"min", s.min}, {"mean", s.mean}, {"max", s.max}}; };
        e["confidence_row"] = sj(t.confidence_row);
        e["confidence_col"] = sj(t.confidence_col);
        e["confidence_scale"] = sj(t.confidence_scale);
      }
      for (auto& [k, v] : e.items())
        if (v.is_number_float() && !std::isfinite(v.get<double>())) v = nullptr;
      entries.push_back(e);
    }
    log({{"step", step}, {"optim", entries}});
    optimizer_->set_inspect(optim::Inspect::off);
  }
  return r;
}

fs::path Trainer::save(int64_t step) {
  train::CheckpointContent c;
  for (const auto& [name, t] : model_->named_parameters()) c.model.emplace_back(name, t);
  optim::OptimizerState st = optimizer_->state_dict();
  for (const auto& [name, t] : st.tensors) c.optimizer.emplace_back(name, t);
  train::RunState rs;
  rs.step = step;
  rs.model = c_.model;
  rs.optimizer_kind = st.kind;
  rs.optimizer_steps = st.steps;
  rs.param_steps = st.param_steps;
  rs.loader = train_loader_->position();
  rs.dropout_seed = model_->dropout_generator().seed();
  rs.dropout_offset = model_->dropout_generator().offset();
  rs.skipped_steps = skipped_total_;
  rs.dtype = c_.dtype;  // bf16: model.safetensors holds bf16, optimizer.safetensors the f32 masters
  rs.flags = c_.flags;
  c.state = train::to_json(rs);
  return train::save_checkpoint(c_.out, step, c, {.keep_last = int(c_.keep_last)});
}

void Trainer::resume(const fs::path& dir_in) {
  fs::path dir = dir_in;
  if (!fs::exists(dir / "manifest.json")) {
    auto latest = train::latest_checkpoint(dir);
    TALLY_CHECK(latest.has_value(), "--resume '", dir.string(), "': no complete checkpoint there");
    dir = *latest;
  }
  train::CheckpointContent c = train::load_checkpoint(dir);
  const train::RunState rs = train::run_state_from_json(c.state, (dir / "state.json").string());
  // The vocabulary's padding may differ (--no-vocab-pad given now): the optimizer state never holds padding rows.
  models::GPT2Config saved_model = rs.model;
  saved_model.padded_vocab_size = c_.model.padded_vocab_size;
  TALLY_CHECK(train::model_config_json(saved_model) == train::model_config_json(c_.model), "--resume '", dir.string(),
              "': the checkpoint's model ", train::model_config_json(rs.model).dump(), " differs from this run's ",
              train::model_config_json(c_.model).dump());
  TALLY_CHECK(rs.dtype == c_.dtype, "--resume '", dir.string(), "': the checkpoint was trained with --dtype ",
              dtype_name(rs.dtype), ", this run has --dtype ", dtype_name(c_.dtype), " (resume with the same --dtype)");
  const std::string model_file = (dir / "model.safetensors").string();
  for (const auto& [name, t] : model_->named_parameters())
    model_->load_parameter(name, io::find_tensor(c.model, name, model_file), model_file);
  optim::OptimizerState st;
  st.kind = rs.optimizer_kind;
  st.steps = rs.optimizer_steps;
  st.param_steps = rs.param_steps;
  for (const auto& [name, t] : c.optimizer) st.tensors[name] = t;
  optimizer_->load_state_dict(st);
  train_loader_->restore(rs.loader);
  model_->dropout_generator().set_state(rs.dropout_seed, rs.dropout_offset);
  skipped_total_ = rs.skipped_steps;
  start_step_ = rs.step;
  std::printf("resumed from %s at step %lld\n", dir.c_str(), (long long)start_step_);
}

RunSummary Trainer::run() {
  RunSummary s;
  std::printf("model: GPT-2 %s, %s parameters | optimizer: %s lr %.3g wd %.3g | data: %s\n",
              c_.model.str().c_str(), format_count(model_->num_parameters()).c_str(), c_.optimizer.name.c_str(),
              c_.optimizer.lr(), c_.optimizer.weight_decay(), c_.data.description.c_str());
  std::printf("batch %lld x %lld tokens, %lld micro-batch(es) per step, %lld steps, %s schedule (warmup %lld), %d threads\n",
              (long long)c_.batch, (long long)c_.seq, (long long)c_.accumulation, (long long)c_.steps, c_.schedule.c_str(),
              (long long)c_.warmup, omp_get_max_threads());
  {
    // Atomic: a resume reads the run's flags back from it, so a kill must never leave it half written.
    json cfg = {{"flags", c_.flags}, {"model_config", train::model_config_json(c_.model)}};
    io::write_file_atomic(c_.out / "config.json", cfg.dump(2) + "\n");
  }
  // The exact plan of one step (meta device; on a GPU it counts the same tensors, without cuBLAS workspaces and
  // the caching allocator's rounding), checked against the memory there is before anything more is allocated.
  // Compared with the measured step on the CPU only: a CUDA run also holds cuBLAS's workspace (32 MiB, made on
  // first use) and CUB's sort scratch, which the meta device does not plan.
  const MemoryFigures predicted = predict_memory();
  if (c_.device.is_cpu()) std::printf("\n%s\n", format_plan(predicted, nullptr).c_str());
  check_memory(predicted);
  // TALLY_MEMORY_LIMIT is a real ceiling on the CPU for the length of the run, not only a figure to plan with.
  const MemoryBudget budget = memory_budget();
  const int64_t previous_limit = cpu_memory_limit();
  const bool enforce = c_.device.is_cpu() && budget.source.rfind("TALLY_MEMORY_LIMIT", 0) == 0;
  if (enforce) set_cpu_memory_limit(budget.bytes + baseline_live_);
  struct RestoreLimit {
    bool active;
    int64_t previous;
    ~RestoreLimit() {
      if (active) set_cpu_memory_limit(previous);
    }
  } restore{enforce, previous_limit};
  try {
    run_steps(s, predicted);
  } catch (const std::bad_alloc&) {
    fail("out of memory during training (std::bad_alloc). ", memory_advice(predicted, memory_budget()),
         "Nothing of the failed step was saved; earlier checkpoints are untouched.");
  } catch (const Error& e) {
    if (std::string_view(e.what()).find("out of memory") == std::string_view::npos) throw;
    const MemoryBudget now = memory_budget();
    if (now.bytes < 0) throw;
    fail(e.what(), "\n\n", memory_advice(predicted, now),
         "Nothing of the failed step was saved; earlier checkpoints are untouched.");
  }
  return s;
}

void Trainer::run_steps(RunSummary& s, const MemoryFigures& predicted) {
  const bool tty = ::isatty(STDOUT_FILENO);
  optimizer_->init_state();
  Ledger& l = ledger(c_.device);
  auto t_start = std::chrono::steady_clock::now();
  double val = NAN, ms_sum = 0;
  int64_t ms_count = 0;
  std::string last_line;
  for (int64_t step = start_step_ + 1; step <= c_.steps; ++step) {
    const bool first = step == start_step_ + 1;
    if (first) l.reset_peaks();
    StepRecord r = train_step(step);
    if (first && c_.device.is_cpu()) {
      MemoryFigures m = measure(l);
      for (const auto& ts : optimizer_->state_bytes())
        for (const auto& st : ts.states) m.state_by_kind[st.name] += st.bytes();
      std::printf("after step %lld, measured beside predicted:\n%s\n", (long long)step, format_plan(predicted, &m).c_str());
      log({{"step", step}, {"memory_predicted", predicted.total}, {"memory_measured", m.total},
           {"memory_difference", m.total - predicted.total}});
    }
    if (!first) {
      ms_sum += r.ms;
      ++ms_count;
    }
    if (r.skipped) {
      ++skipped_total_;
      ++skipped_in_row_;
      std::printf("%sstep %lld: non-finite loss (%g) or gradient norm (%g): skipped, optimizer state untouched (%lld in a row)\n",
                  tty ? "\n" : "", (long long)step, r.loss, r.grad_norm, (long long)skipped_in_row_);
      log({{"step", step}, {"skipped", true}, {"loss", std::isfinite(r.loss) ? json(r.loss) : json(nullptr)},
           {"grad_norm", std::isfinite(r.grad_norm) ? json(r.grad_norm) : json(nullptr)}});
      if (skipped_in_row_ >= c_.max_bad_steps) {
        s.steps_done = step;
        s.skipped_steps = skipped_total_;
        s.last_checkpoint = save(step);
        fail("training stopped: ", skipped_in_row_, " non-finite steps in a row (limit --max-bad-steps ", c_.max_bad_steps,
             "). The last good model and optimizer state are saved in ", s.last_checkpoint.string(),
             "; try a lower --lr, a --grad-clip, or more --warmup.");
      }
    } else {
      skipped_in_row_ = 0;
      log({{"step", step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm}, {"tokens_per_s", r.tokens_per_s},
           {"ms", r.ms}});
      s.train_curve.emplace_back(step, r.loss);
      s.final_train_loss = r.loss;
    }
    const bool last = step == c_.steps;
    if ((c_.eval_every > 0 && step % c_.eval_every == 0) || last) {
      val = evaluate(c_.val_batches);
      log({{"step", step}, {"val_loss", val}});
      s.val_curve.emplace_back(step, val);
    }
    double elapsed = seconds_since(t_start);
    double eta = elapsed / double(step - start_step_) * double(c_.steps - step);
    Usage u = l.total();
    char line[256];
    std::snprintf(line, sizeof line, "step %lld/%lld | loss %.4f | val %s | lr %.2e | %.0f tok/s | ETA %s | mem %s / peak %s",
                  (long long)step, (long long)c_.steps, r.loss, std::isfinite(val) ? cat(val).substr(0, 6).c_str() : "-",
                  r.lr, r.tokens_per_s, duration_str(eta).c_str(), format_bytes_human(u.live_held).c_str(),
                  format_bytes_human(u.peak_held).c_str());
    if (tty) {
      std::printf("\r%-*s", int(std::max(last_line.size(), std::string(line).size())), line);
      std::fflush(stdout);
    } else if (first || last || step % c_.log_every == 0 || (c_.eval_every > 0 && step % c_.eval_every == 0)) {
      std::printf("%s\n", line);
      std::fflush(stdout);
    }
    last_line = line;
    if (c_.sample_every > 0 && step % c_.sample_every == 0 && !last) {
      std::printf("%s--- sample at step %lld ---\n%s\n---\n", tty ? "\n" : "", (long long)step,
                  sample("", c_.sample_tokens, c_.seed + uint64_t(step)).c_str());
    }
    if ((c_.save_every > 0 && step % c_.save_every == 0) || last) s.last_checkpoint = save(step);
    s.steps_done = step;
    if (g_stop_requested.load() && !last) {
      s.last_checkpoint = save(step);
      s.interrupted = true;
      std::printf("%sstopped at step %lld on request; checkpoint %s (continue with --resume %s)\n", tty ? "\n" : "",
                  (long long)step, s.last_checkpoint.c_str(), c_.out.c_str());
      break;
    }
  }
  if (tty) std::printf("\n");
  s.final_val_loss = val;
  s.ms_per_step = ms_count ? ms_sum / double(ms_count) : NAN;
  s.optimizer_state_bytes = optimizer_->total_state_bytes();
  s.skipped_steps = skipped_total_;
}

}  // namespace tally::cli
