#!/usr/bin/env bash
# Unpacks the C++ headers of cuDNN's graph API frontend (header-only; shipped on PyPI as nvidia-cudnn-frontend) into
# .deps/cudnn-frontend/include, where CMake looks for them: a CUDA build then has cuDNN's fused attention
# (core/kernels/cuda/attention_cudnn.cpp). Only the wheel's include/ is kept; nothing is installed. A pinned
# version, checked against its SHA-256. Without network or pip it says so and exits 0: the build goes on without it.
# Usage: scripts/fetch-cudnn-frontend.sh   (run by `make configure` when nvcc is present)
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.32.0
sha256=c6006556017a4d1c914c52a556c71b1267f2d6a0500f742e7b4edef539878df0
dest=.deps/cudnn-frontend
if [ -f "$dest/include/cudnn_frontend.h" ] && [ "$(cat "$dest/version" 2>/dev/null)" = "$version" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
     -d "$work" "nvidia-cudnn-frontend==$version" >"$work/pip.log" 2>&1; then
  echo "fetch-cudnn-frontend: could not download nvidia-cudnn-frontend $version (no network or pip?); building without cuDNN attention"
  exit 0
fi
wheel=$(ls "$work"/*.whl)
if [ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "$sha256" ]; then
  echo "fetch-cudnn-frontend: $(basename "$wheel") does not have the pinned SHA-256; not using it" >&2
  exit 1
fi
rm -rf "$dest" && mkdir -p "$dest"
python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("include/")])' \
  "$wheel" "$dest"
echo "$version" >"$dest/version"
echo "fetch-cudnn-frontend: nvidia-cudnn-frontend $version headers in $dest/include"
