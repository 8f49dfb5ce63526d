// Model shapes by name: the built-in configurations (GPT-2 sizes, the Chinese GPT-2
// of the original experiment, a small GQA Llama that runs on CPU, and GPT-3 / Llama
// shapes used only for memory arithmetic), and parsing of a Hugging Face config.json.
// The one model list: the manager sizes its pool from it (`--model NAME`), the worker
// builds its model from it, `kvpool calc` and the dashboard's calculator read it. It
// never links LibTorch or gRPC.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace kvpool {

enum class Architecture { kGpt2, kLlama };

struct ModelConfig {
  std::string name;
  Architecture arch = Architecture::kGpt2;
  int64_t vocab_size = 0;
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // == num_heads for MHA, 1 for MQA, in between for GQA
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;  // MLP width (4 * hidden for GPT-2)
  int64_t max_position = 0;       // the context length
  double norm_eps = 1e-5;         // LayerNorm eps (GPT-2) or RMSNorm eps (Llama)
  double rope_theta = 10000.0;    // Llama only
  bool gelu_tanh = true;          // GPT-2: "gelu_new" (tanh approximation) vs exact "gelu"
  bool tie_word_embeddings = true;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  // False for shapes too large to run here (llama-7b ...): only for calculations.
  bool runnable = true;

  int64_t group_size() const { return num_heads / num_kv_heads; }
  // Parameters of the model (embeddings included, the tied head counted once).
  int64_t NumParameters() const;
  // fp32 K+V bytes per token across every layer.
  int64_t KvBytesPerToken(int64_t dtype_bytes = 4) const {
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes;
  }
  Status Validate() const;
};

// Built-in names: gpt2, gpt2-medium, gpt2-chinese-cluecorpussmall, llama-gqa-small,
// tiny-gpt2, tiny-llama, and the calculation-only gpt3-175b, llama-7b, llama-13b,
// llama-70b.
StatusOr<ModelConfig> BuiltinModelConfig(const std::string& name);
std::vector<std::string> BuiltinModelNames();

// Parses a Hugging Face config.json the engine can run (model_type gpt2 or llama).
StatusOr<ModelConfig> ModelConfigFromHfJson(const std::string& json_text, const std::string& name);

// The attention shape (layers, query and KV heads, head size, context) of any decoder
// config.json with GPT-2 or Llama-style keys (Mistral, Qwen2, a Llama with rope_scaling
// ...), for memory arithmetic: ModelConfigFromHfJson's config where it accepts the
// file, else a config with runnable == false and only those shape fields set.
StatusOr<ModelConfig> KvShapeFromHfJson(const std::string& json_text, const std::string& name);

}  // namespace kvpool
