// Training checkpoints: one directory per step, written whole or not at all.
//   RUN/step-00000123/ model.safetensors  (parameters, dtype kept)
//                      optimizer.safetensors (every state tensor, dtype kept)
//                      state.json  (step, data-loader position, RNG states, configuration, counters)
//                      manifest.json (format, version, step, and each file's size and CRC-32C) -- written last
// Files are written into RUN/.tmp-step-00000123-<pid>/ and fsynced; the directory is then renamed into place
// and RUN fsynced, so a crash or SIGKILL at any moment leaves earlier checkpoints untouched and never a
// half-written step directory. A checkpoint never contains NaN or Inf (checked before anything is written).
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>
#include <optional>

#include "core/io/tensor_file.h"

namespace tally::train {

// The "format" a checkpoint's manifest and safetensors files carry in their metadata.
inline constexpr const char* kCheckpointFormat = "tally-checkpoint";

struct CheckpointContent {
  io::NamedTensors model;
  io::NamedTensors optimizer;
  nlohmann::json state = nlohmann::json::object();
};

struct SaveOptions {
  int keep_last = 3;  // older complete checkpoints beyond this many are removed (0 keeps all)
  std::filesystem::path keep_also;  // never removed by keep_last (the trainer's last checkpoint known to be good)
};

// Removes the complete checkpoints of run_dir beyond the newest keep_last (0: none), except keep_also.
void prune_checkpoints(const std::filesystem::path& run_dir, int keep_last, const std::filesystem::path& keep_also);

// Returns the directory written.
std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir, int64_t step, const CheckpointContent& content,
                                      SaveOptions opt = {});

// Verifies the manifest (sizes and checksums) and loads every file. Errors name the file and the problem.
CheckpointContent load_checkpoint(const std::filesystem::path& checkpoint_dir);

// manifest.json, parsed and checked (format, version, and a size and CRC-32C for each of the three files);
// where names the file in errors. load_checkpoint uses it; exposed for the fuzz target.
struct ManifestEntry {
  uint64_t bytes = 0;
  std::string crc32c;  // 8 lowercase hex digits
};
struct Manifest {
  int64_t step = 0;
  std::map<std::string, ManifestEntry> files;
};
Manifest parse_manifest(std::string_view text, const std::string& where);

// The complete checkpoint with the highest step under run_dir (ignores temporary directories).
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& run_dir);
// Every complete checkpoint under run_dir, the highest step first.
std::vector<std::filesystem::path> checkpoints_newest_first(const std::filesystem::path& run_dir);
// Whether dir holds a run: its log.jsonl or a complete checkpoint (a new run there would overwrite or mix with it).
bool holds_run(const std::filesystem::path& dir);
// An exported model's directory (model.safetensors or config.json) that is no run's (no log.jsonl): what --init
// takes, where --resume or inspect were given it.
bool holds_model_only(const std::filesystem::path& dir);

// "step-00000123"
std::string checkpoint_name(int64_t step);
// The step a checkpoint directory's name says (step-00000123: 123), or -1 for another name.
int64_t checkpoint_step(const std::filesystem::path& dir);

}  // namespace tally::train
