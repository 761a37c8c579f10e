// GPT-2: presets, validation, construction, initialisation, forward / loss and the key/value-cached forward.
#include "models/gpt2.h"

#include <cmath>

#include "core/autograd/node.h"

namespace tally::models {

namespace {

struct Preset {
  const char* name;
  int64_t n_layer, n_head, n_embd;
};
constexpr Preset kPresets[] = {
    {"gpt2", 12, 12, 768},  {"gpt2-medium", 24, 16, 1024}, {"gpt2-large", 36, 20, 1280}, {"gpt2-xl", 48, 25, 1600},
    {"tiny", 2, 2, 64},     {"d4", 4, 4, 256},             {"small", 4, 4, 256},          {"d6", 6, 6, 384},
};

// The dropout stream is independent of the initialisation stream (another Philox key).
constexpr uint64_t kDropoutSeedMix = 0xD1B54A32D192ED03ull;

const GPT2Config& validated(const GPT2Config& c) {
  c.validate();
  return c;
}

const GPT2Options& validated(const GPT2Options& o) {
  TALLY_CHECK(o.dtype == DType::f32 || o.dtype == DType::f64 || o.dtype == DType::bf16,
              "[gpt2] parameters must be f32, f64 or bf16, got ", dtype_name(o.dtype));
  TALLY_CHECK(o.dtype != DType::bf16 || !o.device.is_cpu(), "[gpt2] parameters on the CPU must be f32 or f64, got bf16 ",
              "(bf16 computes on CUDA only: use device cuda, or meta to plan memory)");
  TALLY_CHECK(o.loss_chunk_rows >= 0, "[gpt2] loss_chunk_rows must be >= 0 (0: the loss is never chunked), got ",
              o.loss_chunk_rows);
  return o;
}

}  // namespace

int64_t padded_vocab(int64_t vocab_size, int64_t multiple) {
  TALLY_CHECK(vocab_size > 0 && multiple > 0, "[gpt2] padded_vocab needs V > 0 and multiple > 0, got V=", vocab_size,
              " multiple=", multiple);
  return (vocab_size + multiple - 1) / multiple * multiple;
}

GPT2Config GPT2Config::preset(std::string_view name) {
  for (const Preset& p : kPresets) {
    if (name != p.name) continue;
    GPT2Config c;
    c.n_layer = p.n_layer;
    c.n_head = p.n_head;
    c.n_embd = p.n_embd;
    c.block_size = 1024;
    c.vocab_size = 50257;
    c.padded_vocab_size = padded_vocab(50257);
    return c;
  }
  std::string names;
  for (const std::string& n : preset_names()) names += cat(names.empty() ? "" : ", ", n);
  fail("[gpt2] unknown model preset '", name, "' (known: ", names, ")");
}

std::vector<std::string> GPT2Config::preset_names() {
  std::vector<std::string> out;
  for (const Preset& p : kPresets) out.emplace_back(p.name);
  return out;
}

int64_t GPT2Config::num_parameters() const {
  const int64_t C = n_embd;
  const int64_t per_layer = 2 * C               // ln_1
                            + 3 * C * C + 3 * C  // attn.c_attn
                            + C * C + C          // attn.c_proj
                            + 2 * C              // ln_2
                            + 4 * C * C + 4 * C  // mlp.c_fc
                            + 4 * C * C + C;     // mlp.c_proj
  return padded_vocab_size * C + block_size * C + n_layer * per_layer + 2 * C;
}

void GPT2Config::validate() const {
  TALLY_CHECK(n_layer > 0, "[gpt2] config: n_layer must be positive, got ", n_layer);
  TALLY_CHECK(n_head > 0, "[gpt2] config: n_head must be positive, got ", n_head);
  TALLY_CHECK(n_embd > 0 && n_embd % n_head == 0, "[gpt2] config: n_embd (", n_embd,
              ") must be a positive multiple of n_head (", n_head, ")");
  TALLY_CHECK(block_size > 0, "[gpt2] config: block_size must be positive, got ", block_size);
  TALLY_CHECK(vocab_size > 0, "[gpt2] config: vocab_size must be positive, got ", vocab_size);
  TALLY_CHECK(padded_vocab_size >= vocab_size, "[gpt2] config: padded_vocab_size (", padded_vocab_size,
              ") must be at least vocab_size (", vocab_size, ")");
  TALLY_CHECK(dropout >= 0.0 && dropout < 1.0, "[gpt2] config: dropout must be in [0, 1), got ", dropout);
  TALLY_CHECK(ln_eps > 0.0, "[gpt2] config: ln_eps must be positive, got ", ln_eps);
  // Bounds that keep every size computed from the config (parameter bytes, activations, the block list) far from
  // int64 overflow; nothing real comes near them (GPT-2 XL: 48 layers, 1.6e9 parameters).
  TALLY_CHECK(n_layer <= kMaxLayers, "[gpt2] config: n_layer ", n_layer, " is more than ", kMaxLayers);
  const long double C = n_embd;
  const long double params = (long double)(padded_vocab_size) * C + (long double)(block_size) * C +
                             (long double)(n_layer) * (12 * C * C + 13 * C) + 2 * C;
  TALLY_CHECK(params <= (long double)kMaxParameters, "[gpt2] config: ", str(), " would have about ",
              double(params), " parameters, more than ", kMaxParameters);
}

std::string GPT2Config::str() const {
  std::string s = cat("L", n_layer, " NH", n_head, " C", n_embd, " T", block_size, " V", vocab_size);
  if (padded_vocab_size != vocab_size) s += cat(" (Vp ", padded_vocab_size, ")");
  return s;
}

// ---- the model ----

GPT2::GPT2(const GPT2Config& config, GPT2Options options)
    : nn::Module(""),
      config_(validated(config)),
      options_(validated(options)),
      dropout_generator_(options.seed ^ kDropoutSeedMix),
      wte("transformer.wte", config.padded_vocab_size, config.n_embd, {options.dtype, options.device}),
      wpe("transformer.wpe", config.block_size, config.n_embd, {options.dtype, options.device}),
      drop("transformer.drop", config.dropout, dropout_generator_),
      ln_f("transformer.ln_f", config.n_embd, {options.dtype, options.device}, config.ln_eps) {
  add_child(wte);
  add_child(wpe);
  add_child(drop);
  const nn::BlockConfig block{.n_embd = config.n_embd, .n_head = config.n_head, .ln_eps = config.ln_eps,
                              .dropout = config.dropout};
  h.reserve(size_t(config.n_layer));
  for (int64_t i = 0; i < config.n_layer; ++i) {
    h.push_back(std::make_unique<nn::Block>(cat("transformer.h.", i), block, TensorOptions{options.dtype, options.device},
                                            dropout_generator_));
    add_child(*h.back());
  }
  // ln_f was built in the initialiser list; registering it last gives the Hugging Face parameter order.
  add_child(ln_f);
  // Rows [V, Vp) of wte are kernel alignment: zero, never predicted, and not the optimizer's to keep state for or
  // update (a factored optimizer's row mean and update RMS would otherwise count them).
  if (config_.padded_vocab_size > config_.vocab_size) {
    Tensor w = wte.weight();
    w.set_padding_rows(config_.padded_vocab_size - config_.vocab_size);
  }
  if (options.init == Init::gpt2) init_gpt2(options.seed);
}

void GPT2::init_gpt2(uint64_t seed) {
  NoGradGuard no_grad;
  Generator gen(seed);
  const double sigma = 0.02, proj_sigma = 0.02 / std::sqrt(2.0 * double(config_.n_layer));
  auto normal = [&](Tensor t, double s) { normal_(t, gen, 0.0, s); };
  auto layer_norm = [](const nn::LayerNorm& ln) {
    Tensor w = ln.weight(), b = ln.bias();
    w.fill_(1.0);
    b.zero_();
  };
  auto linear = [&](const nn::Linear& l, double s) {
    normal(l.weight(), s);
    if (l.bias().defined()) {
      Tensor b = l.bias();
      b.zero_();
    }
  };
  // The order below is the named_parameters() order (the tests check it); it fixes which counters each draws.
  Tensor wte_w = wte.weight();
  wte_w.zero_();
  normal(wte_w.slice(0, 0, config_.vocab_size), sigma);  // a prefix of rows: contiguous
  normal(wpe.weight(), sigma);
  for (const auto& block : h) {
    layer_norm(block->ln_1);
    linear(block->attn.c_attn, sigma);
    linear(block->attn.c_proj, proj_sigma);
    layer_norm(block->ln_2);
    linear(block->mlp.c_fc, sigma);
    linear(block->mlp.c_proj, proj_sigma);
  }
  layer_norm(ln_f);
}

void GPT2::check_ids(const Tensor& ids, const char* what, int64_t T_limit, TokenIds values) const {
  TALLY_CHECK(ids.defined() && ids.dtype() == DType::i32 && ids.dim() == 2, "[gpt2] ", what, " must be i32 (B, T), got ",
              ids.defined() ? ids.str() : std::string("undefined"));
  TALLY_CHECK(ids.device() == device(), "[gpt2] ", what, " is on ", ids.device().str(), " but the model is on ",
              device().str());
  TALLY_CHECK(ids.size(0) > 0 && ids.size(1) > 0 && ids.size(1) <= T_limit, "[gpt2] ", what, " ", shape_str(ids.shape()),
              ": need B > 0 and 0 < T <= ", T_limit, " (block_size ", config_.block_size, ")");
  if (values == TokenIds::check) check_ids_in_range("gpt2", ids, config_.vocab_size, cat(what, ": vocabulary token"));
}

void GPT2::load_parameter(const std::string& name, const Tensor& saved, const std::string& source) {
  NoGradGuard no_grad;
  Tensor dst = parameter(name);
  const int64_t V = config_.vocab_size;
  const bool embedding_rows =
      dst.impl() == wte.weight().impl() && saved.dim() == 2 && saved.size(1) == dst.size(1) && saved.size(0) >= V;
  if (saved.shape() == dst.shape()) {
    dst.copy_(saved);
  } else if (embedding_rows) {  // another vocabulary padding: the V real rows, then zero padding
    dst.slice(0, 0, V).copy_(saved.slice(0, 0, V));
    if (dst.size(0) > V) dst.slice(0, V, dst.size(0)).zero_();
  } else {
    fail("[gpt2] '", source, "': tensor '", name, "' is ", shape_str(saved.shape()), " but the model ", config_.str(),
         " needs ", shape_str(dst.shape()));
  }
}

Tensor GPT2::hidden(const Tensor& idx, TokenIds ids) const {
  check_ids(idx, "idx", config_.block_size, ids);
  const int64_t T = idx.size(1);
  Tensor tok = wte.forward(idx, TokenIds::checked_by_caller);  // (B, T, C); checked just above
  Tensor x;
  {
    MemoryScope scope(Category::activation, wpe.name());
    x = add(tok, wpe.rows(0, T));  // + (T, C), broadcast over B
  }
  x = drop.forward(x);
  // Each block's sums joined with the norm that follows (the next block's ln_1, or ln_f) in one kernel.
  Tensor normed = h.front()->ln_1.forward(x);
  for (size_t l = 0; l < h.size(); ++l) {
    AddLayerNorm out = h[l]->forward(x, std::move(normed), l + 1 < h.size() ? h[l + 1]->ln_1 : ln_f);
    x = std::move(out.sum);
    normed = std::move(out.normed);
  }
  return normed;
}

Tensor GPT2::logits_padded(const Tensor& idx, TokenIds ids) const {
  Tensor x = hidden(idx, ids);  // (B, T, C)
  MemoryScope scope(Category::activation, "lm_head");
  return linear(x, wte.weight(), Tensor());  // (B, T, Vp): the head is the token embedding
}

namespace {
// (B, T, Vp) -> (B, T, V) view (itself when unpadded).
Tensor first_columns(const Tensor& logits, int64_t V) { return logits.size(-1) == V ? logits : logits.slice(-1, 0, V); }
}  // namespace

uint64_t GPT2::dropout_draws(int64_t tokens) const {
  if (!training() || config_.dropout == 0.0) return 0;
  return uint64_t(tokens) * uint64_t(config_.n_embd) * uint64_t(1 + 2 * config_.n_layer);
}

Tensor GPT2::forward(const Tensor& idx) const {
  return first_columns(logits_padded(idx, TokenIds::check), config_.vocab_size);
}

void GPT2::check_targets(const Tensor& idx, const Tensor& targets, TokenIds values) const {
  check_ids(targets, "targets", config_.block_size, values);
  TALLY_CHECK(idx.defined() && targets.shape() == idx.shape(), "[gpt2] targets ", shape_str(targets.shape()),
              " must have the shape of idx ", idx.defined() ? shape_str(idx.shape()) : std::string("undefined"));
}

GPT2::Output GPT2::forward_with_loss(const Tensor& idx, const Tensor& targets, TokenIds ids) const {
  check_targets(idx, targets, ids);
  Tensor logits = logits_padded(idx, ids);  // (B, T, Vp)
  const int64_t N = idx.numel(), V = config_.vocab_size;
  MemoryScope scope(Category::activation, "loss");
  // Cross-entropy reads the first V columns of each row: padded columns are never predicted, and their gradient
  // (zero) is written in the same (N, Vp) buffer.
  Tensor l = cross_entropy(logits.view({N, config_.padded_vocab_size}), targets.reshape({N}),
                           {.classes = V, .targets = TokenIds::checked_by_caller});  // checked above, or by the caller
  return {first_columns(logits, V), l};
}

Tensor GPT2::loss(const Tensor& idx, const Tensor& targets, TokenIds ids) const {
  const int64_t N = idx.defined() ? idx.numel() : 0, R = options_.loss_chunk_rows;
  if (R <= 0 || N <= R) return forward_with_loss(idx, targets, ids).loss;
  check_targets(idx, targets, ids);
  Tensor x = hidden(idx, ids);  // (B, T, C)
  MemoryScope scope(Category::activation, "lm_head");
  return linear_cross_entropy(x.view({N, config_.n_embd}), wte.weight(), targets.reshape({N}),
                              {.classes = config_.vocab_size, .chunk_rows = R,
                               .targets = TokenIds::checked_by_caller});  // checked above, or by the caller
}

KVCache GPT2::make_kv_cache(int64_t batch, int64_t capacity) const {
  TALLY_CHECK(batch > 0 && capacity > 0 && capacity <= config_.block_size, "[gpt2] kv cache needs batch > 0 and 0 < "
              "capacity <= block_size (", config_.block_size, "), got batch ", batch, " capacity ", capacity);
  KVCache cache;
  cache.batch = batch;
  cache.capacity = capacity;
  const Shape shape{batch, config_.n_head, capacity, config_.head_size()};  // (B, NH, Tmax, HS)
  for (const auto& block : h) {
    MemoryScope scope(Category::activation, block->attn.name() + ".kv_cache");
    cache.layers.push_back({empty(shape, {options_.dtype, options_.device}), empty(shape, {options_.dtype, options_.device})});
  }
  return cache;
}

Tensor GPT2::forward_cached(const Tensor& idx, KVCache& cache, LogitPositions positions) const {
  TALLY_CHECK(int64_t(cache.layers.size()) == config_.n_layer && cache.length < cache.capacity, "[gpt2] kv cache of ",
              cache.layers.size(), " layers with ", cache.length, "/", cache.capacity,
              " positions filled cannot serve a model of ", config_.n_layer, " layers");
  check_ids(idx, "idx", cache.capacity - cache.length, TokenIds::check);
  TALLY_CHECK(idx.size(0) == cache.batch, "[gpt2] idx ", shape_str(idx.shape()), " does not match the cache batch ",
              cache.batch);
  NoGradGuard no_grad;
  const int64_t pos = cache.length, Tn = idx.size(1);
  Tensor x;
  {
    MemoryScope scope(Category::activation, wpe.name());
    x = add(wte.forward(idx, TokenIds::checked_by_caller), wpe.rows(pos, Tn));
  }
  for (size_t l = 0; l < h.size(); ++l) x = h[l]->forward_cached(x, cache.layers[l], pos);
  if (positions == LogitPositions::last) x = x.slice(1, Tn - 1, Tn);  // (B, 1, C)
  x = ln_f.forward(x);
  cache.length += Tn;
  MemoryScope scope(Category::activation, "lm_head");
  return first_columns(linear(x, wte.weight(), Tensor()), config_.vocab_size);
}

}  // namespace tally::models
