#!/usr/bin/env bash
# Builds and runs the CUDA tests on the CPU under the emulator of tools/cuda_emu (no GPU needed): every .cu
# file is compiled by g++ after its <<<>>> launches are rewritten, kernels run one fiber per CUDA thread
# (switched at __syncthreads and shuffles; a barrier that some threads never reach aborts), cuBLAS is a naive
# host stand-in, and fresh device memory is poisoned with NaN bytes. It checks the backend's logic (indexing,
# reductions, barriers, operand mapping) before precious GPU time is spent; it says nothing about speed, the
# memory model or real cuBLAS. Developer tool: not part of CI.
# Usage: scripts/cuda_emulate.sh [doctest args, e.g. -tc="cuda softmax*", or -ts=optim for the optimizer kernels]
#        scripts/cuda_emulate.sh --bench bench_gpu_train [its flags, at small sizes]: a GPU benchmark's own code
#        (flags, runs, output) under the emulator, before a GPU runs it; its timings mean nothing.
#        scripts/cuda_emulate.sh --cli [tally's arguments]: the tally command itself (build-emu/tally_emu), e.g.
#        CUDA_EMU_DEVICES=2 mpirun -np 2 build-emu/tally_emu train --device cuda --zero 1 ...: several emulated GPUs,
#        one per process, whose NCCL collectives are MPI's (tools/cuda_emu/include/nccl.h).
# With OpenMPI installed (mpicxx), the emulator is built with MPI and NCCL, as a GPU build with both.
# CUDA_EMU_ASAN=1 builds into build-emu-asan with AddressSanitizer: emulated device memory is host heap memory, so
# a kernel's out-of-bounds access is reported with the kernel's source line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bench=""
cli=""
if [ "${1:-}" = "--bench" ]; then
  bench=${2:?"--bench needs a benchmark's name (bench/<name>.cpp)"}
  [ -f "bench/$bench.cpp" ] || { echo "cuda_emulate: no bench/$bench.cpp" >&2; exit 2; }
  shift 2
elif [ "${1:-}" = "--cli" ]; then
  cli=1
  shift
fi
build=$root/build-emu
sanitize=()
if [ -n "${CUDA_EMU_ASAN:-}" ]; then
  build=$root/build-emu-asan
  sanitize=(-fsanitize=address -fno-omit-frame-pointer)
fi
mkdir -p "$build/gen" "$build/obj" "$build/gen-include"
blas_inc=$(dirname "$(find /usr/include -name cblas.h -path '*openblas-openmp*' | head -1)")
blas_lib=$(dirname "$(find /usr/lib -name 'libopenblas.so' -path '*openblas-openmp*' | head -1)")
flags=(-std=c++20 -O1 -g -fopenmp -pthread -Wno-unknown-pragmas -DTALLY_HAS_CUDA=1 -DTALLY_CUDA_EMULATED=1
       "-DTALLY_SOURCE_DIR=\"$root\"" "-DTALLY_BINARY_DIR=\"$build\"" -I"$root/tools/cuda_emu/include"
       -I"$build/gen-include" -I"$root"
       -I"$blas_inc" "${sanitize[@]}")
libs=()
if command -v mpicxx >/dev/null; then
  read -ra mpi_compile < <(mpicxx --showme:compile)
  read -ra mpi_link < <(mpicxx --showme:link)
  flags+=(-DTALLY_HAS_MPI=1 -DTALLY_HAS_NCCL=1 "${mpi_compile[@]}")
  libs+=("${mpi_link[@]}")
fi

# Headers with launches are rewritten too, into a tree searched before the sources.
while IFS= read -r f; do
  mkdir -p "$build/gen-include/$(dirname "$f")"
  python3 tools/cuda_emu/preprocess.py "$f" "$build/gen-include/$f"
done < <(find core nn optim models -name '*.cuh' 2>/dev/null | sort)
sources=()
while IFS= read -r f; do
  out="$build/gen/$(echo "$f" | tr '/' '_').cpp"
  python3 tools/cuda_emu/preprocess.py "$f" "$out"
  sources+=("$out")
done < <(find core nn optim models -name '*.cu' 2>/dev/null | sort)
while IFS= read -r f; do sources+=("$root/$f"); done < <(find core nn optim models data train -name '*.cpp' ! -name main.cpp 2>/dev/null | sort)
sources+=("$root/tools/cuda_emu/emu_runtime.cpp" "$root/tools/cuda_emu/emu_nccl.cpp")
if [ -n "$bench" ]; then
  sources+=("$root/bench/$bench.cpp")
  exe=$build/${bench}_emu
elif [ -n "$cli" ]; then
  sources+=("$root/train/main.cpp")
  exe=$build/tally_emu
else
  sources+=("$root/tests/main.cpp" "$root/tests/core/op_cases.cpp")  # the op table
  while IFS= read -r f; do sources+=("$root/$f"); done < <(find tests/cuda tests/optim -name 'cuda*.cpp' -o -path '*tests/cuda/*.cpp' | sort)
  exe=$build/tally_tests_emu
fi

compile() {  # source -> object (only when the source or any header changed since: a stale object that saw an
  # older class layout corrupts memory at run time)
  local src=$1 obj=$2
  shift 2
  if [ ! -f "$obj" ] || [ -n "$(find "$src" "$root/tools/cuda_emu" -newer "$obj" -print -quit 2>/dev/null)" ] ||
     [ -n "$(cd "$root" && find core optim nn models data train tests \( -name '*.h' -o -name '*.cuh' -o -name '*.inc' \) \
             -newer "$obj" -print -quit 2>/dev/null)" ]; then
    g++ "$@" -c "$src" -o "$obj"
  fi
}
export -f compile
export root
objs=()
# An object's name covers its flags too: one built without MPI is never linked into a build with it.
for s in "${sources[@]}"; do objs+=("$build/obj/$(echo "$s ${flags[*]}" | md5sum | cut -c1-12).o"); done
for i in "${!sources[@]}"; do printf '%s\0%s\0' "${sources[$i]}" "${objs[$i]}"; done |
  xargs -0 -n 2 -P "$(nproc)" bash -c 'compile "$0" "$1" '"$(printf '%q ' "${flags[@]}")"
g++ "${objs[@]}" "${sanitize[@]}" -fopenmp -pthread -L"$blas_lib" -Wl,-rpath,"$blas_lib" -lopenblas -lpcre2-8 "${libs[@]}" -o "$exe"
# In the test binary every test case linked in is a CUDA test: the ops' (suite "cuda") and the optimizers' (suite
# "optim", "cuda: ...").
echo "cuda_emulate: running $exe $*"
"$exe" "$@"
