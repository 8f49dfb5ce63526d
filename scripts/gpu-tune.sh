#!/usr/bin/env bash
# Measures the CUDA runner's tuning knobs (gemv for one row, split decode, fused
# bias+GELU) on GPT-2 fp16 decode; expects scripts/gpu-check.sh's build-gpu.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for v in "GEMV=0 SPLIT=1 GELU=1" "GEMV=0 SPLIT=1 GELU=0" "GEMV=1 SPLIT=1 GELU=1" "GEMV=0 SPLIT=0 GELU=1" "GEMV=1 SPLIT=0 GELU=1"; do
  eval "export KVPOOL_CUDA_${v// / KVPOOL_CUDA_}"
  export KVPOOL_CUDA_FUSED_GELU=$KVPOOL_CUDA_GELU KVPOOL_CUDA_SPLIT_DECODE=$KVPOOL_CUDA_SPLIT
  r=$(KVPOOL_CUDA_TIMING=1 build-gpu/bin/kvpool-engine-bench --device cuda --dtype fp16 --quick --steps 30 --json 2>/tmp/tune.err)
  echo "$v: $(echo "$r" | python3 -c 'import json,sys; d=json.load(sys.stdin); m=d["decode_ms_per_token"]; print(f"paged {m["paged"]:.3f} contiguous {m["contiguous"]:.3f} paged@1000 {d["paged_ms_per_token_at_1000"]:.3f} ms")') | $(grep -o 'graph steps: .*' /tmp/tune.err | head -1)"
done
