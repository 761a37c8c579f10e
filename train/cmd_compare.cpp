// `tally compare`: the same training run with several optimizers (default CAME, AdamW, Adafactor, each with its
// own learning rate), written up as a report directory: the HTML page of all runs (report.html, train/report.h),
// loss curves (SVG), optimizer-state memory (SVG), and a Markdown table of final train/val loss, state bytes and
// ms/step. The CAME paper's central claim at small scale.
#include <cstdio>

#include "core/dist/communicator.h"
#include "core/io/file.h"
#include "core/ledger.h"
#include "train/commands.h"
#include "train/report.h"
#include "train/svg.h"
#include "train/trainer.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tally::train {

int cmd_compare(const Args& args) {
  // Data-parallel (mpirun -np N tally compare ...): rank 0 alone prints and writes the report, as train does.
  const dist::Communicator& ranks = dist::process_group();
  if (ranks.rank() != 0 && !std::freopen("/dev/null", "w", stdout))
    fail("rank ", ranks.rank(), ": cannot quiet stdout");
  std::vector<FlagSpec> specs;
  for (FlagSpec s : train_flags()) {
    if (s.name == "optimizer" || s.name == "lr" || s.name == "resume") continue;
    if (s.name == "out") s = {"out", "report directory (runs go to OUT/runs/<optimizer>)", "runs/compare"};
    specs.push_back(s);
  }
  specs.push_back({"optimizers", "comma-separated optimizers (" + optim::optimizer_names() + ")", "came,adamw,adafactor"});
  specs.push_back({"lrs", "comma-separated peak learning rates, one per optimizer (default: each one's default)", ""});
  Flags f("compare", "train the same model with several optimizers and write a report", specs);
  f.parse(args);
  if (!f.positional().empty()) throw FlagError("unexpected argument '" + f.positional().front() + "'");
  if (auto cfg = f.maybe("config")) f.merge_json_file(*cfg);
  std::vector<std::string> names = f.list_once("optimizers", " (each run goes to OUT/runs/<optimizer>)");
  std::vector<std::string> lrs = f.given("lrs") ? f.list("lrs") : std::vector<std::string>{};
  if (names.empty()) throw FlagError("--optimizers lists none");
  if (!lrs.empty() && lrs.size() != names.size())
    throw FlagError("--lrs gives " + std::to_string(lrs.size()) + " rates for " + std::to_string(names.size()) + " optimizers");
  const fs::path report = f.str("out");
  fs::create_directories(report);
  install_stop_handlers();

  struct Result {
    std::string name;
    double lr;
    RunSummary summary;
  };
  // Every run's configuration first, so that a bad optimizer name or rate is refused before anything trains.
  std::vector<RunConfig> configs;
  for (size_t i = 0; i < names.size(); ++i) {
    // Each run gets the shared flags plus its own optimizer, learning rate and run directory.
    std::vector<FlagSpec> run_specs = train_flags();
    Flags rf("train", "", run_specs);
    for (const auto& [k, v] : f.resolved())
      if (k != "optimizers" && k != "lrs" && k != "out" && k != "config" && f.given(k)) rf.set(k, v);
    rf.set("optimizer", names[i]);
    if (!lrs.empty()) rf.set("lr", lrs[i]);
    const fs::path run_dir = report / "runs" / names[i];
    // A directory of an earlier compare is kept: refused here, before any run trains (train would refuse it later).
    if (holds_run(run_dir))
      fail("'", run_dir.string(), "' holds a run of an earlier compare: give another --out, or move '", report.string(),
           "' away; nothing was trained");
    rf.set("out", run_dir.string());
    configs.push_back(run_config(rf, DataResolution::resolve, ranks.world()));
  }
  std::vector<Result> results;
  for (size_t i = 0; i < names.size(); ++i) {
    const RunConfig& c = configs[i];
    std::printf("\n=== %s (lr %.3g) ===\n", names[i].c_str(), c.optimizer.lr());
    Trainer t(c);
    // A run that stops on non-finite steps (--max-bad-steps) is a result of the comparison: reported with what it
    // trained, and the other optimizers still run. (Every rank stops at the same step: the loss is summed over them.)
    try {
      results.push_back({names[i], c.optimizer.lr(), t.run()});
    } catch (const TrainingStopped& e) {
      std::printf("%s: %s\n", names[i].c_str(), e.what());
      results.push_back({names[i], c.optimizer.lr(), e.summary()});
    }
    // Stopped by a request: every rank of a data-parallel compare agrees on a run's stop (it travels with a step's
    // loss); one process also stops at a request made after its run's last step.
    const bool one_process = ranks.world() == 1;
    if (results.back().summary.interrupted || (one_process && g_stop_requested.load())) break;
  }

  if (ranks.rank() != 0) return 0;
  std::vector<report::Series> curves;
  std::vector<report::Bar> bars;
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    curves.push_back({r.name + " train", {r.summary.train_curve.begin(), r.summary.train_curve.end()}, report::LineStyle::solid, int(i)});
    curves.push_back({r.name + " val", {r.summary.val_curve.begin(), r.summary.val_curve.end()}, report::LineStyle::dashed, int(i)});
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
  for (const auto& r : results) {
    char row[320];
    const RunSummary& s = r.summary;
    // Why the run ended before its last step (non-finite steps, or a stop request); empty when it did not.
    const std::string stop =
        s.interrupted
            ? cat("interrupted on request at step ", s.steps_done, " of ", configs[size_t(&r - results.data())].steps,
                  " (continue it: tally train --resume ", (report / "runs" / r.name).string(), ")")
            : s.stopped;
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
      if (!s.train_curve.empty()) std::snprintf(last, sizeof last, ", last finite %.4g", s.final_train_loss);
      std::snprintf(row, sizeof row, "| %s | %.3g | stopped at step %lld (non-finite)%s | - | %s | %.0f |\n",
                    r.name.c_str(), r.lr, (long long)s.steps_done, last,
                    format_bytes_exact(s.optimizer_state_bytes).c_str(), s.ms_per_step);
    }
    md += row;
    std::printf("%s", row);
    json entry = {{"optimizer", r.name},
                  {"lr", r.lr},
                  {"final_train_loss", s.final_train_loss},
                  {"final_val_loss", s.final_val_loss},
                  {"state_bytes", s.optimizer_state_bytes},
                  {"ms_per_step", s.ms_per_step},
                  {"steps", s.steps_done}};
    if (!stop.empty()) {
      entry["stopped"] = stop;
      entry["final_val_loss"] = nullptr;  // no final evaluation (an earlier one would pass for the run's result)
      notes += cat("- ", r.name, ": ", stop, "\n");
    }
    summary.push_back(entry);
  }
  // Optimizers a stop request left untrained: named, not silently missing.
  for (size_t i = results.size(); i < names.size(); ++i) {
    summary.push_back({{"optimizer", names[i]}, {"stopped", "not run: the comparison was interrupted before it"}});
    notes += cat("- ", names[i], ": not run (the comparison was interrupted before it)\n");
  }
  if (!notes.empty()) md += "\nRuns that stopped before their last step:\n\n" + notes;
  io::write_file_atomic(report / "report.md", md);
  io::write_file_atomic(report / "summary.json", summary.dump(2) + "\n");
  std::vector<fs::path> run_dirs;
  std::vector<std::string> run_names;
  for (const auto& r : results) {
    run_dirs.push_back(report / "runs" / r.name);
    run_names.push_back(r.name);
  }
  write_report(run_dirs, report / "report.html", run_names);
  std::printf("\nreport: %s/report.html (and report.md, loss.svg, memory.svg, summary.json)\n", report.c_str());
  return 0;
}

}  // namespace tally::train
