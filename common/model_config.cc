// The one model list and config.json parsing: see model_config.h. Shapes only: nothing
// here loads weights or links LibTorch.
#include "common/model_config.h"

#include <nlohmann/json.hpp>

namespace kvpool {
namespace {

ModelConfig Gpt2Shape(std::string name, int64_t vocab, int64_t layers, int64_t hidden,
                      int64_t heads) {
  ModelConfig c;
  c.name = std::move(name);
  c.arch = Architecture::kGpt2;
  c.vocab_size = vocab;
  c.num_layers = layers;
  c.hidden_size = hidden;
  c.num_heads = heads;
  c.num_kv_heads = heads;
  c.head_dim = hidden / heads;
  c.intermediate_size = 4 * hidden;
  c.max_position = 1024;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  c.bos_token_id = vocab == 50257 ? 50256 : -1;
  c.eos_token_id = vocab == 50257 ? 50256 : -1;
  return c;
}

ModelConfig LlamaShape(std::string name, int64_t layers, int64_t hidden, int64_t heads,
                       int64_t kv_heads, int64_t intermediate, int64_t max_position) {
  ModelConfig c;
  c.name = std::move(name);
  c.arch = Architecture::kLlama;
  c.vocab_size = 32000;
  c.num_layers = layers;
  c.hidden_size = hidden;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.intermediate_size = intermediate;
  c.max_position = max_position;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = false;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  return c;
}

// The first of `keys` that holds an integer (or a list of them: its first), else fallback.
int64_t GetInt(const nlohmann::json& j, std::initializer_list<const char*> keys, int64_t fallback) {
  for (const char* k : keys) {
    if (j.contains(k) && j[k].is_number_integer()) return j[k].get<int64_t>();
    if (j.contains(k) && j[k].is_array() && !j[k].empty() && j[k][0].is_number_integer()) {
      return j[k][0].get<int64_t>();  // eos_token_id may be a list
    }
  }
  return fallback;
}

}  // namespace

int64_t ModelConfig::NumParameters() const {
  const int64_t q = num_heads * head_dim, kv = num_kv_heads * head_dim;
  int64_t per_layer = hidden_size * (q + 2 * kv) + q * hidden_size;
  if (arch == Architecture::kGpt2) {
    per_layer += (q + 2 * kv) + hidden_size;  // qkv, o biases
    per_layer += 2 * hidden_size * intermediate_size + intermediate_size + hidden_size;
    per_layer += 4 * hidden_size;  // two LayerNorms
  } else {
    per_layer += 3 * hidden_size * intermediate_size + 2 * hidden_size;
  }
  int64_t total = num_layers * per_layer + vocab_size * hidden_size;
  total += arch == Architecture::kGpt2 ? max_position * hidden_size + 2 * hidden_size : hidden_size;
  if (!tie_word_embeddings) total += vocab_size * hidden_size;
  return total;
}

Status ModelConfig::Validate() const {
  auto bad = [&](const std::string& what) {
    return InvalidArgument("model config '" + name + "': " + what);
  };
  if (vocab_size <= 0 || num_layers <= 0 || hidden_size <= 0 || num_heads <= 0 ||
      num_kv_heads <= 0 || head_dim <= 0 || intermediate_size <= 0 || max_position <= 0) {
    return bad("every size must be positive");
  }
  if (num_heads % num_kv_heads != 0) {
    return bad("num_heads (" + std::to_string(num_heads) +
               ") must be a multiple of num_kv_heads (" + std::to_string(num_kv_heads) + ")");
  }
  if (arch == Architecture::kGpt2 && num_heads * head_dim != hidden_size) {
    return bad("GPT-2 needs num_heads * head_dim == hidden_size");
  }
  if (arch == Architecture::kLlama && head_dim % 2 != 0) return bad("RoPE needs an even head_dim");
  return Status::Ok();
}

std::vector<std::string> BuiltinModelNames() {
  return {"gpt2",
          "gpt2-medium",
          "gpt2-chinese-cluecorpussmall",
          "llama-gqa-small",
          "tiny-gpt2",
          "tiny-llama",
          "gpt3-175b",
          "llama-7b",
          "llama-13b",
          "llama-70b"};
}

StatusOr<ModelConfig> BuiltinModelConfig(const std::string& name) {
  if (name == "gpt2") return Gpt2Shape(name, 50257, 12, 768, 12);
  if (name == "gpt2-medium") return Gpt2Shape(name, 50257, 24, 1024, 16);
  if (name == "gpt2-chinese-cluecorpussmall") {
    ModelConfig c = Gpt2Shape(name, 21128, 12, 768, 12);
    c.bos_token_id = 101;  // [CLS]
    c.eos_token_id = 102;  // [SEP]
    return c;
  }
  if (name == "tiny-gpt2") {
    ModelConfig c = Gpt2Shape(name, 50257, 2, 64, 4);
    c.max_position = 512;
    return c;
  }
  if (name == "llama-gqa-small") return LlamaShape(name, 12, 768, 12, 4, 2048, 2048);
  if (name == "tiny-llama") return LlamaShape(name, 2, 64, 4, 2, 128, 512);
  ModelConfig big;
  if (name == "gpt3-175b") {
    big = Gpt2Shape(name, 50257, 96, 12288, 96);  // dense attention, head_dim 128
    big.max_position = 2048;
  } else if (name == "llama-7b") {
    big = LlamaShape(name, 32, 4096, 32, 32, 11008, 4096);
  } else if (name == "llama-13b") {
    big = LlamaShape(name, 40, 5120, 40, 40, 13824, 4096);
  } else if (name == "llama-70b") {
    big = LlamaShape(name, 80, 8192, 64, 8, 28672, 4096);
  } else {
    std::string known;
    for (const auto& n : BuiltinModelNames()) known += (known.empty() ? "" : ", ") + n;
    return InvalidArgument("unknown model '" + name + "'; built-in models: " + known +
                           ", or a Hugging Face folder with config.json");
  }
  big.runnable = false;
  return big;
}

StatusOr<ModelConfig> ModelConfigFromHfJson(const std::string& json_text, const std::string& name) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgument("config.json of '" + name + "' is not a JSON object");
  }
  auto get_int = [&](std::initializer_list<const char*> keys, int64_t fallback) {
    return GetInt(j, keys, fallback);
  };
  auto get_double = [&](const char* key, double fallback) {
    return j.contains(key) && j[key].is_number() ? j[key].get<double>() : fallback;
  };
  const std::string model_type =
      j.contains("model_type") && j["model_type"].is_string() ? j["model_type"].get<std::string>()
                                                              : std::string();
  ModelConfig c;
  c.name = name;
  if (model_type == "gpt2") {
    c.arch = Architecture::kGpt2;
    c.hidden_size = get_int({"n_embd", "hidden_size"}, 0);
    c.num_layers = get_int({"n_layer", "num_hidden_layers"}, 0);
    c.num_heads = get_int({"n_head", "num_attention_heads"}, 0);
    c.num_kv_heads = c.num_heads;
    c.head_dim = c.num_heads > 0 ? c.hidden_size / c.num_heads : 0;
    c.intermediate_size = get_int({"n_inner"}, 4 * c.hidden_size);
    c.max_position = get_int({"n_positions", "n_ctx", "max_position_embeddings"}, 0);
    c.norm_eps = get_double("layer_norm_epsilon", 1e-5);
    c.tie_word_embeddings = j.value("tie_word_embeddings", true);
    const std::string act = j.value("activation_function", std::string("gelu_new"));
    if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast") {
      c.gelu_tanh = true;
    } else if (act == "gelu") {
      c.gelu_tanh = false;
    } else {
      return InvalidArgument("config.json of '" + name + "': activation_function '" + act +
                             "' is not supported (gelu_new, gelu_pytorch_tanh, gelu)");
    }
  } else if (model_type == "llama") {
    c.arch = Architecture::kLlama;
    c.hidden_size = get_int({"hidden_size"}, 0);
    c.num_layers = get_int({"num_hidden_layers"}, 0);
    c.num_heads = get_int({"num_attention_heads"}, 0);
    c.num_kv_heads = get_int({"num_key_value_heads"}, c.num_heads);
    c.head_dim = get_int({"head_dim"}, c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
    c.intermediate_size = get_int({"intermediate_size"}, 0);
    c.max_position = get_int({"max_position_embeddings"}, 2048);
    c.norm_eps = get_double("rms_norm_eps", 1e-6);
    c.rope_theta = get_double("rope_theta", 10000.0);
    c.tie_word_embeddings = j.value("tie_word_embeddings", false);
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      return InvalidArgument("config.json of '" + name +
                             "': rope_scaling is not supported (plain RoPE only)");
    }
    if (j.value("attention_bias", false) || j.value("mlp_bias", false)) {
      return InvalidArgument("config.json of '" + name + "': attention/mlp biases not supported");
    }
    const std::string act = j.value("hidden_act", std::string("silu"));
    if (act != "silu") {
      return InvalidArgument("config.json of '" + name + "': hidden_act '" + act +
                             "' is not supported (silu)");
    }
  } else {
    return InvalidArgument("config.json of '" + name + "': model_type '" + model_type +
                           "' is not supported (gpt2, llama)");
  }
  c.vocab_size = get_int({"vocab_size"}, 0);
  c.bos_token_id = get_int({"bos_token_id"}, -1);
  c.eos_token_id = get_int({"eos_token_id"}, -1);
  KVPOOL_RETURN_IF_ERROR(c.Validate());
  return c;
}

StatusOr<ModelConfig> KvShapeFromHfJson(const std::string& json_text, const std::string& name) {
  StatusOr<ModelConfig> full = ModelConfigFromHfJson(json_text, name);
  if (full.ok()) return full;
  const nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return full.status();
  ModelConfig c;
  c.name = name;
  c.arch =
      j.contains("model_type") && j["model_type"] == "gpt2" ? Architecture::kGpt2
                                                             : Architecture::kLlama;
  c.runnable = false;
  c.vocab_size = GetInt(j, {"vocab_size"}, 0);
  c.num_layers = GetInt(j, {"num_hidden_layers", "n_layer"}, 0);
  c.hidden_size = GetInt(j, {"hidden_size", "n_embd"}, 0);
  c.num_heads = GetInt(j, {"num_attention_heads", "n_head"}, 0);
  c.num_kv_heads = GetInt(j, {"num_key_value_heads"}, c.num_heads);
  c.head_dim = GetInt(j, {"head_dim"}, c.num_heads > 0 ? c.hidden_size / c.num_heads : 0);
  c.max_position = GetInt(j, {"max_position_embeddings", "n_positions", "n_ctx"}, 0);
  if (c.num_layers <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.head_dim <= 0) {
    return InvalidArgument("config.json of '" + name +
                           "' has no attention shape: it needs num_hidden_layers, "
                           "num_attention_heads and hidden_size or head_dim (GPT-2: n_layer, "
                           "n_head, n_embd)");
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return InvalidArgument("config.json of '" + name + "': num_attention_heads (" +
                           std::to_string(c.num_heads) + ") must be a multiple of " +
                           "num_key_value_heads (" + std::to_string(c.num_kv_heads) + ")");
  }
  return c;
}

}  // namespace kvpool
