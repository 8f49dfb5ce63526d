#!/usr/bin/env bash
# Installs everything kvpool needs on Debian 12 (python3-matplotlib only draws the
# bench plots; yamllint and python3-yaml check k8s/; the openssl CLI makes the TLS
# tests' certificates; python3-zmq and python3-msgpack are the KV-event test's
# subscriber) and fetches GPT-2's BPE ranks.
# Idempotent: re-running it is cheap once everything is present.
# KVPOOL_DEPS_DATA_ONLY=1 fetches the data only (k8s/images/Dockerfile.cuda, whose
# packages come from Ubuntu and PyTorch).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

PKGS="build-essential cmake ninja-build ccache pkg-config git python3 python3-pip \
libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
libtorch-dev libopenblas0-openmp libboost-dev libboost-system-dev libssl-dev \
libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev \
libsentencepiece-dev libspdlog-dev curl ca-certificates python3-matplotlib openssl \
libjs-chart.js chromium chromium-driver python3-selenium yamllint python3-yaml \
libzmq3-dev cppzmq-dev libmsgpack-cxx-dev python3-zmq python3-msgpack"
if [ "${KVPOOL_DEPS_DATA_ONLY:-0}" = 1 ]; then PKGS=""; fi

missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "install-deps: installing:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# LibTorch must pick OpenBLAS (OpenMP build), not the single-threaded reference BLAS.
for alt in libblas.so.3-x86_64-linux-gnu liblapack.so.3-x86_64-linux-gnu; do
  target=$(update-alternatives --list "$alt" 2>/dev/null | grep openblas-openmp | head -n1 || true)
  if [ -n "$target" ]; then $SUDO update-alternatives --set "$alt" "$target" >/dev/null; fi
done

# GPT-2's byte-level BPE ranks (the ids of GPT-2's real tokenizer), shipped by openai-whisper.
WHISPER_VERSION=20240930
TIKTOKEN_SHA256=306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930
dest="$here/bench/data/gpt2.tiktoken"
if [ ! -f "$dest" ] || [ "$(sha256sum "$dest" | cut -d' ' -f1)" != "$TIKTOKEN_SHA256" ]; then
  tmp=$(mktemp -d)
  # The sdist's setup.py still imports pkg_resources, which setuptools >= 81 dropped.
  echo "setuptools<70" > "$tmp/constraints.txt"
  PIP_CONSTRAINT="$tmp/constraints.txt" python3 -m pip download -q --no-deps -d "$tmp" "openai-whisper==$WHISPER_VERSION"
  archive=$(ls "$tmp"/openai[-_]whisper-*)
  mkdir -p "$here/bench/data"
  case "$archive" in
    *.whl) python3 -c "import sys,zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read('whisper/assets/gpt2.tiktoken'))" "$archive" > "$dest.tmp" ;;
    *.tar.gz) tar -xzf "$archive" -C "$tmp" && cp "$(find "$tmp" -path '*whisper/assets/gpt2.tiktoken' | head -n1)" "$dest.tmp" ;;
  esac
  got=$(sha256sum "$dest.tmp" | cut -d' ' -f1)
  if [ "$got" != "$TIKTOKEN_SHA256" ]; then
    echo "install-deps: gpt2.tiktoken checksum mismatch: got $got, want $TIKTOKEN_SHA256" >&2
    rm -f "$dest.tmp"; exit 1
  fi
  mv "$dest.tmp" "$dest"
  rm -rf "$tmp"
fi
echo "install-deps: ok"
