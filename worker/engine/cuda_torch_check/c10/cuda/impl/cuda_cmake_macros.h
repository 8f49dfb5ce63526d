// The one header a CUDA build of LibTorch generates at configure time that Debian's
// CPU-only LibTorch does not ship (its other CUDA headers are there). Supplied only
// to compile the CUDA model runner here as a check (worker/CMakeLists.txt); a real
// CUDA LibTorch brings its own, and this folder is then not on the include path.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
