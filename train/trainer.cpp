// One training run (see trainer.h).
#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <set>
#include <thread>

#include "core/allocator.h"
#include "core/autograd/node.h"
#include "core/faults.h"
#include "core/io/file.h"
#include "core/ledger.h"
#include "core/ops.h"
#include "data/tokenizer.h"
#include "models/generate.h"
#include "train/checkpoint.h"
#include "train/flags.h"
#include "train/run_state.h"

#ifdef TALLY_HAS_CUDA
#include "core/kernels/cuda/attention_cudnn.h"
#include "core/kernels/cuda/linear_epilogues.h"
#endif

namespace fs = std::filesystem;

namespace tally::train {

std::atomic<bool> g_stop_requested{false};

namespace {

// The first request: stop after the step in progress (all its micro-batches) and save; said at once, since a step
// may take a while. A second: stop now, without saving (the last checkpoint stays).
// Under mpirun the note says more: mpirun also signals every rank to end a job one of whose ranks failed, and then
// ends them before any checkpoint.
char g_stop_note[320] =
    "\ntally: stopping after this step, with a checkpoint (signal again to stop at once, without saving)\n";
const char kStopAtOnceNote[] = "\ntally: stopping at once, without saving (the run's last checkpoint stays)\n";
// Async-signal-safe: write(2) only.
void say_from_handler(const char* note) {
  const ssize_t ignored = ::write(STDERR_FILENO, note, std::strlen(note));
  (void)ignored;
}
void on_stop_signal(int sig) {
  const bool again = g_stop_requested.exchange(true);
  say_from_handler(again ? kStopAtOnceNote : g_stop_note);
  if (again) io::die_by_signal(sig);  // delivered as this handler returns
}

// The reader of stdout gone (tally train | head, a terminal closed under tee): a stop request as SIGINT's, without
// its second-signal meaning, since every later write raises SIGPIPE again (and fails, which printing ignores).
void on_broken_pipe(int) {
  if (!g_stop_requested.exchange(true)) say_from_handler(g_stop_note);
}

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

// The run directory first: a second run given the same --out is refused before this one reads or writes anything.
std::unique_ptr<io::DirectoryLock> lock_run_directory(const fs::path& out) {
  std::error_code ec;
  fs::create_directories(out, ec);
  TALLY_CHECK(!ec, "cannot create the run directory '", out.string(), "': ", ec.message());
  return std::make_unique<io::DirectoryLock>(out, "run directory");
}

// A step's micro-batches from the training loader, on the run's device.
class LoaderBatches final : public Batches {
 public:
  LoaderBatches(data::DataLoader& loader, int64_t B, int64_t T, Device device, int64_t vocab)
      : loader_(loader), B_(B), T_(T), device_(device), ids_(loader_token_ids(loader, vocab)) {}
  void next(Tensor& inputs, Tensor& targets) override {
    loader_.next(batch_);
    inputs = token_tensor(batch_.inputs, B_, T_, device_);
    targets = token_tensor(batch_.targets, B_, T_, device_);
  }
  // The trainer opens its shard sets with the model's vocabulary as their limit (validate_vocab): its batches' ids
  // are then checked already (loader_token_ids says so from the shards' recorded limit).
  TokenIds ids() const override { return ids_; }

 private:
  data::DataLoader& loader_;
  int64_t B_, T_;
  Device device_;
  TokenIds ids_;
  data::Batch batch_;
};

}  // namespace

void install_stop_handlers() {
  if (dist::launched_by_mpi())
    std::snprintf(g_stop_note, sizeof g_stop_note,
                  "\ntally (rank %d): signal received: stopping after this step, with a checkpoint, unless mpirun ends "
                  "the job first (as it does when a rank has failed: that rank's error says why); signal again to stop "
                  "at once, without saving\n",
                  dist::process_group().rank());
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  // A hangup (the terminal or ssh session closed) stops as the others do, after the step and with a checkpoint;
  // not under nohup, which ignores it so that the run goes on.
  struct sigaction hup {};
  if (sigaction(SIGHUP, nullptr, &hup) == 0 && !(hup.sa_flags & SA_SIGINFO) && hup.sa_handler != SIG_IGN)
    sigaction(SIGHUP, &sa, nullptr);
  struct sigaction pipe {};
  pipe.sa_handler = on_broken_pipe;
  sigemptyset(&pipe.sa_mask);
  sigaction(SIGPIPE, &pipe, nullptr);
}

namespace {

// A faster CUDA path switched on in the environment (each stays off until a GPU has compared it with the default):
// whether the first step took it, or why not (its last problem's answer), so that a run never falls back unseen.
void note_cuda_paths_taken(DType dtype) {
#ifdef TALLY_HAS_CUDA
  auto note = [](const char* variable, const std::string& refusal) {
    const char* value = std::getenv(variable);
    if (value && std::strcmp(value, "1") == 0)
      std::printf("%s=1: %s\n", variable, refusal.empty() ? "used" : cat("not used: ", refusal).c_str());
  };
  note("TALLY_CUDNN_ATTENTION", dtype == DType::bf16 ? kernels::cuda::cudnn_attention_last_refusal()
                                                     : std::string("bf16 attention only (this run computes in f32)"));
  note("TALLY_CUBLASLT_EPILOGUES", kernels::cuda::linear_epilogues_last_refusal());
#else
  (void)dtype;
#endif
}

}  // namespace

// ---- the trainer ----

Trainer::Trainer(RunConfig config)
    : c_(std::move(config)),
      comm_(dist::process_group()),
      lock_(comm_.rank() == 0 ? lock_run_directory(c_.out) : nullptr) {
  use_threads(c_.threads, &comm_);
  // --total-batch is shared out over the ranks (accumulation per rank): the configuration must have been resolved for
  // this run's.
  TALLY_CHECK(c_.world == comm_.world(), "[train] the configuration was resolved for ", c_.world,
              " rank(s), but this run has ", comm_.world(), " (run_config's world)");
  if (comm_.world() > 1) {
    check_same_configuration();
    // One GPU per rank: the rank's place on its machine picks it.
    if (c_.device.is_cuda()) c_.device = Device::cuda(comm_.local_rank());
  }
  // Every rank has resolved its data by now (the check above is a collective): what a killed process left half
  // written in the run directory and its data goes (the last checkpoint's own temporaries go as it saves).
  if (comm_.rank() == 0) {
    for (const char* name : {"config.json", "log.jsonl", "report.html"}) io::remove_stale_temporaries_of(c_.out / name);
    remove_stale_tokenizing(c_.out);
  }
  held_before_ = c_.device.is_cuda() && !cuda_available() ? 0 : ledger(c_.device).total().live_held;
  require_usable(c_.device);
  // Each dimension a given model flag sets (a preset sets them all) against the model's (the --init file's, or a
  // resumed --init run's checkpoint's); one that differs refuses the run, naming the flag and the model's value.
  // Dimensions no given flag sets are the model's.
  auto check_model_flags = [&](const models::GPT2Config& loaded, const std::string& holder, const char* whose,
                               const std::string& advice) {
    const auto given = [&](const char* name) {
      return std::find(c_.model_flags_with_init.begin(), c_.model_flags_with_init.end(), name) !=
             c_.model_flags_with_init.end();
    };
    struct Dimension {
      const char* flag;
      int64_t models::GPT2Config::*member;
    };
    std::string asked;
    for (const Dimension d :
         {Dimension{"layers", &models::GPT2Config::n_layer}, Dimension{"heads", &models::GPT2Config::n_head},
          Dimension{"width", &models::GPT2Config::n_embd}, Dimension{"block", &models::GPT2Config::block_size}}) {
      if ((!given(d.flag) && !given("model")) || c_.model.*d.member == loaded.*d.member) continue;
      asked += cat(asked.empty() ? "" : ", ",
                   given(d.flag) ? cat("--", d.flag, " ")
                                 : cat("--model ", c_.flags.value("model", std::string()), "'s ", d.flag, " "),
                   c_.model.*d.member, " (", whose, "'s: ", loaded.*d.member, ")");
    }
    if (!asked.empty())
      throw FlagError(cat(holder, " holds a GPT-2 ", loaded.str(), "; the model flags given with it ask for ", asked,
                          ": ", advice));
  };
  if (c_.model_of_checkpoint) {
    // Resumed, started with --init: the checkpoint's model, whose weights resume() loads.
    check_model_flags(*c_.model_of_checkpoint, "--resume: the checkpoint", "the checkpoint",
                      "a resumed run keeps its model (leave them out; to train another model from these weights, start "
                      "a new run with --init)");
    models::GPT2Config m = *c_.model_of_checkpoint;
    m.dropout = c_.model.dropout;
    m.padded_vocab_size = models::padded_vocab(m.vocab_size, c_.vocab_multiple);
    c_.model = m;
    model_ = std::make_unique<models::GPT2>(
        c_.model, models::GPT2Options{.device = c_.device, .dtype = c_.dtype, .seed = c_.seed});
  } else if (!c_.init.empty()) {
    MemoryScope scope(Category::parameter, "init");
    model_ = load_model_file(c_.init, c_.device);
    models::GPT2Config loaded = model_->config();
    check_model_flags(loaded, cat("--init '", c_.init, "'"), "the file", "leave them out to train the file's model");
    if (c_.seq > loaded.block_size)
      throw FlagError(cat("--seq ", c_.seq, " exceeds the block size ", loaded.block_size, " of the model in --init '",
                          c_.init, "'"));
    check_attention_fits(c_.batch, loaded.n_head, c_.seq);  // the file's heads, which may not be the flags'
    loaded.dropout = c_.model.dropout;
    loaded.padded_vocab_size = models::padded_vocab(loaded.vocab_size, c_.vocab_multiple);
    c_.model = loaded;
    model_ = converted_model(std::move(model_), c_.model, c_.dtype, c_.init);
  } else {
    model_ = std::make_unique<models::GPT2>(
        c_.model, models::GPT2Options{.device = c_.device, .dtype = c_.dtype, .seed = c_.seed});
  }
  optimizer_ = c_.optimizer.make(model_->parameters());
  if (c_.zero == ZeroStage::zero1 && comm_.world() > 1) optimizer_->shard(comm_);
  const double peak = c_.optimizer.lr();
  schedule_ = c_.schedule == "constant"
                  ? optim::LrSchedule::constant(peak)
                  : optim::LrSchedule::warmup_cosine({.peak_lr = peak, .warmup_steps = c_.warmup, .total_steps = c_.steps,
                                                      .min_lr = peak * c_.min_lr_ratio});
  const int32_t vocab = int32_t(c_.model.vocab_size);
  data::ShardSet train = data::ShardSet::open(c_.data.train_pattern, {.vocab_limit = vocab});
  data::ShardSet val = data::ShardSet::open(c_.data.val_pattern, {.vocab_limit = vocab});
  // Each rank reads its own B x T slice of every window: N ranks see what one process sees over N micro-batches.
  train_loader_ = std::make_unique<data::DataLoader>(
      std::move(train), data::LoaderConfig{.batch = c_.batch, .seq_len = c_.seq, .rank = comm_.rank(),
                                           .world = comm_.world(),
                                           .order = c_.shuffle ? data::LoaderOrder::shuffled : data::LoaderOrder::sequential,
                                           .seed = c_.seed});
  // Validation walks the batches one process would; the ranks share them out (evaluate()).
  val_loader_ = std::make_unique<data::DataLoader>(std::move(val), data::LoaderConfig{.batch = c_.batch, .seq_len = c_.seq});
  if (comm_.world() > 1) check_same_data();
  // Started by mpirun, even as one rank: the collectives run (one GPU then exercises NCCL's path).
  if (comm_.world() > 1 || dist::launched_by_mpi())
    parallel_ = std::make_unique<DataParallel>(comm_, c_.zero, *optimizer_, model_->parameters(), c_.reduce_dtype);
}

void check_same_flags(dist::Communicator& ranks, nlohmann::json flags) {
  // Rank 0's flags to every rank, each compares them with its own: a rank started differently would train another
  // model, or stall the others in a collective of another size.
  flags.erase("out");
  check_same_on_every_rank(ranks, flags, "--", "were started with different configurations",
                           "Start every rank with the same flags.");
}

void check_before_data(dist::Communicator& ranks, const Flags& flags) {
  if (ranks.world() > 1)
    check_same_flags(ranks, nlohmann::json(flags.resolved()));  // ranks of different --text would share OUT/data
  else
    require_usable(device_flag(flags));  // a missing GPU before tokenizing
}

void Trainer::check_same_configuration() { check_same_flags(comm_, c_.flags); }

void Trainer::check_same_data() {
  // The same flags may name different files (a relative path, a stale copy on one machine): each rank's data as
  // the loader records it for a checkpoint (its tokens, their shards' sizes, a sample of its tokens).
  auto identity = [](const data::DataLoader& l) {
    const data::LoaderPosition p = l.position();
    char hashes[64];
    std::snprintf(hashes, sizeof hashes, "%016llx/%016llx", (unsigned long long)p.data_sizes_hash,
                  (unsigned long long)p.data_sample_hash);
    return cat(p.data_tokens, " tokens in ", p.num_shards, " shard(s), sizes/sampled-tokens hashes ", hashes);
  };
  check_same_on_every_rank(
      comm_, {{"training data", identity(*train_loader_)}, {"validation data", identity(*val_loader_)}}, "",
      "read different data", "Give every rank the same data (on a machine of its own, a copy of rank 0's files).");
}

void check_same_on_every_rank(dist::Communicator& ranks, const nlohmann::json& mine_json, const char* key_prefix,
                              const std::string& what, const std::string& advice) {
  std::string mine = mine_json.dump();
  int64_t size = int64_t(mine.size());
  ranks.broadcast(&size, sizeof size, 0);
  std::string lead(size_t(size), '\0');
  if (ranks.rank() == 0) lead = mine;
  ranks.broadcast(lead.data(), size, 0);
  const nlohmann::json theirs = nlohmann::json::parse(lead, nullptr, false);
  std::string differences;
  for (const auto& [k, v] : mine_json.items())
    if (!theirs.contains(k) || theirs[k] != v)
      differences +=
          cat(" ", key_prefix, k, " ", v.dump(), " (rank 0: ", theirs.contains(k) ? theirs[k].dump() : "unset", ")");
  // Which ranks differ; every rank then names the first one's entries (rank 0 reports for the job: main's fail_with).
  std::vector<double> differs(size_t(ranks.world()), 0.0);
  differs[size_t(ranks.rank())] = differences.empty() ? 0 : 1;
  ranks.all_reduce_sum(differs.data(), ranks.world());
  const auto first = std::find(differs.begin(), differs.end(), 1.0);
  if (first == differs.end()) return;
  const int first_rank = int(first - differs.begin());
  int64_t first_size = int64_t(differences.size());
  ranks.broadcast(&first_size, sizeof first_size, first_rank);
  differences.resize(size_t(first_size));
  ranks.broadcast(differences.data(), first_size, first_rank);
  fail("the ranks of this run ", what, " (", int(std::count(differs.begin(), differs.end(), 1.0)), " of ",
       ranks.world(), " differ from rank 0); rank ", first_rank, " has", differences, ". ", advice);
}

Trainer::~Trainer() = default;

StepShape Trainer::step_shape() const {
  return {.batch = c_.batch,
          .seq = c_.seq,
          .accumulation = c_.accumulation,
          .grad_clip = c_.grad_clip,
          .dtype = c_.dtype,
          .parallel = {.world = comm_.world(),
                       .rank = comm_.rank(),
                       .zero = c_.zero,
                       .reduce_dtype = c_.reduce_dtype,
                       .launched = parallel_ != nullptr},
          .device = c_.device.kind,
          .inspected = inspected(start_step_ + 1)};
}

MemoryFigures Trainer::predict_memory() const { return predict_step_memory(c_.model, c_.optimizer, step_shape()); }

double Trainer::evaluate(int64_t batches) {
  NoGradGuard no_grad;
  model_->eval();
  val_loader_->reset();
  batches = std::min(batches, val_loader_->batches_per_epoch());
  double sum = rank_loss_sum(*model_, *val_loader_, batches, comm_.rank(), comm_.world());  // the ranks take turns
  model_->train();
  comm_.all_reduce_sum(&sum, 1);
  return sum / double(batches);
}

std::string Trainer::sample(const std::string& prompt, int64_t tokens, uint64_t seed) {
  static std::optional<data::Tokenizer> tok;
  if (!tok) tok.emplace(data::Tokenizer::load());
  NoGradGuard no_grad;
  model_->eval();
  // Back to training mode however this returns (a sample that fails is reported and the run goes on).
  struct TrainModeAgain {
    models::GPT2& model;
    ~TrainModeAgain() { model.train(); }
  } train_mode_again{*model_};
  std::vector<int32_t> ids = prompt.empty() ? std::vector<int32_t>{data::Tokenizer::kEndOfText}
                                            : tok->encode(prompt, data::SpecialTokens::allowed);
  int64_t room = c_.model.block_size - int64_t(ids.size());
  MemoryScope scope(Category::other, "sample");
  auto out = models::generate(*model_, {ids},
                              {.max_new_tokens = std::max<int64_t>(0, std::min(tokens, room)),
                               .temperature = 1.0,
                               .top_k = 40,
                               .seed = seed,
                               .vocab_limit = tok->vocab_size()});
  std::vector<int32_t> all = ids;
  all.insert(all.end(), out[0].begin(), out[0].end());
  if (prompt.empty()) all.erase(all.begin());
  return data::to_valid_utf8(tok->decode(all));  // printed: bytes that are no UTF-8 become U+FFFD
}

// One optimizer step, top to bottom: learning rate -> micro-batches, forward, loss, backward -> clip -> optimizer
// step (optimizer_step) -> the ledger against the plan (first step) -> the log.
StepRecord Trainer::train_step(int64_t step) {
  StepRecord r{.step = step, .lr = schedule_->lr(step - 1)};
  optimizer_->set_lr_factor(schedule_->factor(step - 1));
  const bool inspect = inspected(step);
  optimizer_->set_inspect(inspect ? optim::Inspect::summary : optim::Inspect::off);
  const bool first = step == start_step_ + 1;
  Ledger& ledger_now = ledger(c_.device);
  if (first) ledger_now.reset_peaks();

  const auto t0 = std::chrono::steady_clock::now();
  const dist::Traffic sent_before = comm_.traffic();
  StepOutcome o;
  {
    // Fault injection: this step's CPU allocations fail as a refused malloc would.
    const bool refuse = c_.device.is_cpu() && faults_.oom_at_step == step;
    CpuMemoryLimitScope oom(refuse ? std::optional(ledger_now.total().live_held) : std::nullopt);
    LoaderBatches batches(*train_loader_, c_.batch, c_.seq, c_.device, model_->config().vocab_size);
    o = optimizer_step(*model_, *optimizer_, batches,
                       {.accumulation = c_.accumulation, .grad_clip = c_.grad_clip,
                        .poison_loss = faults_.nan_at_step == step, .parallel = parallel_.get(),
                        .stop_requested = &g_stop_requested});
  }
  r.ms = seconds_since(t0) * 1000;
  r.loss = o.loss;
  r.grad_norm = o.grad_norm;
  r.skipped = !o.finite;
  r.stop = o.stop;
  // The whole job's rate: every rank trains as many tokens per step as this one.
  r.tokens_per_s = double(c_.batch * c_.seq * c_.accumulation * comm_.world()) / (r.ms / 1000);

  if (first) {
    const MemoryFigures m = measure(ledger_now, *optimizer_);
    std::printf("after step %lld, measured beside predicted:\n%s\n", (long long)step, format_plan(predicted_, &m).c_str());
    if (log_) log_->memory(step, predicted_, m);
    if (c_.device.is_cuda()) note_cuda_paths_taken(c_.dtype);
  }
  if (first && parallel_ && log_) {
    // What the step handed to the collectives beside the plan: a skipped step neither updates nor gathers.
    dist::Traffic predicted = parallel_->reduce_traffic();
    if (!r.skipped) predicted += parallel_->gather_traffic() + optimizer_->traffic_per_step();
    log_->communication(step, predicted, comm_.traffic() - sent_before);
  }
  if (log_) log_->step(r);
  if (inspect) {
    // A skipped step ran no optimizer: its internals would be the last step's again.
    if (log_ && !r.skipped) log_->optimizer_internals(step, optimizer_->internals());
    optimizer_->set_inspect(optim::Inspect::off);
  }
  return r;
}

fs::path Trainer::save(int64_t step) {
  train::CheckpointContent c;
  for (const auto& [name, t] : model_->named_parameters()) c.model.emplace_back(name, t);
  // Every rank takes part (ZeRO 1: the state's parts are gathered); rank 0 alone writes the checkpoint, in the same
  // format at any world size.
  optim::OptimizerState st = optimizer_->state_dict();
  // The other ranks wait for rank 0's write and learn how it went: nothing they do next (an error that ends the job,
  // the next step) can cut it short, and a write that failed stops every rank, not rank 0 alone.
  int32_t written = 0;
  if (comm_.rank() != 0) {
    comm_.broadcast(&written, sizeof written, 0);
    if (written != 1) {
      // Rank 0 prints why and ends the job (MPI_Abort): wait for that, so that its error is the one the job shows;
      // should the job still be running after a while, end it from here.
      for (int i = 0; i < 100; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      fail("rank 0 could not write the checkpoint of step ", step, " into '", c_.out.string(),
           "' (its error says why); earlier checkpoints are untouched");
    }
    last_saved_ = c_.out / train::checkpoint_name(step);
    last_saved_step_ = step;
    return last_saved_;
  }
  fs::path path;
  std::exception_ptr error;
  try {
    path = write_checkpoint(step, std::move(c), st);
    written = 1;
  } catch (...) {
    error = std::current_exception();
  }
  comm_.broadcast(&written, sizeof written, 0);
  if (error) std::rethrow_exception(error);
  last_saved_ = path;
  last_saved_step_ = step;
  return path;
}

// Rank 0's part of save(): the run's state beside the model and the optimizer's state, written atomically.
fs::path Trainer::write_checkpoint(int64_t step, train::CheckpointContent c, const optim::OptimizerState& st) {
  if (log_) log_->sync();  // the records of the steps it holds reach the disk first
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
  rs.world = comm_.world();
  rs.zero = c_.zero == ZeroStage::zero1 ? 1 : 0;
  rs.flags = c_.flags;
  c.state = train::to_json(rs);
  return train::save_checkpoint(c_.out, step, c, {.keep_last = int(c_.keep_last), .keep_also = good_checkpoint_});
}

void Trainer::resume(const fs::path& dir_in) {
  fs::path dir = dir_in;
  std::vector<fs::path> older;  // a run directory's other checkpoints, named when its latest does not load
  std::string incomplete;       // later step directories without a manifest (a save cut short), said
  if (!fs::exists(dir / "manifest.json")) {
    std::vector<fs::path> all = train::checkpoints_newest_first(dir);
    TALLY_CHECK(!all.empty(), "--resume '", dir.string(), "': no complete checkpoint there");
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (train::checkpoint_step(e.path()) > train::checkpoint_step(all.front()) &&
          !fs::exists(e.path() / "manifest.json"))
        incomplete += cat(incomplete.empty() ? "" : ", ", e.path().filename().string());
    dir = all.front();
    older.assign(all.begin() + 1, all.end());
  }
  train::CheckpointContent c;
  try {
    c = train::load_checkpoint(dir);
  } catch (const Error& e) {
    if (older.empty()) throw;
    fail(e.what(), "\nThe run's earlier checkpoint ", older.front().string(), " may be intact: move the damaged ",
         dir.filename().string(), " out of ", dir_in.string(), ", then continue from the earlier one with --resume ",
         dir_in.string(), " (its latest checkpoint then)");
  }
  const train::RunState rs = train::run_state_from_json(c.state, (dir / "state.json").string());
  // The vocabulary's padding may differ (--no-vocab-pad given now): the optimizer state never holds padding rows.
  models::GPT2Config saved_model = rs.model;
  saved_model.padded_vocab_size = c_.model.padded_vocab_size;
  TALLY_CHECK(train::model_config_json(saved_model) == train::model_config_json(c_.model), "--resume '", dir.string(),
              "': the checkpoint's model ", train::model_config_json(rs.model).dump(), " differs from this run's ",
              train::model_config_json(c_.model).dump(),
              " (a resumed run keeps its model: leave out the model flags given now, or, to train another model "
              "from these weights, start a new run with --init; given none, the checkpoint's state.json and the "
              "run's saved flags disagree: one of them changed since it was saved)");
  TALLY_CHECK(rs.optimizer_kind == optimizer_->kind(), "--resume '", dir.string(),
              "': the checkpoint was trained with --optimizer ", rs.optimizer_kind, ", this run has --optimizer ",
              optimizer_->kind(), " (resume with the same --optimizer; to go on with ", optimizer_->kind(),
              " from these weights, start a new run with --init ", dir.string(), ")");
  TALLY_CHECK(rs.dtype == c_.dtype, "--resume '", dir.string(), "': the checkpoint was trained with --dtype ",
              dtype_name(rs.dtype), ", this run has --dtype ", dtype_name(c_.dtype), " (resume with the same --dtype)");
  // The saved place in the data names slices of B x T tokens: another --batch or --seq cannot continue it.
  TALLY_CHECK(rs.loader.batch == c_.batch && rs.loader.seq_len == c_.seq, "--resume '", dir.string(),
              "': the checkpoint's place in the data is in batches of --batch ", rs.loader.batch, " x --seq ",
              rs.loader.seq_len, " per rank, this run has --batch ", c_.batch, " --seq ", c_.seq,
              " (resume with those; to go on with other batches from these "
              "weights, start a new run with --init ",
              dir.string(), ")");
  const std::string model_file = (dir / "model.safetensors").string();
  std::set<std::string> needed;
  for (const auto& [name, t] : model_->named_parameters()) {
    model_->load_parameter(name, io::find_tensor(c.model, name, model_file), model_file);
    needed.insert(name);
  }
  // A tensor the model has no place for (a layer more than state.json says): the checkpoint's files disagree.
  io::require_no_other_tensors(c.model, needed, cat("--resume '", dir.string(), "': "), model_file,
                               cat("the model configuration in '", (dir / "state.json").string(), "'"));
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
  resumed_from_ = dir;
  last_saved_ = dir;  // good once the first step after it trains finitely
  last_saved_step_ = rs.step;
  resume_note_ = cat("resumed from ", dir.string(), " at step ", start_step_,
                     incomplete.empty() ? ""
                                        : cat(" (", incomplete,
                                              " there has no manifest.json: a save cut short, "
                                              "not a checkpoint; replaced when its step is saved again)"),
                     rs.world == comm_.world() ? ""
                                               : cat(" (saved by ", rs.world, " rank(s), continued by ", comm_.world(),
                                                     ": the data resumes exactly where it stopped)"));
}

void refuse_new_run_into(const fs::path& out) {
  // A new run (or a resumed one continuing elsewhere than its own directory) into a directory that holds another
  // would overwrite its log and configuration and mix the two runs' checkpoints (--keep-last would prune the older
  // run's, a later --resume pick up whichever step is higher).
  const std::optional<fs::path> earlier = train::latest_checkpoint(out);
  const bool logged = fs::exists(out / "log.jsonl");
  if (earlier)
    fail("'", out.string(), "' already holds a run (its checkpoint ", earlier->filename().string(),
         "): continue it with --resume ", out.string(), ", or train into another --out; nothing was changed");
  TALLY_CHECK(!logged, "'", out.string(), "' already holds a run (its log.jsonl, and no checkpoint to continue ",
              "from): move that log away to start a run here, or train into another --out; nothing was changed");
  // Files a run writes that are there and are not a run's (a checkpoint's directory, a Hugging Face export's
  // config.json, a page of someone's own): the run would overwrite them.
  if (fs::exists(out / "manifest.json"))
    fail("'", out.string(), "' is a checkpoint directory (its manifest.json): train into another --out (to continue ",
         "its run: --resume ", out.string(), "); nothing was changed");
  std::error_code ec;
  if (fs::exists(out / "config.json", ec)) {
    // A run refused before its first step (out of memory, say) leaves its config.json: that one is the run's own.
    const nlohmann::json j = nlohmann::json::parse(io::read_file_text(out / "config.json"), nullptr, false);
    const bool runs_own = j.is_object() && j.contains("flags") && j["flags"].is_object() && j.contains("model_config");
    if (!runs_own)
      fail("'", out.string(), "' holds a config.json that no tally run wrote",
           fs::exists(out / "model.safetensors") ? " (a model's)" : "",
           ": a run writes its own there; train into another --out, or move it away; nothing was changed");
  }
  auto page_head = [](const fs::path& file) {  // a tally page names itself in its <head>
    std::ifstream in(file, std::ios::binary);
    std::string head(4096, '\0');
    in.read(head.data(), std::streamsize(head.size()));
    head.resize(size_t(in.gcount()));
    return head;
  };
  if (fs::exists(out / "report.html", ec) &&
      page_head(out / "report.html").find("<title>tally report:") == std::string::npos)
    fail("'", out.string(), "' holds a report.html that tally did not write: a run writes its own there; train into ",
         "another --out, or move it away; nothing was changed");
}

bool Trainer::resumed_in_own_directory() const {
  std::error_code ec;
  return !resumed_from_.empty() && fs::equivalent(resumed_from_.parent_path(), c_.out, ec);
}

std::string Trainer::continue_command() const {
  return c_.continue_with.empty() ? cat("--resume ", c_.out.string()) : c_.continue_with;
}

void Trainer::check_before_run() const {
  if (start_step_ >= c_.steps)
    throw FlagError(cat("--resume '", resumed_from_.string(), "': the checkpoint is at step ", start_step_,
                        " and this run has --steps ", c_.steps, ": nothing to train (give --steps above ", start_step_,
                        ")"));
  const bool own_directory = resumed_in_own_directory();
  if (!own_directory && comm_.rank() == 0) refuse_new_run_into(c_.out);
  if (own_directory && comm_.rank() == 0) {
    // Resumed from an earlier checkpoint than the run's latest: continuing here would put a second continuation's
    // checkpoints among the first one's (--keep-last would prune the new ones, a later --resume take the old latest).
    std::vector<std::string> later;
    for (const fs::path& p : train::checkpoints_newest_first(c_.out))
      if (train::checkpoint_step(p) > start_step_) later.insert(later.begin(), p.filename().string());
    if (!later.empty())
      fail("--resume '", resumed_from_.string(), "': the run went on past step ", start_step_, " (its checkpoint",
           later.size() > 1 ? "s " : " ", later.front(), later.size() > 1 ? cat(" to ", later.back()) : "",
           "); continuing from this one in '", c_.out.string(), "' would mix the two continuations. Continue from ",
           "the latest with --resume ", c_.out.string(), ", or from this one into another --out; nothing was changed");
  }
}

RunSummary Trainer::run() {
  check_before_run();
  RunSummary s;
  faults_ = {.nan_at_step = faults::nan_at_step(), .oom_at_step = faults::oom_at_step()};
  if (faults_.oom_at_step > 0 && !c_.device.is_cpu())
    std::printf("TALLY_FAULT_OOM_AT_STEP: ignored on %s (it fails the CPU's allocations)\n", c_.device.str().c_str());
  if (!resume_note_.empty()) std::printf("%s\n", resume_note_.c_str());
  std::printf("model: GPT-2 %s, %s parameters | optimizer: %s lr %.3g wd %.3g | data: %s\n",
              c_.model.str().c_str(), format_count(model_->num_parameters()).c_str(), c_.optimizer.name.c_str(),
              c_.optimizer.lr(), c_.optimizer.weight_decay(), c_.data.description.c_str());
  const std::string waiting = idle_wait_settings();  // how idle threads wait
  std::printf(
      "batch %lld x %lld tokens, %lld micro-batch(es) per step, %lld steps, %s schedule (warmup %lld), %d threads "
      "(%s)\n",
      (long long)c_.batch, (long long)c_.seq, (long long)c_.accumulation, (long long)c_.steps, c_.schedule.c_str(),
      (long long)c_.warmup, omp_get_max_threads(), waiting.empty() ? "OMP_WAIT_POLICY unset" : waiting.c_str());
  if (c_.device.is_cuda() && c_.dtype == DType::f32)  // what --dtype f32 computes in, said (PyTorch's allow_tf32)
    std::printf("f32 matrix products: %s\n", c_.flags.value("f32-matmul", "tf32") == "strict"
                                                 ? "full f32 (--f32-matmul strict)"
                                                 : "on TF32 tensor cores (--f32-matmul strict for full f32)");
  if (const int64_t held = val_loader_->batches_per_epoch(); c_.val_batches > held)  // evaluate() takes what there is
    std::printf("validation: %lld batches, not --val-batches %lld: the validation data holds %lld of %lld x %lld\n",
                (long long)held, (long long)c_.val_batches, (long long)held, (long long)c_.batch, (long long)c_.seq);
  if (c_.log_optim > 0 && (start_step_ / c_.log_optim + 1) * c_.log_optim > c_.steps)  // the steps it divides
    std::printf("optimizer internals: none will be logged: no step up to %lld is a multiple of --log-optim %lld\n",
                (long long)c_.steps, (long long)c_.log_optim);
  if (c_.sample_tokens > c_.model.block_size - 1)  // a sample starts from one token and the model sees a block
    std::printf("samples: %lld tokens each, not --sample-tokens %lld: the model's block holds %lld\n",
                (long long)(c_.model.block_size - 1), (long long)c_.sample_tokens, (long long)c_.model.block_size);
  {
    // Atomic: a resume reads the run's flags back from it, so a kill must never leave it half written.
    nlohmann::json cfg = {
        {"flags", c_.flags},
        {"model_config", train::model_config_json(c_.model)},
        {"world", c_.world},
        {"threads", omp_get_max_threads()}};  // what --threads 0 came to (attention's CPU scratch is per thread)
    if (comm_.rank() == 0) io::write_file_atomic(c_.out / "config.json", cfg.dump(2) + "\n");
  }
  // The exact plan of one step (a meta device planning for this run's device: the same tensors, kernels' scratch
  // and cuBLAS's workspace), checked against the budget before anything more is allocated. The budget is computed
  // once: the check, the CPU's ceiling (TALLY_MEMORY_LIMIT) and the advice of an error all use it.
  predicted_ = predict_memory();
  std::printf("\n%s\n", format_plan(predicted_, nullptr).c_str());
  // The run's peak: an inspected step's (its statistics, CAME's gathered factors) when a later step is one.
  StepShape peak_shape = step_shape();
  MemoryFigures peak = predicted_;
  const int64_t first_inspected = c_.log_optim > 0 ? (start_step_ / c_.log_optim + 1) * c_.log_optim : -1;
  if (!peak_shape.inspected && first_inspected > 0 && first_inspected <= c_.steps) {
    peak_shape.inspected = true;
    peak = predict_step_memory(c_.model, c_.optimizer, peak_shape);
  }
  const MemoryBudget budget = memory_budget(c_.device, run_holds(), held_before_);
  const std::string advice_of_failure = "Nothing of the failed step was saved; earlier checkpoints are untouched.";
  if (budget.bytes >= 0 && peak.total_held > budget.bytes)
    throw OutOfMemory(cat("out of memory: refusing to start training on ", c_.device.str(), ". ",
                          memory_advice(c_.model, c_.optimizer, peak_shape, peak, budget),
                          "Nothing was trained and no checkpoint was written."));
  CpuMemoryLimitScope ceiling(budget.enforced ? std::optional(budget.bytes + held_before_) : std::nullopt);
  // A stop requested while the run was set up (loading, planning): no step is trained and no log is started, so the
  // same command starts the run again (only config.json was written, as by a run refused for memory; a resumed run's
  // checkpoints and log stay as they were). The ranks agree first: one stopping alone would leave the others waiting
  // in the first step's collectives.
  double stop = g_stop_requested.load() ? 1.0 : 0.0;
  if (parallel_) comm_.all_reduce_sum(&stop, 1);
  if (stop > 0) {
    s.interrupted = s.stopped_before_training = true;
    s.steps_done = start_step_;
    s.last_checkpoint = resumed_from_;
    // Continued with --resume OUT only when the checkpoint is OUT's own (a run resumed into another --out has none).
    if (comm_.rank() == 0)
      std::printf(
          "stopped on request before step %lld: nothing was trained or saved%s\n", (long long)start_step_ + 1,
          resumed_in_own_directory()
              ? cat(" (checkpoint ", resumed_from_.string(), " stays; continue with ", continue_command(), ")").c_str()
              : " (the same command starts the run again)");
    return s;
  }
  if (comm_.rank() == 0) {  // rank 0 alone logs
    if (start_step_ > 0) {
      if (const fs::path side = set_aside_records_after(c_.out / "log.jsonl", start_step_); !side.empty())
        std::printf(
            "log.jsonl: the records after step %lld (trained again now), or a line cut short, were moved to "
            "%s\n",
            (long long)start_step_, side.c_str());
      // Steps the checkpoint holds but the log does not (a log edited or deleted, or lost to a crash of the machine
      // between a record and its sync): said, not filled in; the report's curves have a gap there.
      if (const int64_t recorded = last_step_recorded(c_.out / "log.jsonl");
          resumed_in_own_directory() && recorded < start_step_)
        std::printf(
            "log.jsonl: no record of step%s %s: %s, and the checkpoint holds step %lld (those steps were "
            "trained and saved; their records were lost)\n",
            recorded + 1 < start_step_ ? "s" : "",
            recorded + 1 < start_step_ ? cat(recorded + 1, "-", start_step_).c_str()
                                       : std::to_string(start_step_).c_str(),
            recorded > 0 ? cat("its training records end at step ", recorded).c_str() : "it holds no training record",
            (long long)start_step_);
    }
    log_ = std::make_unique<RunLog>(c_.out / "log.jsonl", start_step_ > 0 ? LogStart::append : LogStart::fresh);
  }
  try {
    run_steps(s);
    if (!s.stopped.empty()) throw TrainingStopped(s.stopped, s);
  } catch (const std::bad_alloc&) {
    throw OutOfMemory(cat("out of memory during training (std::bad_alloc). ",
                          memory_advice(c_.model, c_.optimizer, peak_shape, peak, budget), advice_of_failure));
  } catch (const OutOfMemory& e) {
    if (budget.bytes < 0) throw;
    throw OutOfMemory(
        cat(e.what(), "\n\n", memory_advice(c_.model, c_.optimizer, peak_shape, peak, budget), advice_of_failure));
  }
  return s;
}

namespace {

// A loss for the progress line: four decimals as the training loss has, significant digits below 0.001.
std::string format_loss(double v) {
  char text[32];
  std::snprintf(text, sizeof text, std::fabs(v) >= 1e-3 ? "%.4f" : "%.4g", v);
  return text;
}

// The progress line: rewritten in place on a terminal, every `every` steps (and on demand) otherwise. Under mpirun,
// stdout is a pseudo-terminal whatever the job's output goes to (a file, a pipe): lines, as for a file.
class ProgressLine {
 public:
  explicit ProgressLine(int64_t every) : every_(every), tty_(::isatty(STDOUT_FILENO) && !dist::launched_by_mpi()) {}
  bool tty() const { return tty_; }
  // Something else is printed next: start it on a line of its own.
  const char* break_line() const { return tty_ ? "\n" : ""; }
  void show(int64_t step, const std::string& line, bool force) {
    if (tty_) {
      std::printf("\r%-*s", int(std::max(last_.size(), line.size())), line.c_str());
    } else if (force || step % every_ == 0) {
      std::printf("%s\n", line.c_str());
    }
    std::fflush(stdout);
    last_ = line;
  }
  void finish() const {
    if (tty_) std::printf("\n");
  }

 private:
  int64_t every_;
  bool tty_;
  std::string last_;
};

}  // namespace

void Trainer::run_steps(RunSummary& s) {
  ProgressLine progress(c_.log_every);
  optimizer_->init_state();
  const auto t_start = std::chrono::steady_clock::now();
  double val = NAN, ms_sum = 0, first_ms = NAN;
  int64_t ms_count = 0;
  for (int64_t step = start_step_ + 1; step <= c_.steps; ++step) {
    const bool first = step == start_step_ + 1, last = step == c_.steps;
    const StepRecord r = train_step(step);
    // A checkpoint whose next step trained finitely holds a good model: kept whatever --keep-last prunes, and named
    // if the run diverges later (a model can be finite and still overflow the next forward).
    if (!r.skipped && last_saved_step_ == step - 1 && good_checkpoint_ != last_saved_) {
      good_checkpoint_ = last_saved_;
      // The good one kept before it (the newest was not yet known good) goes, as --keep-last says.
      if (comm_.rank() == 0) train::prune_checkpoints(c_.out, int(c_.keep_last), good_checkpoint_);
    }
    if (!first) {  // the first step pays for allocations and caches: not counted in ms/step
      ms_sum += r.ms;
      ++ms_count;
    } else {
      first_ms = r.ms;  // ms/step of a session of one step (marked so)
    }
    if (r.skipped) {
      ++skipped_total_;
      ++skipped_in_row_;
      std::printf("%sstep %lld: non-finite loss (%g) or gradient norm (%g): skipped, optimizer state untouched (%lld in a row)\n",
                  progress.break_line(), (long long)step, r.loss, r.grad_norm, (long long)skipped_in_row_);
      if (skipped_in_row_ >= c_.max_bad_steps) {
        s.steps_done = step;
        s.last_checkpoint = save(step);
        s.stopped = cat(
            "training stopped: ", skipped_in_row_, " non-finite steps in a row (limit --max-bad-steps ",
            c_.max_bad_steps, "). The model they started from and its optimizer state are saved in ",
            s.last_checkpoint.string(), "; ",
            good_checkpoint_.empty()
                ? std::string("no checkpoint of this run was followed by a finite step")
                : cat("the newest checkpoint followed by a finite step is ", good_checkpoint_.string(),
                      " (continue from it into another directory: --resume ", good_checkpoint_.string(), " --out NEW)"),
            ". Try a lower --lr, a --grad-clip, or more --warmup.");
        break;
      }
    } else {
      skipped_in_row_ = 0;
      s.train_curve.emplace_back(step, r.loss);
      s.final_train_loss = r.loss;
    }
    const bool evaluating = (c_.eval_every > 0 && step % c_.eval_every == 0) || last;
    if (evaluating) {
      val = evaluate(c_.val_batches);
      if (log_) log_->validation(step, val);
      s.val_curve.emplace_back(step, val);
    }
    const double eta = seconds_since(t_start) / double(step - start_step_) * double(c_.steps - step);
    const Usage u = ledger(c_.device).total();
    char line[256];
    std::snprintf(line, sizeof line,
                  "step %lld/%lld | loss %.4f | val %s | lr %.2e | %.0f tok/s | ETA %s | mem %s / peak %s",
                  (long long)step, (long long)c_.steps, r.loss, std::isfinite(val) ? format_loss(val).c_str() : "-",
                  r.lr, r.tokens_per_s, duration_str(eta).c_str(), format_bytes_human(u.live_held).c_str(),
                  format_bytes_human(u.peak_held).c_str());
    progress.show(step, line, first || last || evaluating);
    if (c_.sample_every > 0 && step % c_.sample_every == 0 && !last && comm_.rank() == 0) {
      // A sample that cannot be drawn (a diverged model's logits) is reported; the run goes on to save this step.
      std::string text;
      try {
        text = sample("", c_.sample_tokens, c_.seed + uint64_t(step));
      } catch (const Error& e) {
        text = cat("(no sample: ", e.what(), ")");
      }
      std::printf("%s--- sample at step %lld ---\n%s\n---\n", progress.break_line(), (long long)step, text.c_str());
    }
    // Not amid non-finite steps: the model has not changed since the streak began, and a save would only push
    // older checkpoints out.
    if ((c_.save_every > 0 && step % c_.save_every == 0 && !r.skipped) || last) s.last_checkpoint = save(step);
    s.steps_done = step;
    // One process stops at a request made by now; ranks at one some rank had when the step's loss was summed (a rank
    // that stopped alone would leave the others waiting in the next step's collectives).
    if ((parallel_ ? r.stop : g_stop_requested.load()) && !last) {
      s.last_checkpoint = save(step);
      s.interrupted = true;
      std::printf("%sstopped at step %lld on request; checkpoint %s (continue with %s)\n", progress.break_line(),
                  (long long)step, s.last_checkpoint.c_str(), continue_command().c_str());
      break;
    }
  }
  progress.finish();
  // The final model's validation loss is finite: its checkpoint is good, and --keep-last alone decides what stays.
  if (!s.interrupted && s.stopped.empty() && s.steps_done == c_.steps && std::isfinite(val) && comm_.rank() == 0)
    train::prune_checkpoints(c_.out, int(c_.keep_last), {});
  s.final_val_loss = val;
  s.ms_per_step = ms_count ? ms_sum / double(ms_count) : first_ms;
  s.ms_from_first_step = ms_count == 0;
  s.optimizer_state_bytes = optimizer_->total_state_bytes();
  s.skipped_steps = skipped_total_;
}

}  // namespace tally::train
