#!/usr/bin/env bash
# The serving benchmarks of the worker/client issue, on this machine, in one run:
#   1. batch-1 per-token decode latency end to end (client -> kvpool-worker over gRPC,
#      blocks from kvpool-manager) vs the same model in process (kvpool-engine-run):
#      ROUNDS alternating rounds, medians, and their ratio;
#   2. 16 requests in paged mode served one at a time vs 16 at once: tokens/s and ratio.
# Starts its own manager + worker with `kvpool up`. Usage:
#   scripts/bench-serving.sh [OUT_DIR]      (default bench/data/serving; needs a build)
# Environment: MODEL (gpt2), THREADS (nproc), ROUNDS (3), NEW_TOKENS (128).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$here/build/bin"
out="${1:-$here/bench/data/serving}"
model="${MODEL:-gpt2}" threads="${THREADS:-$(nproc)}" rounds="${ROUNDS:-3}"
new_tokens="${NEW_TOKENS:-128}" prompt_tokens=32
mkdir -p "$out"

source "$here/scripts/kvpool-up.sh"
up_pid=""
trap '[ -z "$up_pid" ] || { kill -TERM $up_pid 2>/dev/null; wait $up_pid 2>/dev/null; } || true' EXIT
start_kvpool_up "$out" --workers 1 --model "$model" --threads "$threads" --num-blocks 2048
echo "worker $worker ($model, $threads threads); $rounds rounds of $new_tokens tokens"

for round in $(seq "$rounds"); do
  "$bin/kvpool-engine-run" --model "$model" --modes paged --prompt-tokens $prompt_tokens \
    --max-tokens "$new_tokens" --threads "$threads" --seed "$round" --json \
    | sed -n '/^{/,$p' >"$out/inprocess-$round.json"
  "$bin/kvpool" loadgen --server "$worker" --concurrency 1 --requests 3 \
    --prompt-tokens $prompt_tokens --max-tokens "$new_tokens" --mode paged --seed "$round" \
    --json >"$out/e2e-$round.json"
done
for c in 1 16; do
  "$bin/kvpool" loadgen --server "$worker" --concurrency $c --requests 16 \
    --prompt-tokens $prompt_tokens --max-tokens 64 --mode paged --seed 7 --json \
    >"$out/throughput-c$c.json"
done

python3 - "$out" "$rounds" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
inproc, e2e = [], []
for r in range(1, rounds + 1):
    steps = json.load(open(f"{out}/inprocess-{r}.json"))["modes"]["paged"]["step_latency_s"]
    inproc.append(statistics.median(steps))
    e2e.append(json.load(open(f"{out}/e2e-{r}.json"))["itl_p50_s"])
serial = json.load(open(f"{out}/throughput-c1.json"))
concurrent = json.load(open(f"{out}/throughput-c16.json"))
summary = {
    "in_process_decode_s_per_token": statistics.median(inproc),
    "end_to_end_s_per_token": statistics.median(e2e),
    "end_to_end_over_in_process": statistics.median(e2e) / statistics.median(inproc),
    "rounds": {"in_process": inproc, "end_to_end": e2e},
    "serial_tokens_per_s": serial["tokens_per_s"],
    "concurrent16_tokens_per_s": concurrent["tokens_per_s"],
    "concurrent16_over_serial": concurrent["tokens_per_s"] / serial["tokens_per_s"],
    "failed": serial["failed"] + concurrent["failed"],
}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(f"batch 1, paged: in process {summary['in_process_decode_s_per_token']*1e3:.2f} ms/token, "
      f"end to end {summary['end_to_end_s_per_token']*1e3:.2f} ms/token "
      f"(ratio {summary['end_to_end_over_in_process']:.3f})")
print(f"16 requests x 64 tokens, paged: one at a time {summary['serial_tokens_per_s']:.1f} tok/s, "
      f"16 at once {summary['concurrent16_tokens_per_s']:.1f} tok/s "
      f"(ratio {summary['concurrent16_over_serial']:.2f}); failed {summary['failed']}")
EOF
