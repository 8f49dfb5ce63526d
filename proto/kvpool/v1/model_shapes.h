// The KV-cache shape (layers, K/V heads, head size) of each built-in model name: what
// the manager needs to size a pool for `--model NAME`, and what a worker's model must
// match to attach. Part of the contract between the processes; the engine's full
// configs (worker/engine/model_config.cc) are checked against this table by a test.
#pragma once

#include <cstdint>
#include <string_view>

namespace kvpool {

struct KvShape {
  std::string_view model;
  int32_t num_layers, num_kv_heads, head_dim;
};

inline constexpr KvShape kBuiltinKvShapes[] = {
    {"gpt2", 12, 12, 64},
    {"gpt2-medium", 24, 16, 64},
    {"gpt2-chinese-cluecorpussmall", 12, 12, 64},
    {"llama-gqa-small", 12, 4, 64},
    {"tiny-gpt2", 2, 4, 16},
    {"tiny-llama", 2, 2, 16},
};

// Published architectures' attention shapes, for memory arithmetic only (the
// dashboard's calculator; `kvpool calc` knows the same names through the worker's
// configs, and a test keeps the two equal): GPT-2, GPT-3 and Llama families, MHA and
// GQA.
struct ReferenceShape {
  std::string_view model;
  int32_t num_layers, num_heads, num_kv_heads, head_dim, max_position;
};

inline constexpr ReferenceShape kReferenceShapes[] = {
    {"gpt2", 12, 12, 12, 64, 1024},         {"gpt2-medium", 24, 16, 16, 64, 1024},
    {"gpt3-175b", 96, 96, 96, 128, 2048},   {"llama-7b", 32, 32, 32, 128, 4096},
    {"llama-13b", 40, 40, 40, 128, 4096},   {"llama-70b", 80, 64, 8, 128, 4096},
};

// Null when `model` is not a runnable built-in name.
inline const KvShape* FindKvShape(std::string_view model) {
  for (const KvShape& s : kBuiltinKvShapes) {
    if (s.model == model) return &s;
  }
  return nullptr;
}

}  // namespace kvpool
