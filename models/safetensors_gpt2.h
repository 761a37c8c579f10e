// GPT-2 weights as .safetensors in Hugging Face naming (transformer.wte.weight, transformer.h.{i}.attn.c_attn.weight,
// ...). HF's Conv1D stores Linear weights as (in, out): they are transposed against tally's (out, in) both ways.
// Import accepts the real files' conventions: names with or without the "transformer." prefix, the attention mask
// buffers attn.bias / attn.masked_bias (ignored), an lm_head.weight equal to wte (tied; an untied head is an error),
// and F32/F16/BF16/F64 data. A Hugging Face config.json beside the file is read (heads, LayerNorm epsilon, dropout)
// and checked against the tensors: n_layer, n_embd, n_positions, vocab_size, n_inner and the metadata's n_head must
// agree, and fields that select another architecture (activation, untied head, cross-attention, attention scaling)
// are refused; each error names the field, the file and both values. The file parsing itself is core/io/safetensors.h.
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

// The element type of an exported file: the model's own (F32, or F64 for a float64 model; a bf16 model's values are
// written as F32), or F32 / BF16 whatever the model holds (BF16: each value rounded to nearest, ties to even).
enum class ExportDType : uint8_t { as_model, f32, bf16 };
struct SafetensorsExportOptions {
  ExportDType dtype = ExportDType::as_model;
};
// The safetensors dtype that `options` gives for `model` (F32, F64 or BF16).
DType export_dtype(const GPT2& model, ExportDType dtype);

// Writes HF naming with the "transformer." prefix, Conv1D weights (in, out), wte without padding rows, no lm_head
// (tied); metadata: format "pt", n_layer, n_head, n_embd, n_positions, vocab_size. Atomic (one file).
void save_safetensors_gpt2(const GPT2& model, const std::filesystem::path& path,
                           const SafetensorsExportOptions& options = {});

}  // namespace tally::models
