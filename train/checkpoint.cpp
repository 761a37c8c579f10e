// Training checkpoints (see checkpoint.h): atomic step directories with a checksummed manifest.
#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "core/autograd/node.h"
#include "core/error.h"
#include "core/io/file.h"

namespace fs = std::filesystem;

namespace tally::train {

namespace {

constexpr const char* kFormat = kCheckpointFormat;
constexpr int kVersion = 1;
constexpr const char* kFiles[] = {"model.safetensors", "optimizer.safetensors", "state.json"};

void check_finite(const io::NamedTensors& tensors, const char* part) {
  NoGradGuard no_grad;
  for (const auto& [name, t] : tensors) {
    if (!is_floating(t.dtype())) continue;
    MemoryScope scope(Category::workspace, "checkpoint");
    std::vector<float> v = t.to_vector<float>();
    for (size_t i = 0; i < v.size(); ++i)
      TALLY_CHECK(std::isfinite(v[i]), "[checkpoint] refusing to save: ", part, " tensor '", name, "' holds ", v[i],
                  " at element ", i, " (a checkpoint never contains NaN or Inf)");
  }
}

nlohmann::json file_entry(const fs::path& p) {
  io::MappedFile m(p);
  return {{"bytes", m.size()}, {"crc32c", io::crc32c_hex(io::crc32c(m.data(), m.size()))}};
}

}  // namespace

int64_t checkpoint_step(const fs::path& dir) {
  std::string name = dir.filename().string();
  if (name.rfind("step-", 0) != 0) return -1;
  try {
    size_t used = 0;
    long long v = std::stoll(name.substr(5), &used);
    return used == name.size() - 5 ? v : -1;
  } catch (...) {
    return -1;
  }
}

std::string checkpoint_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%08lld", (long long)step);
  return buf;
}

fs::path save_checkpoint(const fs::path& run_dir, int64_t step, const CheckpointContent& content, SaveOptions opt) {
  check_finite(content.model, "model");
  check_finite(content.optimizer, "optimizer");
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  TALLY_CHECK(!ec, "[checkpoint] cannot create '", run_dir.string(), "': ", ec.message());
  const fs::path final_dir = run_dir / checkpoint_name(step);
  const fs::path tmp = run_dir / (".tmp-" + checkpoint_name(step) + "-" + std::to_string(::getpid()));
  // Step directories of processes that died while saving (SIGKILL, power loss): never taken for checkpoints, but
  // they hold disk space. Those of live processes (another run saving into the same directory) stay.
  io::remove_stale_directories(run_dir, ".tmp-step-");
  fs::remove_all(tmp, ec);
  fs::create_directory(tmp, ec);
  TALLY_CHECK(!ec, "[checkpoint] cannot create '", tmp.string(), "': ", ec.message(), " (is the directory writable?)");
  // Ended by a signal while writing (a second stop request): the temporary directory goes with the process.
  std::vector<fs::path> files;
  for (const char* f : kFiles) files.push_back(tmp / f);
  files.push_back(tmp / "manifest.json");
  const io::RemovedOnTermination removed_if_killed(files, {tmp});
  try {
    // The model's heads and layer-norm epsilon, which its shapes do not tell, for the file read on its own.
    std::map<std::string, std::string> model_metadata = {{"format", kFormat}, {"part", "model"}};
    if (const nlohmann::json& mc = content.state.value("model_config", nlohmann::json::object()); mc.is_object()) {
      if (mc.contains("n_head")) model_metadata["n_head"] = mc["n_head"].dump();
      if (mc.contains("ln_eps")) model_metadata["layer_norm_epsilon"] = mc["ln_eps"].dump();
    }
    io::save_tensors(tmp / "model.safetensors", content.model, model_metadata);
    io::save_tensors(tmp / "optimizer.safetensors", content.optimizer, {{"format", kFormat}, {"part", "optimizer"}});
    nlohmann::json state = content.state;
    state["step"] = step;
    io::write_file_atomic(tmp / "state.json", state.dump(2) + "\n");
    nlohmann::json manifest = {{"format", kFormat}, {"version", kVersion}, {"step", step}, {"files", nlohmann::json::object()}};
    for (const char* f : kFiles) manifest["files"][f] = file_entry(tmp / f);
    io::write_file_atomic(tmp / "manifest.json", manifest.dump(2) + "\n");
    io::fsync_path(tmp);
    if (fs::exists(final_dir)) fs::remove_all(final_dir);  // re-saving the same step replaces it
    fs::rename(tmp, final_dir);
    io::fsync_path(run_dir);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  prune_checkpoints(run_dir, opt.keep_last, opt.keep_also);
  return final_dir;
}

void prune_checkpoints(const fs::path& run_dir, int keep_last, const fs::path& keep_also) {
  if (keep_last <= 0) return;
  std::error_code ec;
  const std::vector<fs::path> all = checkpoints_newest_first(run_dir);
  for (size_t i = size_t(keep_last); i < all.size(); ++i)
    if (keep_also.empty() || !fs::equivalent(all[i], keep_also, ec)) fs::remove_all(all[i], ec);
}

Manifest parse_manifest(std::string_view text, const std::string& where) {
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("[checkpoint] '", where, "' is not valid JSON: ", e.what());
  }
  TALLY_CHECK(m.is_object() && m.contains("format") && m["format"] == kFormat, "[checkpoint] '", where,
              "' is not a tally checkpoint manifest");
  TALLY_CHECK(m.contains("version") && m["version"].is_number_integer(), "[checkpoint] '", where,
              "' has no integer version");
  TALLY_CHECK(m["version"] == kVersion, "[checkpoint] '", where, "' has version ", m["version"].dump(),
              ", this tally reads version ", kVersion);
  Manifest out;
  TALLY_CHECK(m.contains("step") && m["step"].is_number_unsigned(), "[checkpoint] '", where,
              "' has no step (a non-negative integer)");
  TALLY_CHECK(m["step"].get<uint64_t>() <= uint64_t(INT64_MAX), "[checkpoint] '", where, "': step out of range");
  out.step = m["step"].get<int64_t>();
  TALLY_CHECK(m.contains("files") && m["files"].is_object(), "[checkpoint] '", where, "' lists no files");
  for (const char* f : kFiles) {
    TALLY_CHECK(m["files"].contains(f), "[checkpoint] '", where, "' does not list ", f);
    const nlohmann::json& e = m["files"][f];
    const bool ok = e.is_object() && e.contains("bytes") && e["bytes"].is_number_unsigned() && e.contains("crc32c") &&
                    e["crc32c"].is_string();
    TALLY_CHECK(ok, "[checkpoint] '", where, "': the entry of ", f,
                " must be {\"bytes\": <size>, \"crc32c\": \"<8 hex digits>\"}");
    out.files[f] = {.bytes = e["bytes"].get<uint64_t>(), .crc32c = e["crc32c"].get<std::string>()};
  }
  return out;
}

CheckpointContent load_checkpoint(const fs::path& dir) {
  const fs::path manifest_path = dir / "manifest.json";
  TALLY_CHECK(fs::is_directory(dir), "[checkpoint] '", dir.string(), "' is not a checkpoint directory");
  TALLY_CHECK(fs::exists(manifest_path), "[checkpoint] '", dir.string(),
              "' has no manifest.json: it is incomplete or not a tally checkpoint");
  const Manifest manifest = parse_manifest(io::read_file_text(manifest_path), manifest_path.string());
  for (const auto& [f, want] : manifest.files) {
    const fs::path p = dir / f;
    TALLY_CHECK(fs::exists(p), "[checkpoint] '", p.string(), "' is missing");
    io::MappedFile m(p);
    TALLY_CHECK(want.bytes == m.size(), "[checkpoint] '", p.string(), "' has ", m.size(), " bytes, '",
                manifest_path.string(), "' says ", want.bytes, " (one of them is truncated, replaced or damaged)");
    const std::string crc = io::crc32c_hex(io::crc32c(m.data(), m.size()));
    TALLY_CHECK(want.crc32c == crc, "[checkpoint] '", p.string(), "' fails its checksum (CRC-32C ", crc, ", '",
                manifest_path.string(), "' records ", want.crc32c, "): the file is corrupt");
  }
  CheckpointContent c;
  c.model = io::load_tensors(dir / "model.safetensors").tensors;
  c.optimizer = io::load_tensors(dir / "optimizer.safetensors").tensors;
  try {
    c.state = nlohmann::json::parse(io::read_file_text(dir / "state.json"));
  } catch (const nlohmann::json::exception& e) {
    fail("[checkpoint] '", (dir / "state.json").string(), "' is not valid JSON: ", e.what());
  }
  // save_checkpoint writes the step into both; a disagreement means one was edited or damaged undetected.
  const bool same_step = c.state.is_object() && c.state.contains("step") && c.state["step"].is_number_integer() &&
                         c.state["step"].get<int64_t>() == manifest.step;
  TALLY_CHECK(same_step, "[checkpoint] '", manifest_path.string(), "' is for step ", manifest.step, " but '",
              (dir / "state.json").string(), "' does not record that step");
  return c;
}

std::optional<fs::path> latest_checkpoint(const fs::path& run_dir) {
  std::vector<fs::path> all = checkpoints_newest_first(run_dir);
  if (all.empty()) return std::nullopt;
  return all.front();
}

bool holds_run(const fs::path& dir) { return fs::exists(dir / "log.jsonl") || latest_checkpoint(dir).has_value(); }

bool holds_model_only(const fs::path& dir) {
  return (fs::exists(dir / "model.safetensors") || fs::exists(dir / "config.json")) && !fs::exists(dir / "log.jsonl");
}

std::vector<fs::path> checkpoints_newest_first(const fs::path& run_dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec)) return {};
  for (const auto& e : fs::directory_iterator(run_dir, ec))
    if (int64_t s = checkpoint_step(e.path()); s >= 0 && fs::exists(e.path() / "manifest.json"))
      found.emplace_back(s, e.path());
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<fs::path> out;
  for (auto& [s, p] : found) out.push_back(std::move(p));
  return out;
}

}  // namespace tally::train
