// The HTML report of training runs (`tally report`, and the page `tally train` and `tally compare` write at the end):
// one self-contained file, inline SVG, JavaScript and CSS, nothing fetched, that opens from disk. It shows
//   training:  loss and validation loss, learning rate, gradient norm (and the global clip), tokens/s per step,
//              the runs overlaid;
//   internals: what --log-optim recorded per tensor (update RMS before/after the RMS clip and how often it clipped,
//              first-moment RMS, applied step, CAME's confidence factors) as curves and layer x step heatmaps;
//   memory:    the ledger's first-step figures by category and by owner, predicted beside measured, and the state
//              every registered optimizer would keep for the run's model (predicted on the meta device).
// The page is data (one JSON object, built here) and a fixed script that draws it (report_page.cpp). Long runs are
// downsampled when the page is written, and the page says how: a training series keeps at most `max_points`
// points (the lowest and highest of each of max_points/2 buckets of steps), and the internals share a budget of
// numbers over all tensors (each bucket's mean; a minimum's minimum, a maximum's maximum; the fraction clipped).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <istream>
#include <string>
#include <vector>

namespace tally::train {

struct ReportOptions {
  int64_t max_points = 2000;              // per training series (steps, validations)
  int64_t internals_numbers = 200000;     // per run: numbers over all tensors' internals series together
};

// A series of (step, value) points, in step order.
struct StepPoint {
  int64_t step = 0;
  double value = 0;
};
// At most max_points points (max_points >= 2): unchanged when it already has no more; otherwise the first and the
// last point, and between them the steps cut into (max_points - 2)/2 buckets of equal count, each keeping its lowest
// and highest point, in step order.
std::vector<StepPoint> downsample_min_max(const std::vector<StepPoint>& points, int64_t max_points);

// The page's data for these run directories (each holds log.jsonl, and config.json for the memory panel). A
// missing directory or log, or a line of log.jsonl that is not a record, is a tally::Error naming the file (and
// line); an unfinished last line (a run killed while writing it) is left out, and the page says so. Without a
// readable config.json the page has no memory plan and says why. `names`: one per run (empty: the directories'
// names).
nlohmann::json report_data(const std::vector<std::filesystem::path>& runs, const std::vector<std::string>& names = {},
                           const ReportOptions& options = {});
// The part of a run's data read from its log.jsonl, given as `log` (`where` names it in errors):
// {"summary", "series", "internals", "memory", "comm"}. grad_clip > 0: the summary counts the steps it clipped.
nlohmann::json log_data(std::istream& log, const std::string& where, const ReportOptions& options = {},
                        double grad_clip = 0);
// A run's training and validation losses from its log.jsonl (`run_dir`'s), every step (a resumed run's repeated
// steps once); the same checks as report_data.
struct LossCurves {
  std::vector<StepPoint> train, val;
};
LossCurves loss_curves(const std::filesystem::path& run_dir);
// The whole page for that data.
std::string report_html(const nlohmann::json& data);
// report_data + report_html, written to `out` (replaced atomically).
void write_report(const std::vector<std::filesystem::path>& runs, const std::filesystem::path& out,
                  const std::vector<std::string>& names = {}, const ReportOptions& options = {});

// The fixed parts of the page (report_page.cpp): its style sheet and script.
const char* report_page_css();
const char* report_page_script();

}  // namespace tally::train
