#!/usr/bin/env bash
# The OpenAI gateway's overhead against the gRPC path, on one running `kvpool up`
# (one worker), interleaved so that a slow spell hits both alike, the order inside
# each pair alternating from round to round:
#   - batch 1: time per output token (ITL p50), 32-token prompts, 96 new tokens;
#   - 32 concurrent streaming clients: output tokens/s, 64 new tokens each.
# Same kvpool loadgen, same prompts: --server (gRPC) against --openai-url (the
# worker's /v1/completions, streaming). Prints medians, min-max and OpenAI/gRPC ratios.
# Usage: scripts/bench-openai.sh [OUT_DIR]. Environment: MODEL (gpt2), THREADS (nproc),
# ROUNDS (5).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$here/build/bin"
out="${1:-$here/bench/data/openai}"
model="${MODEL:-gpt2}" threads="${THREADS:-$(nproc)}" rounds="${ROUNDS:-5}"
mkdir -p "$out"
source "$here/scripts/kvpool-up.sh"
up_pid=""
trap '[ -z "$up_pid" ] || { kill -TERM $up_pid 2>/dev/null; wait $up_pid 2>/dev/null; } || true' EXIT
start_kvpool_up "$out" --workers 1 --model "$model" --threads "$threads" --num-blocks 4096
openai="$(awk '$1 == "openai" {print $2; exit}' "$out/up.log")"
order() { if (($1 % 2)); then echo grpc openai; else echo openai grpc; fi; }
# Each side its own prompts, so that neither finds the other's in the prefix cache.
seed() { if [ "$1" = grpc ]; then echo $((1000 * $2 + 1)); else echo $((1000 * $2 + 2)); fi; }
target() { if [ "$1" = grpc ]; then echo --server "$worker"; else echo --openai-url "$openai"; fi; }
for r in $(seq "$rounds"); do
  for side in $(order "$r"); do
    # shellcheck disable=SC2046
    "$bin/kvpool" loadgen $(target "$side") --concurrency 1 --requests 3 --prompt-tokens 32 \
      --max-tokens 96 --mode paged --seed "$(seed "$side" "$r")" --json >"$out/c1-$side-$r.json"
    # shellcheck disable=SC2046
    "$bin/kvpool" loadgen $(target "$side") --concurrency 32 --requests 32 --prompt-tokens 32 \
      --max-tokens 64 --mode paged --seed "$(seed "$side" $((100 + r)))" --json >"$out/c32-$side-$r.json"
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def values(kind, side, key):
    return [json.load(open(f"{out}/{kind}-{side}-{r}.json"))[key] for r in range(1, rounds + 1)]
rows = [("batch-1 time per token, ITL p50 (ms)", "c1", "itl_p50_s", 1e3),
        ("32 concurrent streaming clients (tokens/s)", "c32", "tokens_per_s", 1)]
summary = {}
for name, kind, key, scale in rows:
    g = [v * scale for v in values(kind, "grpc", key)]
    o = [v * scale for v in values(kind, "openai", key)]
    mg, mo = statistics.median(g), statistics.median(o)
    print(f"{name:45s} gRPC {mg:8.2f} [{min(g):.2f}-{max(g):.2f}]  OpenAI {mo:8.2f} "
          f"[{min(o):.2f}-{max(o):.2f}]  OpenAI/gRPC {mo / mg:.3f}")
    summary[kind] = {"grpc": g, "openai": o, "ratio": mo / mg}
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
PY
