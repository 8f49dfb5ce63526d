#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test with ctest (GPU tests skip on
# machines without a CUDA device; scripts/gpu-check.sh runs them on one), then the
# manager's and the client's tests under ASan + UBSan.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/install-deps.sh"
"$here/scripts/build.sh"
(cd "$here/build" && ctest --output-on-failure -j "$(nproc)" --timeout 600)
# The manager and client tests again under ASan + UBSan (build-asan/).
"$here/scripts/sanitize.sh" address
