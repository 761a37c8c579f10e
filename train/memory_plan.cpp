// The memory of a training step: figures, the meta-device plan, the budget, the batch that fits (see memory_plan.h).
#include "train/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include <sys/resource.h>
#include <unistd.h>

#include "core/allocator.h"
#include "core/cuda/runtime.h"  // plain C++: cuBLAS's workspace size in every build; its functions run in CUDA builds
#include "train/step.h"

namespace tally::train {

MemoryFigures measure(const Ledger& l, const optim::Optimizer& optimizer) {
  MemoryFigures m;
  m.parameters = l.category(Category::parameter).live_requested;
  m.gradients = l.category(Category::gradient).peak_requested;
  m.optimizer_state = l.category(Category::optimizer_state).live_requested;
  m.activations = l.category(Category::activation).peak_requested;
  m.workspace = l.category(Category::workspace).peak_requested;
  m.other = l.category(Category::other).peak_requested;
  m.total = l.total().peak_requested;
  m.total_held = l.total().peak_held;
  for (const auto& ts : optimizer.state_bytes())
    for (const auto& s : ts.states) m.state_by_kind[s.name] += s.bytes();
  for (const Ledger::OwnerInCategory& o : l.owners_by_category())
    m.owners.push_back({o.category, o.owner, o.usage.peak_requested});
  return m;
}

nlohmann::json to_json(const MemoryFigures& m) {
  nlohmann::json owners = nlohmann::json::object();
  for (const MemoryFigures::Owner& o : m.owners) owners[category_name(o.category)][o.name] = o.bytes;
  return {{"parameters", m.parameters}, {"gradients", m.gradients}, {"optimizer_state", m.optimizer_state},
          {"state_by_kind", m.state_by_kind}, {"activations", m.activations}, {"workspace", m.workspace},
          {"other", m.other}, {"total", m.total}, {"total_held", m.total_held}, {"owners", owners}};
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

namespace {

// Micro-batches of the right shape on the meta device: nothing is read, nothing is allocated.
class MetaBatches final : public Batches {
 public:
  explicit MetaBatches(const StepShape& s) : shape_(s) {}
  void next(Tensor& inputs, Tensor& targets) override {
    inputs = empty({shape_.batch, shape_.seq}, {.dtype = DType::i32, .device = plan_device(shape_)});
    targets = empty({shape_.batch, shape_.seq}, {.dtype = DType::i32, .device = plan_device(shape_)});
  }

 private:
  StepShape shape_;
};

}  // namespace

Device plan_device(const StepShape& shape) {
  return Device::meta(shape.dtype == DType::bf16 ? DeviceKind::cuda : shape.device);
}

MemoryFigures predict_step_memory(const models::GPT2Config& config, const OptimizerChoice& optimizer, StepShape shape) {
  const Device device = plan_device(shape);
  Ledger& meta = ledger(device);
  TALLY_ASSERT(meta.total().live_requested == 0);
  // CUDA: cuBLAS's workspace, made with the first product of the run and kept.
  Tensor cublas_workspace;
  if (device.backend() == DeviceKind::cuda) {
    MemoryScope scope(Category::workspace, cuda::kCublasWorkspaceOwner);
    cublas_workspace = empty({cuda::kCublasWorkspaceBytes}, {.dtype = DType::u8, .device = device});
  }
  models::GPT2 model(config, {.device = device, .dtype = shape.dtype});
  auto opt = optimizer.make(model.parameters());
  // A rank of a data-parallel run: the same cut of the state and the same buffers; the plan moves nothing.
  const Parallelism& par = shape.parallel;
  const auto comm = dist::single_process(par.rank, par.world);
  if (par.zero == ZeroStage::zero1 && par.world > 1) opt->shard(*comm);
  opt->init_state();
  std::unique_ptr<DataParallel> dp;
  if (par.world > 1 || par.launched)
    dp = std::make_unique<DataParallel>(*comm, par.zero, *opt, model.parameters(), par.reduce_dtype);
  if (shape.inspected) opt->set_inspect(optim::Inspect::summary);
  meta.reset_peaks();
  MetaBatches batches(shape);
  // Two micro-batches stand for any number: the first makes the gradients, every later one allocates and frees as
  // the second does (nothing of a micro-batch outlives it), so 10,000 of them are planned as fast as two.
  optimizer_step(
      model, *opt, batches,
      {.accumulation = std::min<int64_t>(shape.accumulation, 2), .grad_clip = shape.grad_clip, .parallel = dp.get()});
  MemoryFigures figures = measure(meta, *opt);
  if (dp) figures.comm = dp->reduce_traffic() + dp->gather_traffic() + opt->traffic_per_step();
  return figures;
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

MemoryBudget memory_budget(Device device, int64_t live, int64_t held_before) {
  MemoryBudget b;
  if (const char* env = std::getenv("TALLY_MEMORY_LIMIT"); env && *env) {
    try {
      b.bytes = parse_byte_count(env);
    } catch (const Error& e) {
      fail("TALLY_MEMORY_LIMIT: ", e.what());
    }
    b.source = cat("TALLY_MEMORY_LIMIT=", env);
    b.enforced = device.is_cpu();
    return b;
  }
  if (device.is_cpu()) {
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
    if (const int64_t limit = cpu_memory_limit(); limit > 0 && (b.bytes < 0 || limit - held_before < b.bytes)) {
      b.bytes = limit - held_before;
      b.source = "the CPU allocator's limit (set_cpu_memory_limit)";
    }
    // A cap on the address space (ulimit -v): what is left of it, less what the process maps already (its code,
    // thread stacks and libraries' buffers) beside what this run holds. Past it allocations fail, and OpenBLAS
    // retries a failed one for ever, so a step that cannot fit is refused before it starts. A lower bound of what
    // is needed: threads not yet started map their stacks and malloc arenas later (tens of MiB each).
    if (struct rlimit as; ::getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) {
      long long pages = -1;
      if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(f, "%lld", &pages) != 1) pages = -1;
        std::fclose(f);
      }
      if (pages >= 0) {
        const int64_t mapped = int64_t(pages) * int64_t(::sysconf(_SC_PAGESIZE));
        const int64_t left = int64_t(as.rlim_cur) - mapped + live;
        if (b.bytes < 0 || left < b.bytes) {
          b.bytes = left;
          b.source =
              cat("the address-space limit (ulimit -v) ", format_bytes_human(int64_t(as.rlim_cur)), ", less the ",
                  format_bytes_human(mapped), " mapped now, + ", format_bytes_human(live), " this run already holds");
        }
      }
    }
  }
#ifdef TALLY_HAS_CUDA
  if (device.is_cuda()) {
    int64_t free_bytes = 0, total_bytes = 0;
    cuda::memory_info(&free_bytes, &total_bytes);
    b.bytes = free_bytes + live;
    b.source = cat("free memory on ", device.str(), " (cudaMemGetInfo: ", format_bytes_human(free_bytes), " of ",
                   format_bytes_human(total_bytes), ") + ", format_bytes_human(live), " this run already holds");
  }
#endif
  return b;
}

int64_t largest_fitting_batch(const models::GPT2Config& model, const OptimizerChoice& optimizer, StepShape shape,
                              int64_t bytes) {
  auto fits = [&](int64_t b) {
    StepShape s = shape;
    s.batch = b;
    return predict_step_memory(model, optimizer, s).total_held <= bytes;
  };
  // The largest b in [first, last] that fits, where the peak grows with b (0: none does).
  auto search = [&](int64_t first, int64_t last) -> int64_t {
    if (first > last || !fits(first)) return 0;
    int64_t lo = first, hi = last;  // lo fits
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (fits(mid))
        lo = mid;
      else
        hi = mid - 1;
    }
    return lo;
  };
  // The peak grows with B (activations are proportional to it) on either side of the loss's chunking: a micro-batch
  // of at most loss_chunk_rows positions holds its whole logits, a larger one a chunk of them, so B = 2 may fit
  // where B = 1 does not. The larger side is searched first.
  const int64_t rows = models::GPT2Options{}.loss_chunk_rows;
  const int64_t whole_logits = rows > 0 ? std::min(shape.batch, rows / shape.seq) : shape.batch;  // B*T <= rows
  if (const int64_t b = search(whole_logits + 1, shape.batch); b > 0) return b;
  return search(1, whole_logits);
}

std::string memory_advice(const models::GPT2Config& model, const OptimizerChoice& optimizer, StepShape shape,
                          const MemoryFigures& predicted, const MemoryBudget& budget) {
  std::string out =
      cat("One training step of this run holds ", format_bytes_exact(predicted.total_held), " (",
          format_bytes_human(predicted.total_held), ") at its peak, predicted exactly on the meta device ",
          "(the plan lists the ", format_bytes_exact(predicted.total),
          " requested; the allocator holds each block rounded up); the budget is ", format_bytes_exact(budget.bytes),
          " (", format_bytes_human(budget.bytes), ", ", budget.source, ").\n");
  const int64_t batch = shape.batch;
  const int64_t fit = largest_fitting_batch(model, optimizer, shape, budget.bytes);
  if (fit >= batch) {
    out += cat("The plan fits the budget at --batch ", batch, ": memory is used outside the training step (or by "
               "another process); lower --batch or --val-batches, or free memory.\n");
  } else if (fit > 0) {
    StepShape s = shape;
    s.batch = fit;
    const MemoryFigures at = predict_step_memory(model, optimizer, s);
    out += cat("The largest --batch that fits is ", fit, " (peak ", format_bytes_human(at.total_held), ")");
    // The same tokens per optimizer step in smaller micro-batches: a batch dividing them, its gradients accumulated
    // over the micro-batches (which costs memory of its own: planned as such, not assumed).
    const int64_t micro_total = batch * shape.accumulation;
    const int64_t tokens = micro_total * shape.seq * shape.parallel.world;
    std::string keep;
    for (int64_t d = std::min(fit, micro_total); d >= 1 && keep.empty(); --d) {
      if (micro_total % d != 0) continue;
      StepShape k = shape;
      k.batch = d;
      k.accumulation = micro_total / d;
      if (const MemoryFigures m = predict_step_memory(model, optimizer, k); m.total_held <= budget.bytes)
        keep = cat("; --batch ", d, " --total-batch ", tokens, " keeps the tokens per optimizer step (", k.accumulation,
                   " micro-batches accumulated, peak ", format_bytes_human(m.total_held), ").\n");
    }
    out += keep.empty() ? cat("; no smaller batch keeps the ", tokens,
                              " tokens per optimizer step within the budget (gradient accumulation holds more).\n")
                        : keep;
  } else {
    StepShape s = shape;
    s.batch = 1;
    // Optimizers whose state (at their defaults) is smaller than this run's, for this model.
    std::vector<optim::NamedShape> shapes;
    {
      models::GPT2 meta(model, {.device = Device::meta(), .dtype = shape.dtype});
      for (const Tensor& p : meta.parameters()) shapes.push_back(optim::named_shape(p));
    }
    const optim::ShardOf shard = shape.parallel.zero == ZeroStage::zero1
                                     ? optim::ShardOf{shape.parallel.rank, shape.parallel.world}
                                     : optim::ShardOf{};
    const int64_t ours = optim::total_bytes(optimizer.predict(shapes, shard));
    std::string smaller;
    for (const optim::OptimizerEntry& e : optim::optimizers())
      if (optim::total_bytes(e.predict(shapes, {}, shard)) < ours) smaller += (smaller.empty() ? "" : ", ") + e.name;
    out += cat("Not even --batch 1 fits (peak ", format_bytes_human(predict_step_memory(model, optimizer, s).total_held),
               "): use a smaller model or --seq",
               smaller.empty() ? std::string() : cat(", or an optimizer with less state (", smaller, ")"), ".\n");
  }
  out += '\n';
  out += format_plan(predicted, nullptr);
  return out;
}

}  // namespace tally::train
