// Skinny matrix products for decode: y[m] = epilogue(W x[m] + b) for m <= 8 rows,
// W row-major [n, k]. cuBLAS picks GEMM tiles for M = 1 that put a handful of CTAs
// on a 3 MB weight matrix and run at a fraction of the chip's bandwidth; here one warp
// owns one output row, reads it with 16-byte loads and keeps all m rows of x in
// registers, so every SM streams weights. Epilogue: + bias, optional GELU (tanh form,
// GPT-2's gelu_new), optional + residual. Raw device pointers, any stream, capturable.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/kv_layout.h"
#include "common/status.h"

namespace kvpool::gpu {

constexpr int32_t kGemvMaxRows = 8;

struct GemvParams {
  KvDtype dtype = KvDtype::kFloat16;  // of w, x, bias, residual and y alike
  const void* w = nullptr;            // [n, k], 16-byte aligned, rows dense
  const void* x = nullptr;            // [m, k], 16-byte aligned
  const void* bias = nullptr;         // [n] or null
  const void* residual = nullptr;     // [m, n] or null; may not alias y
  void* y = nullptr;                  // [m, n]
  int32_t m = 0;                      // 1..kGemvMaxRows
  int32_t n = 0;
  int32_t k = 0;           // a multiple of 16 bytes of the dtype
  bool gelu_tanh = false;  // applied after the bias, before the residual
};

// INVALID_ARGUMENT naming the field for shapes or pointers it does not take.
Status Gemv(const GemvParams& params, cudaStream_t stream);

}  // namespace kvpool::gpu
