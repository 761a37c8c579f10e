// `tally compare`: the same training run with several optimizers (default CAME, AdamW, Adafactor, each with its
// own learning rate), written up as a report directory: the HTML page of all runs (report.html, train/report.h),
// loss curves (SVG), optimizer-state memory (SVG), and a Markdown table of final train/val loss, state bytes and
// ms/step, written after each run. The CAME paper's central claim at small scale. The comparison is saved as it
// starts (OUT/compare.json: optimizers, rates, the flags every run gets), so that --resume continues one interrupted.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include "core/dist/communicator.h"
#include "core/io/file.h"
#include "core/ledger.h"
#include "optim/registry.h"
#include "train/checkpoint.h"
#include "train/commands.h"
#include "train/report.h"
#include "train/run_log.h"
#include "train/svg.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tally::train {

namespace {

struct Result {
  std::string name;
  double lr;
  RunSummary summary;
};

// Why a run ended before its last step (non-finite steps, or a stop request); empty when it did not.
std::string stop_text(const RunSummary& s, int64_t steps, const fs::path& report) {
  if (!s.interrupted) return s.stopped;
  return cat("interrupted on request at step ", s.steps_done, " of ", steps,
             " (continue the comparison: tally compare --resume ", report.string(), ")");
}

// The report directory's files for the runs in `results` (one per optimizer of `names`: the whole training history
// of each, from its log; an empty one is named as not run): report.md, summary.json, loss.svg, memory.svg, report.html.
void write_comparison(const fs::path& report, const std::vector<std::optional<Result>>& results,
                      const std::vector<std::string>& names, const std::vector<RunConfig>& configs) {
  std::vector<report::Series> curves;
  std::vector<report::Bar> bars;
  std::string unreadable;  // runs whose log could not be read: their curves are left out, and the report says why
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i]) continue;
    const Result& r = *results[i];
    LossCurves c;
    try {
      c = loss_curves(report / "runs" / r.name);
    } catch (const Error& e) {
      unreadable += cat("- ", r.name, ": its curves are left out: ", e.what(), "\n");
    }
    report::Series train{r.name + " train", {}, report::LineStyle::solid, int(i)};
    report::Series val{r.name + " val", {}, report::LineStyle::dashed, int(i)};
    for (const StepPoint& p : c.train) train.points.emplace_back(double(p.step), p.value);
    for (const StepPoint& p : c.val) val.points.emplace_back(double(p.step), p.value);
    curves.push_back(std::move(train));
    curves.push_back(std::move(val));
    bars.push_back({r.name, double(r.summary.optimizer_state_bytes) / 1e6,
                    format_bytes_human(r.summary.optimizer_state_bytes), int(i)});
  }
  io::write_file_atomic(report / "loss.svg",
                        report::line_chart("loss per step", "step", "cross-entropy (nats)", curves));
  io::write_file_atomic(report / "memory.svg", report::bar_chart("optimizer state", "MB", bars));
  std::string md = "# Optimizer comparison\n\n![loss](loss.svg)\n\n![memory](memory.svg)\n\n";
  md +=
      "| optimizer | lr | final train loss | final val loss | optimizer state (bytes) | ms/step "
      "|\n|---|---|---|---|---|---|\n";
  json summary = json::array();
  std::string notes;
  for (size_t i = 0; i < results.size(); ++i) {
    if (!results[i]) {  // not reached (a stop request, or a comparison still training): named, not silently missing
      summary.push_back({{"optimizer", names[i]}, {"stopped", "not run: the comparison was interrupted before it"}});
      notes += cat("- ", names[i], ": not run (the comparison was interrupted before it)\n");
      continue;
    }
    const Result& r = *results[i];
    char row[320];
    const RunSummary& s = r.summary;
    const std::string stop = stop_text(s, configs[i].steps, report);
    if (s.interrupted) {  // stopped on request: its last loss, no final validation
      std::snprintf(row, sizeof row, "| %s | %.3g | %.4f (interrupted at step %lld) | - | %s | %.0f |\n",
                    r.name.c_str(), r.lr, s.final_train_loss, (long long)s.steps_done,
                    format_bytes_exact(s.optimizer_state_bytes).c_str(), s.ms_per_step);
    } else if (s.stopped.empty()) {
      std::snprintf(row, sizeof row, "| %s | %.3g | %.4f | %.4f | %s | %.0f |\n", r.name.c_str(), r.lr,
                    s.final_train_loss, s.final_val_loss, format_bytes_exact(s.optimizer_state_bytes).c_str(),
                    s.ms_per_step);
    } else {  // its last finite loss, where there was one; no final validation
      char last[48] = "";
      if (std::isfinite(s.final_train_loss)) std::snprintf(last, sizeof last, ", last finite %.4g", s.final_train_loss);
      std::snprintf(row, sizeof row, "| %s | %.3g | stopped at step %lld (non-finite)%s | - | %s | %.0f |\n",
                    r.name.c_str(), r.lr, (long long)s.steps_done, last,
                    format_bytes_exact(s.optimizer_state_bytes).c_str(), s.ms_per_step);
    }
    md += row;
    json entry = {{"optimizer", r.name},
                  {"lr", r.lr},
                  {"final_train_loss", s.final_train_loss},
                  {"final_val_loss", s.final_val_loss},
                  {"state_bytes", s.optimizer_state_bytes},
                  {"ms_per_step", s.ms_per_step},
                  {"steps", s.steps_done}};
    if (!stop.empty()) {
      entry["stopped"] = stop;
      entry["interrupted"] = s.interrupted;
      entry["final_val_loss"] = nullptr;  // no final evaluation (an earlier one would pass for the run's result)
      notes += cat("- ", r.name, ": ", stop, "\n");
    }
    summary.push_back(entry);
  }
  if (!notes.empty()) md += "\nRuns that stopped before their last step:\n\n" + notes;
  if (!unreadable.empty()) md += "\nLogs that could not be read:\n\n" + unreadable;
  io::write_file_atomic(report / "report.md", md);
  io::write_file_atomic(report / "summary.json", summary.dump(2) + "\n");
  std::vector<fs::path> run_dirs;
  std::vector<std::string> run_names;
  for (const auto& r : results) {
    if (!r) continue;
    run_dirs.push_back(report / "runs" / r->name);
    run_names.push_back(r->name);
  }
  try {
    write_report(run_dirs, report / "report.html", run_names);
  } catch (const Error& e) {  // the table and curves are written: the page's failure is a warning
    std::fprintf(stderr, "tally compare: warning: report.html was not written: %s\n", e.what());
  }
}

// The printed table of the results (rank 0's stdout), as report.md has it.
void print_table(const fs::path& report) {
  const std::string md = io::read_file_text(report / "report.md");
  const size_t table = md.find("| optimizer |");
  if (table != std::string::npos) std::printf("\n%s", md.substr(table).c_str());
}

// What a comparison is, saved in OUT/compare.json as it starts, so that --resume continues it: its optimizers, their
// learning rates (empty: each one's default), and the training flags given for every run.
struct Comparison {
  std::vector<std::string> optimizers, lrs;
  json flags = json::object();
};

Comparison read_comparison(const fs::path& report) {
  const fs::path file = report / "compare.json";
  std::error_code ec;
  if (!fs::is_directory(report, ec))
    fail("--resume '", report.string(), "': no such directory (it names the --out of a tally compare)");
  if (!fs::exists(file)) {
    // A run of a comparison (OUT/runs/<optimizer>) is continued with its comparison.
    const fs::path outer = fs::absolute(report).lexically_normal().parent_path().parent_path();
    const std::string hint =
        fs::exists(outer / "compare.json") && holds_run(report)
            ? cat(": it is a run of the comparison in '", outer.string(),
                  "': continue that with tally compare --resume ", outer.string())
        : holds_run(report)
            ? cat(": it holds a run of tally train; continue it with tally train --resume ", report.string())
            : std::string(" (a tally compare writes it as it starts)");
    fail("--resume '", report.string(), "': no compare.json there", hint, "; nothing was trained");
  }
  const json j = json::parse(io::read_file_text(file), nullptr, false);
  auto strings = [&](const char* key) {
    std::vector<std::string> out;
    if (!j.is_object() || !j.contains(key) || !j[key].is_array())
      fail("'", file.string(), "' has no \"", key, "\" list (damaged?); nothing was trained");
    for (const json& v : j[key]) {
      if (!v.is_string())
        fail("'", file.string(), "': \"", key, "\" holds ", v.dump(), ", not a name; nothing was trained");
      out.push_back(v.get<std::string>());
    }
    return out;
  };
  Comparison c{strings("optimizers"), strings("lrs")};
  if (!j.contains("flags") || !j["flags"].is_object())
    fail("'", file.string(), "' has no \"flags\" object (damaged?); nothing was trained");
  c.flags = j["flags"];
  if (c.optimizers.empty() || (!c.lrs.empty() && c.lrs.size() != c.optimizers.size()))
    fail("'", file.string(), "': ", c.optimizers.size(), " optimizers and ", c.lrs.size(), " rates (damaged?)");
  return c;
}

// The rows an earlier invocation of a resumed comparison wrote (summary.json), by optimizer; empty where there is none.
std::map<std::string, json> earlier_rows(const fs::path& report) {
  std::map<std::string, json> rows;
  if (!fs::exists(report / "summary.json")) return rows;
  const json j = json::parse(io::read_file_text(report / "summary.json"), nullptr, false);
  if (!j.is_array()) return rows;
  for (const json& e : j)
    if (e.is_object() && e.contains("optimizer") && e["optimizer"].is_string())
      rows[e["optimizer"].get<std::string>()] = e;
  return rows;
}

double number_or_nan(const json& e, const char* key) {
  return e.contains(key) && e[key].is_number() ? e[key].get<double>() : NAN;
}

// A run an earlier invocation finished (or stopped on non-finite steps): its row as that invocation wrote it.
RunSummary finished_run(const json& row) {
  RunSummary s;
  s.steps_done = row.value("steps", int64_t(0));
  s.final_train_loss = number_or_nan(row, "final_train_loss");
  s.final_val_loss = number_or_nan(row, "final_val_loss");
  s.ms_per_step = number_or_nan(row, "ms_per_step");
  s.optimizer_state_bytes = row.value("state_bytes", int64_t(0));
  if (row.contains("stopped") && row["stopped"].is_string()) s.stopped = row["stopped"].get<std::string>();
  return s;
}

// A finished run without a row (the comparison was killed after its last checkpoint, before its report): the row
// from its log: the last step's loss, the final validation, ms/step from the mean tokens/s, the measured state bytes.
RunSummary summary_from_log(const fs::path& run_dir, const RunConfig& c, int64_t at) {
  const fs::path path = run_dir / "log.jsonl";
  std::ifstream in(path);
  if (!in) fail("cannot read '", path.string(), "'");
  const json d = log_data(in, path.string());
  const json& sum = d["summary"];
  RunSummary s;
  s.steps_done = at;
  s.final_train_loss = number_or_nan(sum, "final_loss");
  if (sum.value("final_val_step", int64_t(-1)) == at) s.final_val_loss = number_or_nan(sum, "final_val_loss");
  double tokens_per_s = number_or_nan(sum, "mean_tokens_per_s");  // all steps but the first (its warm-up)
  if (const json& one = d["series"]["tokens_per_s"]["points"]; !std::isfinite(tokens_per_s) && !one.empty())
    tokens_per_s = one.back()[1].get<double>();  // a run of one step
  s.ms_per_step = double(c.batch * c.seq * c.accumulation * c.world) / tokens_per_s * 1000.0;
  const json& memory = d["memory"];
  if (memory.is_object() && memory.contains("memory") && memory["memory"].contains("measured"))
    s.optimizer_state_bytes = memory["memory"]["measured"].value("optimizer_state", int64_t(0));
  return s;
}

// The files a comparison writes in its directory.
constexpr const char* kReportFiles[] = {"compare.json", "report.md", "summary.json",
                                        "report.html",  "loss.svg",  "memory.svg"};

// Whether some run under OUT/runs holds a run (its log or a checkpoint).
bool holds_some_run(const fs::path& report) {
  std::error_code ec;
  if (!fs::is_directory(report / "runs", ec)) return false;
  for (const auto& e : fs::directory_iterator(report / "runs", ec))
    if (holds_run(e.path())) return true;
  return false;
}

// A new comparison into `report`: refused when it holds an earlier comparison that trained something (continue that
// with --resume), a run of tally train or a checkpoint, or files a comparison writes that no comparison started there
// (someone's report.md, say). A comparison that trained nothing (refused before its first step) is begun again.
void refuse_report_directory(const fs::path& report) {
  std::error_code ec;
  if (!fs::exists(report, ec)) return;
  if (fs::exists(report / "compare.json")) {
    if (holds_some_run(report))
      fail("'", report.string(), "' holds an earlier comparison: continue it with tally compare --resume ",
           report.string(), ", or give another --out; nothing was trained");
    return;
  }
  if (holds_run(report) || fs::exists(report / "manifest.json"))
    fail("'", report.string(), "' holds a run of tally train (or a checkpoint): give the comparison another --out; ",
         "nothing was trained");
  for (const char* name : kReportFiles)
    if (fs::exists(report / name))
      fail("'", report.string(), "' holds a ", name, " that no comparison started there wrote: give another --out, or ",
           "move it away; nothing was trained");
  if (holds_some_run(report))
    fail("'", report.string(), "' holds runs of an earlier compare: give another --out, or move it away; nothing was ",
         "trained");
}

}  // namespace

int cmd_compare(const Args& args) {
  // Data-parallel (mpirun -np N tally compare ...): rank 0 alone prints and writes the report, as train does.
  dist::Communicator& ranks = dist::process_group();
  if (ranks.rank() != 0 && !std::freopen("/dev/null", "w", stdout))
    fail("rank ", ranks.rank(), ": cannot quiet stdout");
  std::vector<FlagSpec> specs;
  for (FlagSpec s : train_flags()) {
    if (s.name == "optimizer" || s.name == "lr") continue;
    if (s.name == "out") s = {"out", "report directory (runs go to OUT/runs/<optimizer>)", "runs/compare"};
    if (s.name == "resume")
      s = {"resume", "continue an interrupted comparison: its report directory (flags given now join each run's)", ""};
    specs.push_back(s);
  }
  specs.push_back(
      {"optimizers", "comma-separated optimizers (" + optim::optimizer_names() + ")", "came,adamw,adafactor"});
  specs.push_back({"lrs", "comma-separated peak learning rates, one per optimizer (default: each one's default)", ""});
  Flags f("compare", "train the same model with several optimizers and write a report", specs);
  f.parse(args);
  if (!f.positional().empty()) throw FlagError("unexpected argument '" + f.positional().front() + "'");
  if (auto cfg = f.maybe("config")) f.merge_json_file(*cfg);
  // The training flags given now (every run gets them), and what the comparison is.
  auto own_flag = [](const std::string& k) {
    return k == "optimizers" || k == "lrs" || k == "out" || k == "config" || k == "resume";
  };
  json given = json::object();
  for (const auto& [k, v] : f.resolved())
    if (!own_flag(k) && f.given(k)) given[k] = v;
  Comparison cmp;
  fs::path report;
  const std::optional<std::string> resume = f.maybe("resume");
  if (resume) {
    report = fs::path(*resume).lexically_normal();
    if (report.filename().empty()) report = report.parent_path();
    std::error_code ec;
    if (f.given("out") && !fs::equivalent(report, f.str("out"), ec))
      throw FlagError(cat("--out ", f.str("out"), " with --resume ", *resume,
                          ": a resumed comparison goes on in its own directory"));
    cmp = read_comparison(report);
    // What a resumed comparison trains stays as it began (its compare.json): its lists, and every flag that shapes
    // training (the model, data, batches, schedule, optimizer settings); the same values again (a --config that
    // started it) change nothing. More --steps, and how a run is watched and saved, may change.
    if (f.given("optimizers") && f.list("optimizers") != cmp.optimizers)
      throw FlagError(cat("--optimizers", f.origin("optimizers"), " with --resume: a resumed comparison trains the ",
                          "optimizers it started with (", report.string(), "/compare.json)"));
    if (f.given("lrs") && f.list("lrs") != cmp.lrs)
      throw FlagError(cat("--lrs", f.origin("lrs"), " with --resume: a resumed comparison keeps the rates it started ",
                          "with (", report.string(), "/compare.json)"));
    static const std::set<std::string> kMayChange = {"steps",         "eval-every", "val-batches",  "sample-every",
                                                     "sample-tokens", "save-every", "keep-last",    "log-every",
                                                     "log-optim",     "threads",    "max-bad-steps"};
    for (const auto& [k, v] : given.items()) {
      std::string before;
      if (cmp.flags.contains(k))
        before = cmp.flags[k].get<std::string>();
      else
        for (const FlagSpec& spec : train_flags())
          if (spec.name == k) before = spec.default_value;
      if (!kMayChange.count(k) && v.get<std::string>() != before)
        throw FlagError(
            cat("--", k, " ", v.get<std::string>(), f.origin(k), " with --resume: the comparison's runs ",
                "train with --", k, " ", before.empty() ? std::string("unset") : before,
                " (every run alike); only --steps and how runs are evaluated, logged and saved may change"));
      cmp.flags[k] = v;  // flags given now win: more --steps, say
    }
  } else {
    cmp.optimizers = f.list_once("optimizers", " (each run goes to OUT/runs/<optimizer>)");
    cmp.lrs = f.given("lrs") ? f.list("lrs") : std::vector<std::string>{};
    cmp.flags = given;
    report = f.str("out");
    if (cmp.optimizers.empty()) throw FlagError("--optimizers lists none");
    if (!cmp.lrs.empty() && cmp.lrs.size() != cmp.optimizers.size())
      throw FlagError("--lrs gives " + std::to_string(cmp.lrs.size()) + " rates for " +
                      std::to_string(cmp.optimizers.size()) + " optimizers");
  }
  // An unknown optimizer is refused before the directory is taken (or any run's data tokenized into it).
  for (const std::string& name : cmp.optimizers) {
    try {
      optim::find_optimizer(name);
    } catch (const Error& err) {
      throw FlagError(err.what());
    }
  }
  check_before_data(ranks, f);
  // Rank 0 alone looks at the directory and takes it (a second compare into it, or a second resume, is refused while
  // this one runs); the ranks then line up, so that none writes into a directory that rank 0 refuses.
  std::unique_ptr<io::DirectoryLock> lock;
  if (ranks.rank() == 0) {
    if (!resume) refuse_report_directory(report);
    fs::create_directories(report);
    lock = std::make_unique<io::DirectoryLock>(report, "comparison directory");
  }
  int64_t go = 1;
  ranks.broadcast(&go, sizeof go, 0);
  const std::vector<std::string>& names = cmp.optimizers;
  install_stop_handlers();

  // Every run's configuration first, so that a bad optimizer name or rate is refused before anything trains. A
  // resumed comparison continues each run from its latest checkpoint (with its own saved flags, the comparison's
  // winning), keeps the rows of runs finished before, and starts the runs it had not reached; a run killed before its
  // first checkpoint starts anew (its log is kept aside).
  const std::map<std::string, json> earlier = resume ? earlier_rows(report) : std::map<std::string, json>{};
  std::vector<RunConfig> configs;
  std::vector<bool> continues(names.size(), false), finished(names.size(), false), restarts(names.size(), false);
  std::vector<std::optional<Result>> results(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const fs::path run_dir = report / "runs" / names[i];
    Flags rf("train", "", train_flags());
    const std::optional<fs::path> checkpoint = latest_checkpoint(run_dir);
    continues[i] = resume && checkpoint;
    restarts[i] = resume && !checkpoint && holds_run(run_dir);
    if (restarts[i] && ranks.rank() == 0) {
      // Killed before its first checkpoint, or still training under another process (named by its lock).
      const io::DirectoryLock in_use_elsewhere(run_dir, "run directory");
    }
    for (const auto& [k, v] : cmp.flags.items())
      if (v.is_string()) rf.set(k, v.get<std::string>());
    json saved = json::object();
    if (continues[i]) {  // the run's own saved flags, the comparison's winning
      saved = saved_run_flags(run_dir);
      take_saved_flags(rf, saved);
      rf.set("resume", run_dir.string());
    }
    rf.set("optimizer", names[i]);
    if (!cmp.lrs.empty()) rf.set("lr", cmp.lrs[i]);
    rf.set("out", run_dir.string());
    configs.push_back(run_config(rf, DataResolution::resolve, ranks.world()));
    RunConfig& c = configs.back();
    c.continue_with = cat("tally compare --resume ", report.string());
    if (!continues[i]) continue;
    resume_model_of(c, run_dir);
    // Done before: trained to the end of its own schedule (the --steps it last ran with), or stopped on non-finite
    // steps at its latest checkpoint (continuing would only repeat them). Kept when that is this comparison's --steps:
    // its row as written then, or, missing (killed before it was written), from its log.
    const int64_t at = checkpoint_step(*checkpoint);
    const std::string saved_steps = saved.value("steps", std::string());
    const bool ran_its_schedule = saved_steps == std::to_string(at);
    const auto row = earlier.find(names[i]);
    const bool row_here = row != earlier.end() && row->second.value("steps", int64_t(-1)) == at &&
                          !row->second.value("interrupted", false);
    const bool diverged = row_here && row->second.contains("stopped");
    if (at > c.steps || (at == c.steps && !ran_its_schedule && !diverged))
      throw FlagError(cat("--steps ", c.steps, ": the run of ", names[i], " stopped at step ", at,
                          ran_its_schedule ? "" : cat(" of its ", saved_steps), "; give --steps ",
                          at > c.steps ? cat("of at least ", at) : cat("above ", at),
                          " (the runs of a comparison train alike)"));
    finished[i] = at == c.steps || diverged;
    if (finished[i]) {
      const RunSummary kept = row_here ? finished_run(row->second) : summary_from_log(run_dir, c, at);
      results[i] = Result{names[i], c.optimizer.lr(), kept};
    }
  }
  // Each run to continue is checked against its checkpoint (model, optimizer, batches) before anything trains or the
  // comparison's record changes: a refusal leaves everything as it was.
  for (size_t i = 0; i < names.size(); ++i) {
    if (!continues[i] || finished[i]) continue;
    Trainer probe(configs[i]);
    probe.resume(configs[i].out);
    probe.check_before_run();
  }
  // Then the record (written again at a resume: flags given then, such as more --steps, are the comparison's from
  // now on), and the logs of runs killed before their first checkpoint put aside, after the ranks have read them.
  ranks.broadcast(&go, sizeof go, 0);
  if (ranks.rank() == 0) {
    for (const char* name : kReportFiles) io::remove_stale_temporaries_of(report / name);  // of a killed compare
    const json saved = {{"optimizers", cmp.optimizers}, {"lrs", cmp.lrs}, {"flags", cmp.flags}};
    io::write_file_atomic(report / "compare.json", saved.dump(2) + "\n");
    for (size_t i = 0; i < names.size(); ++i) {
      if (!restarts[i]) continue;
      const fs::path run_dir = report / "runs" / names[i];
      const fs::path aside = unused_aside_path(run_dir, "log.killed-before-checkpoint");
      fs::rename(run_dir / "log.jsonl", aside);
      std::printf("%s: its run was stopped before its first checkpoint: it starts anew (its log is kept as %s)\n",
                  names[i].c_str(), aside.c_str());
    }
  }
  ranks.broadcast(&go, sizeof go, 0);

  for (size_t i = 0; i < names.size(); ++i) {
    const RunConfig& c = configs[i];
    if (finished[i]) {
      const RunSummary& kept = results[i]->summary;
      std::printf("\n=== %s (lr %.3g): %s at step %lld before; kept ===\n", names[i].c_str(), c.optimizer.lr(),
                  kept.stopped.empty() ? "finished" : "stopped on non-finite steps", (long long)kept.steps_done);
      continue;
    }
    std::printf("\n=== %s (lr %.3g) ===\n", names[i].c_str(), c.optimizer.lr());
    Trainer t(c);
    if (continues[i]) t.resume(c.out);
    // A run that stops on non-finite steps (--max-bad-steps) is a result of the comparison: reported with what it
    // trained, and the other optimizers still run. (Every rank stops at the same step: the loss is summed over them.)
    try {
      RunSummary s = t.run();
      // Stopped during its setup: nothing trained, no log; the run is reported as not reached.
      if (s.stopped_before_training) break;
      results[i] = Result{names[i], c.optimizer.lr(), std::move(s)};
    } catch (const TrainingStopped& e) {
      std::printf("%s: %s\n", names[i].c_str(), e.what());
      results[i] = Result{names[i], c.optimizer.lr(), e.summary()};
    }
    // The report so far after each run: a comparison killed later keeps the rows of the runs it finished.
    // (A report that cannot be written now, a full disk say, is a warning: the runs still to train go on.)
    if (ranks.rank() == 0) {
      try {
        write_comparison(report, results, names, configs);
      } catch (const Error& e) {
        std::fprintf(stderr, "tally compare: warning: the report after %s was not written: %s\n", names[i].c_str(),
                     e.what());
      }
    }
    // Stopped by a request: every rank of a data-parallel compare agrees on a run's stop (it travels with a step's
    // loss); one process also stops at a request made after its run's last step.
    const bool one_process = ranks.world() == 1;
    if (results[i]->summary.interrupted || (one_process && g_stop_requested.load())) break;
  }

  if (ranks.rank() != 0) return 0;
  write_comparison(report, results, names, configs);
  print_table(report);
  std::printf("\nreport: %s/report.html (and report.md, loss.svg, memory.svg, summary.json)\n", report.c_str());
  return 0;
}

}  // namespace tally::train
