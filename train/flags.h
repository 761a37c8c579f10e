// Command-line flags for the `tally` subcommands: `--name value`, `--name=value`, and switches (`--no-shuffle`).
// Each subcommand declares its flags (name, help, default); anything undeclared, a missing value or a value
// of the wrong form is a FlagError (the executable prints it with the subcommand's usage and exits 2).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tally::dist {
class Communicator;
}

namespace tally::train {

class FlagError : public std::runtime_error {
 public:
  explicit FlagError(const std::string& what) : std::runtime_error(what) {}
};

// Thrown by parse() on --help; main prints the usage it carries and exits 0.
class HelpRequested : public std::runtime_error {
 public:
  explicit HelpRequested(const std::string& usage) : std::runtime_error(usage) {}
};

enum class FlagKind { value, switch_ };

struct FlagSpec {
  std::string name;  // without dashes
  std::string help;
  std::string default_value;  // "" = no default; for switches "" means off
  FlagKind kind = FlagKind::value;
};

class Flags {
 public:
  Flags(std::string command, std::string summary, std::vector<FlagSpec> specs);

  // Parses args (the words after the subcommand). Positional words are kept in positional().
  void parse(const std::vector<std::string>& args);
  // Sets a value as if given on the command line.
  void set(const std::string& name, const std::string& value);
  // Fills flags not already given from a JSON object file ({"batch": 8, "optimizer": "came", "no-shuffle": true});
  // command-line values win. Unknown keys, non-scalar values or malformed JSON: FlagError naming the file.
  void merge_json_file(const std::string& path);
  // The same for JSON text in memory; source names it in errors.
  void merge_json(std::string_view text, const std::string& source);

  bool has(const std::string& name) const;  // given, or has a default
  bool given(const std::string& name) const;  // given explicitly (command line or config)
  std::string str(const std::string& name) const;  // FlagError when absent
  int64_t integer(const std::string& name) const;   // FlagError when absent or not an integer
  double number(const std::string& name) const;     // FlagError when absent or not a number
  bool on(const std::string& name) const;           // switches
  std::vector<std::string> list(const std::string& name) const;  // a comma-separated value, empty items dropped
  // list() with each entry once: a repeat is a FlagError "--NAME lists 'X' twice", then `why`.
  std::vector<std::string> list_once(const std::string& name, const std::string& why = "") const;
  std::optional<std::string> maybe(const std::string& name) const;
  const std::vector<std::string>& positional() const { return positional_; }

  // " (from config file 'run.json')" for a value merged from a file, "" otherwise: value errors carry it.
  std::string origin(const std::string& name) const;
  // The config files values were merged from, and which flags each set (for errors about combinations of flags).
  std::string config_sources() const;

  std::string usage() const;
  const std::string& command() const { return command_; }
  // Resolved values of every declared flag that has one (for printing and saving a run's configuration).
  std::map<std::string, std::string> resolved() const;

 private:
  const FlagSpec* spec(const std::string& name) const;
  std::string command_, summary_;
  std::vector<FlagSpec> specs_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::string> from_file_;  // flag -> the config file its value came from
  std::vector<std::string> positional_;
};

// --threads: 0 (all the cores) up to kMaxThreads (every OpenMP thread takes a stack; far beyond the cores it only
// slows a run down, and tens of thousands exhaust the process), FlagError otherwise.
constexpr int kMaxThreads = 1024;
int thread_count(const Flags& f);
// Sets the threads a command computes with: `threads` when > 0 (--threads); else, in a run of several ranks and
// without OMP_NUM_THREADS, this rank's share of its machine's CPUs (dist::shared_cpu_threads); else OpenMP's default
// (every CPU the process may run on). With several ranks every rank must call it: it is a collective.
void use_threads(int threads, dist::Communicator* comm);
// How OpenMP's idle threads were told to wait: "NAME=value" for each of OMP_WAIT_POLICY, GOMP_SPINCOUNT and
// KMP_BLOCKTIME set in the environment (an empty value, which the runtimes ignore, counts as unset), comma-separated;
// "" when none is (main.cpp then sets OMP_WAIT_POLICY=passive).
std::string idle_wait_settings();

}  // namespace tally::train
