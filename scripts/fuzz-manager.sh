#!/usr/bin/env bash
# Fuzzes the cache manager's request handlers with libFuzzer for SECONDS (default 60):
# builds build-fuzz/ with clang (+ ASan and UBSan) and runs kvpool-manager-fuzz with a
# corpus in build-fuzz/corpus. Installs clang and its fuzzer runtime if missing.
set -euo pipefail
seconds="${1:-60}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clang libclang-rt-dev
fi
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVPOOL_CUDA=OFF \
  -DKVPOOL_FUZZ=ON -DKVPOOL_WERROR=OFF -DKVPOOL_SANITIZE=address,undefined -DKVPOOL_TEST_AREAS=manager >/dev/null
ninja -C build-fuzz kvpool-manager-fuzz
mkdir -p build-fuzz/corpus
exec build-fuzz/bin/kvpool-manager-fuzz -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 build-fuzz/corpus
