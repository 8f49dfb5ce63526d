#!/usr/bin/env bash
# Configures and builds kvpool into build/ (Release, Ninja; every executable in
# build/bin/). Extra arguments go to cmake's configure step.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >build-configure.log 2>&1 ||
  { cat build-configure.log; exit 1; }
rm -f build-configure.log
# Two jobs on two cores; LibTorch translation units need ~1 GB each.
ninja -C build -j "${KVPOOL_BUILD_JOBS:-$(nproc)}"
