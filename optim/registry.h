// Every optimizer tally offers, one entry each: its name, default learning rate, the settings it reads (the command
// line's flags and a JSON config's keys, by the same names), how it is built from them, and its state predicted from
// shapes alone. The CLI (train, compare, memory), the tests and the benchmarks make optimizers only through here, so
// a new optimizer is its class, its kernels, one entry in registry.cpp, and its golden data.
#pragma once
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "optim/optimizer.h"

namespace tally::optim {

enum class SettingKind : uint8_t {
  value,    // a number or a word: --beta2 0.95
  switch_,  // on when given: --came-bf16-m
};

// One hyper-parameter an optimizer reads.
struct Setting {
  std::string name = {};           // "beta2": --beta2 on the command line, "beta2" in a JSON config
  std::string help = {};
  std::string default_value = {};  // as text; a switch's is "" (off)
  SettingKind kind = SettingKind::value;
};

// A setting's value as written by hand in code: a number, a word or a switch, kept as the text a flag would carry.
struct SettingValue {
  std::string text;
  SettingValue(double v);  // NOLINT: implicit on purpose, {{"lr", 1e-3}} reads naturally
  SettingValue(int v) : SettingValue(double(v)) {}
  SettingValue(bool on) : text(on ? "true" : "false") {}
  SettingValue(const char* s) : text(s) {}
  SettingValue(std::string s) : text(std::move(s)) {}
};

// Values given for settings, by name. What is not given takes the optimizer's default when it is built.
class Settings {
 public:
  Settings() = default;
  Settings(std::initializer_list<std::pair<const std::string, SettingValue>> values);
  Settings& set(const std::string& name, SettingValue value);
  std::optional<std::string> get(const std::string& name) const;
  const std::map<std::string, std::string>& values() const { return values_; }

 private:
  std::map<std::string, std::string> values_;
};

// The settings of one optimizer as its entry reads them: the given value, else the entry's default. A value of the
// wrong form, or a name the entry does not declare, throws tally::Error naming the optimizer and the setting.
class SettingsReader {
 public:
  SettingsReader(std::string optimizer, const std::vector<Setting>& declared, const Settings& given);
  double number(std::string_view name) const;
  int64_t integer(std::string_view name) const;
  bool on(std::string_view name) const;
  std::string word(std::string_view name) const;
  DecayRule decay_rule() const;  // "decay": matrices | all | none

 private:
  const std::string& text(std::string_view name) const;
  std::string optimizer_;
  std::map<std::string, std::string, std::less<>> values_;  // every declared setting, resolved
};

struct OptimizerEntry {
  std::string name = {};     // "came"
  std::string summary = {};  // one line for help texts
  double default_lr = 0;
  // What it reads: lr, weight-decay and decay (every optimizer's), then its own.
  std::vector<Setting> settings = {};
  std::function<std::unique_ptr<Optimizer>(const std::vector<Tensor>& params, const Settings& given)> make = {};
  // The state of parameters of these shapes (nothing allocated), by the same settings; ZeRO 1: rank shard.rank's
  // part of each.
  std::function<std::vector<TensorState>(const std::vector<NamedShape>& params, const Settings& given, ShardOf shard)>
      predict = {};
  // Throws what make() would throw for these settings, without parameters (flags are checked before a run).
  std::function<void(const Settings& given)> check = {};
  // Its step sums over a whole tensor (a clip's RMS, a norm): under ZeRO 1 a tensor cut over ranks completes those
  // sums with collectives (Opt::kSumsOverTensor).
  bool sums_over_tensor = false;
  // Its CUDA kernels read a bf16 parameter's gradient and round the parameter themselves (Opt::kFusedBf16).
  bool fused_bf16 = false;
};

// Every optimizer, in the order help texts list them.
const std::vector<OptimizerEntry>& optimizers();
// The entry called `name`; an unknown name throws tally::Error listing the known ones.
const OptimizerEntry& find_optimizer(std::string_view name);
std::string optimizer_names(std::string_view separator = ", ");
std::unique_ptr<Optimizer> make_optimizer(std::string_view name, const std::vector<Tensor>& params,
                                          const Settings& given = {});
std::vector<TensorState> predict_optimizer_state(std::string_view name, const std::vector<NamedShape>& params,
                                                 const Settings& given = {}, ShardOf shard = {});
// The settings of all optimizers, each name once (the command line's flags). A name several optimizers share
// with different defaults gets no default here ("" in default_value) and lists each one's in its help.
std::vector<Setting> all_settings();

}  // namespace tally::optim
