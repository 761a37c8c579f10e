// Linear, Embedding, LayerNorm and Dropout: parameter creation, argument checks and forward on the core ops.
#include "nn/layers.h"

namespace tally::nn {

Linear::Linear(std::string name, int64_t in_features, int64_t out_features, TensorOptions options, LinearOptions opt)
    : Module(std::move(name)), in_(in_features), out_(out_features) {
  TALLY_CHECK(in_features > 0 && out_features > 0, "[Linear] '", this->name(), "' needs positive sizes, got IN=",
              in_features, " OUT=", out_features);
  weight_ = add_parameter("weight", {out_features, in_features}, options);
  if (opt.bias == Bias::yes) bias_ = add_parameter("bias", {out_features}, options);
}

Tensor Linear::forward(const Tensor& x) const {
  MemoryScope scope(Category::activation, name());
  return linear(x, weight_, bias_);
}

Tensor Linear::forward_gelu(const Tensor& x) const {
  MemoryScope scope(Category::activation, name());
  return linear_gelu(x, weight_, bias_);
}

Embedding::Embedding(std::string name, int64_t num_embeddings, int64_t dim, TensorOptions options)
    : Module(std::move(name)) {
  TALLY_CHECK(num_embeddings > 0 && dim > 0, "[Embedding] '", this->name(), "' needs positive sizes, got (",
              num_embeddings, ", ", dim, ")");
  weight_ = add_parameter("weight", {num_embeddings, dim}, options);
}

Tensor Embedding::forward(const Tensor& ids, TokenIds check) const {
  MemoryScope scope(Category::activation, name());
  return embedding(ids, weight_, check);
}

Tensor Embedding::rows(int64_t start, int64_t count) const {
  TALLY_CHECK(start >= 0 && count > 0 && start + count <= weight_.size(0), "[Embedding] '", name(), "': rows [", start,
              ", ", start + count, ") outside the table of ", weight_.size(0), " rows");
  return weight_.slice(0, start, start + count);
}

LayerNorm::LayerNorm(std::string name, int64_t channels, TensorOptions options, double eps)
    : Module(std::move(name)), eps_(eps) {
  TALLY_CHECK(channels > 0 && eps > 0, "[LayerNorm] '", this->name(), "' needs C > 0 and eps > 0, got C=", channels,
              " eps=", eps);
  weight_ = add_parameter("weight", {channels}, options);
  bias_ = add_parameter("bias", {channels}, options);
}

Tensor LayerNorm::forward(const Tensor& x) const {
  MemoryScope scope(Category::activation, name());
  return layer_norm(x, weight_, bias_, eps_);
}

AddLayerNorm LayerNorm::forward_sum(const Tensor& x, const Tensor& residual) const {
  MemoryScope scope(Category::activation, name());
  return add_layer_norm(x, residual, weight_, bias_, eps_);
}

Dropout::Dropout(std::string name, double p, Generator& generator)
    : Module(std::move(name)), p_(p), generator_(&generator) {
  TALLY_CHECK(p >= 0.0 && p < 1.0, "[Dropout] '", this->name(), "': p must be in [0, 1), got ", p);
}

Tensor Dropout::forward(const Tensor& x) const {
  if (!training() || p_ == 0.0) return x;
  MemoryScope scope(Category::activation, name());
  return dropout(x, p_, *generator_);
}

}  // namespace tally::nn
