// bench_tokenizer: GPT-2 encoding throughput (MB/s of UTF-8 input) on Tiny Shakespeare, single-threaded and with
// all OpenMP threads, against tiktoken's encode_ordinary on the same file (bench/peers/tokenizer_tiktoken.py) when
// python3 with tiktoken is available. Usage: bench_tokenizer [TEXT_FILE] [--reps N]; prints a table and one JSON line.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace {

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "bench_tokenizer: cannot open %s\n", path.c_str());
    std::exit(1);
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Best of reps wall-clock runs (the least disturbed one), in MB/s.
double encode_mbps(const tally::data::Tokenizer& tok, const std::string& text, int threads, int reps, size_t& ntok) {
  omp_set_num_threads(threads);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok.encode(text, tally::data::SpecialTokens::disallowed);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    ntok = ids.size();
  }
  return double(text.size()) / 1e6 / best;
}

// Runs the tiktoken peer; returns its MB/s or a negative number when python3/tiktoken is unavailable.
double tiktoken_mbps(const std::string& text_path, const std::string& gpt2_dir, int reps) {
  const std::string script = std::string(TALLY_SOURCE_DIR) + "/bench/peers/tokenizer_tiktoken.py";
  const std::string cmd = "python3 '" + script + "' --text '" + text_path + "' --gpt2-dir '" + gpt2_dir +
                          "' --reps " + std::to_string(reps) + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return -1;
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  if (::pclose(p) != 0) return -1;
  try {
    const auto j = nlohmann::json::parse(out.substr(out.find('{')));
    return j.at("mb_per_s").get<double>();
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string text_path = std::string(TALLY_SOURCE_DIR) + "/../shared/data/tinyshakespeare.txt";
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else text_path = a;
  }
  const auto tok = tally::data::Tokenizer::load();
  const std::string text = slurp(text_path);
  const int all = omp_get_max_threads();
  size_t ntok = 0;
  (void)encode_mbps(tok, text, all, 1, ntok);  // warm-up: page cache, allocator
  const double one = encode_mbps(tok, text, 1, reps, ntok);
  const double many = encode_mbps(tok, text, all, reps, ntok);
  const double peer = tiktoken_mbps(text_path, tok.dir().string(), reps);

  std::printf("bench_tokenizer: %s, %zu bytes, %zu tokens (best of %d)\n", text_path.c_str(), text.size(), ntok, reps);
  std::printf("  tally 1 thread        %8.1f MB/s\n", one);
  std::printf("  tally %2d thread(s)    %8.1f MB/s\n", all, many);
  if (peer > 0) {
    std::printf("  tiktoken 1 thread     %8.1f MB/s (encode_ordinary)\n", peer);
    std::printf("  ratio tally/tiktoken  %8.2fx (1 thread)  %8.2fx (%d threads)\n", one / peer, many / peer, all);
  } else {
    std::printf("  tiktoken: not available (python3 with tiktoken not found)\n");
  }
  nlohmann::json j = {{"bench", "tokenizer"}, {"bytes", text.size()},       {"tokens", ntok},
                      {"threads", all},       {"tally_mbps_1t", one},       {"tally_mbps_all", many},
                      {"tiktoken_mbps", peer > 0 ? nlohmann::json(peer) : nlohmann::json(nullptr)}};
  std::printf("%s\n", j.dump().c_str());
  return 0;
}
