#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, and runs
# `kvpool bench --quick`: it starts a local kvpool-manager (the shared KV pool in POSIX
# shared memory) and a kvpool-worker running GPT-2 124M with seeded random weights,
# reproduces the original experiment through them ("深度学习中的注意力机制是一种", 50 new
# tokens at temperature 0.7, in each KV mode: none, contiguous, paged) and goes past it
# (context sweep, memory efficiency, throughput vs concurrency, prefix sharing, cache
# size, the memory-bandwidth floor). The report lands in bench/report/ (report.md,
# report.json, CSVs, PNG plots). Extra arguments go to `kvpool bench` (try
# build/bin/kvpool bench --help; drop --quick with `build/bin/kvpool bench --out DIR`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/install-deps.sh"
"$here/scripts/build.sh"
exec "$here/build/bin/kvpool" bench --quick --out "$here/bench/report" "$@"
