#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, then runs
# the original experiment in process: GPT-2 (124M, seeded random weights) generates
# 50 tokens from "深度学习中的注意力机制是一种" in each KV mode (none, contiguous,
# paged) and prints average latency per token, time to first token, total time and KV
# memory per mode. Extra arguments go to kvpool-engine-run (try --help).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/install-deps.sh"
"$here/scripts/build.sh"
exec "$here/build/bin/kvpool-engine-run" --model gpt2 --prompt "深度学习中的注意力机制是一种" \
  --max-tokens 50 --threads "$(nproc)" "$@"
