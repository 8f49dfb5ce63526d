#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, starts the
# system locally with `kvpool up` (one kvpool-manager holding the shared KV pool, one
# kvpool-worker running GPT-2 124M with seeded random weights) and runs the original
# experiment through it: "深度学习中的注意力机制是一种", 50 new tokens at temperature 0.7,
# once per KV mode (none, contiguous, paged), each streamed to stdout with its timing
# and KV-memory summary. Extra arguments go to every `kvpool generate` (try
# build/bin/kvpool generate --help). The in-process version: build/bin/kvpool-engine-run.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/install-deps.sh"
"$here/scripts/build.sh"
bin="$here/build/bin"
log="$(mktemp -d)"
"$bin/kvpool" up --workers 1 --model gpt2 --threads "$(nproc)" >"$log/up.out" 2>"$log/up.err" &
up_pid=$!
trap 'kill -TERM $up_pid 2>/dev/null; wait $up_pid 2>/dev/null || true; rm -rf "$log"' EXIT
for _ in $(seq 1200); do
  grep -q '^ready' "$log/up.out" && break
  kill -0 $up_pid 2>/dev/null || { cat "$log/up.err" >&2; exit 1; }
  sleep 0.1
done
grep -q '^ready' "$log/up.out" || { cat "$log/up.err" >&2; exit 1; }
worker="$(awk '$1 == "worker" {print $2; exit}' "$log/up.out")"
echo "kvpool up: manager $(awk '$1 == "manager" {print $2}' "$log/up.out"), worker $worker (gpt2)"
for mode in none contiguous paged; do
  printf '\n== mode %s\n' "$mode"
  "$bin/kvpool" generate --server "$worker" --prompt "深度学习中的注意力机制是一种" \
    --mode "$mode" --max-tokens 50 --temperature 0.7 --seed 1 --ignore-eos "$@" 2>&1
  echo
done
