// The transformer pieces of GPT-2: MLP (c_fc, gelu, c_proj), causal self-attention (fused c_attn -> core
// causal_self_attention -> c_proj) with a key/value-cached path for generation, and the pre-LN Block.
// Names follow Hugging Face GPT-2 ("transformer.h.3.attn.c_attn.weight"). Dropout applies to the residual
// branches only (the fused attention kernel has no dropout on probabilities).
#pragma once
#include "nn/layers.h"

namespace tally::nn {

struct BlockConfig {
  int64_t n_embd = 768;  // C
  int64_t n_head = 12;   // NH
  double ln_eps = 1e-5;
  double dropout = 0.0;  // residual dropout probability
};

// One layer's key and value cache for incremental decoding: k, v (B, NH, Tmax, HS). Positions [0, length) of
// the owning cache are filled.
struct LayerKVCache {
  Tensor k;
  Tensor v;
};

class MLP : public Module {
 public:
  MLP(std::string name, const BlockConfig& config, TensorOptions options, Generator& dropout_generator);
  Tensor forward(const Tensor& x) const;  // (B, T, C) -> (B, T, C)
  Tensor project(const Tensor& x) const;  // the same without dropout (inference)
  Linear c_fc;                            // C -> 4C
  Linear c_proj;                          // 4C -> C
  Dropout dropout;
};

class CausalSelfAttention : public Module {
 public:
  CausalSelfAttention(std::string name, const BlockConfig& config, TensorOptions options, Generator& dropout_generator);
  Tensor forward(const Tensor& x) const;  // (B, T, C) -> (B, T, C)
  // x (B, Tn, C) holds positions [pos, pos + Tn): their keys and values are written into `cache`, and each
  // query attends to every cached position up to its own. Outside autograd (generation).
  Tensor forward_cached(const Tensor& x, LayerKVCache& cache, int64_t pos) const;
  int64_t n_head() const { return n_head_; }
  Linear c_attn;  // C -> 3C (q, k, v)
  Linear c_proj;  // C -> C
  Dropout resid_dropout;

 private:
  int64_t n_head_;
};

class Block : public Module {
 public:
  Block(std::string name, const BlockConfig& config, TensorOptions options, Generator& dropout_generator);
  Tensor forward(const Tensor& x) const;  // (B, T, C) -> (B, T, C): x + attn(ln_1(x)), then + mlp(ln_2(.))
  // The same within a stack of blocks: given the stream x and x_normed = ln_1(x) (B, T, C), returns the stream after
  // this block and `next` of it (the next block's ln_1, or the final norm). Each residual sum is formed in one kernel
  // with the LayerNorm that reads it (add_layer_norm). x_normed is released once the attention has read it.
  AddLayerNorm forward(const Tensor& x, Tensor x_normed, const LayerNorm& next) const;
  // Incremental decoding through the cached attention; never applies dropout (inference), no autograd.
  Tensor forward_cached(const Tensor& x, LayerKVCache& cache, int64_t pos) const;
  LayerNorm ln_1;
  CausalSelfAttention attn;
  LayerNorm ln_2;
  MLP mlp;
};

}  // namespace tally::nn
