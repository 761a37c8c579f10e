#!/usr/bin/env bash
# Prepares what the GPU machine lacks, to be carried with the device call (it has nvcc, cmake, ninja and g++, but
# nothing can be installed there): Debian's OpenBLAS (OpenMP build), PCRE2, nlohmann-json, doctest and pkgconf,
# fetched with `apt-get download` (or copied from this machine's installed packages) and unpacked with
# `dpkg -x` into one flat, relocatable prefix: .gpu-deps/ (about 42 MB; git-ignored), packed into .gpu-carry/
# with a copy of ../shared/data (Tiny Shakespeare and the GPT-2 BPE files, which do not travel otherwise).
# Usage: scripts/gpu_deps.sh [--prebuild]   then carry [".gpu-carry"] (--prebuild adds prebuilt.tar.xz to it).
# --prebuild also builds tally_tests and bench_cuda here for sm_90 into .gpu-prebuilt/, a fallback that
# scripts/gpu_check.sh runs if building on the GPU machine fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
deps=$root/.gpu-deps
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

packages=(libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libquadmath0 libpcre2-8-0 libpcre2-dev
          nlohmann-json3-dev doctest-dev pkgconf-bin libpkgconf3)

echo "gpu_deps: fetching ${packages[*]}"
mkdir -p "$work/debs" "$work/root"
if (cd "$work/debs" && apt-get download "${packages[@]}" >/dev/null 2>&1); then
  for d in "$work"/debs/*.deb; do dpkg -x "$d" "$work/root"; done
  src=$work/root
else
  echo "gpu_deps: apt-get download failed (run 'apt-get update' first?); copying this machine's installed files"
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
      echo "gpu_deps: $p is neither downloadable nor installed" >&2; exit 1; }
  done
  src=/
fi

arch=x86_64-linux-gnu
rm -rf "$deps"
mkdir -p "$deps"/{include,lib,bin,share/cmake,lib/cmake}
# Real files only (no symlinks), under the names the build and the loader look for.
copy() { cp -L "$1" "$2"; }
copy "$src/usr/include/$arch/openblas-openmp/cblas.h" "$deps/include/"
copy "$src/usr/include/$arch/openblas-openmp/openblas_config.h" "$deps/include/"
copy "$src/usr/include/$arch/openblas-openmp/f77blas.h" "$deps/include/"
blas=$(ls "$src"/usr/lib/$arch/openblas-openmp/libopenblas*-r*.so | head -1)
copy "$blas" "$deps/lib/libopenblas.so.0"
copy "$(ls "$src"/usr/lib/$arch/libgfortran.so.5.* | head -1)" "$deps/lib/libgfortran.so.5"
copy "$(ls "$src"/usr/lib/$arch/libquadmath.so.0.* | head -1)" "$deps/lib/libquadmath.so.0"
pcre=$(ls "$src"/usr/lib/$arch/libpcre2-8.so.0.* | head -1)
copy "$pcre" "$deps/lib/libpcre2-8.so.0"
copy "$pcre" "$deps/lib/libpcre2-8.so"
copy "$src/usr/include/pcre2.h" "$deps/include/"
cp -r "$src/usr/include/nlohmann" "$deps/include/"
cp -r "$src/usr/share/cmake/nlohmann_json" "$deps/share/cmake/"
cp -r "$src/usr/include/doctest" "$deps/include/"
cp -r "$src/usr/lib/cmake/doctest" "$deps/lib/cmake/"
# Debian's doctest targets name /usr outright: make them relative to where they are found.
sed -i 's|set(_IMPORT_PREFIX "/usr")|get_filename_component(_IMPORT_PREFIX "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)|' \
  "$deps/lib/cmake/doctest/doctestTargets.cmake"
copy "$src/usr/bin/pkgconf" "$deps/bin/pkgconf"
copy "$(ls "$src"/usr/lib/$arch/libpkgconf.so.3.* | head -1)" "$deps/lib/libpkgconf.so.3"
pcre_version=$(sed -n 's/^Version: *//p' "$src/usr/lib/$arch/pkgconfig/libpcre2-8.pc")
echo "$pcre_version" > "$deps/pcre2-version"
mkdir -p "$root/.gpu-carry"
tar -C "$root" -cJf "$root/.gpu-carry/deps.tar.xz" .gpu-deps
du -sh "$deps" "$root/.gpu-carry/deps.tar.xz"

# The shared data (Tiny Shakespeare, the GPT-2 BPE files) does not travel with the checkout: the GPU machine's
# tests that train from text and decode samples read this copy (gpu_check.sh unpacks it to .gpu-shared/data).
shared_data=$root/../shared/data
if [ -f "$shared_data/tinyshakespeare.txt" ] && [ -f "$shared_data/gpt2/encoder.json" ]; then
  rm -rf "$work/shared" && mkdir -p "$work/shared/.gpu-shared/data/gpt2"
  cp "$shared_data/tinyshakespeare.txt" "$work/shared/.gpu-shared/data/"
  cp "$shared_data/gpt2/encoder.json" "$shared_data/gpt2/vocab.bpe" "$work/shared/.gpu-shared/data/gpt2/"
  tar -C "$work/shared" -cJf "$root/.gpu-carry/data.tar.xz" .gpu-shared
  du -sh "$root/.gpu-carry/data.tar.xz"
else
  echo "gpu_deps: no ../shared/data beside the checkout; the GPU machine's text-training tests will report it" >&2
fi

# cuDNN's graph API headers (header-only, from PyPI; the GPU machine cannot download them): for cuDNN attention.
scripts/fetch-cudnn-frontend.sh
if [ -f "$root/.deps/cudnn-frontend/include/cudnn_frontend.h" ]; then
  tar -C "$root" -cJf "$root/.gpu-carry/cudnn-frontend.tar.xz" .deps/cudnn-frontend
  du -sh "$root/.gpu-carry/cudnn-frontend.tar.xz"
fi

if [ "${1:-}" = "--prebuild" ]; then
  echo "gpu_deps: building the sm_90 fallback binaries into .gpu-prebuilt/"
  cmake -S "$root" -B "$root/build-prebuilt" -DCMAKE_BUILD_TYPE=Release -DTALLY_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DTALLY_NATIVE=OFF >/dev/null
  cmake --build "$root/build-prebuilt" -j "$(nproc)" --target tally_tests bench_cuda
  rm -rf "$root/.gpu-prebuilt" && mkdir -p "$root/.gpu-prebuilt"
  cp "$root/build-prebuilt/tally_tests" "$root/build-prebuilt/bench_cuda" "$root/.gpu-prebuilt/"
  strip "$root/.gpu-prebuilt/"* || true
  tar -C "$root" -cJf "$root/.gpu-carry/prebuilt.tar.xz" .gpu-prebuilt
  du -sh "$root/.gpu-carry/prebuilt.tar.xz"
fi
echo "gpu_deps: done; carry [\".gpu-carry\"]"
