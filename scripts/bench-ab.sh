#!/usr/bin/env bash
# Two builds of kvpool side by side on this machine, interleaved so that a slow spell
# hits both alike, and with the order inside each pair alternating from round to round
# (on a small VM the first run of a pair is measurably faster or slower):
#   - kvpool-engine-bench: paged decode step at batch 1, 4, 16, 32 (context 100);
#   - served through `kvpool up` + `kvpool loadgen`: batch-1 time per token (ITL p50,
#     32-token prompts, 96 new tokens) and 16 concurrent requests' tokens/s.
# Prints medians, min-max and B/A ratios; writes every run's JSON and summary.json.
# Usage: scripts/bench-ab.sh A_BIN_DIR B_BIN_DIR [OUT_DIR] (each dir a build's bin/).
# Environment: MODEL (gpt2), THREADS (nproc), ROUNDS (4).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
a_bin=$(cd "$1" && pwd) b_bin=$(cd "$2" && pwd)
out="${3:-$here/bench/data/ab}"
model="${MODEL:-gpt2}" threads="${THREADS:-$(nproc)}" rounds="${ROUNDS:-4}"
mkdir -p "$out"
source "$here/scripts/kvpool-up.sh"
up_pid=""
trap '[ -z "$up_pid" ] || { kill -TERM $up_pid 2>/dev/null; wait $up_pid 2>/dev/null; } || true' EXIT
order() { if (($1 % 2)); then echo a b; else echo b a; fi; }
for r in $(seq "$rounds"); do
  for side in $(order "$r"); do
    bin_var="${side}_bin" && bin=${!bin_var}
    "$bin/kvpool-engine-bench" --model "$model" --threads "$threads" --batches-only \
      --batches 1 4 16 32 --steps 15 --warmup 3 --json 2>/dev/null | sed -n '/^{/,$p' \
      >"$out/engine-$side-$r.json"
  done
done
for r in $(seq "$rounds"); do
  for side in $(order "$r"); do
    bin_var="${side}_bin" && bin=${!bin_var}
    mkdir -p "$out/up-$side-$r"
    start_kvpool_up "$out/up-$side-$r" --workers 1 --model "$model" --threads "$threads" \
      --num-blocks 2048
    "$bin/kvpool" loadgen --server "$worker" --concurrency 1 --requests 3 --prompt-tokens 32 \
      --max-tokens 96 --mode paged --seed "$r" --json >"$out/c1-$side-$r.json"
    "$bin/kvpool" loadgen --server "$worker" --concurrency 16 --requests 16 --prompt-tokens 32 \
      --max-tokens 64 --mode paged --seed 7 --json >"$out/c16-$side-$r.json"
    kill -TERM "$up_pid"
    wait "$up_pid" 2>/dev/null || true
    up_pid=""
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
runs = range(1, rounds + 1)
series = {}
for side in ("a", "b"):
    for batch in (1, 4, 16, 32):
        series[f"engine_step_ms_batch{batch}_{side}"] = [
            p["step_ms"] for r in runs
            for p in json.load(open(f"{out}/engine-{side}-{r}.json"))["batch_decode"]
            if p["batch"] == batch]
    series[f"served_ms_per_token_{side}"] = [
        json.load(open(f"{out}/c1-{side}-{r}.json"))["itl_p50_s"] * 1e3 for r in runs]
    series[f"served16_tokens_per_s_{side}"] = [
        json.load(open(f"{out}/c16-{side}-{r}.json"))["tokens_per_s"] for r in runs]
summary = {}
for key in sorted({k[:-2] for k in series}):
    a, b = series[key + "_a"], series[key + "_b"]
    summary[key] = {"a_median": statistics.median(a), "a_range": [min(a), max(a)],
                    "b_median": statistics.median(b), "b_range": [min(b), max(b)],
                    "b_over_a": statistics.median(b) / statistics.median(a)}
    s = summary[key]
    print(f"{key:34s} A {s['a_median']:8.2f} [{min(a):.2f}-{max(a):.2f}]  "
          f"B {s['b_median']:8.2f} [{min(b):.2f}-{max(b):.2f}]  B/A {s['b_over_a']:.3f}")
json.dump({"series": series, "summary": summary}, open(f"{out}/summary.json", "w"), indent=1)
PY
