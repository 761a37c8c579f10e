// The subcommands of the `tally` executable. Each takes the words after its name and returns the exit code:
// 0 success, 1 failure while running (a tally::Error, printed), 2 bad usage (a FlagError, printed with usage).
#pragma once
#include <string>
#include <vector>

namespace tally::train {

using Args = std::vector<std::string>;

int cmd_demo(const Args& args);     // train/cmd_demo.cpp: a short autograd demo
int cmd_prepare(const Args& args);  // train/cmd_prepare.cpp: text -> llm.c token shards
int cmd_train(const Args& args);    // train/cmd_train.cpp: the main job
int cmd_compare(const Args& args);  // train/cmd_compare.cpp: several optimizers, one report
int cmd_report(const Args& args);   // train/cmd_report.cpp: the HTML report of runs
int cmd_memory(const Args& args);   // train/cmd_tools.cpp: the exact memory plan, without allocating
int cmd_inspect(const Args& args);  // train/cmd_tools.cpp: optimizer state in a checkpoint
int cmd_eval(const Args& args);     // train/cmd_tools.cpp: loss of a model on shards
int cmd_export(const Args& args);   // train/cmd_tools.cpp: llm.c / safetensors / Hugging Face directory
int cmd_sample(const Args& args);   // train/cmd_tools.cpp: generate text

}  // namespace tally::train
