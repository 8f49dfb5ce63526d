#!/usr/bin/env bash
# The GPU deployment end to end, in one command, on a machine with an NVIDIA GPU,
# PyTorch (its bundled CUDA LibTorch) and Hugging Face transformers:
#  1. unpacks the Debian packages carried in .gpu-debs/ (scripts/gpu-debs.sh) into
#     /opt/dep, never over /;
#  2. configures and builds kvpool, services included, for sm_90 against PyTorch's
#     LibTorch and the carried gRPC/protobuf;
#  3. the GPU tests: kernels vs float64, CUDA IPC across processes, the engine on the
#     GPU vs the CPU engine and vs transformers' logits;
#  4. the deployment (deployment_test): kvpool-manager --backend cuda hosting the pool
#     on the GPU, two kvpool-worker processes attached through CUDA IPC: the three
#     modes' greedy tokens equal, a prefix written by one worker hit by the other, a
#     worker SIGKILLed and its blocks reclaimed;
#  5. served on the GPU (fp16): batch-1 time per token through the services against
#     the in-process engine, 32 concurrent 130+130 requests against transformers'
#     generate() serving the same 32 one after another;
#  6. the engine bench (CUDA graphs, median of 200 steps) beside transformers;
#  7. `kvpool bench --quick --backend cuda` with the Hugging Face baseline.
# It times each phase and prints one table last. $OUT (default build-gpu/out) ends with
# at most 8 files: summary.txt, gpu-check.log, build.log, tests.log, services.log,
# bench.log and results.tar.gz (every JSON, the bench's report and the servers' logs).
#
# GPU_CHECK_DRY_RUN=1 does everything but the GPU steps on a machine without a GPU
# (unpack into a scratch prefix, configure and build against TORCH_PYTHON's LibTorch,
# the deployment test and the served phase on a shm pool with tiny-gpt2), so a GPU run
# fails on nothing a CPU could have caught. GPU_CHECK_BUILD_ONLY=1 stops after the build.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here" || exit 1
OUT="${OUT:-$here/build-gpu/out}"
DRY="${GPU_CHECK_DRY_RUN:-0}"
PY="${TORCH_PYTHON:-python3}"
mkdir -p "$OUT"
W="$OUT/results"  # everything that goes into results.tar.gz
rm -rf "$W" && mkdir -p "$W"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
log() { printf '== %s\n' "$*"; }

status=0
phases=()
# phase NAME COMMAND...: runs it, timed; a failure marks the run failed.
phase() {
  local name=$1 t0 t1 st=ok
  shift
  log "$name"
  t0=$(date +%s.%N)
  "$@" || { st=FAILED; status=1; }
  t1=$(date +%s.%N)
  phases+=("$(printf '%-48s %7.1f s  %s' "$name" "$(awk "BEGIN {print $t1 - $t0}")" "$st")")
  [ "$st" = ok ]
}
finish() {
  [ -d "$W" ] && tar -C "$OUT" -czf "$OUT/results.tar.gz" results && rm -rf "$W"
  {
    echo
    echo "kvpool gpu-check $(git -C "$here" rev-parse --short HEAD 2>/dev/null) $(date -u +%FT%TZ)"
    cat "$OUT/gpu.txt" 2>/dev/null
    printf '%s\n' "${phases[@]}"
    cat "$OUT/table.txt" 2>/dev/null
  } >"$OUT/summary.txt"
  rm -f "$OUT/table.txt" "$OUT/gpu.txt"
  cat "$OUT/summary.txt"
}
trap finish EXIT

if [ "$DRY" = 1 ]; then
  echo "dry run: no GPU steps" >"$OUT/gpu.txt"
  dep="$(mktemp -d /tmp/gpu-dep.XXXXXX)"
  model=tiny-gpt2 backend=shm
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt"
  dep=/opt/dep
  model=gpt2 backend=cuda
fi

setup() {
  compgen -G ".gpu-debs/*.deb" >/dev/null || { echo "no .gpu-debs/: run scripts/gpu-debs.sh here first"; return 1; }
  mkdir -p "$dep"
  for f in .gpu-debs/*.deb; do dpkg -x "$f" "$dep" || return 1; done
  torch_prefix="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)" ||
    { echo "$PY has no torch"; return 1; }
  echo "PyTorch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)," \
    "$(/usr/local/cuda/bin/nvcc --version | tail -n 2 | head -n 1)"
}
phase "unpack .gpu-debs, find PyTorch" setup || exit 1
export PATH="$dep/usr/bin:$PATH"
export LD_LIBRARY_PATH="$dep/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KVPOOL_PYTHON="$PY"

configure() {
  # PyTorch's CMake files replace CMAKE_CUDA_ARCHITECTURES with the architectures of
  # TORCH_CUDA_ARCH_LIST (by default all eleven PyTorch was built for): one is enough.
  TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCMAKE_PREFIX_PATH="$dep/usr;$dep/usr/lib/x86_64-linux-gnu/cmake;$dep/usr/share/cmake;$torch_prefix" \
    -DKVPOOL_WERROR=OFF -DKVPOOL_SERVICES=ON \
    -DKVPOOL_TEST_AREAS="tokenizer;engine;weights;cuda;integration" >"$OUT/build.log" 2>&1 ||
    { tail -n 40 "$OUT/build.log"; return 1; }
  # Every package must come from the carried prefix or PyTorch, not from the system.
  grep -E "^(gRPC_DIR|Protobuf_LIBRARY|Protobuf_PROTOC_EXECUTABLE|Torch_DIR|cppzmq_DIR|CMAKE_CUDA_COMPILER):" \
    build-gpu/CMakeCache.txt | sed 's/^/   /'
  grep -q "KVPOOL_HAVE_CUDA_TORCH" build-gpu/build.ninja ||
    echo "   note: PyTorch's LibTorch has no torch_cuda: the workers cannot attach to a CUDA pool"
}
phase "configure (services on, sm_90)" configure || exit 1

targets=(kvpool-manager kvpool-worker kvpool deployment_test engine_gpu_test kvpool_cuda_kernels_test
  kvpool_cuda_pool_test kvpool_cuda_gemv_test engine_test hf_reference_test tokenizer_test
  kvpool-cuda-attention-bench kvpool-engine-bench kvpool-export-hf)
build() {
  ninja -C build-gpu -j "$(nproc)" "${targets[@]}" >>"$OUT/build.log" 2>&1 ||
    { grep -E "error|Error" -A3 "$OUT/build.log" | head -n 60; return 1; }
  echo "   $(grep -c "warning:" "$OUT/build.log") compiler warnings (build.log)"
  # The worker links PyTorch's LibTorch and the carried protobuf side by side.
  ldd build-gpu/bin/kvpool-worker | grep -E "protobuf|grpc|torch_cuda|libc10" | sed 's/^/   /'
}
phase "build" build || exit 1
[ "${GPU_CHECK_BUILD_ONLY:-0}" = 1 ] && exit $status

B=build-gpu/bin
# run_test NAME COMMAND...: a gtest binary; its output to tests.log, failures shown.
run_test() {
  local name=$1 one="$W/test-$1.log"
  shift
  if "$@" >"$one" 2>&1; then
    tail -n 2 "$one" | sed 's/^/   /'
  else
    grep -E "FAILED|Failure|error|Which is|Expected|Actual" "$one" | tail -n 30 | sed 's/^/   /'
    tail -n 3 "$one" | sed 's/^/   /'
    cat "$one" >>"$OUT/tests.log"
    return 1
  fi
  cat "$one" >>"$OUT/tests.log"
}

gpt2_dir="$here/build-gpu/gpt2-random"
if [ "$DRY" != 1 ]; then
  phase "test: CUDA kernels vs float64" run_test kernels $B/kvpool_cuda_kernels_test
  phase "test: GEMV vs float64" run_test gemv $B/kvpool_cuda_gemv_test
  phase "test: CUDA IPC pool" run_test pool $B/kvpool_cuda_pool_test
  phase "test: tokenizer, engine, HF (CPU)" run_test cpu-engine \
    bash -c "$B/tokenizer_test && $B/engine_test && $B/hf_reference_test"
  hf_fixture() {
    $B/kvpool-export-hf --model gpt2 --out "$gpt2_dir" >>"$OUT/tests.log" &&
      "$PY" scripts/make-hf-fixtures.py --reference-dir "$gpt2_dir" >>"$OUT/tests.log" 2>&1
  }
  phase "gpt2 export + transformers fixture" hf_fixture
  KVPOOL_HF_GPT2_DIR="$gpt2_dir" phase "test: engine on the GPU vs CPU, HF" run_test engine-gpu \
    $B/engine_gpu_test
  grep "\[ hf \]" "$OUT/tests.log" | sed 's/^/   /'
fi

# The deployment: manager-hosted pool, two workers (fp32: the modes' tokens free of ties).
KVPOOL_TEST_POOL_BACKEND=$backend KVPOOL_TEST_MODEL=$model KVPOOL_TEST_KV_DTYPE=fp32 \
  phase "deployment: manager --backend $backend, 2 workers" run_test deployment $B/deployment_test

# Served: one node (manager + 1 worker), batch 1 and 32 concurrent.
served() {
  local dtype=fp16 up="$W/served-up"
  [ "$DRY" = 1 ] && dtype=fp32
  mkdir -p "$up"
  $B/kvpool up --workers 1 --model "$model" --backend "$backend" --kv-cache-dtype "$dtype" \
    --threads 4 >"$up/up.log" 2>"$up/up.err" &
  local up_pid=$! worker=""
  for _ in $(seq 1200); do
    grep -q '^ready' "$up/up.log" && break
    kill -0 $up_pid 2>/dev/null || { tail -n 20 "$up/up.err"; return 1; }
    sleep 0.1
  done
  worker="$(awk '$1 == "worker" {print $2; exit}' "$up/up.log")"
  [ -n "$worker" ] || { tail -n 20 "$up/up.err"; kill $up_pid; return 1; }
  local ok=0
  $B/kvpool loadgen --server "$worker" --concurrency 1 --requests 5 --prompt-tokens 200 \
    --max-tokens 64 --mode paged --json --quiet >"$W/served-c1.json" || ok=1
  $B/kvpool loadgen --server "$worker" --concurrency 32 --requests 64 --prompt-tokens 130 \
    --max-tokens 130 --mode paged --json --quiet >"$W/served-c32.json" || ok=1
  kill -TERM $up_pid
  wait $up_pid
  cat "$up/up.err" >>"$OUT/services.log"
  return $ok
}
phase "served: batch 1 and 32 concurrent" served

if [ "$DRY" != 1 ]; then
  engine_bench() {
    local ok=0
    $B/kvpool-cuda-attention-bench >"$W/attention-bench.txt" 2>&1 || ok=1
    $B/kvpool-engine-bench --model gpt2 --device cuda --dtype fp16 --no-cuda-graphs --quick \
      --json >"$W/engine-bench-cuda-fp16-eager.json" 2>>"$OUT/bench.log" || ok=1
    for dtype in fp16 fp32; do
      KVPOOL_CUDA_TIMING=1 $B/kvpool-engine-bench --model gpt2 --device cuda --dtype "$dtype" \
        --steps 200 --warmup 20 --json >"$W/engine-bench-cuda-$dtype.json" 2>>"$OUT/bench.log" || ok=1
    done
    return $ok
  }
  phase "engine bench (CUDA graphs, 200 steps)" engine_bench
  hf_bench() {
    local ok=0
    for dtype in fp16 fp32; do
      local serial=""
      [ "$dtype" = fp16 ] && serial="--serial-requests 32"
      "$PY" scripts/hf-baseline.py "$gpt2_dir" --device cuda --dtype "$dtype" $serial \
        >"$W/hf-baseline-cuda-$dtype.json" 2>>"$OUT/bench.log" || ok=1
    done
    return $ok
  }
  phase "transformers baseline" hf_bench
fi

kvpool_bench() {
  local args=(--quick --quiet --model "$model" --backend "$backend" --out "$W/bench-gpu")
  if [ "$DRY" = 1 ]; then
    args+=(--scenarios 'original,bandwidth_floor' --kv-cache-dtype fp32)
  else
    args+=(--kv-cache-dtype fp16 --baseline hf
      --scenarios 'original,context_sweep,prefix_sharing,bandwidth_floor,workloads')
  fi
  timeout 240 $B/kvpool bench "${args[@]}" >>"$OUT/bench.log" 2>&1 || return 1
  "$PY" scripts/plot-bench.py "$W/bench-gpu" >>"$OUT/bench.log" 2>&1 || true
}
phase "kvpool bench --quick --backend $backend" kvpool_bench

"$PY" - "$W" "$DRY" >"$OUT/table.txt" 2>&1 <<'PY'
import json, os, sys
w, dry = sys.argv[1], sys.argv[2] == "1"
def load(name):
    try:
        return json.load(open(os.path.join(w, name)))
    except Exception:
        return None
def row(name, value, target=""):
    print(f"{name:52}{value:>14}  {target}")
print()
print("measure" + " " * 45 + f"{'value':>14}  target")
e16, e32 = load("engine-bench-cuda-fp16.json"), load("engine-bench-cuda-fp32.json")
eager = load("engine-bench-cuda-fp16-eager.json")
if e16:
    d = e16["decode_ms_per_token"]
    row("gpt2 fp16 batch 1 paged decode (ms/token)", f"{d['paged']:.3f}", "<= 0.5 (beyond: 0.3)")
    row("  contiguous / none (ms/token)", f"{d['contiguous']:.3f} / {d['none']:.2f}")
    row("  paged / contiguous", f"{e16['paged_over_contiguous']:.3f}", "<= 1.05")
if eager:
    row("  paged without CUDA graphs (ms/token)", f"{eager['decode_ms_per_token']['paged']:.3f}")
if e32:
    row("gpt2 fp32 batch 1 paged decode (ms/token)", f"{e32['decode_ms_per_token']['paged']:.3f}")
c1, c32 = load("served-c1.json"), load("served-c32.json")
if c1:
    itl = c1["itl_p50_s"] * 1e3
    row("served batch 1, ITL p50 (ms/token)", f"{itl:.3f}")
    if e16:
        row("  served / in-process engine", f"{itl / e16['decode_ms_per_token']['paged']:.3f}", "<= 1.10")
if c32:
    row("served 32 concurrent 130+130, output tokens/s", f"{c32['tokens_per_s']:.0f}")
    row("  TTFT p50 (s), failed", f"{c32['ttft_p50_s']:.3f}, {c32['failed']}")
h16, h32 = load("hf-baseline-cuda-fp16.json"), load("hf-baseline-cuda-fp32.json")
if h16 and "serial_generate" in h16:
    s = h16["serial_generate"]["output_tokens_per_s"]
    row("transformers generate(), the 32 one after another", f"{s:.0f}")
    if c32:
        row("  kvpool served / transformers serial", f"{c32['tokens_per_s'] / s:.1f}x")
for name, h in (("fp16", h16), ("fp32", h32)):
    if h:
        row(f"transformers {name} use_cache=True / False (ms/token)",
            f"{h['use_cache_true']['decode_ms_per_token']:.2f} / {h['use_cache_false']['decode_ms_per_token']:.2f}")
if not dry and not (e16 and c1 and c32):
    print("missing results: see gpu-check.log and bench.log")
PY
exit $status
