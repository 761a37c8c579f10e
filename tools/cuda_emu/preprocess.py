#!/usr/bin/env python3
"""CUDA emulation (tools/cuda_emu): rewrites a .cu file's kernel launches `k<...><<<cfg>>>(args);` into
`tally_emu::launch("k<...>", tally_emu::Config(cfg), [&](auto&&... a) { k<...>(a...); }, args);` so that g++
compiles it (the name is for the emulator's messages)."""
import re
import sys

LAUNCH = re.compile(r"(\b[A-Za-z_]\w*(?:<[^<>;]*(?:<[^<>;]*>[^<>;]*)*>)?)\s*<<<(.*?)>>>\s*\((.*?)\);", re.S)


def rewrite(m):
    kernel, cfg, args = m.group(1), m.group(2), m.group(3)
    name = " ".join(kernel.split())
    return f"tally_emu::launch(\"{name}\", tally_emu::Config({cfg}), [&](auto&&... a_) {{ {kernel}(a_...); }}, {args});"


src = open(sys.argv[1]).read()
out, n = LAUNCH.subn(rewrite, src)
if any("<<<" in line.split("//")[0] for line in out.splitlines()):
    sys.exit(f"preprocess: a launch was not rewritten in {sys.argv[1]}")
open(sys.argv[2], "w").write(f'#line 1 "{sys.argv[1]}"\n' + out)
print(f"{sys.argv[1]}: {n} launches", file=sys.stderr)
