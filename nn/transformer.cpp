// MLP, causal self-attention (full and key/value-cached) and the pre-LN transformer Block.
#include "nn/transformer.h"

#include "core/autograd/node.h"

namespace tally::nn {

MLP::MLP(std::string name, const BlockConfig& config, TensorOptions options, Generator& dropout_generator)
    : Module(std::move(name)),
      c_fc(child_name("c_fc"), config.n_embd, 4 * config.n_embd, options),
      c_proj(child_name("c_proj"), 4 * config.n_embd, config.n_embd, options),
      dropout(child_name("dropout"), config.dropout, dropout_generator) {
  add_child(c_fc);
  add_child(c_proj);
  add_child(dropout);
}

Tensor MLP::forward(const Tensor& x) const { return dropout.forward(project(x)); }

Tensor MLP::project(const Tensor& x) const {
  return c_proj.forward(c_fc.forward_gelu(x));  // gelu(c_fc(x)) (B, T, 4C) in one op, then (B, T, C)
}

CausalSelfAttention::CausalSelfAttention(std::string name, const BlockConfig& config, TensorOptions options,
                                         Generator& dropout_generator)
    : Module(std::move(name)),
      c_attn(child_name("c_attn"), config.n_embd, 3 * config.n_embd, options),
      c_proj(child_name("c_proj"), config.n_embd, config.n_embd, options),
      resid_dropout(child_name("resid_dropout"), config.dropout, dropout_generator),
      n_head_(config.n_head) {
  TALLY_CHECK(config.n_head > 0 && config.n_embd % config.n_head == 0, "[CausalSelfAttention] '", this->name(),
              "': C=", config.n_embd, " is not divisible by NH=", config.n_head);
  add_child(c_attn);
  add_child(c_proj);
  add_child(resid_dropout);
}

Tensor CausalSelfAttention::forward(const Tensor& x) const {
  Tensor qkv = c_attn.forward(x);  // (B, T, 3C)
  Tensor y;
  {
    MemoryScope scope(Category::activation, name());
    y = causal_self_attention(qkv, n_head_);  // (B, T, C)
  }
  return resid_dropout.forward(c_proj.forward(y));
}

Tensor CausalSelfAttention::forward_cached(const Tensor& x, LayerKVCache& cache, int64_t pos) const {
  TALLY_CHECK(x.dim() == 3, "[CausalSelfAttention] '", name(), "': input must be (B, T, C), got ", shape_str(x.shape()));
  const int64_t B = x.size(0), Tn = x.size(1), C = x.size(2), NH = n_head_, HS = C / NH;
  TALLY_CHECK(cache.k.defined() && cache.k.dim() == 4 && cache.k.size(0) == B && cache.k.size(1) == NH &&
                  cache.k.size(3) == HS && cache.v.shape() == cache.k.shape(),
              "[CausalSelfAttention] '", name(), "': cache k ", cache.k.defined() ? shape_str(cache.k.shape()) : "undefined",
              " does not fit input ", shape_str(x.shape()), " with ", NH, " heads");
  const int64_t Tmax = cache.k.size(2);
  TALLY_CHECK(pos >= 0 && pos + Tn <= Tmax, "[CausalSelfAttention] '", name(), "': positions [", pos, ", ", pos + Tn,
              ") do not fit the cache of ", Tmax, " positions");
  NoGradGuard no_grad;
  Tensor qkv = c_attn.forward(x).contiguous();  // (B, Tn, 3C)
  MemoryScope scope(Category::activation, name());
  // q, k, v (B, NH, Tn, HS) as strided views into qkv: head h of q is columns [h*HS, (h+1)*HS) of the first C.
  auto part = [&](int64_t which) {
    return make_view(qkv, {B, NH, Tn, HS}, {Tn * 3 * C, HS, 3 * C, 1}, qkv.offset() + which * C);
  };
  cache.k.slice(2, pos, pos + Tn).copy_(part(1));
  cache.v.slice(2, pos, pos + Tn).copy_(part(2));
  Tensor k = cache.k.slice(2, 0, pos + Tn), v = cache.v.slice(2, 0, pos + Tn);  // (B, NH, pos + Tn, HS)
  // Causal with Tq <= Tk aligns the queries with the last Tn keys: query i sees keys j <= pos + i.
  Tensor y = scaled_dot_product_attention(part(0), k, v, Causal::yes);  // (B, NH, Tn, HS)
  y = y.transpose(1, 2).contiguous().view({B, Tn, C});
  return c_proj.forward(y);
}

Block::Block(std::string name, const BlockConfig& config, TensorOptions options, Generator& dropout_generator)
    : Module(std::move(name)),
      ln_1(child_name("ln_1"), config.n_embd, options, config.ln_eps),
      attn(child_name("attn"), config, options, dropout_generator),
      ln_2(child_name("ln_2"), config.n_embd, options, config.ln_eps),
      mlp(child_name("mlp"), config, options, dropout_generator) {
  add_child(ln_1);
  add_child(attn);
  add_child(ln_2);
  add_child(mlp);
}

Tensor Block::forward(const Tensor& x) const {
  const AddLayerNorm mid = ln_2.forward_sum(x, attn.forward(ln_1.forward(x)));
  Tensor m = mlp.forward(mid.normed);
  MemoryScope scope(Category::activation, name());
  return add(mid.sum, m);
}

AddLayerNorm Block::forward(const Tensor& x, Tensor x_normed, const LayerNorm& next) const {
  Tensor a = attn.forward(x_normed);
  x_normed = Tensor();  // as a temporary would be: the attention's backward keeps what it needs
  const AddLayerNorm mid = ln_2.forward_sum(x, a);
  a = Tensor();
  return next.forward_sum(mid.sum, mlp.forward(mid.normed));
}

Tensor Block::forward_cached(const Tensor& x, LayerKVCache& cache, int64_t pos) const {
  NoGradGuard no_grad;
  Tensor h = add(x, attn.forward_cached(ln_1.forward(x), cache, pos));
  return add(h, mlp.project(ln_2.forward(h)));
}

}  // namespace tally::nn
