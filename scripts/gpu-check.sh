#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, PyTorch (its bundled CUDA LibTorch) and Hugging Face
# transformers: builds the CUDA targets against PyTorch's LibTorch, runs the GPU tests
# (kernels vs float64, CUDA IPC across processes, the engine on the GPU vs the CPU
# engine and vs transformers), then the GPU bench beside transformers' own decoding,
# and prints a short table last. Logs and JSON go to $OUT (default build-gpu/out).
#
# Extra packages it needs that such a machine may lack (GoogleTest, nlohmann-json,
# CLI11) travel as Debian .deb files in .gpu-debs/ and are unpacked into /opt/dep
# (never over /):
#   mkdir -p .gpu-debs && (cd .gpu-debs && apt-get download libgtest-dev libgmock-dev \
#     nlohmann-json3-dev libcli11-dev)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
OUT="${OUT:-$here/build-gpu/out}"
mkdir -p "$OUT"
log() { printf '== %s\n' "$*" | tee -a "$OUT/gpu-check.log"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
prefix_path="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
if compgen -G ".gpu-debs/*.deb" >/dev/null; then
  mkdir -p /opt/dep
  for f in .gpu-debs/*.deb; do dpkg -x "$f" /opt/dep; done
  prefix_path="/opt/dep/usr;/opt/dep/usr/lib/x86_64-linux-gnu/cmake;/opt/dep/usr/share/cmake;$prefix_path"
fi

log "configure (PyTorch $(python3 -c 'import torch; print(torch.__version__)'), $(nvcc --version | tail -n 2 | head -n 1))"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DCMAKE_PREFIX_PATH="$prefix_path" -DKVPOOL_WERROR=OFF -DKVPOOL_SERVICES=OFF \
  -DKVPOOL_TEST_AREAS="tokenizer;engine;weights;cuda" >"$OUT/configure.log" 2>&1 || { tail -n 40 "$OUT/configure.log"; exit 1; }
log "build"
ninja -C build-gpu -j "$(nproc)" engine_gpu_test kvpool_cuda_kernels_test kvpool_cuda_pool_test kvpool_cuda_gemv_test \
  engine_test hf_reference_test tokenizer_test kvpool-cuda-attention-bench kvpool-engine-bench kvpool-export-hf \
  >"$OUT/build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.log" | head -n 60; exit 1; }
echo "   $(grep -c "warning:" "$OUT/build.log" || true) compiler warnings (see build.log)"
grep -E "^(SENTENCEPIECE_LIB|KVPOOL_SENTENCEPIECE)" build-gpu/CMakeCache.txt | sed 's/^/   /' || true
[ "${GPU_CHECK_BUILD_ONLY:-0}" = 1 ] && exit 0

status=0
run_test() {
  log "test $*"
  local one="$OUT/test-$(basename "$1").log"
  if "$@" >"$one" 2>&1; then
    tail -n 3 "$one" | sed 's/^/   /'
  else
    status=1
    echo "   FAILED: $*"
    grep -E "FAILED|Failure|error|Which is|Expected|Actual|\[ RUN" "$one" | tail -n 30 | sed 's/^/   /'
    tail -n 5 "$one" | sed 's/^/   /'
  fi
  cat "$one" >>"$OUT/tests.log"
}
run_test build-gpu/bin/kvpool_cuda_kernels_test
run_test build-gpu/bin/kvpool_cuda_pool_test
run_test build-gpu/bin/kvpool_cuda_gemv_test
run_test build-gpu/bin/tokenizer_test
run_test build-gpu/bin/engine_test
run_test build-gpu/bin/hf_reference_test
gpt2_dir="$here/build-gpu/gpt2-random"
build-gpu/bin/kvpool-export-hf --model gpt2 --out "$gpt2_dir" >>"$OUT/tests.log"
python3 scripts/make-hf-fixtures.py --reference-dir "$gpt2_dir" >>"$OUT/tests.log" 2>&1
KVPOOL_HF_GPT2_DIR="$gpt2_dir" run_test build-gpu/bin/engine_gpu_test
grep "\[ hf \]" "$OUT/tests.log" | sed 's/^/   /' || true

log "bench"
build-gpu/bin/kvpool-cuda-attention-bench >"$OUT/attention-bench.txt" 2>&1 || status=1
build-gpu/bin/kvpool-engine-bench --model gpt2 --device cuda --dtype fp16 --no-cuda-graphs --quick \
  --json >"$OUT/engine-bench-cuda-fp16-eager.json" 2>>"$OUT/bench.log" || status=1
for dtype in fp16 fp32; do
  KVPOOL_CUDA_TIMING=1 build-gpu/bin/kvpool-engine-bench --model gpt2 --device cuda --dtype "$dtype" --json \
    >"$OUT/engine-bench-cuda-$dtype.json" 2>>"$OUT/bench.log" || status=1
  python3 scripts/hf-baseline.py "$gpt2_dir" --device cuda --dtype "$dtype" \
    >"$OUT/hf-baseline-cuda-$dtype.json" 2>>"$OUT/bench.log" || status=1
done

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
print("\nGPT-2 124M on", open(os.path.join(out, "gpu.txt")).read().strip(), "- batch 1, context 200, median ms per decode step")
print(f"{'':24}{'fp16':>10}{'fp32':>10}")
rows = {}
for dtype in ("fp16", "fp32"):
    try:
        k = json.load(open(os.path.join(out, f"engine-bench-cuda-{dtype}.json")))
        h = json.load(open(os.path.join(out, f"hf-baseline-cuda-{dtype}.json")))
    except Exception as e:
        print("missing results for", dtype, e); continue
    for m in ("none", "contiguous", "paged"):
        rows.setdefault(f"kvpool {m}", {})[dtype] = k["decode_ms_per_token"][m]
    rows.setdefault("HF use_cache=False", {})[dtype] = h["use_cache_false"]["decode_ms_per_token"]
    rows.setdefault("HF use_cache=True", {})[dtype] = h["use_cache_true"]["decode_ms_per_token"]
    rows.setdefault("bandwidth floor", {})[dtype] = k["bandwidth_floor_ms_per_token"]
for name, v in rows.items():
    print(f"{name:24}" + "".join(f"{v.get(d, float('nan')):>10.3f}" for d in ("fp16", "fp32")))
try:
    e = json.load(open(os.path.join(out, "engine-bench-cuda-fp16-eager.json")))
    print(f"kvpool paged fp16 without CUDA graphs: {e['decode_ms_per_token']['paged']:.3f} ms")
except Exception:
    pass
for dtype in ("fp16",):
    try:
        k = json.load(open(os.path.join(out, f"engine-bench-cuda-{dtype}.json")))
        h = json.load(open(os.path.join(out, f"hf-baseline-cuda-{dtype}.json")))
        print(f"\n{dtype}: HF cache vs HF no-cache {h['use_cache_false']['decode_ms_per_token']/h['use_cache_true']['decode_ms_per_token']:.2f}x; "
              f"kvpool paged vs HF cache {h['use_cache_true']['decode_ms_per_token']/k['decode_ms_per_token']['paged']:.2f}x; "
              f"paged/contiguous {k['paged_over_contiguous']:.3f}")
    except Exception:
        pass
PY
exit $status
