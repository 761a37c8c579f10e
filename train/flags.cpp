// Flag parsing for the tally subcommands (see flags.h).
#include "train/flags.h"

#include "core/dist/communicator.h"
#include "core/error.h"
#include "core/parse.h"

#include <nlohmann/json.hpp>

#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <set>
#include <cmath>
#include <cstdlib>
#include <sstream>

namespace tally::train {

Flags::Flags(std::string command, std::string summary, std::vector<FlagSpec> specs)
    : command_(std::move(command)), summary_(std::move(summary)), specs_(std::move(specs)) {}

const FlagSpec* Flags::spec(const std::string& name) const {
  for (const auto& s : specs_)
    if (s.name == name) return &s;
  return nullptr;
}

void Flags::set(const std::string& name, const std::string& value) {
  const FlagSpec* s = spec(name);
  if (!s) throw FlagError(tally::cat("unknown flag --", name, " for 'tally ", command_, "'"));
  values_[name] = value;
}

namespace {
// A flag naming a file or directory given as '' (an unset shell variable, say) would reach the file system as an empty
// path, whose errors say nothing of the flag.
void refuse_empty_path(const std::string& name, const std::string& value, const std::string& origin) {
  static constexpr const char* kPathFlags[] = {"out", "to",     "data", "checkpoint", "text",   "train",
                                               "val", "config", "init", "resume",     "shapes", "tokenizer-dir"};
  if (value.empty())
    for (const char* p : kPathFlags)
      if (name == p) throw FlagError(tally::cat("--", name, origin, " is empty: give a path"));
}
}  // namespace

void Flags::parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") throw HelpRequested(usage());
    if (a.rfind("--", 0) != 0 || a.size() == 2) {
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    bool inline_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    const FlagSpec* s = spec(name);
    if (!s) throw FlagError(tally::cat("unknown flag --", name, " for 'tally ", command_, "'"));
    if (s->kind == FlagKind::switch_) {
      if (inline_value && value != "1" && value != "true" && value != "0" && value != "false")
        throw FlagError(tally::cat("--", name, " is a switch and takes no value (got '", value, "')"));
      values_[name] = std::string((!inline_value || value == "1" || value == "true") ? "1" : "0");
      continue;
    }
    if (!inline_value) {
      if (i + 1 >= args.size()) throw FlagError(tally::cat("--", name, " needs a value"));
      // "--out --came-bf16-m" is a forgotten value, not a directory named "--came-bf16-m" (and a switch lost); a
      // value that merely starts with -- ("-- a comment") is a value.
      if (const std::string& next = args[i + 1]; next.starts_with("--")) {
        const std::string next_name = next.substr(2, next.find('=') - 2);  // npos - 2 still reaches the end
        if (spec(next_name) || next_name == "help")
          throw FlagError(tally::cat("--", name, " needs a value, got the flag ", next, " (a value that starts with ",
                                     "-- is given as --", name, "=VALUE)"));
      }
      value = args[++i];
    }
    refuse_empty_path(name, value, "");
    values_[name] = value;
  }
}

void Flags::merge_json_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw FlagError(tally::cat("config file '", path, "' is a directory, not a JSON file"));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FlagError(tally::cat("cannot read config file '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw FlagError(tally::cat("cannot read config file '", path, "'"));
  merge_json(text.str(), path);
}

void Flags::merge_json(std::string_view json_text, const std::string& path) {
  nlohmann::json j;
  // A flag named twice in the object would silently take its last value: refused (keys of the top-level object).
  std::set<std::string> keys;
  std::string twice;
  const nlohmann::json::parser_callback_t note_keys = [&](int depth, nlohmann::json::parse_event_t event,
                                                          nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && !keys.insert(parsed.get<std::string>()).second &&
        twice.empty())
      twice = parsed.get<std::string>();
    return true;
  };
  try {
    j = nlohmann::json::parse(json_text, note_keys);
  } catch (const nlohmann::json::exception& e) {
    throw FlagError(tally::cat("config file '", path, "' is not valid JSON: ", e.what()));
  }
  if (!j.is_object()) throw FlagError(tally::cat("config file '", path, "' must hold one JSON object of flag names"));
  if (!twice.empty()) throw FlagError(tally::cat("config file '", path, "' names '", twice, "' twice"));
  for (const auto& [key, value] : j.items()) {
    if (key == "config")
      throw FlagError(tally::cat("config file '", path, "': 'config' names another config file, which is not read: ",
                                 "merge its flags into this one, or give it with --config instead"));
    const FlagSpec* s = spec(key);
    if (!s) throw FlagError(tally::cat("config file '", path, "': unknown flag '", key, "' for 'tally ", command_, "'"));
    std::string text;
    if (value.is_string()) text = value.get<std::string>();
    else if (value.is_boolean()) text = value.get<bool>() ? "1" : "0";
    else if (value.is_number())
      text = value.dump();  // integers exactly, signed or not (the flag's parser checks range)
    else throw FlagError(tally::cat("config file '", path, "': '", key, "' must be a string, number or boolean"));
    if (s->kind == FlagKind::switch_ && !value.is_boolean())
      throw FlagError(tally::cat("config file '", path, "': '", key, "' is a switch: use true or false"));
    if (s->kind != FlagKind::switch_ && value.is_boolean())
      throw FlagError(tally::cat("config file '", path, "': '", key, "' takes a value, not ", value.dump(),
                                 " (true and false are for switches)"));
    refuse_empty_path(key, text, tally::cat(" (in config file '", path, "')"));
    if (!values_.count(key)) {
      values_[key] = text;
      from_file_[key] = path;
    }
  }
}

bool Flags::given(const std::string& name) const { return values_.count(name) > 0; }

bool Flags::has(const std::string& name) const {
  if (given(name)) return true;
  const FlagSpec* s = spec(name);
  return s && !s->default_value.empty();
}

std::optional<std::string> Flags::maybe(const std::string& name) const {
  if (!spec(name)) throw FlagError(tally::cat("internal: flag --", name, " was never declared for ", command_));
  if (auto it = values_.find(name); it != values_.end()) return it->second;
  const FlagSpec* s = spec(name);
  if (!s->default_value.empty()) return s->default_value;
  return std::nullopt;
}

std::vector<std::string> Flags::list_once(const std::string& name, const std::string& why) const {
  std::vector<std::string> out = list(name);
  for (size_t i = 0; i < out.size(); ++i)
    if (std::find(out.begin(), out.begin() + std::ptrdiff_t(i), out[i]) != out.begin() + std::ptrdiff_t(i))
      throw FlagError(tally::cat("--", name, " lists '", out[i], "' twice", why));
  return out;
}

std::vector<std::string> Flags::list(const std::string& name) const {
  const std::string s = str(name);
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    if (comma == std::string::npos) comma = s.size();
    if (comma == start)
      throw FlagError(tally::cat("--", name, " '", s, "' has an empty entry (a comma-separated list)", origin(name)));
    out.push_back(s.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

std::string Flags::str(const std::string& name) const {
  auto v = maybe(name);
  if (!v) throw FlagError(tally::cat("--", name, " is required for 'tally ", command_, "'"));
  return *v;
}

int64_t Flags::integer(const std::string& name) const {
  const std::string v = str(name);
  const std::optional<int64_t> x = parse_int64(v);
  if (x) return *x;
  const bool digits =
      v.find_first_not_of("+-0123456789") == std::string::npos && v.find_first_of("0123456789") != std::string::npos;
  if (digits && parse_finite_double(v))  // a decimal integer past int64's range
    throw FlagError(tally::cat("--", name, " ", v, " is out of range (integers from ", INT64_MIN, " to ", INT64_MAX,
                               ")", origin(name)));
  throw FlagError(tally::cat("--", name, " expects a decimal integer, got '", v, "'", origin(name)));
}

double Flags::number(const std::string& name) const {
  const std::string v = str(name);
  const std::optional<double> x = parse_finite_double(v);
  if (!x) throw FlagError(tally::cat("--", name, " expects a finite number within double's range, got '", v, "'", origin(name)));
  return *x;
}

bool Flags::on(const std::string& name) const {
  auto v = maybe(name);
  return v && (*v == "1" || *v == "true");
}

std::string Flags::origin(const std::string& name) const {
  auto it = from_file_.find(name);
  return it == from_file_.end() ? "" : tally::cat(" (from config file '", it->second, "')");
}

std::string Flags::config_sources() const {
  std::map<std::string, std::string> by_file;
  for (const auto& [name, file] : from_file_) by_file[file] += (by_file[file].empty() ? "" : ", ") + name;
  std::string out;
  for (const auto& [file, names] : by_file) out += tally::cat(out.empty() ? "" : "; ", "config file '", file, "' set ", names);
  return out;
}

std::map<std::string, std::string> Flags::resolved() const {
  std::map<std::string, std::string> out;
  for (const auto& s : specs_)
    if (auto v = maybe(s.name)) out[s.name] = *v;
  return out;
}

std::string Flags::usage() const {
  std::ostringstream os;
  os << "usage: tally " << command_ << " [flags]\n  " << summary_ << "\n\nflags:\n";
  for (const auto& s : specs_) {
    std::string left = "  --" + s.name + (s.kind == FlagKind::value ? " VALUE" : "");
    os << left;
    for (size_t i = left.size(); i < 30; ++i) os << ' ';
    os << ' ' << s.help;
    if (!s.default_value.empty() && s.kind == FlagKind::value) os << " (default " << s.default_value << ")";
    os << "\n";
  }
  return os.str();
}

int thread_count(const Flags& f) {
  const int64_t n = f.integer("threads");
  if (n < 0 || n > kMaxThreads)
    throw FlagError("--threads must be 0 (all cores) to " + std::to_string(kMaxThreads) + ", got " + std::to_string(n) +
                    f.origin("threads"));
  return int(n);
}

std::string idle_wait_settings() {
  std::string settings;
  for (const char* name : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"})
    if (const char* v = std::getenv(name); v && *v) settings += cat(settings.empty() ? "" : ", ", name, "=", v);
  return settings;
}

void use_threads(int threads, dist::Communicator* comm) {
  const int shared = comm && comm->world() > 1 ? dist::shared_cpu_threads(*comm) : 0;  // every rank: a collective
  if (threads > 0)
    omp_set_num_threads(threads);
  else if (shared > 0 && !std::getenv("OMP_NUM_THREADS"))
    omp_set_num_threads(shared);
}

}  // namespace tally::train
