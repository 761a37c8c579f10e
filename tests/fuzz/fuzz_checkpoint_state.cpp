// libFuzzer target for a tally checkpoint's state.json (train::run_state_from_text): step, model configuration,
// optimizer counters, loader position, RNG state. Any text must parse into checked values, or throw tally::Error
// naming the file; never crash, overflow a conversion, or let a JSON-library exception escape.
// Built only with -DTALLY_FUZZ=ON under clang; scripts/fuzz.sh runs it with tests/fuzz/corpus/fuzz_checkpoint_state.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/error.h"
#include "train/run_state.h"

using namespace tally;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const train::RunState s = train::run_state_from_text({reinterpret_cast<const char*>(data), size}, "state.json");
    s.model.validate();
    if (s.step < 0 || s.optimizer_steps < 0) std::abort();
    // What was read writes back and reads again to the same values.
    const train::RunState again = train::run_state_from_json(train::to_json(s), "state.json (rewritten)");
    if (again.step != s.step || !(again.model == s.model) || !(again.loader == s.loader) ||
        again.param_steps != s.param_steps)
      std::abort();
  } catch (const Error& e) {
    if (std::string(e.what()).find("state.json") == std::string::npos) std::abort();
  }
  return 0;
}
