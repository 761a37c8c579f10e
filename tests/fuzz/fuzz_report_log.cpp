// libFuzzer target for the report's reading of a run's log.jsonl (train::log_data) and the page made from it
// (train::report_html): any text must give a page, or throw tally::Error naming the file; never crash, or let an
// exception of the JSON library escape (a name that is no UTF-8 included). The page's data must never hold the
// text that would end its <script> element.
// Built only with -DTALLY_FUZZ=ON under clang; scripts/fuzz.sh runs it with tests/fuzz/corpus/fuzz_report_log.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>

#include "core/error.h"
#include "train/report.h"

using namespace tally;
using nlohmann::json;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
    // Small limits, so that downsampling and merging buckets happen on small inputs too.
    const train::ReportOptions options{.max_points = 8, .internals_numbers = 64};
    json run = train::log_data(in, "log.jsonl", options, 1.0);
    run["name"] = "fuzz";
    run["dir"] = ".";
    run["config"] = json::object();
    const json page = {{"max_points", options.max_points}, {"internals_numbers", options.internals_numbers},
                       {"internals_fields", json::array()}, {"runs", json::array({run})}};
    const std::string html = train::report_html(page);
    const size_t begin = html.find("id=\"report-data\">"), end = html.find("</script>", begin);
    if (begin == std::string::npos || end == std::string::npos || html.find('<', begin + 17) != end) std::abort();
  } catch (const Error& e) {
    if (std::string(e.what()).find("log.jsonl") == std::string::npos) std::abort();
  }
  return 0;
}
