#!/usr/bin/env bash
# Installs the Debian packages tally needs to build and test, and only those that are missing.
# Idempotent: a second run installs nothing and says so. Uses sudo when not run as root.
# Extra packages may be named as arguments (`scripts/install-deps.sh clang` for the sanitizer and fuzz builds,
# `scripts/install-deps.sh chromium` for the report's browser test).
set -euo pipefail

packages=(
  cmake make g++ pkg-config          # build
  libopenblas-openmp-dev             # CPU GEMM (the OpenMP build, so BLAS inside our parallel loops stays serial)
  libpcre2-dev                       # GPT-2 pre-tokenizer regex (UTF + UCP)
  nlohmann-json3-dev                 # JSON: configs, safetensors headers, encoder.json
  doctest-dev                        # unit tests
  libopenmpi-dev openmpi-bin         # data-parallel runs over processes (mpirun -np N tally train ...)
  curl                               # downloads the data files when no place has them (data/fetch.cpp)
  python3                            # tests: http.server stands in for the internet (tests/cli/fetch.sh)
  "$@"                               # extras: clang (make test-sanitize, make fuzz: ASan, UBSan, libFuzzer),
                                     # chromium (tests/cli/report_browser.sh opens `tally report`'s page headless;
                                     # skipped without it)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq || echo "install-deps: apt-get update failed; trying with the current package lists"
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: done"
