// GPT-2: configuration and presets, the model (token + position embeddings, L pre-LN blocks, final LayerNorm,
// an output head tied to the token embedding), GPT-2 initialisation from a seed, the loss, and the
// key/value-cached forward used by generation (models/generate.h). Checkpoint I/O: models/checkpoint_llmc.h and
// models/safetensors_gpt2.h. Shape letters: B batch, T time, C channels, V vocab, Vp padded vocab, L layers.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "nn/transformer.h"

namespace tally::models {

struct GPT2Config {
  int64_t n_layer = 12;              // L
  int64_t n_head = 12;               // NH
  int64_t n_embd = 768;              // C
  int64_t block_size = 1024;         // maximum T (rows of the position embedding)
  int64_t vocab_size = 50257;        // V: tokens the model predicts
  int64_t padded_vocab_size = 50304; // Vp >= V: rows of wte; rows [V, Vp) are zero and never predicted
  double dropout = 0.0;              // embedding and residual dropout in Mode::train
  double ln_eps = 1e-5;

  // "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl" (the released sizes) and CPU-sized "tiny" (L2 NH2 C64, tests),
  // "d4"/"small" (L4 NH4 C256), "d6" (L6 NH6 C384). All use V = 50257 padded to Vp = 50304, T = 1024.
  static GPT2Config preset(std::string_view name);
  static std::vector<std::string> preset_names();

  int64_t head_size() const { return n_embd / n_head; }
  // Parameter count in closed form (wte counted once: the head is tied), matching GPT2::num_parameters().
  int64_t num_parameters() const;
  // Throws tally::Error naming the bad field; also refuses more than kMaxLayers blocks or kMaxParameters
  // parameters (a corrupt header or a typo, never a real model), so sizes derived from a valid config never overflow.
  void validate() const;
  static constexpr int64_t kMaxLayers = 1 << 16;
  static constexpr int64_t kMaxParameters = int64_t(1) << 40;
  std::string str() const;  // "L12 NH12 C768 T1024 V50257 (Vp 50304)"
  bool operator==(const GPT2Config&) const = default;
};

// V rounded up to a multiple (llm.c pads 50257 to 50304 with multiple 128). multiple 1 = no padding.
int64_t padded_vocab(int64_t vocab_size, int64_t multiple = 128);

// How parameters are filled at construction.
enum class Init : uint8_t {
  gpt2,  // GPT-2 initialisation from options.seed (see init_gpt2 below)
  none,  // left uninitialised: the caller loads every parameter (checkpoint readers)
};

struct GPT2Options {
  Device device = Device::cpu();  // Device::meta() builds a model that only accounts memory
  // f64 for finite-difference gradient checks (CPU); bf16 for mixed precision on CUDA (activations and gradients
  // bf16, arithmetic in float; the optimizer keeps f32 master weights). The bf16 init draws the f32 values and
  // rounds them to nearest even: a bf16 model starts from the f32 model's weights, rounded.
  DType dtype = DType::f32;
  uint64_t seed = 0;              // initialisation; dropout draws from a stream derived from it
  Init init = Init::gpt2;
  // loss() runs the head and the cross-entropy in chunks of this many rows (linear_cross_entropy) when B*T exceeds
  // it, so that the (B*T, Vp) logits and their gradient are never held whole; 0: never. 1024 rows keep each chunk's
  // products large enough for BLAS and cuBLAS (the head's gradient is re-read once per chunk), and the default CPU
  // configurations (B*T <= 1024) on the unchunked path.
  int64_t loss_chunk_rows = 1024;
};

// Per-layer key/value caches for incremental decoding (models/generate.h). length = positions filled.
struct KVCache {
  std::vector<nn::LayerKVCache> layers;
  int64_t batch = 0;
  int64_t capacity = 0;  // Tmax
  int64_t length = 0;
};

enum class LogitPositions : uint8_t { all, last };

class GPT2 : public nn::Module {
  // Declared first: members initialise in declaration order and the layers below use these.
  GPT2Config config_;
  GPT2Options options_;
  Generator dropout_generator_;  // stream seeded from options.seed (see gpt2.cpp), used only by dropout

 public:
  explicit GPT2(const GPT2Config& config, GPT2Options options = {});

  const GPT2Config& config() const { return config_; }
  const GPT2Options& options() const { return options_; }
  Device device() const { return options_.device; }
  // The dropout stream (its state is saved with training checkpoints so a resumed run draws the same masks).
  Generator& dropout_generator() { return dropout_generator_; }
  // The counters of the dropout stream that one forward pass of `tokens` positions (B x T) takes: (tokens, C) for the
  // embeddings' dropout and for each block's two residual branches' in Mode::train with dropout > 0; 0 otherwise.
  // A data-parallel step places each micro-batch's masks with it (train/step.cpp).
  uint64_t dropout_draws(int64_t tokens) const;
  DType dtype() const { return options_.dtype; }

  // idx (B, T) i32 -> logits (B, T, V): a row-strided view of the head's (B, T, Vp) output, so padded columns
  // never reach the caller.
  Tensor forward(const Tensor& idx) const;
  // Mean cross-entropy of predicting targets (B, T) i32 (the next tokens, llm.c's convention: the caller shifts)
  // over all B*T positions. Probabilities are never stored; past options.loss_chunk_rows positions neither are the
  // whole logits (the head and the loss run in chunks of rows, see linear_cross_entropy in core/ops.h).
  // ids: TokenIds::checked_by_caller skips the host check of the ids' values (shapes and devices are always
  // checked): for ids the caller has already checked, as the trainer's from shards validated when opened.
  Tensor loss(const Tensor& idx, const Tensor& targets, TokenIds ids = TokenIds::check) const;
  struct Output {
    Tensor logits;  // (B, T, V) view
    Tensor loss;    // scalar
  };
  Output forward_with_loss(const Tensor& idx, const Tensor& targets, TokenIds ids = TokenIds::check) const;

  // Incremental decoding (no autograd, no dropout): idx (B, Tn) holds positions [cache.length, cache.length + Tn);
  // their keys and values are appended to the cache. Returns the logits (B, Tn, V) of those positions, or with
  // LogitPositions::last only the last one's (B, 1, V) (a long prompt then costs no (B, Tn, V) buffer).
  Tensor forward_cached(const Tensor& idx, KVCache& cache, LogitPositions positions = LogitPositions::all) const;
  // Caches of `capacity` positions (<= block_size) for a batch of `batch`, on the model's device.
  KVCache make_kv_cache(int64_t batch, int64_t capacity) const;

  // GPT-2 initialisation, deterministic from `seed`. Parameters are visited in named_parameters() order with one
  // Generator(seed); each weight draws its elements' counters in row-major order:
  //   wte: normal(0, 0.02) over the first V rows only (rows [V, Vp) are zero; padded and unpadded models agree);
  //   wpe and every Linear weight: normal(0, 0.02), except attn.c_proj and mlp.c_proj: normal(0, 0.02/sqrt(2L));
  //   biases: zero (no draws); LayerNorm weight one, bias zero (no draws).
  void init_gpt2(uint64_t seed);

  // Copies a saved parameter into the model's own, converting dtype and device: the same shape, or for the token
  // embedding any vocabulary padding (rows [0, V) copied, this model's padding rows zeroed), so a model saved
  // padded loads unpadded and the other way round. A wrong shape throws naming `name`, both shapes and `source`.
  void load_parameter(const std::string& name, const Tensor& saved, const std::string& source);

  nn::Embedding wte;  // transformer.wte (Vp, C), also the output head
  nn::Embedding wpe;  // transformer.wpe (block_size, C)
  nn::Dropout drop;
  std::vector<std::unique_ptr<nn::Block>> h;  // transformer.h.{i}
  nn::LayerNorm ln_f;                          // transformer.ln_f

 private:
  // Embeddings + blocks + ln_f: (B, T) -> (B, T, C).
  Tensor hidden(const Tensor& idx, TokenIds ids) const;
  // hidden + head: (B, T) -> (B, T, Vp).
  Tensor logits_padded(const Tensor& idx, TokenIds ids) const;
  // ids (B, T) i32 on the model's device with T <= limit, and (TokenIds::check) values in [0, V).
  void check_ids(const Tensor& ids, const char* what, int64_t T_limit, TokenIds values) const;
  // targets: check_ids as above, and the shape of idx.
  void check_targets(const Tensor& idx, const Tensor& targets, TokenIds values) const;
};

}  // namespace tally::models
