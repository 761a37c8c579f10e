// The optimizer registry (see registry.h): settings and their reader, and one entry per optimizer. An entry is the
// optimizer's own settings and a function from them to its Config; everything else is shared.
#include "optim/registry.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/parse.h"
#include "optim/adafactor.h"
#include "optim/adamw.h"
#include "optim/came.h"
#include "optim/lamb.h"
#include "optim/sgd.h"
#include "optim/sm3.h"

namespace tally::optim {

// ---- settings ----

namespace {

// Shortest text that reads back as the same double ("0.001", "1e-30").
std::string number_text(double v) {
  char buf[32];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

}  // namespace

SettingValue::SettingValue(double v) : text(number_text(v)) {}

Settings::Settings(std::initializer_list<std::pair<const std::string, SettingValue>> values) {
  for (const auto& [name, value] : values) set(name, value);
}

Settings& Settings::set(const std::string& name, SettingValue value) {
  values_[name] = std::move(value.text);
  return *this;
}

std::optional<std::string> Settings::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

SettingsReader::SettingsReader(std::string optimizer, const std::vector<Setting>& declared, const Settings& given)
    : optimizer_(std::move(optimizer)) {
  for (const Setting& s : declared) values_[s.name] = s.default_value;
  for (const auto& [name, value] : given.values()) {
    auto it = values_.find(name);
    if (it == values_.end()) {
      std::string known;
      for (const Setting& s : declared) known += (known.empty() ? "" : ", ") + s.name;
      fail("[", optimizer_, "] has no setting '", name, "' (it reads ", known, ")");
    }
    it->second = value;
  }
}

const std::string& SettingsReader::text(std::string_view name) const {
  auto it = values_.find(name);
  TALLY_ASSERT(it != values_.end());  // an entry reads only what it declares
  return it->second;
}

double SettingsReader::number(std::string_view name) const {
  const std::string& t = text(name);
  const std::optional<double> v = parse_finite_double(t);
  if (!v) fail("[", optimizer_, "] setting '", name, "' expects a finite number within double's range, got '", t, "'");
  return *v;
}

int64_t SettingsReader::integer(std::string_view name) const {
  const std::string& t = text(name);
  int64_t v = 0;
  auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  if (t.empty() || ec != std::errc() || p != t.data() + t.size())
    fail("[", optimizer_, "] setting '", name, "' expects an integer, got '", t, "'");
  return v;
}

bool SettingsReader::on(std::string_view name) const {
  const std::string& t = text(name);
  if (t == "true" || t == "1" || t == "on" || t == "yes") return true;
  if (t.empty() || t == "false" || t == "0" || t == "off" || t == "no") return false;
  fail("[", optimizer_, "] switch '", name, "' expects true or false, got '", t, "'");
}

std::string SettingsReader::word(std::string_view name) const { return text(name); }

DecayRule SettingsReader::decay_rule() const {
  const std::string& d = text("decay");
  if (d == "matrices") return DecayRule::matrices;
  if (d == "all") return DecayRule::all;
  if (d == "none") return DecayRule::none;
  fail("[", optimizer_, "] setting 'decay' must be matrices, all or none, got '", d, "'");
}

// ---- entries ----

namespace {

// lr, weight-decay and decay: read by every optimizer.
std::vector<Setting> common_settings(double default_lr) {
  return {
      {"lr", "peak learning rate", number_text(default_lr)},
      {"weight-decay", "weight decay (decoupled; SGD: L2 added to the gradient)", "0"},
      {"decay", "which tensors get weight decay: matrices (2+ dims) | all | none", "matrices"},
  };
}

// An entry from the optimizer's class, its own settings and the function that turns settings into its Config.
template <class Opt, class Config>
OptimizerEntry entry(std::string name, std::string summary, double default_lr, std::vector<Setting> own,
                     Config (*config)(const SettingsReader&)) {
  OptimizerEntry e{.name = name,
                   .summary = std::move(summary),
                   .default_lr = default_lr,
                   .settings = common_settings(default_lr),
                   .sums_over_tensor = Opt::kSumsOverTensor,
                   .fused_bf16 = Opt::kFusedBf16};
  e.settings.insert(e.settings.end(), own.begin(), own.end());
  auto reader = [name, declared = e.settings](const Settings& given) { return SettingsReader(name, declared, given); };
  e.make = [reader, config](const std::vector<Tensor>& params, const Settings& given) -> std::unique_ptr<Optimizer> {
    const SettingsReader r = reader(given);
    return std::make_unique<Opt>(decay_groups(params, config(r), r.decay_rule()));
  };
  e.predict = [reader, config](const std::vector<NamedShape>& params, const Settings& given, ShardOf shard) {
    const Config c = config(reader(given));  // weight decay never changes the state: one config serves every group
    validate(c, 0);
    return Opt::predict_state_bytes(params, c, shard);
  };
  e.check = [reader, config](const Settings& given) {
    const SettingsReader r = reader(given);
    validate(config(r), 0);
    r.decay_rule();
  };
  return e;
}

CameConfig came_config(const SettingsReader& s) {
  CameConfig c{.lr = s.number("lr"),
               .betas = {s.number("beta1"), s.number("beta2"), s.number("beta3")},
               .eps = {s.number("eps1"), s.number("eps2")},
               .clip_threshold = s.number("clip-threshold"),
               .weight_decay = s.number("weight-decay")};
  if (s.on("came-factor-largest")) c.factoring = Factoring::two_largest_dims;
  if (s.on("came-bf16-m")) c.exp_avg_dtype = DType::bf16;
  if (s.on("came-confidence-ones")) c.confidence_init = ConfidenceInit::ones;
  return c;
}

AdamWConfig adamw_config(const SettingsReader& s) {
  return {.lr = s.number("lr"),
          .betas = {s.number("beta1"), s.number("beta2")},
          .eps = s.number("eps"),
          .weight_decay = s.number("weight-decay")};
}

AdafactorConfig adafactor_config(const SettingsReader& s) {
  AdafactorConfig c{.lr = s.number("lr"),
                    .eps = {s.number("eps1"), 1e-3},
                    .clip_threshold = s.number("clip-threshold"),
                    .decay_rate = s.number("decay-rate"),
                    .weight_decay = s.number("weight-decay")};
  if (!s.on("no-adafactor-beta1")) c.beta1 = s.number("beta1");
  if (s.on("came-factor-largest")) c.factoring = Factoring::two_largest_dims;
  return c;
}

SgdConfig sgd_config(const SettingsReader& s) {
  return {.lr = s.number("lr"),
          .momentum = s.number("momentum"),
          .dampening = s.number("dampening"),
          .weight_decay = s.number("weight-decay"),
          .nesterov = s.on("nesterov") ? Nesterov::yes : Nesterov::no};
}

Sm3Config sm3_config(const SettingsReader& s) {
  return {.lr = s.number("lr"),
          .momentum = s.number("momentum"),
          .beta = s.number("beta"),
          .eps = s.number("eps"),
          .weight_decay = s.number("weight-decay")};
}

LambConfig lamb_config(const SettingsReader& s) {
  return {.lr = s.number("lr"),
          .betas = {s.number("beta1"), s.number("beta2")},
          .eps = s.number("eps"),
          .weight_decay = s.number("weight-decay"),
          .decay = s.on("lamb-decay-in-update") ? LambDecay::in_update : LambDecay::decoupled,
          .clamp = s.number("lamb-clamp"),
          .bias_correction = s.on("lamb-no-bias-correction") ? LambBiasCorrection::none
                                                             : LambBiasCorrection::step_size};
}

// Settings several optimizers read, declared once.
const Setting kBeta1{"beta1", "first-moment decay", "0.9"};
const Setting kBeta2{"beta2", "second-moment decay", "0.999"};
const Setting kEps1{"eps1", "epsilon added to g^2", "1e-30"};
const Setting kClip{"clip-threshold", "RMS clip of the normalised update", "1"};
// Shared by optimizers with different defaults: one help text, each its own default.
const char* const kEpsHelp = "epsilon (AdamW, LAMB: added to sqrt(v); SM3: added to v)";
const char* const kMomentumHelp = "momentum (SGD: of the step direction; SM3: of the normalised update)";
const Setting kFactorLargest{"came-factor-largest",
                             "factor the two largest dims when the smaller is >= 128 (optax's rule)", "",
                             SettingKind::switch_};

std::vector<OptimizerEntry> make_registry() {
  std::vector<OptimizerEntry> r;
  r.push_back(entry<Came>("came", "CAME (came-pytorch 0.1.3): factored second moment, confidence-guided update", 1e-3,
                          {kBeta1, kBeta2,
                           {"beta3", "CAME's instability decay", "0.9999"},
                           kEps1,
                           {"eps2", "CAME's epsilon added to the instability", "1e-16"},
                           kClip,
                           kFactorLargest,
                           {"came-bf16-m", "CAME: keep the first moment in bf16", "", SettingKind::switch_},
                           {"came-confidence-ones", "CAME: start the confidence factors at one instead of zero", "",
                            SettingKind::switch_}},
                          came_config));
  r.push_back(entry<AdamW>("adamw", "AdamW (torch.optim.AdamW)", 1.5e-3,
                           {kBeta1, kBeta2, {"eps", kEpsHelp, "1e-8"}}, adamw_config));
  r.push_back(entry<Adafactor>("adafactor", "Adafactor (transformers', fixed lr, with a first moment by default)",
                               1.5e-3,
                               {kBeta1,
                                {"no-adafactor-beta1", "Adafactor without a first moment", "", SettingKind::switch_},
                                kEps1,
                                kClip,
                                {"decay-rate", "Adafactor's second-moment schedule exponent", "-0.8"},
                                kFactorLargest},
                               adafactor_config));
  r.push_back(entry<Sgd>("sgd", "SGD with momentum (torch.optim.SGD)", 0.1,
                         {{"momentum", kMomentumHelp, "0.9"},
                          {"dampening", "SGD dampening of the momentum", "0"},
                          {"nesterov", "SGD with Nesterov momentum", "", SettingKind::switch_}},
                         sgd_config));
  r.push_back(entry<Sm3>("sm3", "SM3 (pytorch_optimizer 4.1.0): one accumulator per dim, state O(sum of dims)", 0.1,
                         {{"momentum", kMomentumHelp, "0"},
                          {"beta", "SM3's accumulator decay (0: sums of g^2, the paper's SM3-II)", "0"},
                          {"eps", kEpsHelp, "1e-30"}},
                         sm3_config));
  // LAMB's steps are about lr times each tensor's norm: the reference's lr (1e-3) barely moves GPT-2's small weights.
  r.push_back(entry<Lamb>("lamb", "LAMB (pytorch_optimizer 4.1.0): Adam moments, per-tensor trust ratio", 1e-2,
                          {kBeta1, kBeta2,
                           {"eps", kEpsHelp, "1e-6"},
                           {"lamb-clamp", "LAMB: the weight norm of the trust ratio is clamped to at most this", "10"},
                           {"lamb-decay-in-update",
                            "LAMB: weight decay added to the update inside the trust ratio (the paper's) instead of "
                            "decoupled",
                            "", SettingKind::switch_},
                           {"lamb-no-bias-correction",
                            "LAMB: step size lr instead of lr / (1 - beta1^t) (the reference's adam_debias=True)", "",
                            SettingKind::switch_}},
                          lamb_config));
  return r;
}

}  // namespace

const std::vector<OptimizerEntry>& optimizers() {
  static const std::vector<OptimizerEntry> r = make_registry();
  return r;
}

std::string optimizer_names(std::string_view separator) {
  std::string out;
  for (const OptimizerEntry& e : optimizers()) out += (out.empty() ? "" : std::string(separator)) + e.name;
  return out;
}

const OptimizerEntry& find_optimizer(std::string_view name) {
  for (const OptimizerEntry& e : optimizers())
    if (e.name == name) return e;
  fail("unknown optimizer '", name, "' (expected one of ", optimizer_names(), ")");
}

std::unique_ptr<Optimizer> make_optimizer(std::string_view name, const std::vector<Tensor>& params,
                                          const Settings& given) {
  return find_optimizer(name).make(params, given);
}

std::vector<TensorState> predict_optimizer_state(std::string_view name, const std::vector<NamedShape>& params,
                                                 const Settings& given, ShardOf shard) {
  return find_optimizer(name).predict(params, given, shard);
}

std::vector<Setting> all_settings() {
  std::vector<Setting> out;
  std::vector<std::vector<std::pair<std::string, std::string>>> readers;  // per setting: (optimizer, default)
  for (const OptimizerEntry& e : optimizers())
    for (const Setting& s : e.settings) {
      auto it = std::find_if(out.begin(), out.end(), [&](const Setting& o) { return o.name == s.name; });
      if (it == out.end()) {
        out.push_back(s);
        readers.emplace_back();
        it = out.end() - 1;
      }
      readers[size_t(it - out.begin())].emplace_back(e.name, s.default_value);
    }
  for (size_t i = 0; i < out.size(); ++i) {
    const auto& rs = readers[i];
    const bool every = rs.size() == optimizers().size();
    const bool same = std::all_of(rs.begin(), rs.end(), [&](const auto& r) { return r.second == rs[0].second; });
    std::string who;
    for (const auto& [name, def] : rs)
      who += (who.empty() ? "" : ", ") + (same ? name : name + " " + (def.empty() ? "off" : def));
    if (!same) {
      out[i].default_value = "";
      out[i].help += " (default: " + who + ")";
    } else if (!every) {
      out[i].help += " (" + who + ")";
    }
  }
  return out;
}

}  // namespace tally::optim
