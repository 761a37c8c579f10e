// log.jsonl (see run_log.h).
#include "train/run_log.h"

#include <cerrno>
#include <cmath>
#include <ctime>
#include <algorithm>
#include <string_view>
#include <system_error>

#include "core/error.h"
#include "core/io/file.h"

#include <unistd.h>

using nlohmann::json;

namespace tally::train {

namespace {

// JSON has no NaN or infinity: they are written as null.
json number(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

}  // namespace

std::filesystem::path unused_aside_path(const std::filesystem::path& dir, const std::string& stem) {
  const std::string base = cat(stem, "-", ::time(nullptr));
  std::filesystem::path p = dir / (base + ".jsonl");
  for (int k = 2; std::filesystem::exists(p); ++k) p = dir / cat(base, "-", k, ".jsonl");
  return p;
}

std::filesystem::path set_aside_records_after(const std::filesystem::path& log, int64_t step) {
  if (!std::filesystem::exists(log)) return {};
  const std::string text = io::read_file_text(log);
  std::string kept, aside;
  for (size_t at = 0; at < text.size();) {
    const size_t end = text.find('\n', at);
    const bool finished = end != std::string::npos;
    const std::string_view line = std::string_view(text).substr(at, finished ? end + 1 - at : std::string::npos);
    at += line.size();
    // A line this version cannot read stays where it is (the report names it); one that was being written when the
    // process died goes aside with the records after the checkpoint, which it was.
    const json r = json::parse(line, nullptr, false);
    const bool later =
        r.is_object() && r.contains("step") && r["step"].is_number_integer() && r["step"].get<int64_t>() > step;
    (later || !finished ? aside : kept) += line;
  }
  if (aside.empty()) return {};
  if (aside.back() != '\n') aside += '\n';
  const std::filesystem::path side = unused_aside_path(log.parent_path(), cat("log.superseded-after-step-", step));
  io::write_file_atomic(side, aside);
  io::write_file_atomic(log, kept);
  return side;
}

int64_t last_step_recorded(const std::filesystem::path& log) {
  if (!std::filesystem::exists(log)) return 0;
  const std::string text = io::read_file_text(log);
  int64_t last = 0;
  for (size_t at = 0; at < text.size();) {
    const size_t end = std::min(text.find('\n', at), text.size());
    const json r = json::parse(std::string_view(text).substr(at, end - at), nullptr, false);
    at = end + 1;
    if (r.is_object() && r.contains("step") && r["step"].is_number_integer() &&
        (r.contains("ms") || r.contains("skipped")))
      last = std::max(last, r["step"].get<int64_t>());
  }
  return last;
}

RunLog::RunLog(std::filesystem::path path, LogStart start) : path_(std::move(path)) {
  file_ = std::fopen(path_.c_str(), start == LogStart::append ? "a" : "w");
  TALLY_CHECK(file_, "cannot write '", path_.string(), "': ", std::system_category().message(errno));
}

RunLog::~RunLog() {
  if (file_) std::fclose(file_);
}

void RunLog::write(const json& record) {
  const std::string line = record.dump() + "\n";
  errno = 0;
  TALLY_CHECK(std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0,
              "cannot write '", path_.string(),
              "': ", errno ? std::system_category().message(errno) : std::string("the write was cut short"));
}

void RunLog::sync() {
  TALLY_CHECK(std::fflush(file_) == 0, "cannot write '", path_.string(), "': ", std::system_category().message(errno));
  int rc = 0;
  do rc = ::fsync(::fileno(file_));
  while (rc != 0 && errno == EINTR);  // a stop signal during the sync (no SA_RESTART)
  // A log that cannot be synced (a pipe, /dev/null, a read-only mount's quirk) is written all the same.
  TALLY_CHECK(rc == 0 || errno == EINVAL || errno == EROFS, "cannot write '", path_.string(),
              "': ", std::system_category().message(errno));
}

void RunLog::step(const StepRecord& r) {
  if (r.skipped) {
    write({{"step", r.step}, {"skipped", true}, {"loss", number(r.loss)}, {"grad_norm", number(r.grad_norm)}});
    return;
  }
  write({{"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
         {"tokens_per_s", r.tokens_per_s}, {"ms", r.ms}});
}

void RunLog::validation(int64_t step, double loss) { write({{"step", step}, {"val_loss", number(loss)}}); }

void RunLog::memory(int64_t step, const MemoryFigures& predicted, const MemoryFigures& measured) {
  write({{"step", step}, {"memory_predicted", predicted.total}, {"memory_measured", measured.total},
         {"memory_difference", measured.total - predicted.total},
         {"memory", {{"predicted", to_json(predicted)}, {"measured", to_json(measured)}}}});
}

void RunLog::communication(int64_t step, const dist::Traffic& predicted, const dist::Traffic& measured) {
  write({{"step", step},
         {"comm_bytes_predicted", predicted.bytes},
         {"comm_bytes_measured", measured.bytes},
         {"collectives_predicted", predicted.collectives},
         {"collectives_measured", measured.collectives}});
}

void RunLog::optimizer_internals(int64_t step, const std::vector<optim::TensorInternals>& internals) {
  json entries = json::array();
  for (const optim::TensorInternals& t : internals) {
    json e = {{"param", t.param}, {"update_rms", number(t.update_rms)},
              {"clipped_update_rms", number(t.clipped_update_rms)}, {"clipped", t.clipped},
              {"exp_avg_rms", number(t.exp_avg_rms)}, {"applied_rms", number(t.applied_rms)}};
    if (t.has_confidence) {
      auto summary = [](const optim::Summary& s) {
        return json{{"min", number(s.min)}, {"mean", number(s.mean)}, {"max", number(s.max)}};
      };
      e["confidence_row"] = summary(t.confidence_row);
      e["confidence_col"] = summary(t.confidence_col);
      e["confidence_scale"] = summary(t.confidence_scale);
    }
    entries.push_back(e);
  }
  write({{"step", step}, {"optim", entries}});
}

}  // namespace tally::train
