# Sourced by the serving benchmarks: start_kvpool_up OUT_DIR ARGS... starts `kvpool up
# ARGS...` in the background (logs in OUT_DIR/up.log, up.err), waits until it is ready
# and sets `up_pid` and `worker` (the first worker's address). The caller stops it
# (kill -TERM "$up_pid"), e.g. from an EXIT trap.
start_kvpool_up() {
  local out=$1
  shift
  "$bin/kvpool" up "$@" >"$out/up.log" 2>"$out/up.err" &
  up_pid=$!
  for _ in $(seq 1200); do
    grep -q '^ready' "$out/up.log" && break
    kill -0 "$up_pid" 2>/dev/null || { cat "$out/up.err" >&2; exit 1; }
    sleep 0.1
  done
  grep -q '^ready' "$out/up.log" || { echo "kvpool up did not get ready" >&2; exit 1; }
  worker="$(awk '$1 == "worker" {print $2; exit}' "$out/up.log")"
}
