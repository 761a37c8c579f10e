#!/usr/bin/env bash
# Prints docs/memory.md's table of optimizer state for well-known open models: for each shape list in tests/data/
# (tests/reference/make_model_shapes.py), `tally memory --shapes FILE --json` run by tally itself, one Markdown row
# of exact bytes (and GiB) per model: AdamW, Adafactor with and without its first moment, CAME, CAME with a bf16
# first moment, and each one's ratio to AdamW. Reads the JSON with python3's standard library only.
# Usage: scripts/memory_table.sh [TALLY]   (default build/tally)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tally="${1:-$root/build/tally}"
[ -x "$tally" ] || { echo "no tally executable at $tally (build first, or pass its path)" >&2; exit 1; }

echo "| model | parameters | AdamW | Adafactor | Adafactor, no beta1 | CAME | CAME, bf16 exp_avg |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for name in gpt2_124m gpt2_1.5b bert_base t5_base llama2_7b mistral_7b; do
  (cd "$root" && "$tally" memory --shapes "tests/data/$name.shapes.json" --optimizer adamw,adafactor,came --json) |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
by = {o["label"]: o["f32"]["state_bytes"] for o in r["optimizers"]}
adamw = by["adamw"]
def human(b):
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"
def cell(label):
    b = by[label]
    return f"{b:,} ({human(b)})" if label == "adamw" else f"{b:,} ({human(b)}, {100 * b / adamw:.1f}%)"
model = r["description"].split(" (")[0]
count = r["parameters"]["count"]
print(f"| {model} | {count:,} | " + " | ".join(cell(l) for l in (
    "adamw", "adafactor", "adafactor --no-adafactor-beta1", "came", "came --came-bf16-m")) + " |")
'
done
