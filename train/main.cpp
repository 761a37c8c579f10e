// `tally`: the command-line entry point. Dispatches to a subcommand (train/commands.h) and turns errors into
// messages and exit codes: tally::Error -> 1, flag errors -> 2 with the subcommand's usage.
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include <sys/stat.h>
#include <unistd.h>

#include "core/dist/communicator.h"
#include "core/error.h"
#include "train/commands.h"
#include "train/flags.h"

namespace {

// Under mpirun with several ranks: train, compare and eval share the work over the ranks; the other commands do one
// process's work, which rank 0 does alone (the others end at once, so nothing is printed or written N times).
enum class Ranks { share_the_work, rank_0_alone };

// Whether a command computes on several threads (and so sets OpenMP's idle threads to sleep: see sleep_when_idle).
enum class Threads { few, many };

struct Command {
  std::function<int(const tally::train::Args&)> run;
  const char* help;
  Ranks ranks = Ranks::rank_0_alone;
  Threads threads = Threads::few;
};

const std::map<std::string, Command>& commands() {
  static const std::map<std::string, Command> table = {
      {"demo", {tally::train::cmd_demo, "a short autograd demo: fit a tiny MLP on the CPU"}},
      {"prepare",
       {tally::train::cmd_prepare, "tokenize a UTF-8 text file into llm.c token shards", Ranks::rank_0_alone,
        Threads::many}},
      {"train",
       {tally::train::cmd_train, "train a GPT-2 (default: the d4 preset, Tiny Shakespeare, CAME, CPU)",
        Ranks::share_the_work, Threads::many}},
      {"compare",
       {tally::train::cmd_compare, "train with several optimizers and write a report", Ranks::share_the_work,
        Threads::many}},
      {"report", {tally::train::cmd_report, "an HTML page of runs: training curves, optimizer internals, memory"}},
      {"memory", {tally::train::cmd_memory, "the exact memory plan of a model and optimizers, without allocating"}},
      {"inspect", {tally::train::cmd_inspect, "per-tensor optimizer state of a checkpoint"}},
      {"eval",
       {tally::train::cmd_eval, "mean loss of a model over token shards", Ranks::share_the_work, Threads::many}},
      {"export", {tally::train::cmd_export, "write a model as llm.c .bin, .safetensors or a Hugging Face directory"}},
      {"sample", {tally::train::cmd_sample, "generate text from a model", Ranks::rank_0_alone, Threads::many}},
  };
  return table;
}

// OpenMP's idle threads spin for a while (libgomp: up to 300,000 rounds) before they sleep, unless OMP_WAIT_POLICY or
// GOMP_SPINCOUNT (LLVM's libomp: KMP_BLOCKTIME) say otherwise, and the runtime reads those once, as it loads, before
// main. On the 2-core VMs measured (bench/NOTES.md) the spinning made 2-thread GPT-2 steps 1.3-1.7x slower than with
// OMP_WAIT_POLICY=passive (d4 and gpt2). So a command of Threads::many whose user has set none of them runs itself
// again with OMP_WAIT_POLICY=passive: an exec of the same executable, the same process (pid, arguments, environment
// otherwise) before it has done anything. Not when the process runs another program's image (tally started through
// the dynamic loader, valgrind): /proc/self/exe would then name that program. If the exec fails it goes on as it is.
// The run's header names the policy it ran under (trainer.cpp).
void sleep_when_idle(char** argv) {
#ifdef __linux__
  if (!tally::train::idle_wait_settings().empty()) return;
  if (std::strstr(std::getenv("LD_PRELOAD") ? std::getenv("LD_PRELOAD") : "", "vgpreload")) return;  // valgrind
  // The executable's own path, not /proc/self/exe: the process is named after the path it runs (ps, pgrep).
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path);
  if (n <= 0 || n >= ssize_t(sizeof path)) return;  // unreadable, or longer than the buffer
  path[n] = '\0';
  // The file this process was started as: argv[0] itself when it names a path, else its name found on PATH,
  // whose last component then matches the executable's.
  const char* slash = std::strrchr(path, '/');
  struct stat exe, started;
  const bool same = std::strchr(argv[0], '/') ? stat(path, &exe) == 0 && stat(argv[0], &started) == 0 &&
                                                    exe.st_dev == started.st_dev && exe.st_ino == started.st_ino
                                              : slash && std::strcmp(slash + 1, argv[0]) == 0;
  if (!same) return;
  if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  execv(path, argv);
  unsetenv("OMP_WAIT_POLICY");  // not replaced: the runtime runs as it loaded, spinning
#else
  (void)argv;
#endif
}

// " (rank 1 of 4)" in a data-parallel run, "" otherwise.
std::string rank_label() {
  if (!tally::dist::launched_by_mpi()) return "";
  try {
    const tally::dist::Communicator& c = tally::dist::process_group();
    return c.world() > 1 ? " (rank " + std::to_string(c.rank()) + " of " + std::to_string(c.world()) + ")" : "";
  } catch (const std::exception&) {
    return "";
  }
}

// Rank 0's failure ends the job before another rank that failed alike reports: the ranks of a job usually fail
// together (the same flags, files and checks), and each printed the same message. A rank other than 0 waits this
// long before it reports; still running then, its failure was its own (or rank 0 is slow to fail) and it reports.
constexpr auto kOtherRanksReportAfter = std::chrono::seconds(5);

// A rank that fails ends the whole job: the others would otherwise wait for it in their next collective.
int end_job(int code) {
  if (tally::dist::launched_by_mpi()) {
    try {
      tally::dist::Communicator& c = tally::dist::process_group();
      if (c.world() > 1) {
        std::fflush(stderr);
        c.abort(code);
      }
    } catch (const std::exception&) {
    }
  }
  return code;
}

// Prints a failure (see kOtherRanksReportAfter) and ends the job with `code`.
int fail_with(const std::string& message, int code) {
  // A failed command has nothing to save: a stop signal (mpirun ending the job) ends it, unacknowledged.
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  if (struct sigaction hup{}; sigaction(SIGHUP, nullptr, &hup) == 0 && hup.sa_handler != SIG_IGN)
    std::signal(SIGHUP, SIG_DFL);  // (not under nohup)
  // What the command printed before it failed comes first where both streams go to one file.
  std::fflush(stdout);
  if (tally::dist::launched_by_mpi() && tally::dist::launcher_rank() != 0)
    std::this_thread::sleep_for(kOtherRanksReportAfter);
  std::fputs(message.c_str(), stderr);
  return end_job(code);
}

void print_help() {
  std::printf("usage: tally <command> [flags]   (tally <command> --help for its flags)\n\ncommands:\n");
  for (const auto& [name, c] : commands()) std::printf("  %-10s %s\n", name.c_str(), c.help);
}

}  // namespace

int main(int argc, char** argv) {
  // A file-size limit (ulimit -f) makes a write fail with EFBIG, which names the file, instead of killing the
  // process by SIGXFSZ without a word (an atomic write's temp file removed, the previous file intact).
  std::signal(SIGXFSZ, SIG_IGN);
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    print_help();
    return argc < 2 ? 2 : 0;
  }
  auto it = commands().find(argv[1]);
  if (it == commands().end()) {
    std::fprintf(stderr, "tally: unknown command '%s'\n\n", argv[1]);
    print_help();
    return 2;
  }
  if (it->second.threads == Threads::many) sleep_when_idle(argv);  // before anything, MPI (rank_label) included
  tally::train::Args args(argv + 2, argv + argc);
  const std::string who = std::string(argv[1]) + rank_label();
  try {
    // Read from the launcher's environment: these commands never start MPI (a build without it runs them too).
    if (it->second.ranks == Ranks::rank_0_alone && tally::dist::launcher_rank() != 0) return 0;
    return it->second.run(args);
  } catch (const tally::train::HelpRequested& h) {
    std::fputs(h.what(), stdout);
    return 0;
  } catch (const tally::train::FlagError& e) {
    return fail_with("tally " + who + ": " + e.what() + "\n(see 'tally " + argv[1] + " --help')\n", 2);
  } catch (const tally::Error& e) {
    return fail_with("tally " + who + ": error: " + e.what() + "\n", 1);
  } catch (const std::bad_alloc&) {
    return fail_with("tally " + who + ": error: out of memory\n", 1);
  } catch (const std::exception& e) {
    return fail_with("tally " + who + ": error: " + e.what() + "\n", 1);
  }
}
