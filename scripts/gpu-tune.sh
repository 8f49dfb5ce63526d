#!/usr/bin/env bash
# A/B of the CUDA runner's skinny products on GPT-2 fp16 decode: kvpool's GEMV kernel
# (default) vs cuBLAS (KVPOOL_CUDA_GEMV=0). Expects scripts/gpu-check.sh's build-gpu.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for gemv in 1 0; do
  r=$(KVPOOL_CUDA_GEMV=$gemv KVPOOL_CUDA_TIMING=1 build-gpu/bin/kvpool-engine-bench --device cuda \
      --dtype fp16 --quick --steps 30 --json 2>/tmp/tune.err)
  echo "KVPOOL_CUDA_GEMV=$gemv: $(echo "$r" | python3 -c 'import json,sys; d=json.load(sys.stdin); m=d["decode_ms_per_token"]; print(f"paged {m["paged"]:.3f} contiguous {m["contiguous"]:.3f} paged@{d["context_large"]} {d["paged_ms_per_token_at_1000"]:.3f} ms")') | $(grep -o 'graph steps: .*' /tmp/tune.err | head -1)"
done
