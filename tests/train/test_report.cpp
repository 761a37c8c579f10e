// The HTML report's data (train/report.h) from run directories written here through RunLog, the writer training
// uses: series and internals exact when they fit, bounded and faithful when downsampled (min/max kept, bucket
// means, fractions clipped), steps a resumed run logged twice shown once, an unfinished last line left out, and
// every bad input (missing directory or log, a corrupt line, a field of the wrong type) a tally::Error naming the
// file and line. tests/fuzz/fuzz_report_log.cpp tries any text as a log; tests/cli/report_browser.sh opens the
// page in a browser.
#include <doctest/doctest.h>

#include <ctime>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tests/core/io_test_helpers.h"
#include "tests/test_util.h"
#include "train/report.h"
#include "train/run_log.h"

using namespace tally;
using namespace tally::train;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

optim::TensorInternals internals(const std::string& param, double update_rms, bool clipped, bool confidence,
                                 double scale_min = 0.5, double scale_max = 2.0) {
  optim::TensorInternals t;
  t.param = param;
  t.update_rms = update_rms;
  t.clipped_update_rms = clipped ? 1.0 : update_rms;
  t.clipped = clipped;
  t.exp_avg_rms = update_rms / 10;
  t.applied_rms = update_rms / 1000;
  if (confidence) {
    t.has_confidence = true;
    t.confidence_row = {0.9, 1.0, 1.1};
    t.confidence_col = {10, 20, 30};
    t.confidence_scale = {scale_min, 1.5, scale_max};
  }
  return t;
}

// A run of `steps` steps: step records, a validation every 5, internals of two tensors every step.
fs::path write_run(const std::string& name, int64_t steps) {
  const fs::path dir = test::temp_dir("report_" + name);
  RunLog log(dir / "log.jsonl", LogStart::fresh);
  for (int64_t s = 1; s <= steps; ++s) {
    log.step({.step = s, .loss = 10.0 / double(s) + 1e-9 * double(s % 7), .lr = 1e-3, .grad_norm = 0.5 + 0.001 * double(s),
              .ms = 10, .tokens_per_s = 100.0 + double(s)});
    if (s % 5 == 0) log.validation(s, 5.0 / double(s));
    log.optimizer_internals(s, {internals("transformer.h.0.attn.c_attn.weight", double(s), s % 3 == 0, true, -double(s), double(s)),
                                internals("transformer.ln_f.bias", 2.0 * double(s), false, false)});
  }
  return dir;
}

const json& tensor_of(const json& run, const std::string& param) {
  for (const json& t : run["internals"]["tensors"])
    if (t["param"] == param) return t;
  FAIL("no tensor " << param);
  static json none;
  return none;
}

void append_line(const fs::path& file, const std::string& text) { std::ofstream(file, std::ios::app) << text; }

}  // namespace

TEST_SUITE("report") {

TEST_CASE("report: downsample_min_max keeps short series, and of long ones each bucket's lowest and highest point") {
  std::vector<StepPoint> few = {{1, 3.0}, {2, 1.0}, {3, 2.0}};
  CHECK(downsample_min_max(few, 4).size() == 3);
  std::vector<StepPoint> many;
  for (int64_t s = 1; s <= 10000; ++s) many.push_back({s, double(s % 100)});
  many[4321].value = 1e6;  // a spike
  many[777].value = -5;    // a dip
  const std::vector<StepPoint> shown = downsample_min_max(many, 200);
  CHECK(shown.size() <= 200);
  CHECK(shown.size() >= 100);
  bool spike = false, dip = false;
  for (size_t i = 0; i < shown.size(); ++i) {
    if (i > 0) CHECK(shown[i].step > shown[i - 1].step);
    CHECK(shown[i].value == many[size_t(shown[i].step - 1)].value);  // an original point
    spike = spike || shown[i].value == 1e6;
    dip = dip || shown[i].value == -5;
  }
  CHECK(spike);
  CHECK(dip);
  // The chart spans the run: its first and last step are shown, at any budget.
  for (const int64_t budget : {2, 3, 4, 100, 200}) {
    const std::vector<StepPoint> s = downsample_min_max(many, budget);
    CHECK(s.size() <= size_t(budget));
    CHECK(s.front().step == 1);
    CHECK(s.back().step == 10000);
  }
  CHECK_THROWS_AS(downsample_min_max(many, 1), Error);
}

TEST_CASE("report: a short run's series and internals are its log's values, exactly") {
  const fs::path dir = write_run("short", 12);
  const json data = report_data({dir}, {"short"});
  REQUIRE(data["runs"].size() == 1);
  const json& run = data["runs"][0];
  CHECK(run["name"] == "short");
  const json& loss = run["series"]["loss"];
  CHECK(loss["downsampled"] == false);
  REQUIRE(loss["points"].size() == 12);
  for (int64_t s = 1; s <= 12; ++s) {
    CHECK(loss["points"][size_t(s - 1)][0] == s);
    CHECK(loss["points"][size_t(s - 1)][1].get<double>() == 10.0 / double(s) + 1e-9 * double(s % 7));
  }
  CHECK(run["series"]["val_loss"]["points"].size() == 2);
  CHECK(run["summary"]["final_loss"].get<double>() == 10.0 / 12 + 1e-9 * 5);
  CHECK(run["summary"]["final_val_loss"].get<double>() == 5.0 / 10);
  CHECK(run["summary"]["mean_tokens_per_s"].get<double>() == doctest::Approx(100 + 7.0));  // steps 2..12

  const json& it = run["internals"];
  CHECK(it["records"] == 12);
  CHECK(it["per_bucket"] == 1);
  CHECK(it["downsampled"] == false);
  const json& w = tensor_of(run, "transformer.h.0.attn.c_attn.weight");
  CHECK(w["layer"] == "h.0");
  CHECK(w["records"] == 12);
  CHECK(w["clipped"] == 4);  // steps 3, 6, 9, 12
  CHECK(w["last"]["update_rms"].get<double>() == 12.0);
  CHECK(w["last"]["confidence_scale.min"].get<double>() == -12.0);
  for (int64_t s = 1; s <= 12; ++s) {
    CHECK(w["series"]["update_rms"][size_t(s - 1)].get<double>() == double(s));
    CHECK(w["series"]["clipped"][size_t(s - 1)].get<double>() == (s % 3 == 0 ? 1.0 : 0.0));
  }
  const json& b = tensor_of(run, "transformer.ln_f.bias");
  CHECK(b["layer"] == "ln_f");
  CHECK_FALSE(b["series"].contains("confidence_scale.mean"));  // a vector: no confidence factors, none carried
  CHECK(run["config"].contains("error"));                      // no config.json: no memory plan, said so
}

TEST_CASE("report: a long run is downsampled within its budget, buckets keeping means, extremes and fractions") {
  const fs::path dir = write_run("long", 3000);
  const json data = report_data({dir}, {"long"}, {.max_points = 100, .internals_numbers = 2 * 14 * 40});
  const json& run = data["runs"][0];
  const json& loss = run["series"]["loss"];
  CHECK(loss["downsampled"] == true);
  CHECK(loss["count"] == 3000);
  CHECK(loss["points"].size() <= 100);
  CHECK(run["summary"]["steps"] == 3000);                 // the table's figures come from every step
  CHECK(run["summary"]["final_loss"].get<double>() == 10.0 / 3000 + 1e-9 * double(3000 % 7));
  const json& it = run["internals"];
  CHECK(it["downsampled"] == true);
  const size_t buckets = it["first"].size();
  CHECK(buckets <= 40);
  CHECK(buckets >= 20);
  const int64_t per = it["per_bucket"].get<int64_t>();
  const json& w = tensor_of(run, "transformer.h.0.attn.c_attn.weight");
  CHECK(w["records"] == 3000);
  CHECK(w["clipped"] == 1000);
  CHECK(w["last"]["update_rms"].get<double>() == 3000.0);  // the last values stay exact
  int64_t covered = 0;
  for (size_t j = 0; j < buckets; ++j) {
    const int64_t first = it["first"][j].get<int64_t>(), last = it["last"][j].get<int64_t>(), n = it["count"][j].get<int64_t>();
    CHECK(last - first + 1 == n);
    if (j + 1 < buckets) CHECK(n == per);
    covered += n;
    // update_rms is the step number: a bucket's mean is the mean of its steps (to the page's 6 digits).
    CHECK(w["series"]["update_rms"][j].get<double>() == doctest::Approx(double(first + last) / 2).epsilon(1e-6));
    // The element minimum of scale is -step: the bucket keeps the minimum, the maximum (+step) its maximum.
    CHECK(w["series"]["confidence_scale.min"][j].get<double>() == doctest::Approx(-double(last)).epsilon(1e-6));
    CHECK(w["series"]["confidence_scale.max"][j].get<double>() == doctest::Approx(double(last)).epsilon(1e-6));
    int64_t clipped = 0;
    for (int64_t s = first; s <= last; ++s) clipped += s % 3 == 0 ? 1 : 0;
    CHECK(w["series"]["clipped"][j].get<double>() == doctest::Approx(double(clipped) / double(n)).epsilon(1e-5));
  }
  CHECK(covered == 3000);
}

TEST_CASE("report: 100,000 steps with 150 tensors' internals every 100 steps make a page of a few MB") {
  const fs::path dir = test::temp_dir("report_big");
  {
    RunLog log(dir / "log.jsonl", LogStart::fresh);
    std::vector<optim::TensorInternals> tensors;
    for (int i = 0; i < 150; ++i)
      tensors.push_back(internals("transformer.h." + std::to_string(i / 12) + ".w" + std::to_string(i), 1.0, false, true));
    for (int64_t s = 1; s <= 100000; ++s) {
      log.step({.step = s, .loss = 3.0 + 1.0 / double(s), .lr = 1e-3, .grad_norm = 1, .ms = 10, .tokens_per_s = 1000});
      if (s % 100 == 0) {
        for (auto& t : tensors) t.update_rms = double(s);
        log.optimizer_internals(s, tensors);
      }
    }
  }
  const json data = report_data({dir});
  const json& run = data["runs"][0];
  CHECK(run["summary"]["steps"] == 100000);
  CHECK(run["series"]["loss"]["points"].size() <= 2000);
  CHECK(run["internals"]["records"] == 1000);
  CHECK(run["internals"]["tensors"].size() == 150);
  CHECK(run["internals"]["first"].size() * 150 * 14 <= 200000);
  const std::string html = report_html(data);
  MESSAGE("page of 100,000 steps x 150 tensors: ", html.size(), " bytes");
  CHECK(html.size() < 4'000'000);
  fs::remove_all(dir);
}

TEST_CASE("report: steps a resumed run logged again are shown once; an unfinished last line is left out") {
  const fs::path dir = write_run("resumed", 6);
  {
    RunLog again(dir / "log.jsonl", LogStart::append);  // resumed from a checkpoint at step 4
    for (int64_t s = 5; s <= 8; ++s) {
      again.step({.step = s, .loss = 10.0 / double(s), .lr = 1e-3, .grad_norm = 1, .ms = 10, .tokens_per_s = 100});
      again.optimizer_internals(s, {internals("transformer.ln_f.bias", 1.0, false, false)});
    }
  }
  append_line(dir / "log.jsonl", "{\"step\": 9, \"loss\": 1.");  // killed while writing
  const json run = report_data({dir})["runs"][0];
  CHECK(run["series"]["loss"]["points"].size() == 8);
  CHECK(run["summary"]["repeated_records"] == 4);  // steps 5 and 6, a step record and an internals record each
  CHECK(run["summary"]["incomplete_last_line"] == true);
  CHECK(tensor_of(run, "transformer.ln_f.bias")["records"] == 8);
}

TEST_CASE("log: a resumed run sets aside the records after its checkpoint, then logs each step once") {
  const fs::path dir = write_run("aside", 7);  // steps 1-7, a validation at 5; checkpoint at 4, killed after 7
  const fs::path log = dir / "log.jsonl";
  append_line(log, "not json, kept where it is\n");
  append_line(log, "{\"step\": 8, \"loss\": 1.");  // killed while writing
  const fs::path taken = dir / cat("log.superseded-after-step-4-", ::time(nullptr), ".jsonl");
  test::write_raw(taken, std::string("someone's\n"));  // a name in use is never overwritten
  const fs::path side = set_aside_records_after(log, 4);
  REQUIRE(!side.empty());
  CHECK(side.parent_path() == dir);
  CHECK(side.filename().string().starts_with("log.superseded-after-step-4-"));
  CHECK(side != taken);
  CHECK(test::slurp(taken) == "someone's\n");
  // The log keeps steps 1-4 and the line it cannot read; the side file every record after step 4, in order, and the
  // unfinished line, finished.
  std::vector<int64_t> kept_steps, aside_steps;
  std::string kept_other;
  for (const auto& [file, steps] : {std::pair{log, &kept_steps}, std::pair{side, &aside_steps}}) {
    std::istringstream in(test::slurp(file));
    for (std::string line; std::getline(in, line);) {
      const json r = json::parse(line, nullptr, false);
      if (r.is_object() && r.contains("step") && r.contains("loss") && !r["loss"].is_null())
        steps->push_back(r["step"]);
      else if (file == log)
        kept_other += line + "|";
      else if (!r.is_object() || !r.contains("step"))
        CHECK(line == "{\"step\": 8, \"loss\": 1.");
    }
  }
  CHECK(kept_steps == std::vector<int64_t>{1, 2, 3, 4});
  CHECK(aside_steps == std::vector<int64_t>{5, 6, 7});
  CHECK(kept_other.find("not json, kept where it is") != std::string::npos);
  CHECK(kept_other.find("val_loss") == std::string::npos);  // the validation at step 5 went aside
  CHECK(test::slurp(side).find("\"val_loss\"") != std::string::npos);
  CHECK(test::slurp(side).find("\n{\"step\": 8, \"loss\": 1.\n") !=
        std::string::npos);  // the unfinished line, finished
  CHECK(test::slurp(side).back() == '\n');
  CHECK(set_aside_records_after(log, 4).empty());  // nothing after step 4 now: no side file
  // The resumed run's records follow; the report then has each step once, the later values, nothing repeated.
  std::string lines = test::slurp(log);
  fs::remove(log);
  test::write_raw(log, lines.substr(0, lines.find("not json")));  // (a log this version can read whole)
  {
    RunLog again(log, LogStart::append);
    for (int64_t s = 5; s <= 9; ++s)
      again.step({.step = s, .loss = 20.0 / double(s), .lr = 1e-3, .grad_norm = 1, .ms = 10, .tokens_per_s = 100});
  }
  const json run = report_data({dir})["runs"][0];
  CHECK(run["series"]["loss"]["points"].size() == 9);
  CHECK(run["summary"]["repeated_records"] == 0);
  CHECK(run["series"]["loss"]["points"][5][1].get<double>() == doctest::Approx(20.0 / 6.0));
  CHECK(set_aside_records_after(dir / "no-such-log.jsonl", 4).empty());
  fs::remove_all(dir);
}

TEST_CASE("report: bad input is an error naming the file and line, never a crash") {
  const fs::path missing = test::temp_dir("report_missing") / "nowhere";
  CHECK_THROWS_WITH_AS(report_data({missing}), doctest::Contains("nowhere' does not exist"), Error);
  const fs::path empty_dir = test::temp_dir("report_empty");
  CHECK_THROWS_WITH_AS(report_data({empty_dir}), doctest::Contains("no log.jsonl in"), Error);

  const fs::path corrupt = write_run("corrupt", 2);
  append_line(corrupt / "log.jsonl", "{\"step\": 3, \"loss\": oops}\n{\"step\": 4, \"loss\": 1}\n");
  // Two steps of two records each (a step, its internals; no validation before step 5): the bad line is the 5th.
  const std::string where = (corrupt / "log.jsonl").string() + ":5: not a JSON object: {\"step\": 3, \"loss\": oops}";
  CHECK_THROWS_WITH_AS(report_data({corrupt}), doctest::Contains(where.c_str()), Error);

  const fs::path typed = write_run("typed", 2);
  append_line(typed / "log.jsonl", "{\"step\": 3, \"loss\": \"low\"}\n");
  CHECK_THROWS_WITH_AS(report_data({typed}), doctest::Contains(":5: \"loss\" is \"low\", not a number"), Error);
  const fs::path skipped = write_run("skipped", 2);
  append_line(skipped / "log.jsonl", "{\"step\": 3, \"skipped\": 8, \"loss\": null}\n");
  CHECK_THROWS_WITH_AS(report_data({skipped}), doctest::Contains(":5: \"skipped\" is 8, not true or false"), Error);

  const fs::path nostep = write_run("nostep", 1);
  append_line(nostep / "log.jsonl", "{\"loss\": 1}\n");
  CHECK_THROWS_WITH_AS(report_data({nostep}), doctest::Contains(":3: the record has no \"step\""), Error);

  const fs::path badoptim = write_run("badoptim", 1);
  append_line(badoptim / "log.jsonl", "{\"step\": 2, \"optim\": [{\"param\": \"w\", \"clipped\": 3}]}\n");
  CHECK_THROWS_WITH_AS(report_data({badoptim}), doctest::Contains(":3: \"clipped\" of 'w' is not true or false"), Error);
}

TEST_CASE("report: the page embeds its data where no text of it can end the script") {
  const fs::path dir = write_run("page", 3);
  const std::string html = report_html(report_data({dir}, {"a</script><b>"}));
  CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(html.find("a</script>") == std::string::npos);
  CHECK(html.find("a\\u003c/script>\\u003cb>") != std::string::npos);
  CHECK(html.find("<title>tally report: a&lt;/script&gt;&lt;b&gt;</title>") != std::string::npos);
  // Nothing is fetched: the only http:// addresses are the SVG namespace's (a name, never loaded).
  size_t addresses = 0, namespaces = 0;
  for (size_t at = html.find("http://"); at != std::string::npos; at = html.find("http://", at + 1)) ++addresses;
  for (size_t at = html.find("http://www.w3.org/2000/svg"); at != std::string::npos;
       at = html.find("http://www.w3.org/2000/svg", at + 1))
    ++namespaces;
  CHECK(addresses == namespaces);
  CHECK(html.find("https://") == std::string::npos);
  // A run directory whose name is no UTF-8 (JSON cannot hold it): its bytes become U+FFFD, nothing throws.
  const std::string named = report_html(report_data({dir}, {"run\xff"}));
  CHECK(named.find("<title>tally report: run\xef\xbf\xbd</title>") != std::string::npos);
}

}  // TEST_SUITE
