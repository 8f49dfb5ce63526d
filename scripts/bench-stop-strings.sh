#!/usr/bin/env bash
# Stop strings cannot slow other requests: batch-1 time per output token of a plain
# request (kvpool loadgen, 3 requests of NEW_TOKENS) alone, beside a long request with
# no stop strings, and beside a long request with the largest allowed set (32 stop
# strings of 256 bytes that never match), ROUNDS interleaved rounds, medians. The
# companion runs in the same worker (one scheduler thread for both). Starts its own
# manager + worker with `kvpool up`. Usage:
#   scripts/bench-stop-strings.sh [OUT_DIR]   (default bench/data/stop-strings; needs a build)
# Environment: MODEL (gpt2), THREADS (nproc), ROUNDS (5), NEW_TOKENS (64).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$here/build/bin"
out="${1:-$here/bench/data/stop-strings}"
model="${MODEL:-gpt2}" threads="${THREADS:-$(nproc)}" rounds="${ROUNDS:-5}"
new_tokens="${NEW_TOKENS:-64}"
mkdir -p "$out"

source "$here/scripts/kvpool-up.sh"
up_pid="" companion=""
trap '[ -z "$companion" ] || kill $companion 2>/dev/null
      [ -z "$up_pid" ] || { kill -TERM $up_pid 2>/dev/null; wait $up_pid 2>/dev/null; } || true' EXIT
start_kvpool_up "$out" --workers 1 --model "$model" --threads "$threads" --num-blocks 1024

# 32 distinct 256-byte stop strings over the letters q and z (the random-weight model
# emits them too rarely to ever match 256 in a row).
stops=()
for i in $(seq 32); do
  s=""
  for j in $(seq 256); do s+=$([ $(((i * 7 + j * 13) % 3)) -eq 0 ] && echo z || echo q); done
  stops+=(--stop "$s")
done

measure() {  # $1: label; the rest: the companion's extra flags (none: run alone)
  local label=$1
  shift
  if [ "$label" != alone ]; then
    "$bin/kvpool" generate --server "$worker" --prompt "the companion request" \
      --max-tokens 900 --ignore-eos --mode paged "$@" >/dev/null 2>&1 &
    companion=$!
    sleep 1  # it is decoding
  fi
  "$bin/kvpool" loadgen --server "$worker" --concurrency 1 --requests 3 --prompt-tokens 32 \
    --max-tokens "$new_tokens" --mode paged --seed "$round" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["tpot_median_s"])' \
      >>"$out/$label.txt"
  if [ "$label" != alone ]; then
    kill $companion 2>/dev/null || true
    wait $companion 2>/dev/null || true
    companion=""
  fi
}

rm -f "$out"/{alone,plain,stops}.txt
for round in $(seq "$rounds"); do
  measure alone
  measure plain
  measure stops "${stops[@]}"
done
python3 - "$out" "$model" "$threads" <<'PY'
import json, statistics, sys
out, model, threads = sys.argv[1], sys.argv[2], sys.argv[3]
runs = {k: [float(x) for x in open(f"{out}/{k}.txt")] for k in ("alone", "plain", "stops")}
med = {k: statistics.median(v) for k, v in runs.items()}
report = {"model": model, "threads": int(threads),
          "tpot_s": {k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in runs.items()},
          "stops_vs_alone": med["stops"] / med["alone"],
          "stops_vs_plain_companion": med["stops"] / med["plain"]}
json.dump(report, open(f"{out}/report.json", "w"), indent=2)
for k in ("alone", "plain", "stops"):
    print(f"{k:6s} tpot median {1e3*med[k]:.2f} ms (min {1e3*min(runs[k]):.2f}, max {1e3*max(runs[k]):.2f})")
print(f"beside 32x256-byte stops / alone: {report['stops_vs_alone']:.3f}; "
      f"/ beside a plain request: {report['stops_vs_plain_companion']:.3f}")
PY
