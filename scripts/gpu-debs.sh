#!/usr/bin/env bash
# Prepares .gpu-debs/ (ignored by git): the Debian 12 packages a GPU machine lacks for
# building kvpool with its services (gRPC 1.51 + protobuf 3.21 and what they link,
# Boost.Asio/Beast, OpenSSL's headers, ZeroMQ + cppzmq, msgpack-c++, CLI11,
# nlohmann-json, GoogleTest/GMock, SentencePiece). scripts/gpu-check.sh unpacks them
# into /opt/dep (never over /) and builds against them with PyTorch's LibTorch; the
# device tool carries the folder (name it in `carry`). Run it here, once per change of
# this list; it needs apt's package lists (scripts/install-deps.sh ran apt-get update).
#
#   scripts/gpu-debs.sh            # download into .gpu-debs/ (about 40 MB)
#   scripts/gpu-debs.sh --check    # also unpack into a scratch prefix and list what
#                                  # the build would still take from outside it
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$here/.gpu-debs"

# Development packages and every shared library they bring that a CUDA + PyTorch image
# (Ubuntu 24.04 based: glibc, libstdc++, zlib, libssl3t64) may not have.
packages=(
  # gRPC and protobuf, with their compilers and the libraries they link
  libgrpc++-dev libgrpc++1.51 libgrpc-dev libgrpc29 protobuf-compiler-grpc
  libprotobuf-dev libprotobuf32 libprotobuf-lite32 libprotoc32 protobuf-compiler
  libabsl-dev libabsl20220623 libc-ares-dev libc-ares2 libre2-dev libre2-9
  libssl-dev libssl3 zlib1g-dev
  # the services' HTTP ports (Boost.Asio + Beast, header-only but for boost_system)
  libboost1.74-dev libboost-system1.74-dev libboost-system1.74.0
  # KV-cache events (ZeroMQ PUB/ROUTER, msgpack)
  libzmq3-dev libzmq5 cppzmq-dev libsodium23 libpgm-5.3-0 libnorm1 libbsd0 libmd0
  libmsgpack-cxx-dev
  # command lines, JSON, tests
  libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev googletest
  # Llama's tokenizer
  libsentencepiece-dev libsentencepiece0
)

mkdir -p "$dir"
cd "$dir"
missing=()
for p in "${packages[@]}"; do
  compgen -G "${p}_*.deb" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get download "${missing[@]}"
fi
echo "$(ls ./*.deb | wc -l) packages, $(du -sh . | cut -f1) in $dir"

if [ "${1:-}" = "--check" ]; then
  prefix="$(mktemp -d)"
  for f in ./*.deb; do dpkg -x "$f" "$prefix"; done
  for tool in protoc grpc_cpp_plugin; do
    LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu" "$prefix/usr/bin/$tool" --version \
      >/dev/null 2>&1 </dev/null || [ "$tool" = grpc_cpp_plugin ] ||
      { echo "unpacked $tool does not run"; exit 1; }
  done
  # What the build's find_package calls read (cppzmq finds libzmq by its header and
  # library under CMAKE_PREFIX_PATH).
  for want in cmake/grpc/gRPCConfig.cmake cmake/absl/abslConfig.cmake \
    cmake/Boost-1.74.0/BoostConfig.cmake cmake/boost_system-1.74.0/boost_system-config.cmake \
    cmake/cppzmq/cppzmqConfig.cmake include/zmq.h x86_64-linux-gnu/libzmq.so \
    cmake/msgpackc-cxx/msgpack-config.cmake cmake/GTest/GTestConfig.cmake \
    cmake/nlohmann_json/nlohmann_jsonConfig.cmake cmake/CLI11/CLI11Config.cmake \
    include/google/protobuf/message.h x86_64-linux-gnu/libprotobuf.so \
    x86_64-linux-gnu/libsentencepiece.so include/openssl/ssl.h; do
    found=$(find "$prefix/usr" -path "*/$want" | head -n 1)
    [ -n "$found" ] || { echo "missing from the packages: */$want"; exit 1; }
  done
  echo "unpacked into $prefix: protoc runs, every CMake package the build finds is there"
fi
