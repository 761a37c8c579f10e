// Basic layers on top of the core ops: Linear (weight (OUT, IN) row-major, as llm.c), Embedding, LayerNorm, Dropout.
// Each forward runs under MemoryScope(Category::activation, <module name>) so the ledger shows activations per
// layer. Parameters are created uninitialised: the model that owns the layers initialises them (models/gpt2.cpp)
// or loads them from a checkpoint.
#pragma once
#include "core/ops.h"
#include "core/random.h"
#include "nn/module.h"

namespace tally::nn {

enum class Bias : bool { no = false, yes = true };

struct LinearOptions {
  Bias bias = Bias::yes;
};

class Linear : public Module {
 public:
  Linear(std::string name, int64_t in_features, int64_t out_features, TensorOptions options, LinearOptions opt = {});
  // x (..., IN) -> (..., OUT)
  Tensor forward(const Tensor& x) const;
  // gelu(forward(x)) as one op (linear_gelu): the pre-activation it keeps for the backward is this layer's in the ledger.
  Tensor forward_gelu(const Tensor& x) const;
  const Tensor& weight() const { return weight_; }  // (OUT, IN)
  const Tensor& bias() const { return bias_; }      // (OUT), undefined without bias
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  int64_t in_, out_;
  Tensor weight_, bias_;
};

class Embedding : public Module {
 public:
  Embedding(std::string name, int64_t num_embeddings, int64_t dim, TensorOptions options);
  // ids (...) i32 -> (..., dim)
  Tensor forward(const Tensor& ids, TokenIds check = TokenIds::check) const;
  // Rows [start, start + count) as a view (dim-wide): position embeddings of consecutive positions need no gather.
  Tensor rows(int64_t start, int64_t count) const;
  const Tensor& weight() const { return weight_; }  // (num_embeddings, dim)

 private:
  Tensor weight_;
};

class LayerNorm : public Module {
 public:
  LayerNorm(std::string name, int64_t channels, TensorOptions options, double eps = 1e-5);
  // x (..., C) -> (..., C)
  Tensor forward(const Tensor& x) const;
  // x + residual and this norm of it, both (..., C), in one kernel (add_layer_norm): the residual stream's join with
  // the LayerNorm that reads it. Both tensors are recorded as this module's activations.
  AddLayerNorm forward_sum(const Tensor& x, const Tensor& residual) const;
  const Tensor& weight() const { return weight_; }
  const Tensor& bias() const { return bias_; }
  double eps() const { return eps_; }

 private:
  Tensor weight_, bias_;
  double eps_;
};

// Dropout with its own Philox stream: active only in Mode::train with p > 0 (identity otherwise).
class Dropout : public Module {
 public:
  Dropout(std::string name, double p, Generator& generator);
  Tensor forward(const Tensor& x) const;
  double p() const { return p_; }

 private:
  double p_;
  Generator* generator_;
};

}  // namespace tally::nn
