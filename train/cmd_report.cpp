// `tally report RUN_DIR [RUN_DIR ...]`: the HTML report of runs (train/report.h), one self-contained page.
#include <cstdio>

#include "train/commands.h"
#include "train/flags.h"
#include "train/report.h"
#include "train/setup.h"

namespace fs = std::filesystem;

namespace tally::train {

int cmd_report(const Args& args) {
  Flags f("report",
          "tally report RUN_DIR [RUN_DIR ...] [--out FILE]: one self-contained HTML page (nothing fetched, opens "
          "from disk) of training runs: loss, learning rate, gradient norm, throughput; the optimizer's internals "
          "logged with --log-optim; memory predicted and measured",
          {{"out", "the page to write (default: RUN_DIR/report.html for one run, report.html here for several)", ""},
           {"max-points", "points kept per training series (longer ones are downsampled, min and max per bucket)",
            "2000"}});
  f.parse(args);
  if (f.positional().empty()) throw FlagError("no run directory given (tally report RUN_DIR [RUN_DIR ...])");
  std::vector<fs::path> runs(f.positional().begin(), f.positional().end());
  const fs::path out = f.given("out") ? fs::path(f.str("out")) : runs.size() == 1 ? runs[0] / "report.html" : "report.html";
  ReportOptions options;
  options.max_points = f.integer("max-points");
  if (options.max_points < 2) throw FlagError("--max-points must be at least 2");
  // The page never replaces what it is made of: a run's log or configuration.
  std::error_code ec;
  for (const fs::path& run : runs)
    for (const char* input : {"log.jsonl", "config.json"})
      if (fs::exists(out, ec) && fs::equivalent(out, run / input, ec))
        throw FlagError("--out '" + out.string() + "' is the " + input + " of run '" + run.string() +
                        "', which the page is made from; give another file");
  refuse_run_file_as_output(out, "--out");
  write_report(runs, out, {}, options);
  std::printf("report: %s\n", out.c_str());
  return 0;
}

}  // namespace tally::train
