# The two commands of the quick start, and a few more.
#   make run    install what is missing, build, train the default GPT-2 on Tiny Shakespeare (CPU)
#   make test   install what is missing, build, run the whole suite through ctest
#   make bench  build the CPU benchmarks in release mode (build-bench/) and run them against the peers, writing
#               bench/results/<date>-<host>.md (not part of CI; see scripts/bench.sh)
#   make test-sanitize   the CPU suite under AddressSanitizer + UndefinedBehaviorSanitizer (clang, build-asan/)
#   make fuzz   every libFuzzer target for FUZZ_SECONDS seconds each (clang, the same build-asan/)
#   make deps-chromium   headless Chromium, for the report's browser test (tests/cli/report_browser.sh)
BUILD   ?= build
JOBS    ?= $(shell nproc)
CMAKE_FLAGS ?=
# The CUDA backend compiles whenever the toolkit is installed, even where its bin/ is not on PATH (CI shells).
ifeq ($(shell command -v nvcc 2>/dev/null),)
  ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
    export CUDACXX ?= /usr/local/cuda/bin/nvcc
  endif
endif

.PHONY: all deps deps-clang deps-chromium configure build test test-sanitize fuzz run bench clean
FUZZ_SECONDS ?= 10

all: build

deps:
	@scripts/install-deps.sh
	@if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then scripts/fetch-cudnn-frontend.sh; fi

deps-clang:
	@scripts/install-deps.sh clang

deps-chromium:
	@scripts/install-deps.sh chromium

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DTALLY_WERROR=ON $(CMAKE_FLAGS) > $(BUILD).configure.log 2>&1 || (cat $(BUILD).configure.log; exit 1)
	@grep -E "^-- tally:" $(BUILD).configure.log || true

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# Chromium for the report's browser test, best effort: where it cannot be installed the test says so and is skipped.
test: build
	@scripts/install-deps.sh chromium || echo "make test: Chromium could not be installed; tests/cli/report_browser.sh will be skipped"
	@cd $(BUILD) && ctest --output-on-failure

test-sanitize: deps deps-clang
	@JOBS=$(JOBS) scripts/test-sanitize.sh

fuzz: deps deps-clang
	@JOBS=$(JOBS) scripts/fuzz.sh $(FUZZ_SECONDS)

run: build
	@./$(BUILD)/tally train --config configs/shakespeare-came.json $(ARGS)

bench: deps
	@scripts/bench.sh build-bench

clean:
	rm -rf $(BUILD) $(BUILD).configure.log build-asan build-asan.configure.log
