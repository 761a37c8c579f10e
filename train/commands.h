// The subcommands of the `tally` executable. Each takes the words after its name and returns the exit code:
// 0 success, 1 failure while running (a tally::Error, printed), 2 bad usage (a FlagError, printed with usage).
#pragma once
#include <string>
#include <vector>

namespace tally::cli {

using Args = std::vector<std::string>;

int cmd_demo(const Args& args);     // train/cmd_demo.cpp: a short autograd demo
int cmd_prepare(const Args& args);  // train/cmd_prepare.cpp: text -> llm.c token shards

}  // namespace tally::cli
