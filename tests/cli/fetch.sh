#!/usr/bin/env bash
# The data files downloaded end to end over HTTP, as on a clone with nothing beside it: a local server (Python's
# http.server on 127.0.0.1, TALLY_DATA_URL) stands in for the internet, and tally runs from a temporary directory
# with no shared copy to find (TALLY_SHARED_DATA at nothing) and an empty cache (TALLY_CACHE_DIR). `make run`'s
# command (one step) fetches, checks, caches and uses the three files; a second run downloads nothing; the unit
# tests that read the files pass on downloaded copies; truncated, altered and missing files and a server that is
# down are refused with nothing left in the cache; two processes downloading at once both succeed; TALLY_OFFLINE=1
# gives the "no training data" message without a request.
# Usage: fetch.sh TALLY_BINARY SOURCE_DIR   (tally_tests is taken from beside TALLY_BINARY)
set -uo pipefail
tally=$(realpath "$1")
src=$(realpath "$2")
unit_tests="$(dirname "$tally")/tally_tests"
fail() { echo "FAIL: $*"; exit 1; }

# The real files to serve, from where this checkout has them.
real=""
for d in "${TALLY_SHARED_DATA:-$src/../shared/data}" "$src/data"; do
  if [ -f "$d/tinyshakespeare.txt" ] && [ -f "$d/gpt2/encoder.json" ] && [ -f "$d/gpt2/vocab.bpe" ]; then real=$d; break; fi
done
if [ -z "$real" ]; then
  echo "SKIPPED: no copy of tinyshakespeare.txt and gpt2/{encoder.json,vocab.bpe} to serve (../shared/data or data/)"
  exit 77
fi
command -v python3 >/dev/null || fail "python3 is needed for the local HTTP server (scripts/install-deps.sh installs it)"
[ -x "$unit_tests" ] || fail "no tally_tests beside $tally"

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Served trees: good/ (the real files), truncated/, altered/ (one byte of encoder.json changed), missing/ (no
# vocab.bpe).
www=$work/www
for t in good truncated altered missing; do mkdir -p "$www/$t/gpt2"; done
cp "$real/tinyshakespeare.txt" "$www/good/"
cp "$real/gpt2/encoder.json" "$real/gpt2/vocab.bpe" "$www/good/gpt2/"
head -c 500000 "$real/tinyshakespeare.txt" >"$www/truncated/tinyshakespeare.txt"
cp "$real/tinyshakespeare.txt" "$www/altered/"
cp "$real/gpt2/encoder.json" "$real/gpt2/vocab.bpe" "$www/altered/gpt2/"
printf 'X' | dd of="$www/altered/gpt2/encoder.json" bs=1 seek=1000 conv=notrunc 2>/dev/null
cp "$real/tinyshakespeare.txt" "$www/missing/"
cp "$real/gpt2/encoder.json" "$www/missing/gpt2/"

python3 -u -m http.server --bind 127.0.0.1 --directory "$www" 0 >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
port=""
for _ in $(seq 1 100); do
  port=$(sed -n 's/.* port \([0-9][0-9]*\).*/\1/p' "$work/server.out" | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || fail "the local HTTP server did not start: $(cat "$work/server.out" "$work/server.log")"
base=http://127.0.0.1:$port
requests() { grep -c '"GET ' "$work/server.log"; }

# A clone with nothing beside it: no shared copy, no data set by hand, an empty cache, this server as the internet.
unset TALLY_DATA TALLY_GPT2_DIR TALLY_OFFLINE
export TALLY_SHARED_DATA=$work/no-shared TALLY_CACHE_DIR=$work/cache TALLY_DATA_URL=$base/good
export no_proxy=127.0.0.1 NO_PROXY=127.0.0.1
mkdir -p "$work/clone" && cd "$work/clone" || fail "cd"
# `make run`'s command, one step long.
run=(train --config "$src/configs/shakespeare-came.json" --steps 1 --eval-every 0 --val-batches 1 --sample-tokens 8
     --threads 2)
cached_files() { find "$1" -type f 2>/dev/null | sort; }

# ---- make run: fetched, checked, cached, used ----
"$tally" "${run[@]}" --out "$work/run1" >"$work/run1.log" 2>&1 || fail "first run exited $?: $(tail -20 "$work/run1.log")"
for f in tinyshakespeare.txt gpt2/encoder.json gpt2/vocab.bpe; do
  grep -q "^downloading $f ([0-9.]* [KM]iB) from $base/good/$f" "$work/run1.log" || fail "no progress line for $f: $(cat "$work/run1.log")"
  grep -q "bytes, SHA-256 as pinned, saved as $work/cache/$f" "$work/run1.log" || fail "no saved line for $f"
  cmp -s "$work/cache/$f" "$real/$f" || fail "cached $f differs from the served file"
done
grep -q "cached $work/cache/tinyshakespeare.txt" "$work/run1.log" || fail "the run did not train on the cached text"
grep -q "^step 1/1" "$work/run1.log" || fail "the run did not train: $(tail -5 "$work/run1.log")"
[ "$(requests)" -eq 3 ] || fail "expected 3 requests, the server saw $(requests): $(cat "$work/server.log")"
[ "$(cached_files "$work/cache" | wc -l)" -eq 3 ] || fail "cache holds more than the three files: $(cached_files "$work/cache")"

# ---- a second run (of the small model, to be quick) downloads nothing ----
"$tally" "${run[@]}" --model tiny --out "$work/run2" >"$work/run2.log" 2>&1 || fail "second run exited $?: $(tail -20 "$work/run2.log")"
grep -q "downloading" "$work/run2.log" && fail "the second run downloaded again: $(grep downloading "$work/run2.log")"
[ "$(requests)" -eq 3 ] || fail "the second run made requests: $(cat "$work/server.log")"

# ---- make test: the unit tests that read the data files find them by downloading into their own cache ----
TALLY_CACHE_DIR=$work/cache-unit "$unit_tests" -tc="fetch: the pinned sizes*,tokenizer: whole Tiny Shakespeare*" \
  >"$work/unit.log" 2>&1 || fail "unit tests on downloaded files: $(tail -30 "$work/unit.log")"
grep -q "SKIPPED" "$work/unit.log" && fail "a unit test skipped: $(grep SKIPPED "$work/unit.log")"
grep -qE "test cases: +2 \| +2 passed \| +0 failed" "$work/unit.log" || fail "unit tests: $(tail -5 "$work/unit.log")"
[ "$(requests)" -eq 6 ] || fail "the unit tests should have downloaded the three files: $(cat "$work/server.log")"

# ---- a truncated file: refused, saying what and how, nothing kept ----
expect_refusal() {  # NAME URL_DIR PATTERN...: a fresh cache, `make run`'s command exits 1 with every pattern
  local name=$1 dir=$2; shift 2
  TALLY_CACHE_DIR=$work/cache-$name TALLY_DATA_URL=$base/$dir "$tally" "${run[@]}" --out "$work/run-$name" \
    >"$work/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 1 ] || fail "$name: exit $rc, expected 1: $(tail -5 "$work/$name.log")"
  for p in "$@"; do grep -qF -- "$p" "$work/$name.log" || fail "$name: no '$p' in: $(cat "$work/$name.log")"; done
  grep -qF "To place the file by hand: download https://" "$work/$name.log" || fail "$name: no by-hand instructions"
  cached_files "$work/cache-$name" | grep -q -- '\.tmp\.' && fail "$name: a temporary file was left: $(cached_files "$work/cache-$name")"
  return 0
}
expect_refusal truncated truncated \
  "tinyshakespeare.txt from $base/truncated/tinyshakespeare.txt: expected 1,115,394 bytes with SHA-256 86c4e6aa" \
  "got 500,000 bytes with SHA-256 $(sha256sum "$www/truncated/tinyshakespeare.txt" | cut -d' ' -f1); nothing was kept" \
  "save it as $work/cache-truncated/tinyshakespeare.txt"
[ -z "$(cached_files "$work/cache-truncated")" ] || fail "truncated: files left: $(cached_files "$work/cache-truncated")"

# ---- an altered file (one byte): refused; the good text before it stays cached, nothing else ----
expect_refusal altered altered \
  "gpt2/encoder.json from $base/altered/gpt2/encoder.json: expected 1,042,301 bytes with SHA-256 19613966" \
  "got 1,042,301 bytes with SHA-256 $(sha256sum "$www/altered/gpt2/encoder.json" | cut -d' ' -f1)"
[ "$(cached_files "$work/cache-altered")" = "$work/cache-altered/tinyshakespeare.txt" ] ||
  fail "altered: the cache should hold only tinyshakespeare.txt: $(cached_files "$work/cache-altered")"

# ---- a file the server does not have: curl's reason ----
expect_refusal missing missing \
  "gpt2/vocab.bpe: downloading $base/missing/gpt2/vocab.bpe failed after 0 bytes (curl: (22)" "404"
[ -f "$work/cache-missing/gpt2/vocab.bpe" ] && fail "missing: a vocab.bpe appeared in the cache"

# ---- two processes downloading the same files at once both succeed, and the cache is whole ----
for i in 1 2; do
  TALLY_CACHE_DIR=$work/cache-race "$tally" prepare --text "$real/tinyshakespeare.txt" --out "$work/prep$i" \
    >"$work/prep$i.log" 2>&1 &
  pids[$i]=$!
done
for i in 1 2; do wait "${pids[$i]}" || fail "concurrent prepare $i: $(tail -5 "$work/prep$i.log")"; done
for f in gpt2/encoder.json gpt2/vocab.bpe; do cmp -s "$work/cache-race/$f" "$real/$f" || fail "concurrent: $f differs"; done
[ "$(cached_files "$work/cache-race" | wc -l)" -eq 2 ] || fail "concurrent: cache holds $(cached_files "$work/cache-race")"

# ---- TALLY_OFFLINE=1: the old message, and no request ----
before=$(requests)
TALLY_OFFLINE=1 TALLY_CACHE_DIR=$work/cache-offline "$tally" "${run[@]}" --out "$work/run-offline" >"$work/offline.log" 2>&1
[ $? -eq 1 ] || fail "offline: expected exit 1: $(tail -5 "$work/offline.log")"
grep -q "no training data found" "$work/offline.log" || fail "offline message: $(cat "$work/offline.log")"
grep -q "TALLY_OFFLINE is set, so nothing was downloaded" "$work/offline.log" || fail "offline note: $(cat "$work/offline.log")"
[ "$(requests)" -eq "$before" ] || fail "TALLY_OFFLINE=1 made a request: $(tail -3 "$work/server.log")"
[ -z "$(cached_files "$work/cache-offline")" ] || fail "offline: files in the cache"

# ---- a server that is down ----
kill "$server_pid" && wait "$server_pid" 2>/dev/null
server_pid=""
TALLY_CACHE_DIR=$work/cache-down "$tally" "${run[@]}" --out "$work/run-down" >"$work/down.log" 2>&1
[ $? -eq 1 ] || fail "server down: expected exit 1: $(tail -5 "$work/down.log")"
grep -qF "tinyshakespeare.txt: downloading $base/good/tinyshakespeare.txt failed after 0 bytes (curl: (7)" "$work/down.log" ||
  fail "server down message: $(cat "$work/down.log")"
grep -qF "To place the file by hand: download https://raw.githubusercontent.com/" "$work/down.log" || fail "server down: no by-hand instructions"
[ -z "$(cached_files "$work/cache-down")" ] || fail "server down: files in the cache"
echo "ok"
