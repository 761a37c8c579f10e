// GPT-2 weights as .safetensors in Hugging Face naming (transformer.wte.weight, transformer.h.{i}.attn.c_attn.weight,
// ...). HF's Conv1D stores Linear weights as (in, out): they are transposed against tally's (out, in) both ways.
// Import accepts the real files' conventions: names with or without the "transformer." prefix, the attention mask
// buffers attn.bias / attn.masked_bias (ignored), an lm_head.weight equal to wte (tied; an untied head is an error),
// and F32/F16/BF16/F64 data. The file parsing itself is core/io/safetensors.h.
#pragma once
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "models/gpt2.h"

namespace tally::models {

struct SafetensorsImportOptions {
  Device device = Device::cpu();
  DType dtype = DType::f32;
  // Heads cannot be read off tensor shapes. 0: take n_head from the file's metadata ("n_head", written by
  // save_safetensors_gpt2), else from config.json beside the file (Hugging Face's), else from the released GPT-2
  // sizes (L12 C768 -> 12, L24 C1024 -> 16, L36 C1280 -> 20, L48 C1600 -> 25); else the import fails saying so.
  int64_t n_head = 0;
  int64_t vocab_multiple = 128;  // the model's Vp = V rounded up to this (1: no padding)
};

// The configuration the file implies (shapes, layer count, heads as above).
GPT2Config read_safetensors_gpt2_config(const std::filesystem::path& path, const SafetensorsImportOptions& options = {});
std::unique_ptr<GPT2> load_safetensors_gpt2(const std::filesystem::path& path, const SafetensorsImportOptions& options = {});
// The same import from a whole file image in memory (fuzzing, tests), without a config.json; name appears in errors.
std::unique_ptr<GPT2> load_safetensors_gpt2_from_memory(std::span<const uint8_t> file, const std::string& name,
                                                        const SafetensorsImportOptions& options = {});
// Loads into an existing model: L, C, maxT and V must match (the model's padding rows are zeroed).
void load_safetensors_gpt2_into(GPT2& model, const std::filesystem::path& path);

// Writes HF naming with the "transformer." prefix, Conv1D weights (in, out), wte without padding rows, no lm_head
// (tied), in the model's dtype (F32 or F64); metadata: format "pt", n_layer, n_head, n_embd, n_positions, vocab_size.
void save_safetensors_gpt2(const GPT2& model, const std::filesystem::path& path);

}  // namespace tally::models
