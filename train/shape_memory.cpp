// Optimizer state, parameters and gradients of any model's shapes, planned on the meta device (see shape_memory.h).
#include "train/shape_memory.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <set>

#include "core/dist/communicator.h"
#include "core/ledger.h"
#include "core/ops.h"
#include "core/parse.h"
#include "optim/registry.h"
#include "train/data_parallel.h"

namespace tally::train {

// ---- one optimizer over the tensors ----

StateFigures plan_state(const std::vector<ModelTensor>& tensors, const OptimizerChoice& choice, DType dtype,
                        const Parallelism& parallel) {
  TALLY_CHECK(dtype == DType::f32 || dtype == DType::bf16, "[memory] parameters train in f32 or bf16, not ",
              dtype_name(dtype));
  const Ledger& meta = ledger(Device::meta());
  auto live = [&](Category c) { return meta.category(c).live_requested; };
  const int64_t params_before = live(Category::parameter), grads_before = live(Category::gradient),
                state_before = live(Category::optimizer_state);
  StateFigures f;
  std::vector<Tensor> params;
  params.reserve(tensors.size());
  for (const ModelTensor& t : tensors) {
    Tensor p;
    {
      MemoryScope scope(Category::parameter, t.name);
      p = empty(t.shape, {.dtype = dtype, .device = Device::meta()});
    }
    p.set_name(t.name);
    p.set_requires_grad(true);
    MemoryScope scope(Category::gradient, t.name + ":grad");  // as backward names a leaf's gradient
    p.set_grad(empty(t.shape, {.dtype = dtype, .device = Device::meta()}));
    params.push_back(p);
  }
  // Declared in this order so that they go in reverse: the communication buffer, the optimizer, the ranks.
  const auto comm = dist::single_process(parallel.rank, parallel.world);
  std::unique_ptr<optim::Optimizer> opt = choice.make(params);
  if (parallel.zero == ZeroStage::zero1 && parallel.world > 1) opt->shard(*comm);
  opt->init_state();
  std::unique_ptr<DataParallel> dp;
  if (parallel.world > 1 || parallel.launched)
    dp = std::make_unique<DataParallel>(*comm, parallel.zero, *opt, params, parallel.reduce_dtype);

  f.parameters = live(Category::parameter) - params_before;
  f.gradients = live(Category::gradient) - grads_before;
  f.state = live(Category::optimizer_state) - state_before;
  f.workspace = opt->workspace_bytes();
  f.comm_buffer = dp ? meta.owner("dist:bucket").live_requested : 0;
  // The optimizer lists its groups in turn (weight decay splits matrices from vectors): back to the tensors' order.
  std::map<std::string, optim::TensorState> by_name;
  for (optim::TensorState& ts : opt->state_bytes()) by_name[ts.param] = std::move(ts);
  for (const ModelTensor& t : tensors) f.tensors.push_back(std::move(by_name.at(t.name)));
  TALLY_CHECK(optim::total_bytes(f.tensors) == f.state, "[memory] ", choice.name, ": the ledger holds ", f.state,
              " bytes of optimizer state, its tensors ", optim::total_bytes(f.tensors));
  for (const optim::TensorState& ts : f.tensors)
    for (const optim::StateSpec& s : ts.states) f.state_by_kind[s.name] += s.bytes();
  for (const Tensor& p : params) f.factoring.push_back(opt->whole_layout(p.name()).factoring);
  return f;
}

// ---- which optimizers ----

namespace {

bool is_on(const std::string& text) { return text == "true" || text == "1" || text == "on" || text == "yes"; }

// The same state tensors (names, shapes, dtypes) for every parameter.
bool same_state(const std::vector<optim::TensorState>& a, const std::vector<optim::TensorState>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].states.size() != b[i].states.size()) return false;
    for (size_t k = 0; k < a[i].states.size(); ++k) {
      const optim::StateSpec &x = a[i].states[k], &y = b[i].states[k];
      if (x.name != y.name || x.shape != y.shape || x.dtype != y.dtype) return false;
    }
  }
  return true;
}

// "came --came-bf16-m --beta2 0.95": the optimizer and the settings given for it, as flags.
std::string label_of(const OptimizerChoice& c) {
  const optim::OptimizerEntry& e = optim::find_optimizer(c.name);
  std::string out = c.name;
  for (const optim::Setting& s : e.settings) {
    auto v = c.settings.get(s.name);
    if (!v) continue;
    if (s.kind == optim::SettingKind::switch_) out += is_on(*v) ? " --" + s.name : " without --" + s.name;
    else out += " --" + s.name + " " + *v;
  }
  return out;
}

}  // namespace

std::vector<PlannedOptimizer> with_state_variants(const std::vector<OptimizerChoice>& optimizers,
                                                  const std::vector<ModelTensor>& tensors) {
  std::vector<optim::NamedShape> shapes;
  for (const ModelTensor& t : tensors) shapes.push_back({.name = t.name, .shape = t.shape});
  std::vector<PlannedOptimizer> out;
  for (const OptimizerChoice& base : optimizers) {
    const optim::OptimizerEntry& e = optim::find_optimizer(base.name);
    out.push_back({.label = label_of(base), .choice = base});
    const std::vector<optim::TensorState> state = e.predict(shapes, base.settings, {});
    for (const optim::Setting& s : e.settings) {
      const std::string current = base.settings.get(s.name).value_or(s.default_value);
      std::vector<std::string> tries;  // other values of this setting
      if (s.kind == optim::SettingKind::switch_) {
        tries.push_back(is_on(current) ? "false" : "true");
      } else if (const std::optional<double> value = parse_finite_double(current)) {
        if (*value != 0.0) tries.push_back("0");
        const std::optional<double> default_value = parse_finite_double(s.default_value);
        if (default_value && *default_value != *value) tries.push_back(s.default_value);
      }
      for (const std::string& value : tries) {
        OptimizerChoice v = base;
        v.settings.set(s.name, value);
        try {
          e.check(v.settings);
          if (same_state(e.predict(shapes, v.settings, {}), state)) continue;
        } catch (const Error&) {
          continue;  // not a valid value for this optimizer
        }
        out.push_back({.label = label_of(v), .choice = v, .varied = s.name});
      }
    }
  }
  return out;
}

// ---- the reference implementations ----

const std::vector<ReferenceRule>& reference_rules() {
  static const std::string last_two =
      "the last two dims of every tensor of 2 or more dims (factored = len(shape) >= 2)";
  static const std::string largest =
      "factors the two largest dims, and only when the smaller of them is >= 128 (optax's rule), where the reference "
      "factors the last two dims of every tensor of 2 or more dims";
  static const std::vector<ReferenceRule> rules = {
      {.optimizer = "came",
       .implementation = "came-pytorch 0.1.3 (came_pytorch.CAME)",
       .factoring = last_two,
       .extras = {{.state = "RMS", .shape = {}, .dtype = "float32", .bytes = 4,
                   .why = "came-pytorch stores the parameter's RMS in a 0-d tensor each step and never reads it; "
                          "tally does not keep it"}},
       .python_numbers = {"step"},
       .beyond = {{"came-bf16-m", "exp_avg is kept in bf16 (2 bytes an element), where came-pytorch keeps it in "
                                  "float32 (for f32, f16 and bf16 parameters alike)"},
                  {"came-factor-largest", largest}}},
      {.optimizer = "adamw",
       .implementation = "torch.optim.AdamW",
       .extras = {{.state = "step", .shape = {}, .dtype = "float32", .bytes = 4,
                   .why = "torch keeps each parameter's step count in a 0-d float32 tensor; tally counts steps in "
                          "an integer of the optimizer"}}},
      {.optimizer = "adafactor",
       .implementation = "transformers' Adafactor (scale_parameter=False, relative_step=False)",
       .factoring = last_two,
       .extras = {{.state = "RMS", .shape = {}, .dtype = "float32", .bytes = 4,
                   .why = "transformers stores the parameter's RMS in a 0-d tensor each step, read only with "
                          "scale_parameter=True (not offered by tally); tally does not keep it"}},
       .python_numbers = {"step"},
       .beyond = {{"came-factor-largest", largest}}},
      {.optimizer = "sgd", .implementation = "torch.optim.SGD"},
  };
  return rules;
}

const ReferenceRule* find_reference_rule(std::string_view optimizer) {
  for (const ReferenceRule& r : reference_rules())
    if (r.optimizer == optimizer) return &r;
  return nullptr;
}

// ---- the report ----

ShapesReport plan_shapes(ModelShapes model, const std::vector<OptimizerChoice>& optimizers, Parallelism parallel) {
  ShapesReport r{.model = std::move(model), .parallel = parallel};
  // Every figure (state, masters, totals) is at most 32 bytes a parameter: this keeps them within 64 bits.
  constexpr int64_t kMostParameters = std::numeric_limits<int64_t>::max() / 32;
  for (const ModelTensor& t : r.model.tensors)
    if (t.trained()) {
      r.trained.push_back(t);
      if (__builtin_add_overflow(r.parameter_count, numel(t.shape), &r.parameter_count) ||
          r.parameter_count > kMostParameters)
        fail("[memory] '", r.model.source, "': its tensors hold more than ", kMostParameters,
             " elements in all, more than tally counts bytes of in 64 bits");
    }
  TALLY_CHECK(!r.trained.empty(), "[memory] '", r.model.source, "' holds no floating-point tensor to train (none of ",
              "its ", r.model.tensors.size(), " tensors)");
  for (const PlannedOptimizer& p : with_state_variants(optimizers, r.trained)) {
    PlannedRow row{.optimizer = p};
    row.f32 = plan_state(r.trained, p.choice, DType::f32, parallel);
    row.bf16 = plan_state(r.trained, p.choice, DType::bf16, parallel);
    if (parallel.world > 1 && parallel.world <= 64)
      for (int k = 0; k < parallel.world; ++k) {
        Parallelism at = parallel;
        at.rank = k;
        row.rank_state.push_back(k == parallel.rank ? row.f32.state
                                                    : plan_state(r.trained, p.choice, DType::f32, at).state);
      }
    r.rows.push_back(std::move(row));
  }
  for (const optim::OptimizerEntry& e : optim::optimizers())
    if (e.name == "adamw") {
      const OptimizerChoice adamw{.name = "adamw"};
      r.adamw_f32 = plan_state(r.trained, adamw, DType::f32, parallel).state;
      r.adamw_bf16 = plan_state(r.trained, adamw, DType::bf16, parallel).state;
    }
  return r;
}

namespace {

std::string shape_text(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::string ratio(int64_t bytes, int64_t baseline) {
  if (baseline <= 0) return "-";
  char b[32];
  std::snprintf(b, sizeof b, "%.1f%%", 100.0 * double(bytes) / double(baseline));
  return b;
}

// Settings in effect (given, or varied) that the reference does not have.
std::vector<std::string> beyond_reference(const ReferenceRule& rule, const OptimizerChoice& c) {
  std::vector<std::string> out;
  for (const auto& [name, value] : c.settings.values())
    if (rule.beyond.count(name) && is_on(value)) out.push_back(name);
  return out;
}

bool sharded(const Parallelism& p) { return p.zero == ZeroStage::zero1 && p.world > 1; }

// The reference's state bytes for the whole tensors, or -1 when it cannot be compared (a setting beyond it, or
// state cut over ranks).
int64_t reference_bytes(const ShapesReport& r, const PlannedRow& row, const ReferenceRule& rule) {
  if (sharded(r.parallel) || !beyond_reference(rule, row.optimizer.choice).empty()) return -1;
  int64_t extra = 0;
  for (const ReferenceExtra& x : rule.extras) extra += x.bytes;
  return row.f32.state + extra * int64_t(r.trained.size());
}

// The rows in the order the table shows them: by f32 state bytes, largest first (registry order among equals).
std::vector<const PlannedRow*> by_state_bytes(const ShapesReport& r) {
  std::vector<const PlannedRow*> rows;
  for (const PlannedRow& row : r.rows) rows.push_back(&row);
  std::stable_sort(rows.begin(), rows.end(),
                   [](const PlannedRow* a, const PlannedRow* b) { return a->f32.state > b->f32.state; });
  return rows;
}

// The factoring of tensor i in words, over the optimizers (rows without a varied setting) that decide one: one
// text when they agree, else each optimizer's.
std::string factoring_text(const ShapesReport& r, const std::vector<const PlannedRow*>& columns, size_t i) {
  std::vector<std::pair<std::string, std::string>> said;  // (optimizer, text)
  for (const PlannedRow* row : columns) {
    const optim::FactoredDims& f = row->f32.factoring[i];
    if (f.reason == optim::FactoringReason::never) continue;
    said.emplace_back(row->optimizer.label, optim::describe_factoring(r.trained[i].shape, f));
  }
  if (said.empty()) return "dense";
  bool agree = std::all_of(said.begin(), said.end(), [&](const auto& s) { return s.second == said[0].second; });
  if (agree) return said[0].second;
  std::string out;
  for (const auto& [who, text] : said) out += (out.empty() ? "" : "; ") + who + ": " + text;
  return out;
}

}  // namespace

std::string format_shapes_report(const ShapesReport& r, TensorListing listing) {
  std::string out;
  char line[512];
  const Parallelism& par = r.parallel;
  const int64_t n = r.parameter_count;
  out += cat(r.model.source, " (", r.model.format, r.model.description.empty() ? "" : ": " + r.model.description,
             "): ", format_count(n), " parameters in ", r.trained.size(), " tensors");
  if (r.trained.size() != r.model.tensors.size()) {
    std::set<std::string> skipped;
    for (const ModelTensor& t : r.model.tensors)
      if (!t.trained()) skipped.insert(t.dtype);
    std::string kinds;
    for (const std::string& d : skipped) kinds += (kinds.empty() ? "" : ", ") + d;
    out += cat(" (left out, not floating point: ", r.model.tensors.size() - r.trained.size(), " tensors of ", kinds, ")");
  }
  out += "\n";
  if (par.world > 1)
    out += cat("rank ", par.rank, " of ", par.world, " data-parallel ranks, ZeRO ", sharded(par) ? "1" : "0", ": ",
               sharded(par) ? "its part of each optimizer's state" : "the whole optimizer state on every rank",
               "; parameters and gradients whole on every rank\n");
  out += cat("f32 training:  parameters ", format_bytes_exact(4 * n), " + gradients ", format_bytes_exact(4 * n), "\n");
  out += cat("bf16 training: parameters ", format_bytes_exact(2 * n), " + gradients ", format_bytes_exact(2 * n),
             ", and f32 master weights ('master', ", format_bytes_exact(4 * n),
             ") in the optimizer state: as many bytes as f32 training (bf16 saves activations and bandwidth)\n");

  // ---- totals ----
  const std::vector<const PlannedRow*> rows = by_state_bytes(r);
  int w = 9;
  for (const PlannedRow* row : rows) {
    w = std::max(w, int(row->optimizer.label.size()));
    for (const auto& [kind, bytes] : row->f32.state_by_kind) w = std::max(w, 2 + int(kind.size()));
  }
  out += cat("\noptimizer state, largest first", par.world > 1 ? " (one rank)" : "",
             "; 'total' adds the parameters and gradients:\n");
  std::snprintf(line, sizeof line, "%-*s  %-29s %8s %11s   %s\n", w, "", "f32 training", "", "", "bf16 training");
  out += line;
  std::snprintf(line, sizeof line, "%-*s  %17s %11s %8s %11s   %17s %11s %11s\n", w, "optimizer", "state bytes", "",
                "vs adamw", "total", "state + master", "", "total");
  out += line;
  for (const PlannedRow* row : rows) {
    const StateFigures &a = row->f32, &b = row->bf16;
    std::snprintf(line, sizeof line, "%-*s  %17s %11s %8s %11s   %17s %11s %11s\n", w, row->optimizer.label.c_str(),
                  format_count(a.state).c_str(), format_bytes_human(a.state).c_str(),
                  ratio(a.state, r.adamw_f32).c_str(), format_bytes_human(a.total()).c_str(),
                  format_count(b.state).c_str(), format_bytes_human(b.state).c_str(),
                  format_bytes_human(b.total()).c_str());
    out += line;
    for (const auto& [kind, bytes] : a.state_by_kind) {
      std::snprintf(line, sizeof line, "  %-*s  %17s\n", w - 2, kind.c_str(), format_count(bytes).c_str());
      out += line;
    }
  }
  if (par.world > 1) {
    out += cat("\nf32 training, every rank: its state bytes",
               par.world > 64 ? " (more than 64 ranks: --rank R gives one)" : "",
               "; the communication buffer (dist:bucket) each rank holds:\n");
    for (const PlannedRow* row : rows) {
      std::string ranks;
      for (int64_t b : row->rank_state) ranks += (ranks.empty() ? "" : "  ") + format_count(b);
      std::snprintf(line, sizeof line, "  %-*s  ", w, row->optimizer.label.c_str());
      out += cat(line, ranks, ranks.empty() ? "" : "; ", "buffer ", format_count(row->f32.comm_buffer), "\n");
    }
  }

  // ---- per tensor ----
  std::vector<const PlannedRow*> columns;  // the optimizers themselves, in registry order
  for (const PlannedRow& row : r.rows)
    if (row.optimizer.varied.empty()) columns.push_back(&row);
  std::vector<size_t> order(r.trained.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  struct Group {
    size_t first;  // index of its first tensor
    int64_t count = 0;
  };
  std::vector<Group> groups;
  if (listing == TensorListing::by_shape) {
    std::map<Shape, size_t> at;
    for (size_t i = 0; i < r.trained.size(); ++i) {
      auto [it, fresh] = at.emplace(r.trained[i].shape, groups.size());
      if (fresh) groups.push_back({.first = i});
      groups[it->second].count += 1;
    }
  } else {
    for (size_t i = 0; i < r.trained.size(); ++i) groups.push_back({.first = i, .count = 1});
  }
  std::stable_sort(groups.begin(), groups.end(), [&](const Group& a, const Group& b) {
    return numel(r.trained[a.first].shape) * a.count > numel(r.trained[b.first].shape) * b.count;
  });
  int nw = 6, sw = 5;
  for (const Group& g : groups) {
    nw = std::max(nw, int(r.trained[g.first].name.size()));
    sw = std::max(sw, int(shape_text(r.trained[g.first].shape).size()));
  }
  const std::string part = sharded(par) ? cat(", rank ", par.rank, "'s part") : "";
  out += listing == TensorListing::by_shape
             ? cat("\nper tensor, grouped by shape (state bytes of one tensor, f32", part,
                   "; --tensors lists every tensor):\n")
             : cat("\nper tensor (state bytes, f32", part, "):\n");
  std::string head;
  if (listing == TensorListing::by_shape) {
    std::snprintf(line, sizeof line, "%-*s %7s  %-*s", sw, "shape", "tensors", nw, "for example");
  } else {
    std::snprintf(line, sizeof line, "%-*s  %-*s", nw, "tensor", sw, "shape");
  }
  head = line;
  for (const PlannedRow* c : columns) {
    std::snprintf(line, sizeof line, " %14s", c->optimizer.label.c_str());
    head += line;
  }
  out += head + "  factoring\n";
  for (const Group& g : groups) {
    const ModelTensor& t = r.trained[g.first];
    if (listing == TensorListing::by_shape)
      std::snprintf(line, sizeof line, "%-*s %7lld  %-*s", sw, shape_text(t.shape).c_str(), (long long)g.count, nw,
                    t.name.c_str());
    else
      std::snprintf(line, sizeof line, "%-*s  %-*s", nw, t.name.c_str(), sw, shape_text(t.shape).c_str());
    std::string row = line;
    for (const PlannedRow* c : columns) {
      std::snprintf(line, sizeof line, " %14s", format_count(c->f32.tensors[g.first].bytes()).c_str());
      row += line;
    }
    out += row + "  " + factoring_text(r, columns, g.first) + "\n";
  }

  // ---- against the reference implementations ----
  out += "\nagainst the reference implementations (f32 parameters, whole tensors):\n";
  std::vector<const ReferenceRule*> cited;  // whose notes follow, in the order first cited
  auto cite = [&](const ReferenceRule* rule) {
    if (std::find(cited.begin(), cited.end(), rule) == cited.end()) cited.push_back(rule);
  };
  for (const PlannedRow* row : rows) {
    std::snprintf(line, sizeof line, "  %-*s  ", w, row->optimizer.label.c_str());
    out += line;
    const ReferenceRule* rule = find_reference_rule(row->optimizer.choice.name);
    if (!rule) {
      out += "no reference implementation recorded\n";
      continue;
    }
    cite(rule);
    const std::vector<std::string> beyond = beyond_reference(*rule, row->optimizer.choice);
    if (!beyond.empty()) {
      std::string settings;
      for (const std::string& b : beyond) settings += (settings.empty() ? "--" : ", --") + b;
      out += cat("beyond ", rule->implementation, ": ", settings, " (below)\n");
      continue;
    }
    if (sharded(par)) {
      out += cat(rule->implementation, " keeps whole tensors: compare with --zero 0\n");
      continue;
    }
    out += cat(rule->implementation, ": ", format_count(reference_bytes(r, *row, *rule)), " bytes");
    std::string extras;
    for (const ReferenceExtra& x : rule->extras) extras += cat(extras.empty() ? "" : ", ", "'", x.state, "'");
    out += extras.empty() ? ", the same state tensors\n"
                          : cat(": the same state tensors, and ", extras, " for each parameter\n");
  }
  for (const ReferenceRule* rule : cited) {
    std::string notes;
    for (const ReferenceExtra& x : rule->extras)
      notes += cat("    '", x.state, "': a 0-d ", x.dtype, " tensor (", x.bytes, " bytes) per parameter: ", x.why,
                   "\n");
    for (const std::string& k : rule->python_numbers) notes += cat("    '", k, "': a Python int, no tensor\n");
    if (!rule->factoring.empty())
      notes += cat("    factors ", rule->factoring, ", as tally does by default\n");
    std::set<std::string> beyond;
    for (const PlannedRow* row : rows)
      if (row->optimizer.choice.name == rule->optimizer)
        for (const std::string& b : beyond_reference(*rule, row->optimizer.choice)) beyond.insert(b);
    for (const std::string& b : beyond) notes += cat("    --", b, " (tally only): ", rule->beyond.at(b), "\n");
    if (!notes.empty()) out += cat("  ", rule->implementation, ":\n", notes);
  }
  return out;
}

nlohmann::json shapes_report_json(const ShapesReport& r) {
  using nlohmann::json;
  json tensors = json::array();
  for (const ModelTensor& t : r.model.tensors)
    tensors.push_back({{"name", t.name}, {"shape", t.shape}, {"dtype", t.dtype}, {"trained", t.trained()}});
  const int64_t n = r.parameter_count;
  json out = {{"source", r.model.source},
              {"format", r.model.format},
              {"description", r.model.description},
              {"tensors", tensors},
              {"parameters",
               {{"count", n}, {"tensors", r.trained.size()}, {"f32_bytes", 4 * n}, {"bf16_bytes", 2 * n}}},
              {"world", r.parallel.world},
              {"zero", sharded(r.parallel) ? 1 : 0},
              {"reduce_dtype", dtype_name(r.parallel.reduce_dtype)},
              {"rank", r.parallel.rank},
              {"adamw_state_bytes", {{"f32", r.adamw_f32}, {"bf16", r.adamw_bf16}}}};
  json rows = json::array();
  for (const PlannedRow& row : r.rows) {
    auto figures = [&](const StateFigures& f) {
      json o = {{"parameters", f.parameters}, {"gradients", f.gradients},   {"state_bytes", f.state},
                {"state_by_kind", f.state_by_kind}, {"workspace", f.workspace}, {"total", f.total()}};
      if (r.parallel.world > 1) o["comm_buffer"] = f.comm_buffer;
      return o;
    };
    // Each trained tensor's state, listed once (in f32: the bf16 figures differ in bytes, not in layout).
    auto tensor_figures = [&](const StateFigures& f) {
      json ts = json::array();
      for (size_t i = 0; i < f.tensors.size(); ++i) {
        json states = json::array();
        for (const optim::StateSpec& s : f.tensors[i].states)
          states.push_back(
              {{"name", s.name}, {"shape", s.shape}, {"dtype", dtype_name(s.dtype)}, {"bytes", s.bytes()}});
        ts.push_back({{"name", f.tensors[i].param},
                      {"shape", r.trained[i].shape},
                      {"factored", f.factoring[i].factored},
                      {"factoring", optim::describe_factoring(r.trained[i].shape, f.factoring[i])},
                      {"bytes", f.tensors[i].bytes()},
                      {"states", states}});
      }
      return ts;
    };
    json settings = json::object();
    for (const auto& [k, v] : row.optimizer.choice.settings.values()) settings[k] = v;
    json o = {{"label", row.optimizer.label}, {"optimizer", row.optimizer.choice.name},
              {"settings", settings},         {"varied", row.optimizer.varied},
              {"f32", figures(row.f32)},      {"bf16", figures(row.bf16)}};
    o["f32"]["tensors"] = tensor_figures(row.f32);
    o["f32"]["vs_adamw"] = r.adamw_f32 > 0 ? json(double(row.f32.state) / double(r.adamw_f32)) : json(nullptr);
    o["bf16"]["vs_adamw"] = r.adamw_bf16 > 0 ? json(double(row.bf16.state) / double(r.adamw_bf16)) : json(nullptr);
    if (!row.rank_state.empty()) o["ranks_state_bytes"] = row.rank_state;
    json ref = nullptr;
    if (const ReferenceRule* rule = find_reference_rule(row.optimizer.choice.name)) {
      json extras = json::array();
      for (const ReferenceExtra& x : rule->extras)
        extras.push_back(
            {{"state", x.state}, {"shape", x.shape}, {"dtype", x.dtype}, {"bytes", x.bytes}, {"why", x.why}});
      json beyond = json::object();
      for (const std::string& s : beyond_reference(*rule, row.optimizer.choice)) beyond[s] = rule->beyond.at(s);
      const int64_t bytes = reference_bytes(r, row, *rule);
      ref = {{"implementation", rule->implementation},
             {"factoring", rule->factoring},
             {"state_bytes", bytes >= 0 ? json(bytes) : json(nullptr)},
             {"extras_per_parameter", extras},
             {"beyond", beyond}};
    }
    o["reference"] = ref;
    rows.push_back(o);
  }
  out["optimizers"] = rows;
  return out;
}

}  // namespace tally::train
