// llm.c's GPT-2 model file (see docs/formats.md): a 256 x int32 header (magic 20240326, version 3 = fp32 or 5 = bf16,
// maxT, V, L, NH, C, Vp) then 16 tensors with the per-layer ones stacked over all L layers and Linear weights (out,
// in), wte padded to Vp rows. Files written here load in llm.c and vice versa: read, Vp is whatever the file has (llm.c
// reads it from the header too); written, the model's padded to a multiple of 128 with zero rows, as llm.c writes it
// (a model kept unpadded gets them in the file only). Errors name the file and the problem. Not here: optimizer
// state, tokens.
#pragma once
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "models/gpt2.h"

namespace tally::models {

inline constexpr int32_t kLlmcModelMagic = 20240326;

enum class LlmcPrecision : uint8_t {
  f32,   // version 3
  bf16,  // version 5 (round to nearest even)
};

struct LlmcFileInfo {
  GPT2Config config;
  LlmcPrecision precision = LlmcPrecision::f32;
  int32_t version = 3;
};

// Reads and validates the header (and the file size against it).
LlmcFileInfo read_llmc_info(const std::filesystem::path& path);
// The same checks on a whole file image in memory; name appears in errors.
LlmcFileInfo parse_llmc_info(std::span<const uint8_t> file, const std::string& name);

struct LlmcLoadOptions {
  Device device = Device::cpu();
  DType dtype = DType::f32;  // bf16 files are widened to it
};
// A model built from the file's header and weights.
std::unique_ptr<GPT2> load_llmc(const std::filesystem::path& path, const LlmcLoadOptions& options = {});
// A model from a whole file image in memory (fuzzing, tests); name appears in errors.
std::unique_ptr<GPT2> load_llmc_from_memory(std::span<const uint8_t> file, const std::string& name,
                                            const LlmcLoadOptions& options = {});
// Loads the file's weights into an existing model whose config must equal the file's.
void load_llmc_into(GPT2& model, const std::filesystem::path& path);

// Writes the model (atomically: the old file survives a failed write).
void save_llmc(const GPT2& model, const std::filesystem::path& path, LlmcPrecision precision = LlmcPrecision::f32);

}  // namespace tally::models
