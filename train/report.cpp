// The HTML report of training runs (see report.h): reading run directories, downsampling, the page's data.
#include "train/report.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <string_view>

#include "core/error.h"
#include "core/io/file.h"
#include "data/utf8.h"
#include "optim/clip.h"
#include "optim/registry.h"
#include "train/memory_plan.h"
#include "train/run_config.h"
#include "train/run_state.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tally::train {

std::vector<StepPoint> downsample_min_max(const std::vector<StepPoint>& points, int64_t max_points) {
  TALLY_CHECK(max_points >= 2, "downsample_min_max: max_points must be at least 2, got ", max_points);
  const int64_t n = int64_t(points.size());
  if (n <= max_points) return points;
  // The first and the last point, so that the chart spans the run; between them, buckets of the inner points.
  const int64_t inner = n - 2, buckets = (max_points - 2) / 2;
  std::vector<StepPoint> out;
  out.reserve(size_t(2 * buckets + 2));
  out.push_back(points.front());
  for (int64_t b = 0; b < buckets; ++b) {
    // [lo, hi) among the inner points 1 .. n-2: never empty, inner >= max_points - 1 > buckets
    const int64_t lo = 1 + inner * b / buckets, hi = 1 + inner * (b + 1) / buckets;
    int64_t low = lo, high = lo;
    for (int64_t i = lo + 1; i < hi; ++i) {
      if (points[size_t(i)].value < points[size_t(low)].value) low = i;
      if (points[size_t(i)].value > points[size_t(high)].value) high = i;
    }
    out.push_back(points[size_t(std::min(low, high))]);
    if (low != high) out.push_back(points[size_t(std::max(low, high))]);
  }
  out.push_back(points.back());
  return out;
}

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- reading records ----

// A number of a record: absent or null (NaN and infinity are logged as null) -> NaN; anything else -> an error.
double number_field(const json& r, const char* key, const std::string& where) {
  auto it = r.find(key);
  if (it == r.end() || it->is_null()) return kNaN;
  TALLY_CHECK(it->is_number(), where, ": \"", key, "\" is ", it->dump(), ", not a number");
  return it->get<double>();
}

int64_t integer_field(const json& r, const char* key, const std::string& where) {
  auto it = r.find(key);
  TALLY_CHECK(it != r.end(), where, ": the record has no \"", key, "\"");
  TALLY_CHECK(it->is_number_integer() && it->get<int64_t>() >= 0, where, ": \"", key, "\" is ", it->dump(),
              ", not a non-negative integer");
  return it->get<int64_t>();
}

// A switch of a record: absent (or null) is false.
bool boolean_field(const json& r, const char* key, const std::string& where) {
  auto it = r.find(key);
  if (it == r.end() || it->is_null()) return false;
  TALLY_CHECK(it->is_boolean(), where, ": \"", key, "\" is ", it->dump(), ", not true or false");
  return it->get<bool>();
}

// A value for the page: NaN -> null; aggregates of downsampled series to 6 significant digits (the page says so).
json page_number(double v, bool rounded) {
  if (!std::isfinite(v)) return nullptr;
  if (!rounded) return v;
  char text[32];
  std::snprintf(text, sizeof text, "%.6g", v);
  return std::strtod(text, nullptr);
}

json points_json(const std::vector<StepPoint>& points) {
  json out = json::array();
  for (const StepPoint& p : points) out.push_back(json::array({p.step, p.value}));
  return out;
}

// ---- the optimizer's internals, bucketed as they stream in ----

enum class Reduce { mean, min, max };
struct Field {
  const char* name;    // as the page knows it
  const char* object;  // nested: the summary object ("confidence_row"), else nullptr
  const char* key;
  Reduce reduce;
};
constexpr Field kFields[] = {
    {"update_rms", nullptr, "update_rms", Reduce::mean},
    {"clipped_update_rms", nullptr, "clipped_update_rms", Reduce::mean},
    {"clipped", nullptr, "clipped", Reduce::mean},  // 0 or 1: a bucket's mean is the fraction of its steps clipped
    {"exp_avg_rms", nullptr, "exp_avg_rms", Reduce::mean},
    {"applied_rms", nullptr, "applied_rms", Reduce::mean},
    {"confidence_row.min", "confidence_row", "min", Reduce::min},
    {"confidence_row.mean", "confidence_row", "mean", Reduce::mean},
    {"confidence_row.max", "confidence_row", "max", Reduce::max},
    {"confidence_col.min", "confidence_col", "min", Reduce::min},
    {"confidence_col.mean", "confidence_col", "mean", Reduce::mean},
    {"confidence_col.max", "confidence_col", "max", Reduce::max},
    {"confidence_scale.min", "confidence_scale", "min", Reduce::min},
    {"confidence_scale.mean", "confidence_scale", "mean", Reduce::mean},
    {"confidence_scale.max", "confidence_scale", "max", Reduce::max},
};
constexpr int64_t kNumFields = int64_t(std::size(kFields));
constexpr size_t kClippedField = 2;
static_assert(std::string_view(kFields[kClippedField].name) == "clipped");

struct Aggregate {
  double sum = 0, min = std::numeric_limits<double>::infinity(), max = -std::numeric_limits<double>::infinity();
  int64_t n = 0;  // finite values
  void add(double v) {
    if (!std::isfinite(v)) return;
    sum += v;
    min = std::min(min, v);
    max = std::max(max, v);
    ++n;
  }
  void merge(const Aggregate& o) {
    sum += o.sum;
    min = std::min(min, o.min);
    max = std::max(max, o.max);
    n += o.n;
  }
  double value(Reduce r) const {
    if (n == 0) return kNaN;
    return r == Reduce::min ? min : r == Reduce::max ? max : sum / double(n);  // one value: itself, exactly
  }
};

// "transformer.h.3.attn.c_attn.weight" -> "h.3"; "transformer.wte.weight" -> "wte".
std::string layer_of(const std::string& param) {
  std::string rest = param.rfind("transformer.", 0) == 0 ? param.substr(12) : param;
  if (rest.rfind("h.", 0) == 0) {
    const size_t end = rest.find('.', 2);
    return rest.substr(0, end);
  }
  return rest.substr(0, rest.find('.'));
}

// Every record of the internals goes into the last of at most max_buckets buckets of consecutive records; when
// all are full, neighbours merge pairwise (the records per bucket double). Memory stays bounded however long the
// run, and a run that fits keeps one record per bucket: its values exactly.
class InternalsBuckets {
 public:
  InternalsBuckets(int64_t numbers_budget, int64_t max_points)
      : budget_(numbers_budget), max_points_(max_points) {}

  bool empty() const { return records_ == 0; }

  void add(int64_t step, const json& entries, const std::string& where) {
    TALLY_CHECK(entries.is_array(), where, ": \"optim\" is not an array");
    if (records_ == 0) {
      const int64_t per_bucket_numbers = std::max<int64_t>(1, int64_t(entries.size()) * kNumFields);
      // Within the budget, but never fewer than 16 buckets (nor more than a training series' points); even, so
      // that merging pairs leaves every bucket but the last full.
      const int64_t fit = std::max<int64_t>(16, budget_ / per_bucket_numbers);
      max_buckets_ = std::max<int64_t>(2, std::min(fit, max_points_)) & ~int64_t(1);
    }
    if (buckets_.empty() || buckets_.back().records == per_bucket_) {
      if (int64_t(buckets_.size()) == max_buckets_) merge_pairs();
      if (buckets_.empty() || buckets_.back().records == per_bucket_) {
        buckets_.push_back({step, step, 0});
        for (Tensor& t : tensors_)
          for (auto& f : t.fields) f.emplace_back();
      }
    }
    Bucket& b = buckets_.back();
    b.last = step;
    b.records += 1;
    ++records_;
    for (const json& e : entries) {
      TALLY_CHECK(e.is_object() && e.contains("param") && e["param"].is_string(), where,
                  ": an entry of \"optim\" has no \"param\" name: ", e.dump().substr(0, 200));
      Tensor& t = tensor(e["param"].get<std::string>());
      for (int64_t f = 0; f < kNumFields; ++f) {
        t.last[size_t(f)] = read(e, kFields[f], where);
        t.fields[size_t(f)].back().add(t.last[size_t(f)]);
      }
      t.records += 1;
      t.clipped += t.last[kClippedField] == 1.0 ? 1 : 0;
      t.last_step = step;
    }
  }

  json to_json() const {
    const bool rounded = per_bucket_ > 1;
    json first = json::array(), last = json::array(), count = json::array();
    for (const Bucket& b : buckets_) {
      first.push_back(b.first);
      last.push_back(b.last);
      count.push_back(b.records);
    }
    // Tensors by layer, the layers in the order they first appear (the model's order), then as logged.
    std::vector<const Tensor*> order;
    std::map<std::string, size_t> layer_rank;
    for (const Tensor& t : tensors_) {
      layer_rank.try_emplace(layer_of(t.param), layer_rank.size());
      order.push_back(&t);
    }
    std::stable_sort(order.begin(), order.end(), [&](const Tensor* a, const Tensor* b) {
      return layer_rank.at(layer_of(a->param)) < layer_rank.at(layer_of(b->param));
    });
    json tensors = json::array();
    for (const Tensor* tp : order) {
      const Tensor& t = *tp;
      json series = json::object(), last_values = json::object();
      for (int64_t f = 0; f < kNumFields; ++f) {
        if (std::isfinite(t.last[size_t(f)])) last_values[kFields[f].name] = t.last[size_t(f)];
        json values = json::array();
        bool any = false;
        for (const Aggregate& a : t.fields[size_t(f)]) {
          values.push_back(page_number(a.value(kFields[f].reduce), rounded));
          any = any || a.n > 0;
        }
        if (any) series[kFields[f].name] = values;  // a tensor without confidence factors carries none
      }
      tensors.push_back({{"param", t.param}, {"layer", layer_of(t.param)}, {"records", t.records},
                         {"clipped", t.clipped}, {"last_step", t.last_step}, {"last", last_values}, {"series", series}});
    }
    return {{"records", records_}, {"per_bucket", per_bucket_}, {"downsampled", rounded}, {"first", first},
            {"last", last}, {"count", count}, {"tensors", tensors}};
  }

 private:
  struct Bucket {
    int64_t first, last, records;
  };
  struct Tensor {
    std::string param;
    std::vector<std::vector<Aggregate>> fields;  // [field][bucket]
    int64_t records = 0, clipped = 0, last_step = 0;
    std::array<double, kNumFields> last{};  // the values of its last record, exactly
  };

  static double read(const json& e, const Field& f, const std::string& where) {
    if (f.object) {
      auto it = e.find(f.object);
      if (it == e.end() || it->is_null()) return kNaN;
      TALLY_CHECK(it->is_object(), where, ": \"", f.object, "\" of '", e["param"].get<std::string>(), "' is not an object");
      return number_field(*it, f.key, where);
    }
    if (std::string_view(f.key) == "clipped") {
      auto it = e.find("clipped");
      if (it == e.end()) return kNaN;
      TALLY_CHECK(it->is_boolean(), where, ": \"clipped\" of '", e["param"].get<std::string>(), "' is not true or false");
      return it->get<bool>() ? 1.0 : 0.0;
    }
    return number_field(e, f.key, where);
  }

  Tensor& tensor(const std::string& param) {
    auto [it, added] = index_.try_emplace(param, tensors_.size());
    if (added) {
      Tensor t;
      t.param = param;
      t.fields.assign(size_t(kNumFields), std::vector<Aggregate>(buckets_.size()));
      tensors_.push_back(std::move(t));
    }
    return tensors_[it->second];
  }

  void merge_pairs() {
    std::vector<Bucket> merged;
    for (size_t i = 0; i < buckets_.size(); i += 2) {
      Bucket b = buckets_[i];
      if (i + 1 < buckets_.size()) b = {b.first, buckets_[i + 1].last, b.records + buckets_[i + 1].records};
      merged.push_back(b);
    }
    for (Tensor& t : tensors_)
      for (auto& f : t.fields) {
        std::vector<Aggregate> m;
        for (size_t i = 0; i < f.size(); i += 2) {
          Aggregate a = f[i];
          if (i + 1 < f.size()) a.merge(f[i + 1]);
          m.push_back(a);
        }
        f = std::move(m);
      }
    buckets_ = std::move(merged);
    per_bucket_ *= 2;
  }

  int64_t budget_, max_points_, max_buckets_ = 16, per_bucket_ = 1, records_ = 0;
  std::vector<Bucket> buckets_;
  std::vector<Tensor> tensors_;
  std::map<std::string, size_t> index_;
};

// ---- one run ----

struct RunLogData {
  std::vector<StepPoint> loss, lr, grad_norm, tokens_per_s, val_loss;
  std::vector<int64_t> skipped_steps;
  int64_t skipped = 0, repeated = 0, unknown = 0;
  bool incomplete_last_line = false;
  json memory, comm;  // the first of each record (a resumed run logs them again)
};

// Reads log.jsonl. Records of a step already read are counted and left out: a resumed run sets aside the records
// after its checkpoint (set_aside_records_after), but logs written before it did repeat those steps.
RunLogData read_log(std::istream& in, const std::string& name, InternalsBuckets& internals) {
  RunLogData d;
  int64_t last_step = -1, last_val = -1, last_optim = -1;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const bool terminated = !in.eof();
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = cat(name, ":", line_no);
    json r = json::parse(line, nullptr, false);
    if (r.is_discarded() || !r.is_object()) {
      // A run killed while writing leaves its last line unfinished: that line alone is left out.
      if (!terminated) {
        d.incomplete_last_line = true;
        break;
      }
      fail(where, ": not a JSON object: ", line.substr(0, 120), line.size() > 120 ? "..." : "");
    }
    const int64_t step = integer_field(r, "step", where);
    if (r.contains("optim")) {
      if (step <= last_optim) {
        ++d.repeated;
        continue;
      }
      last_optim = step;
      internals.add(step, r["optim"], where);
    } else if (r.contains("val_loss")) {
      if (step <= last_val) {
        ++d.repeated;
        continue;
      }
      last_val = step;
      const double v = number_field(r, "val_loss", where);
      if (std::isfinite(v)) d.val_loss.push_back({step, v});
    } else if (r.contains("memory_predicted")) {
      if (d.memory.is_null()) d.memory = r;
    } else if (r.contains("comm_bytes_predicted")) {
      if (d.comm.is_null()) d.comm = r;
    } else if (r.contains("loss") || r.contains("skipped")) {
      if (step <= last_step) {
        ++d.repeated;
        continue;
      }
      last_step = step;
      if (boolean_field(r, "skipped", where)) {
        ++d.skipped;
        if (d.skipped_steps.size() < 100) d.skipped_steps.push_back(step);
        continue;
      }
      auto add = [&](std::vector<StepPoint>& series, const char* key) {
        const double v = number_field(r, key, where);
        if (std::isfinite(v)) series.push_back({step, v});
      };
      add(d.loss, "loss");
      add(d.lr, "lr");
      add(d.grad_norm, "grad_norm");
      add(d.tokens_per_s, "tokens_per_s");
    } else {
      ++d.unknown;  // a record this version does not know: left out, and counted on the page
    }
  }
  return d;
}

json series_json(const std::vector<StepPoint>& points, int64_t max_points) {
  const std::vector<StepPoint> shown = downsample_min_max(points, max_points);
  return {{"count", points.size()}, {"downsampled", shown.size() != points.size()}, {"points", points_json(shown)}};
}

// The run's configuration (config.json) and, from it, the memory every registered optimizer would need for the
// run's model; a missing or unreadable config.json leaves the run's training and internals panels whole, and says
// why there is no plan.
json config_and_plan(const fs::path& dir) {
  const fs::path path = dir / "config.json";
  if (!fs::exists(path)) return {{"error", cat("no config.json in '", dir.string(), "'")}};
  try {
    const json cfg = json::parse(io::read_file_text(path), nullptr, false);
    TALLY_CHECK(cfg.is_object() && cfg.contains("flags") && cfg["flags"].is_object(), "'", path.string(),
                "' is not a run's configuration (no \"flags\" object)");
    Flags flags("train", "", train_flags());
    for (const auto& [k, v] : cfg["flags"].items()) {
      TALLY_CHECK(v.is_string(), "'", path.string(), "': flag \"", k, "\" is not a string");
      flags.set(k, v.get<std::string>());
    }
    // cfg[key] when it is an integer in [1, most], else `otherwise`.
    const auto count = [&](const char* key, int64_t most, int otherwise) {
      return cfg.contains(key) && cfg[key].is_number_integer() && cfg[key].get<int64_t>() >= 1 &&
                     cfg[key].get<int64_t>() <= most
                 ? cfg[key].get<int>()
                 : otherwise;
    };
    // Written by a run of several ranks: its tokens per step were theirs (a config.json without "world": one).
    const int32_t world = count("world", INT32_MAX, 1);
    RunConfig c = run_config(flags, DataResolution::skip, world);
    if (cfg.contains("model_config")) c.model = train::model_config_from_json(cfg["model_config"], path.string());
    // Some CPU scratch is per thread (attention's): plan with the run's thread count, as its trainer did.
    struct Threads {
      int before = omp_get_max_threads();
      ~Threads() { omp_set_num_threads(before); }
    } restore;
    // The threads it computed with (config.json's "threads"; older runs: --threads, 0 leaving this process's).
    const int threads = count("threads", kMaxThreads, c.threads);
    if (threads > 0) omp_set_num_threads(threads);
    const StepShape shape{.batch = c.batch, .seq = c.seq, .accumulation = c.accumulation, .grad_clip = c.grad_clip,
                          .dtype = c.dtype};
    std::vector<optim::NamedShape> shapes;
    {
      models::GPT2 meta(c.model, {.device = Device::meta(), .dtype = c.dtype});
      for (const Tensor& p : meta.parameters()) shapes.push_back(optim::named_shape(p));
    }
    json config = {{"optimizer", c.optimizer.name}, {"lr", c.optimizer.lr()},
                   {"weight_decay", c.optimizer.weight_decay()}, {"model", c.model.str()},
                   {"parameters", c.model.num_parameters()}, {"batch", c.batch}, {"seq", c.seq},
                   {"accumulation", c.accumulation}, {"steps", c.steps}, {"schedule", c.schedule},
                   {"warmup", c.warmup}, {"grad_clip", c.grad_clip}, {"log_optim", c.log_optim},
                   {"device", c.device.str()}, {"dtype", dtype_name(c.dtype)}, {"flags", cfg["flags"]}};
    json optimizers = json::array();
    for (const optim::OptimizerEntry& e : optim::optimizers()) {
      json o = {{"name", e.name}, {"summary", e.summary}, {"this_run", e.name == c.optimizer.name}};
      try {
        const OptimizerChoice choice = optimizer_choice(flags, e.name);
        const MemoryFigures m = predict_step_memory(c.model, choice, shape);
        json tensors = json::object();
        for (const optim::TensorState& ts : choice.predict(shapes)) tensors[ts.param] = ts.bytes();
        o["lr"] = choice.lr();
        o["state_bytes"] = m.optimizer_state;
        o["state_by_kind"] = m.state_by_kind;
        o["total"] = m.total;
        o["total_held"] = m.total_held;
        o["tensors"] = tensors;
        if (e.name == c.optimizer.name) config["plan"] = to_json(m);
      } catch (const std::exception& err) {
        o["error"] = err.what();
      }
      optimizers.push_back(o);
    }
    config["optimizers"] = optimizers;
    return config;
  } catch (const std::exception& e) {
    return {{"error", cat("the memory plan of '", dir.string(), "' could not be made: ", e.what())}};
  }
}

json run_json(const fs::path& dir, const std::string& name, const ReportOptions& options) {
  TALLY_CHECK(fs::exists(dir), "run directory '", dir.string(), "' does not exist");
  TALLY_CHECK(fs::is_directory(dir), "'", dir.string(), "' is not a run directory (not a directory)");
  const fs::path log = dir / "log.jsonl";
  TALLY_CHECK(fs::exists(log), "no log.jsonl in '", dir.string(), "' (a run directory of tally train has one)");
  std::ifstream in(log);
  TALLY_CHECK(in.is_open(), "cannot read '", log.string(), "'");
  json config = config_and_plan(dir);
  json run = log_data(in, log.string(), options, config.contains("grad_clip") ? config["grad_clip"].get<double>() : 0);
  run["name"] = name;
  run["dir"] = dir.string();
  run["config"] = config;
  return run;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char ch : s) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += ch;
    }
  }
  return out;
}

}  // namespace

json log_data(std::istream& log, const std::string& where, const ReportOptions& options, double grad_clip) {
  InternalsBuckets internals(options.internals_numbers, options.max_points);
  const RunLogData d = read_log(log, where, internals);
  json summary = {{"steps", d.loss.size()}, {"skipped", d.skipped}, {"skipped_steps", d.skipped_steps},
                  {"repeated_records", d.repeated}, {"unknown_records", d.unknown},
                  {"incomplete_last_line", d.incomplete_last_line}};
  if (!d.loss.empty()) {
    auto lowest = std::min_element(d.loss.begin(), d.loss.end(),
                                   [](const StepPoint& a, const StepPoint& b) { return a.value < b.value; });
    summary["first_step"] = d.loss.front().step;
    summary["last_step"] = d.loss.back().step;
    summary["final_loss"] = d.loss.back().value;
    summary["min_loss"] = lowest->value;
    summary["min_loss_step"] = lowest->step;
  }
  if (!d.lr.empty()) summary["final_lr"] = d.lr.back().value;
  if (!d.val_loss.empty()) {
    summary["final_val_loss"] = d.val_loss.back().value;
    summary["final_val_step"] = d.val_loss.back().step;
  }
  if (d.tokens_per_s.size() > 1) {  // the first step pays for allocations: left out, as tally train does
    double sum = 0;
    for (size_t i = 1; i < d.tokens_per_s.size(); ++i) sum += d.tokens_per_s[i].value;
    summary["mean_tokens_per_s"] = sum / double(d.tokens_per_s.size() - 1);
  }
  // Global gradient-norm clipping: the steps whose gradients the clip scaled down (as the step computes it).
  if (grad_clip > 0) {
    int64_t clipped = 0;
    for (const StepPoint& p : d.grad_norm) clipped += optim::clip_coefficient(p.value, grad_clip) < 1.0 ? 1 : 0;
    summary["grad_clip"] = grad_clip;
    summary["grad_clipped_steps"] = clipped;
  }
  return {{"summary", summary},
          {"series", {{"loss", series_json(d.loss, options.max_points)},
                      {"lr", series_json(d.lr, options.max_points)},
                      {"grad_norm", series_json(d.grad_norm, options.max_points)},
                      {"tokens_per_s", series_json(d.tokens_per_s, options.max_points)},
                      {"val_loss", series_json(d.val_loss, options.max_points)}}},
          {"internals", internals.empty() ? json(nullptr) : internals.to_json()},
          {"memory", d.memory}, {"comm", d.comm}};
}

LossCurves loss_curves(const fs::path& run_dir) {
  const fs::path path = run_dir / "log.jsonl";
  std::ifstream in(path);
  if (!in) fail("cannot read '", path.string(), "'");
  InternalsBuckets internals(1, 2);  // --log-optim's records are not curves of the loss: kept to a minimum
  RunLogData d = read_log(in, path.string(), internals);
  return {std::move(d.loss), std::move(d.val_loss)};
}

json report_data(const std::vector<fs::path>& runs, const std::vector<std::string>& names, const ReportOptions& options) {
  TALLY_CHECK(!runs.empty(), "report: no run directory given");
  TALLY_CHECK(names.empty() || names.size() == runs.size(), "report: ", names.size(), " names for ", runs.size(), " runs");
  TALLY_CHECK(options.max_points >= 2 && options.internals_numbers >= 1, "report: max_points must be >= 2, got ",
              options.max_points);
  json out_runs = json::array();
  std::map<std::string, int> seen;
  for (size_t i = 0; i < runs.size(); ++i) {
    std::string name = names.empty() ? runs[i].lexically_normal().filename().string() : names[i];
    if (name.empty() || name == ".") name = runs[i].lexically_normal().parent_path().filename().string();
    if (name.empty()) name = runs[i].string();
    if (seen[name]++ > 0) name = runs[i].string();  // two runs of one name: their paths tell them apart
    out_runs.push_back(run_json(runs[i], name, options));
  }
  std::vector<std::string> fields;
  for (const Field& f : kFields) fields.push_back(f.name);
  return {{"max_points", options.max_points}, {"internals_numbers", options.internals_numbers},
          {"internals_fields", fields}, {"runs", out_runs}};
}

std::string report_html(const json& data) {
  // JSON in a <script> element: a '<' only ever occurs inside strings, where \u003c means the same. Bytes that are
  // no UTF-8 (a parameter name in a hand-edited log) become U+FFFD.
  std::string payload;
  for (char ch : data.dump(-1, ' ', false, json::error_handler_t::replace)) {
    if (ch == '<') payload += "\\u003c";
    else payload += ch;
  }
  std::string title = "tally report:";
  for (const json& r : data["runs"]) {
    title += ' ';
    title += data::to_valid_utf8(r["name"].get<std::string>());
  }
  std::string html;
  html += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  html += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  html += "<title>" + html_escape(title) + "</title>\n<style>\n";
  html += report_page_css();
  html += "</style>\n</head>\n<body>\n";
  html += "<noscript><p>This report draws its panels with JavaScript; the data is in the page's report-data "
          "element.</p></noscript>\n";
  html += "<main id=\"report\"></main>\n<div id=\"tip\" hidden></div>\n";
  html += "<script type=\"application/json\" id=\"report-data\">" + payload + "</script>\n";
  html += "<script>\n";
  html += report_page_script();
  html += "</script>\n</body>\n</html>\n";
  return html;
}

void write_report(const std::vector<fs::path>& runs, const fs::path& out, const std::vector<std::string>& names,
                  const ReportOptions& options) {
  io::write_file_atomic(out, report_html(report_data(runs, names, options)));
}

}  // namespace tally::train
