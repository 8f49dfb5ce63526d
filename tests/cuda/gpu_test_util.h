// Shared by the CUDA tests: skipping without a device, host-side fp16/bf16 rounding,
// pools filled with random values, and comparison reports that name the first and
// the worst mismatching element (the tests run on a GPU machine in one shot).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/kv_layout.h"

namespace kvpool::gpu::testing {

inline bool HaveCudaDevice() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define KVPOOL_SKIP_WITHOUT_GPU() \
  if (!::kvpool::gpu::testing::HaveCudaDevice()) GTEST_SKIP() << "no CUDA device"

#define KVPOOL_CUDA_ASSERT(call)                                                \
  do {                                                                          \
    const cudaError_t _e = (call);                                              \
    ASSERT_EQ(_e, cudaSuccess) << #call << ": " << cudaGetErrorName(_e) << " (" \
                               << cudaGetErrorString(_e) << ")";                \
  } while (0)

// Host buffers of a pool dtype: raw bytes plus the float value each element holds.
class HostTensor {
 public:
  HostTensor(KvDtype dtype, size_t elems)
      : dtype_(dtype), bytes_(elems * KvDtypeBytes(dtype)), values_(elems, 0.0f) {}

  // Stores `x` rounded to the dtype; returns the rounded value.
  float Set(size_t i, float x) {
    switch (dtype_) {
      case KvDtype::kFloat32:
        std::memcpy(&bytes_[i * 4], &x, 4);
        break;
      case KvDtype::kFloat16: {
        const __half h = __float2half_rn(x);
        std::memcpy(&bytes_[i * 2], &h, 2);
        x = __half2float(h);
        break;
      }
      case KvDtype::kBFloat16: {
        const __nv_bfloat16 h = __float2bfloat16_rn(x);
        std::memcpy(&bytes_[i * 2], &h, 2);
        x = __bfloat162float(h);
        break;
      }
      case KvDtype::kInt8:
      case KvDtype::kFp8E4m3:
        std::abort();  // the CUDA kernels read fp32, fp16 and bf16 pools only
    }
    values_[i] = x;
    return x;
  }
  // Re-reads the values from bytes_ (after a download).
  void DecodeBytes() {
    for (size_t i = 0; i < values_.size(); ++i) {
      switch (dtype_) {
        case KvDtype::kFloat32:
          std::memcpy(&values_[i], &bytes_[i * 4], 4);
          break;
        case KvDtype::kFloat16: {
          __half h;
          std::memcpy(&h, &bytes_[i * 2], 2);
          values_[i] = __half2float(h);
          break;
        }
        case KvDtype::kBFloat16: {
          __nv_bfloat16 h;
          std::memcpy(&h, &bytes_[i * 2], 2);
          values_[i] = __bfloat162float(h);
          break;
        }
        case KvDtype::kInt8:
        case KvDtype::kFp8E4m3:
          std::abort();  // not a CUDA pool dtype
      }
    }
  }
  void FillUniform(std::mt19937_64& rng, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    for (size_t i = 0; i < values_.size(); ++i) Set(i, dist(rng));
  }

  size_t elems() const { return values_.size(); }
  size_t byte_size() const { return bytes_.size(); }
  uint8_t* bytes() { return bytes_.data(); }
  const std::vector<float>& values() const { return values_; }
  float value(size_t i) const { return values_[i]; }

 private:
  KvDtype dtype_;
  std::vector<uint8_t> bytes_;
  std::vector<float> values_;
};

// max|out - ref| / max|ref| over all elements, plus the first non-finite and the worst
// element; `index_name(i)` turns a flat index into a readable position.
struct Comparison {
  double rel_error = 0.0;
  std::string report;
  bool all_finite = true;
};

template <typename IndexName>
Comparison Compare(const std::vector<float>& out, const std::vector<double>& ref,
                   IndexName index_name) {
  Comparison c;
  double max_ref = 0.0, max_diff = 0.0;
  size_t worst = 0;
  std::ostringstream report;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) {
      if (c.all_finite) {
        report << "first non-finite output (unwritten or NaN) at " << index_name(i) << ": got "
               << out[i] << ", reference " << ref[i] << "\n";
      }
      c.all_finite = false;
      continue;
    }
    max_ref = std::max(max_ref, std::abs(ref[i]));
    const double diff = std::abs(double(out[i]) - ref[i]);
    if (diff > max_diff) {
      max_diff = diff;
      worst = i;
    }
  }
  c.rel_error = max_ref > 0 ? max_diff / max_ref : max_diff;
  report << "max|out-ref| = " << max_diff << " at " << index_name(worst) << " (got " << out[worst]
         << ", reference " << ref[worst] << "), max|ref| = " << max_ref
         << ", relative error = " << c.rel_error;
  c.report = report.str();
  return c;
}

inline double ToleranceFor(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFloat32:
      return 1e-5;
    case KvDtype::kFloat16:
      return 1e-3;
    case KvDtype::kBFloat16:
      return 1e-2;
    case KvDtype::kInt8:
    case KvDtype::kFp8E4m3:
      break;  // not a CUDA pool dtype
  }
  return 0;
}

}  // namespace kvpool::gpu::testing
