// The smaller subcommands around training: `memory` (the exact plan without allocating), `inspect` (optimizer
// state in a checkpoint), `eval` (loss of a model on shards), `export` (llm.c, safetensors or a Hugging Face model
// directory), `sample`.
#include <omp.h>

#include <cmath>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string_view>

#include "core/autograd/node.h"
#include "core/dist/communicator.h"
#include "core/io/npy.h"
#include "core/ops.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "models/checkpoint_llmc.h"
#include "models/generate.h"
#include "models/hf_gpt2.h"
#include "models/safetensors_gpt2.h"
#include "train/checkpoint.h"
#include "train/commands.h"
#include "train/run_state.h"
#include "train/shape_memory.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tally::train {

namespace {

void no_positional(const Flags& f) {
  if (!f.positional().empty()) throw FlagError("unexpected argument '" + f.positional().front() + "'");
}

}  // namespace

// ---- memory ----

namespace {

// tally memory --shapes FILE: any model's tensors, every optimizer (train/shape_memory.h).
int memory_of_shapes(const Flags& f) {
  for (const FlagSpec& s : model_flags("gpt2"))
    if (f.given(s.name)) throw FlagError("--" + s.name + " is for a GPT-2 model; --shapes gives the model");
  if (f.given("batch") || f.given("seq") || f.given("device") || f.given("total-batch"))
    throw FlagError(
        "--batch, --seq, --total-batch and --device plan a step's activations and workspaces, which need a "
        "model tally runs (--model); --shapes plans parameters, gradients and optimizer state");
  if (f.given("dtype")) throw FlagError("--shapes plans both f32 and bf16 training; leave out --dtype");
  const int64_t world = f.integer("world"), rank = f.integer("rank");
  const std::string zero = f.str("zero");
  if (world < 1 || world > 65536) throw FlagError("--world must be between 1 and 65536");
  if (rank < 0 || rank >= world) throw FlagError("--rank must be in [0, --world)");
  if (zero != "0" && zero != "1") throw FlagError("--zero must be 0 or 1, got '" + zero + "'");
  std::vector<std::string> names;
  if (f.given("optimizer"))
    names = f.list_once("optimizer");
  else
    for (const optim::OptimizerEntry& e : optim::optimizers()) names.push_back(e.name);
  if (names.empty()) throw FlagError("--optimizer lists no optimizer");
  std::vector<OptimizerChoice> choices;
  for (const std::string& name : names) choices.push_back(optimizer_choice(f, name));
  const Parallelism parallel{.world = int(world),
                             .rank = int(rank),
                             .zero = zero == "1" ? ZeroStage::zero1 : ZeroStage::zero0,
                             .reduce_dtype = reduce_dtype(f)};
  const ShapesReport report = plan_shapes(read_model_shapes(f.str("shapes")), choices, parallel);
  if (f.on("json")) std::printf("%s\n", shapes_report_json(report).dump(2).c_str());
  else
    std::fputs(format_shapes_report(report, f.on("tensors") ? TensorListing::each_tensor : TensorListing::by_shape)
                   .c_str(),
               stdout);
  return 0;
}

}  // namespace

int cmd_memory(const Args& args) {
  std::vector<FlagSpec> specs = model_flags("gpt2");
  for (auto& s : optimizer_flags()) {
    if (s.name == "optimizer")
      s = {"optimizer", "comma-separated optimizers to compare, of " + optim::optimizer_names(" | ") +
                            " (with --shapes: all of them unless given)", "came,adamw,adafactor"};
    specs.push_back(s);
  }
  specs.push_back({"batch", "micro-batch B (with --seq: add activations and the step's peak)", ""});
  specs.push_back({"seq", "sequence length T", ""});
  specs.push_back({"dtype", "parameters' dtype: f32 | bf16 (mixed precision: bf16 parameters, gradients and "
                   "activations, f32 master weights in the optimizer state)", "f32"});
  specs.push_back({"device", "where the step runs: cpu | cuda (planned here, no GPU needed: the CUDA kernels' scratch, "
                   "cuBLAS's workspace and the caching allocator's rounding; bf16 is always planned for cuda)", "cpu"});
  specs.push_back({"total-batch",
                   "tokens per optimizer step, all ranks' (a multiple of B*T*ranks: gradient "
                   "accumulation, as train takes it)",
                   ""});
  specs.push_back({"world", "data-parallel ranks (mpirun -np N): the figures are one rank's", "1"});
  specs.push_back({"zero", "0: every rank keeps the whole optimizer state | 1: its part of it (ZeRO stage 1)", "0"});
  specs.push_back(reduce_dtype_flag());
  specs.push_back({"rank", "the rank whose figures are printed (parts may be uneven)", "0"});
  specs.push_back({"threads",
                   "CPU threads the run will use (the CPU attention's scratch is per thread): 0 for this "
                   "machine's, as a one-process train takes them (with --world, give each rank's)",
                   "0"});
  specs.push_back({"json", "print one JSON object", "", FlagKind::switch_});
  specs.push_back({"shapes", "any model instead of a GPT-2 preset: a .safetensors file (only its header is read), a "
                   "sharded checkpoint's .safetensors.index.json, or a JSON list of {\"name\", \"shape\"}: the state "
                   "of every optimizer (default: all) for f32 and bf16 training", ""});
  specs.push_back({"tensors", "with --shapes: list every tensor, not one line per shape", "", FlagKind::switch_});
  Flags f("memory", "the exact memory plan of a model and optimizers, computed without allocating", specs);
  f.parse(args);
  no_positional(f);
  if (f.given("shapes")) return memory_of_shapes(f);
  if (f.on("tensors")) throw FlagError("--tensors goes with --shapes");
  models::GPT2Config config = model_config(f);
  const bool with_step = f.given("batch") || f.given("seq");
  int64_t B = f.given("batch") ? f.integer("batch") : 4, T = f.given("seq") ? f.integer("seq") : config.block_size;
  if (with_step && (B < 1 || T < 1 || T > config.block_size)) throw FlagError("--batch and --seq must be positive, --seq <= block size");
  use_threads(thread_count(f), nullptr);  // the CPU plan's attention scratch: one block per thread
  if (with_step) {
    micro_batch_tokens(B, T);
    check_attention_fits(B, config.n_head, T);
  }
  const std::string dtype_str = f.str("dtype");
  if (dtype_str != "f32" && dtype_str != "bf16") throw FlagError("--dtype must be f32 or bf16, got '" + dtype_str + "'");
  const DType dtype = dtype_str == "bf16" ? DType::bf16 : DType::f32;
  const int64_t param_size = int64_t(dtype_size(dtype));
  const int64_t world = f.integer("world"), rank = f.integer("rank");
  const std::string zero_str = f.str("zero");
  if (world < 1 || world > 65536) throw FlagError("--world must be between 1 and 65536");
  if (rank < 0 || rank >= world) throw FlagError("--rank must be in [0, --world)");
  if (zero_str != "0" && zero_str != "1") throw FlagError("--zero must be 0 or 1, got '" + zero_str + "'");
  const ZeroStage zero = zero_str == "1" ? ZeroStage::zero1 : ZeroStage::zero0;
  const DType reduce = reduce_dtype(f);
  const std::string device_str = f.str("device");
  if (device_str != "cpu" && device_str != "cuda") throw FlagError("--device must be cpu or cuda, got '" + device_str + "'");
  const DeviceKind device = device_str == "cuda" || dtype == DType::bf16 ? DeviceKind::cuda : DeviceKind::cpu;
  // The state cut of rank r (ZeRO 1), and the step of rank r (its buffers too).
  auto shard_of = [&](int64_t r) {
    return zero == ZeroStage::zero1 ? optim::ShardOf{int(r), int(world)} : optim::ShardOf{};
  };
  if (f.given("total-batch") && !with_step) throw FlagError("--total-batch goes with --batch and --seq");
  const int64_t accumulation = with_step ? accumulation_of(f, B, T, world) : 1;
  auto step_of = [&](int64_t r) {
    return StepShape{.batch = B,
                     .seq = T,
                     .accumulation = accumulation,
                     .dtype = dtype,
                     .parallel = {.world = int(world), .rank = int(r), .zero = zero, .reduce_dtype = reduce},
                     .device = device};
  };

  std::vector<optim::NamedShape> shapes;
  int64_t count = 0;
  {
    models::GPT2 meta_model(config, {.device = Device::meta(), .dtype = dtype});
    for (const Tensor& t : meta_model.parameters()) shapes.push_back(optim::named_shape(t));
    count = meta_model.num_parameters();
  }
  json out = {{"model", config.str()}, {"dtype", dtype_str},
              {"parameters", {{"count", count}, {"bytes", count * param_size}}}, {"optimizers", json::object()}};
  if (with_step) out["batch"] = B, out["seq"] = T, out["device"] = device == DeviceKind::cuda ? "cuda" : "cpu";
  out["world"] = world, out["zero"] = zero == ZeroStage::zero1 ? 1 : 0, out["rank"] = rank;
  out["reduce_dtype"] = dtype_name(reduce);
  std::vector<std::string> names = f.list_once("optimizer");
  if (names.empty()) throw FlagError("--optimizer lists no optimizer");
  for (const std::string& name : names) {
    const OptimizerChoice choice = optimizer_choice(f, name);
    const std::vector<optim::TensorState> states = choice.predict(shapes, shard_of(rank));
    json tensors = json::array();
    std::map<std::string, int64_t> by_kind;
    for (const auto& ts : states)
      for (const auto& st : ts.states) {
        tensors.push_back({{"name", ts.param + ":" + st.name}, {"shape", st.shape}, {"dtype", dtype_name(st.dtype)}, {"bytes", st.bytes()}});
        by_kind[st.name] += st.bytes();
      }
    json o = {{"state_bytes", optim::total_bytes(states)}, {"state_by_kind", by_kind}, {"tensors", tensors}};
    if (with_step) {
      MemoryFigures p = predict_step_memory(config, choice, step_of(rank));
      o["gradients"] = p.gradients;
      o["activations"] = p.activations;
      o["workspace"] = p.workspace;  // with more than one rank, the communication buffer ("dist:bucket") too
      o["total"] = p.total;
      if (world > 1) {
        o["comm_bytes_per_step"] = p.comm.bytes;
        o["collectives_per_step"] = p.comm.collectives;
      }
    }
    if (world > 1 && f.on("json")) {  // every rank's state (and step), for uneven parts
      json ranks = json::array();
      for (int64_t r = 0; r < world; ++r) {
        json e = {{"rank", r}, {"state_bytes", optim::total_bytes(choice.predict(shapes, shard_of(r)))}};
        if (with_step && world <= 64) e["total"] = predict_step_memory(config, choice, step_of(r)).total;
        ranks.push_back(e);
      }
      o["ranks"] = ranks;
    }
    out["optimizers"][name] = o;
  }
  if (f.on("json")) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("%s: %s parameters, %s (%s)\n", config.str().c_str(), format_count(count).c_str(),
              format_bytes_exact(count * param_size).c_str(), dtype_str.c_str());
  if (dtype == DType::bf16) std::printf("bf16: each optimizer's state includes the f32 master weights ('master')\n");
  if (with_step)
    std::printf("a step of batch %lld x %lld tokens on %s%s\n", (long long)B, (long long)T,
                device == DeviceKind::cuda ? "a CUDA GPU" : "the CPU",
                device == DeviceKind::cuda ? " (its kernels' scratch and cuBLAS's 32 MiB workspace included)"
                                           : cat(" with ", omp_get_max_threads(), " threads (--threads)").c_str());
  if (world > 1)
    std::printf("rank %lld of %lld data-parallel ranks, ZeRO %s: %s (gradients summed in %s)\n", (long long)rank,
                (long long)world, zero_str.c_str(),
                zero == ZeroStage::zero1 ? "its part of the optimizer state, and its communication buffer"
                                         : "the whole optimizer state on every rank, and its communication buffer",
                dtype_name(reduce));
  // One name column wide enough for every optimizer and every "  <state>" row under it.
  int w = int(std::string_view("optimizer").size());
  for (const std::string& name : names) {
    w = std::max(w, int(name.size()));
    for (const auto& [kind, bytes] : out["optimizers"][name]["state_by_kind"].items()) w = std::max(w, 2 + int(kind.size()));
  }
  const bool with_comm = with_step && world > 1;  // what a step hands to the collectives: bytes, in how many calls
  std::printf("\n%-*s %18s %12s %9s", w, "optimizer", "state bytes", "", "vs adamw");
  if (with_step) std::printf(" %20s %20s", "activations (peak)", "step total (peak)");
  if (with_comm) std::printf(" %20s %11s", "communication/step", "collectives");
  std::printf("\n");
  int64_t adamw = optim::total_bytes(optimizer_choice(f, "adamw").predict(shapes, shard_of(rank)));
  for (const std::string& name : names) {
    const json& o = out["optimizers"][name];
    int64_t b = o["state_bytes"];
    std::printf("%-*s %18s %12s %8.1f%%", w, name.c_str(), format_bytes_exact(b).c_str(), format_bytes_human(b).c_str(),
                100.0 * double(b) / double(adamw));
    if (with_step)
      std::printf(" %20s %20s", format_bytes_exact(o["activations"]).c_str(), format_bytes_exact(o["total"]).c_str());
    if (with_comm)
      std::printf(" %20s %11lld", format_bytes_exact(o["comm_bytes_per_step"]).c_str(),
                  (long long)o["collectives_per_step"].get<int64_t>());
    std::printf("\n");
    for (const auto& [kind, bytes] : o["state_by_kind"].items())
      std::printf("  %-*s %18s\n", w - 2, kind.c_str(), format_bytes_exact(bytes.get<int64_t>()).c_str());
  }
  return 0;
}

// ---- inspect ----

int cmd_inspect(const Args& args) {
  Flags f("inspect", "per-tensor optimizer state of a checkpoint (tally inspect DIR|CHECKPOINT)",
          {{"dump", "write one state tensor (by name) to a .npy file: --dump NAME", ""},
           {"to", "the .npy file for --dump", ""}});
  f.parse(args);
  if (f.positional().size() != 1) throw FlagError("give one run or checkpoint directory");
  fs::path dir = f.positional()[0];
  TALLY_CHECK(fs::exists(dir), "'", dir.string(), "' does not exist (give a run directory or one of its checkpoints)");
  // A run directory: its latest checkpoint. A checkpoint's own files without their manifest (a checkpoint damaged or
  // copied in part) go to load_checkpoint, which says so.
  const bool checkpoint_files = fs::exists(dir / "optimizer.safetensors") || fs::exists(dir / "state.json");
  if (fs::is_directory(dir) && !fs::exists(dir / "manifest.json") && !checkpoint_files) {
    auto latest = train::latest_checkpoint(dir);
    if (!latest) {
      // A comparison's directory: its runs, each a run directory to inspect.
      std::vector<std::string> found;
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(dir / "runs", ec))
        if (train::latest_checkpoint(e.path())) found.push_back(e.path().string());
      std::sort(found.begin(), found.end());
      std::string runs;
      for (const std::string& r : found) runs += (runs.empty() ? "" : ", ") + r;
      fail("'", dir.string(), "' holds no complete checkpoint",
           train::holds_model_only(dir) ? " (it holds a model, which has no optimizer state to inspect; a run's "
                                          "checkpoints do)"
           : runs.empty()               ? ""
                                        : cat(" (it is a comparison: inspect one of its runs, ", runs, ")"));
    }
    dir = *latest;
  }
  if (f.given("to") && !f.given("dump")) throw FlagError("--to FILE.npy is for --dump NAME (the tensor to write)");
  train::CheckpointContent c = train::load_checkpoint(dir);
  if (auto name = f.maybe("dump")) {
    if (!f.given("to")) throw FlagError("--dump NAME needs --to FILE.npy");
    refuse_run_file_as_output(f.str("to"), "--to");
    const Tensor& t = io::find_tensor(c.optimizer, *name, (dir / "optimizer.safetensors").string());
    Tensor host = t.dtype() == DType::bf16 ? t.to(DType::f32) : t;
    io::write_npy(f.str("to"), host.dtype(), host.shape(), host.data_ptr());
    std::printf("wrote %s (%s %s)\n", f.str("to").c_str(), dtype_name(host.dtype()), shape_str(host.shape()).c_str());
    return 0;
  }
  const train::RunState rs = train::run_state_from_json(c.state, (dir / "state.json").string());
  std::printf("checkpoint %s: step %lld, optimizer %s\n\n", dir.c_str(), (long long)rs.step, rs.optimizer_kind.c_str());
  std::printf("%-56s %-16s %-5s %14s %12s %12s %12s %12s\n", "state tensor", "shape", "dtype", "bytes", "min", "mean", "max", "rms");
  int64_t total = 0;
  for (const auto& [name, t] : c.optimizer) {
    total += t.nbytes();
    if (!is_floating(t.dtype())) {
      std::printf("%-56s %-16s %-5s %14s\n", name.c_str(), shape_str(t.shape()).c_str(), dtype_name(t.dtype()),
                  format_bytes_exact(t.nbytes()).c_str());
      continue;
    }
    std::vector<double> v = t.to_vector<double>();
    double mn = INFINITY, mx = -INFINITY, sum = 0, sq = 0;
    for (double x : v) mn = std::min(mn, x), mx = std::max(mx, x), sum += x, sq += x * x;
    double n = double(std::max<size_t>(v.size(), 1));
    std::printf("%-56s %-16s %-5s %14s %12.4g %12.4g %12.4g %12.4g\n", name.c_str(), shape_str(t.shape()).c_str(),
                dtype_name(t.dtype()), format_bytes_exact(t.nbytes()).c_str(), mn, sum / n, mx, std::sqrt(sq / n));
  }
  std::printf("\n%zu state tensors, %s\n", c.optimizer.size(), format_bytes_exact(total).c_str());
  return 0;
}

// ---- eval ----

int cmd_eval(const Args& args) {
  std::vector<FlagSpec> specs = {model_file_flag(),
                                 {"data", "token shards (llm.c format; a path or a glob)", ""},
                                 {"batch", "B", "4"},
                                 {"seq", "T (default: the model's block size)", ""},
                                 {"batches", "evaluate the first N batches (default: every full batch)", ""},
                                 {"threads",
                                  "CPU threads (0: all, or with several ranks this rank's share of its "
                                  "machine's CPUs)",
                                  "0"},
                                 {"json", "print {\"loss\": ..., \"tokens\": ...}", "", FlagKind::switch_}};
  for (auto& s : device_flags("f32 | bf16 (CUDA only: the weights rounded to bf16, computing as bf16 training does)"))
    specs.push_back(s);
  Flags f("eval",
          "mean loss of a model over token shards (non-overlapping sequential windows; under mpirun -np N the ranks "
          "share the batches out and rank 0 prints)",
          specs);
  f.parse(args);
  no_positional(f);
  const int threads = thread_count(f);
  Device device = device_flag(f);
  const DType dtype = dtype_flag(f, device);
  use_f32_matmul(f);
  const int64_t B = f.integer("batch");
  int64_t T = f.given("seq") ? f.integer("seq") : 0;  // 0: the model's block size, once it is loaded
  if (B < 1 || (f.given("seq") && T < 1)) throw FlagError("--batch and --seq must be positive");
  if (f.given("batches") && f.integer("batches") < 1) throw FlagError("--batches must be positive");
  // Started by mpirun with several ranks: one GPU each (its place on its machine), the batches dealt out in turn.
  dist::Communicator* comm = dist::launched_by_mpi() ? &dist::process_group() : nullptr;
  use_threads(threads, comm);
  const int world = comm ? comm->world() : 1, rank = comm ? comm->rank() : 0;
  if (device.is_cuda() && world > 1) device = Device::cuda(comm->local_rank());
  require_usable(device);

  auto model = load_model_file(f.str("checkpoint"), device, dtype);
  const models::GPT2Config config = model->config();
  if (T == 0) T = config.block_size;
  micro_batch_tokens(B, T);
  if (T > config.block_size) throw FlagError(cat("--seq ", T, " exceeds the model's block size ", config.block_size));
  data::DataLoader loader(data::ShardSet::open(f.str("data"), {.vocab_limit = int32_t(config.vocab_size)}),
                          {.batch = B, .seq_len = T});
  int64_t n = loader.batches_per_epoch();
  if (f.given("batches")) n = std::min(n, f.integer("batches"));
  model->eval();
  double sum = rank_loss_sum(*model, loader, n, rank, world);
  if (world > 1) comm->all_reduce_sum(&sum, 1);
  const double loss = sum / double(n);
  if (rank != 0) return 0;  // rank 0 prints, or reports what went wrong
  TALLY_CHECK(std::isfinite(loss), "the mean loss over ", n, " batches is ", loss, ": the model's forward overflows ",
              "(a diverged run's weights?); '", f.str("checkpoint"), "' cannot be evaluated");
  const int64_t tokens = n * B * T;
  if (f.on("json")) std::printf("%s\n", json{{"loss", loss}, {"tokens", tokens}}.dump().c_str());
  else std::printf("loss %.6f over %lld tokens (%lld batches of %lld x %lld)\n", loss, (long long)tokens, (long long)n,
                   (long long)B, (long long)T);
  return 0;
}

// ---- export ----

int cmd_export(const Args& args) {
  Flags f(
      "export", "write a model in an interchange format",
      {model_file_flag(),
       {"format",
        "llmc | llmc-bf16 | safetensors | hf (a Hugging Face model directory: weights, config.json, "
        "generation_config.json, tokenizer files)",
        ""},
       {"out", "the file to write (hf: the directory; an existing one must be empty or hold a previous export)", ""},
       {"dtype", "safetensors and hf: the weights' element type, f32 | bf16 (llm.c: choose llmc or llmc-bf16)", "f32"},
       {"no-tokenizer", "hf: leave out the tokenizer files (needed when the vocabulary is not GPT-2's)", "",
        FlagKind::switch_}});
  f.parse(args);
  no_positional(f);
  const std::string format = f.str("format");
  if (format != "llmc" && format != "llmc-bf16" && format != "safetensors" && format != "hf")
    throw FlagError("--format must be llmc, llmc-bf16, safetensors or hf, got '" + format + "'");
  const std::string dtype = f.str("dtype");
  if (dtype != "f32" && dtype != "bf16") throw FlagError("--dtype must be f32 or bf16, got '" + dtype + "'");
  if (f.given("dtype") && format.starts_with("llmc"))
    throw FlagError("--dtype is for safetensors and hf; llm.c's precision is the format: llmc or llmc-bf16");
  if (f.on("no-tokenizer") && format != "hf") throw FlagError("--no-tokenizer is for --format hf");
  const models::ExportDType export_dtype = dtype == "bf16" ? models::ExportDType::bf16 : models::ExportDType::f32;

  auto model = load_model_file(f.str("checkpoint"), Device::cpu());
  const fs::path out = f.str("out");
  refuse_run_file_as_output(out, "--out");
  if (format == "hf") {
    models::HfExportOptions options{.dtype = export_dtype};
    if (!f.on("no-tokenizer")) {
      // The GPT-2 tokenizer's files, checked by loading them, and only for a model of its vocabulary.
      std::optional<data::Tokenizer> loaded;
      try {
        loaded = data::Tokenizer::load();
      } catch (const Error& e) {
        fail(e.what(), " (or export without tokenizer files: --no-tokenizer)");
      }
      const data::Tokenizer& tok = *loaded;
      TALLY_CHECK(tok.vocab_size() == model->config().vocab_size, "the model's vocabulary has ",
                  model->config().vocab_size, " tokens but the GPT-2 tokenizer (", tok.dir().string(), ") has ",
                  tok.vocab_size(), ": export with --no-tokenizer");
      options.tokenizer = models::HfTokenizerFiles{.encoder_json = tok.dir() / "encoder.json",
                                                   .vocab_bpe = tok.dir() / "vocab.bpe",
                                                   .vocab_size = tok.vocab_size()};
    }
    models::save_hf_gpt2(*model, out, options);
  } else if (format == "safetensors") {
    models::save_safetensors_gpt2(*model, out, {.dtype = export_dtype});
  } else {
    models::save_llmc(*model, out, format == "llmc" ? models::LlmcPrecision::f32 : models::LlmcPrecision::bf16);
  }
  const std::string what = format == "hf" || format == "safetensors" ? format + " " + dtype : format;
  std::printf("wrote %s (%s, %s)\n", out.c_str(), what.c_str(), model->config().str().c_str());
  return 0;
}

// ---- sample ----

int cmd_sample(const Args& args) {
  std::vector<FlagSpec> specs = {
      model_file_flag(),
      {"prompt", "text to continue (default: start of a document)", ""},
      {"tokens",
       "tokens to generate (at most the model's block size less the prompt's, plus one: the last is never fed back)",
       "128"},
      {"temperature", "sampling temperature (> 0)", "1.0"},
      {"top-k", "sample among the k most likely tokens (0: all)", "40"},
      {"seed", "random seed", "1"},
      {"threads", "CPU threads (0: all)", "0"}};
  for (auto& s : device_flags("f32 | bf16 (CUDA only: the weights rounded to bf16)")) specs.push_back(s);
  Flags f("sample", "generate text from a model", specs);
  f.parse(args);
  no_positional(f);
  use_threads(thread_count(f), nullptr);  // rank 0 alone (main.cpp): the process's CPUs
  const double temperature = f.number("temperature");
  if (!(temperature > 0)) throw FlagError("--temperature must be positive");
  const int64_t top_k = f.integer("top-k");
  const uint64_t seed = uint64_t(f.integer("seed"));
  int64_t tokens = f.integer("tokens");
  if (top_k < 0 || tokens < 0) throw FlagError("--top-k and --tokens must be >= 0");
  const Device device = device_flag(f);
  const DType dtype = dtype_flag(f, device);
  use_f32_matmul(f);
  require_usable(device);
  auto model = load_model_file(f.str("checkpoint"), device, dtype);
  const models::GPT2Config config = model->config();
  data::Tokenizer tok = data::Tokenizer::load();
  std::string prompt = f.maybe("prompt").value_or("");
  std::vector<int32_t> ids = {data::Tokenizer::kEndOfText};
  try {
    if (!prompt.empty()) ids = tok.encode(prompt, data::SpecialTokens::allowed);
  } catch (const Error& e) {
    fail("--prompt: ", e.what());
  }
  for (int32_t id : ids)
    TALLY_CHECK(id < config.vocab_size, "the model's vocabulary holds ", config.vocab_size, " tokens, not GPT-2's ",
                tok.vocab_size(), ": ", prompt.empty() ? "token " : "--prompt's token ", id,
                prompt.empty() ? " (the end-of-text token a sample without --prompt starts from)" : "",
                " is outside it (tally sample reads and writes text with GPT-2's tokenizer)");
  TALLY_CHECK(int64_t(ids.size()) <= config.block_size, "--prompt has ", ids.size(), " tokens; the model sees at most ",
              config.block_size);
  // The last token sampled is never fed back: a prompt of P tokens leaves room for block - P + 1.
  const int64_t room = config.block_size - int64_t(ids.size()) + 1;
  if (tokens > room) {
    std::fprintf(stderr,
                 "[sample] %lld tokens, not %lld: the model sees %lld at most and the prompt holds %zu (the "
                 "last token sampled is never fed back)\n",
                 (long long)room, (long long)tokens, (long long)config.block_size, ids.size());
    tokens = room;
  }
  NoGradGuard no_grad;
  model->eval();
  std::fputs(prompt.c_str(), stdout);
  // Tokens are bytes, not characters: the stream holds a character split across tokens back until it is whole,
  // and writes bytes that are no UTF-8 (an untrained model emits them) as U+FFFD, so stdout is always valid UTF-8.
  data::Utf8Stream text;
  auto out = models::generate(*model, {ids},
                              {.max_new_tokens = tokens,
                               .temperature = temperature,
                               .top_k = top_k,
                               .seed = seed,
                               .vocab_limit = tok.vocab_size(),  // a larger model's other ids are no text
                               .on_step = [&](int64_t, std::span<const int32_t> t) {
                                 const std::string piece = text.push(tok.decode(t));
                                 std::fwrite(piece.data(), 1, piece.size(), stdout);  // a NUL byte is text too
                                 std::fflush(stdout);
                               }});
  std::printf("%s\n", text.finish().c_str());
  return 0;
}

}  // namespace tally::train
