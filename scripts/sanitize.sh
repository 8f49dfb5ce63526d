#!/usr/bin/env bash
# Builds and runs the tests of the parts without LibTorch (the cache manager, the client
# SDK and CLI) under sanitizers, in their own build dir:
#   scripts/sanitize.sh address   # ASan + UBSan (CI runs this): build-asan/
#   scripts/sanitize.sh thread    # TSan: build-tsan/
set -euo pipefail
mode="${1:-address}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
case "$mode" in
  address) dir=build-asan; flags="address,undefined"
           export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ;;
  thread)  dir=build-tsan; flags="thread"
           export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$here/tests/manager/tsan.supp" ;;
  *) echo "usage: $0 address|thread" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVPOOL_CUDA=OFF \
  -DKVPOOL_SANITIZE="$flags" -DKVPOOL_TEST_AREAS='manager;client' >"$dir.configure.log" 2>&1 ||
  { cat "$dir.configure.log"; exit 1; }
rm -f "$dir.configure.log"
ninja -C "$dir" -j "$(nproc)" kvpool-manager manager_core_test manager_core_property_test \
  manager_service_test kvpool-manager-test-client kvpool client_unit_test client_fake_worker_test \
  client_process_test
cd "$dir"
ctest -L "manager|client" --output-on-failure -j "$(nproc)" --timeout 600
