// Engine weights -> Hugging Face folder; see hf_writer.h.
#include "weights/hf_writer.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "weights/safetensors.h"
#include "weights/safetensors_aten.h"

namespace kvpool {
namespace {

namespace fs = std::filesystem;

// Tensors in HF naming, converted and kept alive until written.
class HfTensorList {
 public:
  explicit HfTensorList(at::ScalarType dtype) : dtype_(dtype) {}
  void Add(std::string name, const at::Tensor& t) {
    names_.push_back(std::move(name));
    tensors_.push_back(t.detach().to(at::kCPU, dtype_).contiguous());
  }
  // HF Conv1D stores [in, out].
  void AddConv1D(std::string name, const at::Tensor& t) { Add(std::move(name), t.t()); }

  Status Write(const std::string& path) const {
    std::vector<NamedBuffer> buffers;
    buffers.reserve(tensors_.size());
    for (size_t i = 0; i < tensors_.size(); ++i) {
      KVPOOL_ASSIGN_OR_RETURN(NamedBuffer b, BufferFromTensor(names_[i], tensors_[i]));
      buffers.push_back(std::move(b));
    }
    return WriteSafetensors(path, buffers, {{"format", "pt"}});
  }

 private:
  at::ScalarType dtype_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> tensors_;
};

const char* TorchDtypeName(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return "float32";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    default:
      return nullptr;
  }
}

nlohmann::json Gpt2Config(const ModelConfig& c) {
  return {{"architectures", {"GPT2LMHeadModel"}},
          {"model_type", "gpt2"},
          {"vocab_size", c.vocab_size},
          {"n_positions", c.max_position},
          {"n_ctx", c.max_position},
          {"n_embd", c.hidden_size},
          {"n_layer", c.num_layers},
          {"n_head", c.num_heads},
          {"n_inner", c.intermediate_size},
          {"layer_norm_epsilon", c.norm_eps},
          {"activation_function", c.gelu_tanh ? "gelu_new" : "gelu"},
          {"resid_pdrop", 0.0},
          {"embd_pdrop", 0.0},
          {"attn_pdrop", 0.0},
          {"scale_attn_weights", true},
          {"use_cache", true}};
}

nlohmann::json LlamaConfig(const ModelConfig& c) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"num_hidden_layers", c.num_layers},
          {"num_attention_heads", c.num_heads},
          {"num_key_value_heads", c.num_kv_heads},
          {"head_dim", c.head_dim},
          {"max_position_embeddings", c.max_position},
          {"rms_norm_eps", c.norm_eps},
          {"rope_theta", c.rope_theta},
          {"hidden_act", "silu"},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"attention_dropout", 0.0},
          {"pretraining_tp", 1},
          {"use_cache", true}};
}

void AddGpt2(const ModelConfig& c, const ModelWeights& w, HfTensorList& out) {
  out.Add("transformer.wte.weight", w.token_embedding);
  out.Add("transformer.wpe.weight", w.position_embedding);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = "transformer.h." + std::to_string(i) + ".";
    out.Add(p + "ln_1.weight", l.attn_norm_w);
    out.Add(p + "ln_1.bias", l.attn_norm_b);
    out.AddConv1D(p + "attn.c_attn.weight", l.qkv_w);
    out.Add(p + "attn.c_attn.bias", l.qkv_b);
    out.AddConv1D(p + "attn.c_proj.weight", l.o_w);
    out.Add(p + "attn.c_proj.bias", l.o_b);
    out.Add(p + "ln_2.weight", l.mlp_norm_w);
    out.Add(p + "ln_2.bias", l.mlp_norm_b);
    out.AddConv1D(p + "mlp.c_fc.weight", l.up_w);
    out.Add(p + "mlp.c_fc.bias", l.up_b);
    out.AddConv1D(p + "mlp.c_proj.weight", l.down_w);
    out.Add(p + "mlp.c_proj.bias", l.down_b);
  }
  out.Add("transformer.ln_f.weight", w.final_norm_w);
  out.Add("transformer.ln_f.bias", w.final_norm_b);
  if (!c.tie_word_embeddings) out.Add("lm_head.weight", w.lm_head);
}

void AddLlama(const ModelConfig& c, const ModelWeights& w, HfTensorList& out) {
  const int64_t q_rows = c.num_heads * c.head_dim;
  const int64_t kv_rows = c.num_kv_heads * c.head_dim;
  out.Add("model.embed_tokens.weight", w.token_embedding);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.Add(p + "input_layernorm.weight", l.attn_norm_w);
    out.Add(p + "self_attn.q_proj.weight", l.qkv_w.narrow(0, 0, q_rows));
    out.Add(p + "self_attn.k_proj.weight", l.qkv_w.narrow(0, q_rows, kv_rows));
    out.Add(p + "self_attn.v_proj.weight", l.qkv_w.narrow(0, q_rows + kv_rows, kv_rows));
    out.Add(p + "self_attn.o_proj.weight", l.o_w);
    out.Add(p + "post_attention_layernorm.weight", l.mlp_norm_w);
    out.Add(p + "mlp.gate_proj.weight", l.up_w.narrow(0, 0, c.intermediate_size));
    out.Add(p + "mlp.up_proj.weight", l.up_w.narrow(0, c.intermediate_size, c.intermediate_size));
    out.Add(p + "mlp.down_proj.weight", l.down_w);
  }
  out.Add("model.norm.weight", w.final_norm_w);
  if (!c.tie_word_embeddings) out.Add("lm_head.weight", w.lm_head);
}

}  // namespace

Status SaveHfFolder(const std::string& dir, const ModelConfig& config, const ModelWeights& weights,
                    at::ScalarType dtype) {
  const char* torch_dtype = TorchDtypeName(dtype);
  if (torch_dtype == nullptr) {
    return InvalidArgument(std::string("SaveHfFolder: dtype ") + c10::toString(dtype) +
                           " is not float32, float16 or bfloat16");
  }
  KVPOOL_RETURN_IF_ERROR(weights.Validate(config));
  const bool gpt2 = config.arch == Architecture::kGpt2;
  if (gpt2 && (config.num_kv_heads != config.num_heads ||
               config.num_heads * config.head_dim != config.hidden_size)) {
    return InvalidArgument("SaveHfFolder: config '" + config.name +
                           "' is not expressible as HF GPT-2 (needs num_kv_heads == num_heads "
                           "and num_heads * head_dim == hidden_size)");
  }
  nlohmann::json json = gpt2 ? Gpt2Config(config) : LlamaConfig(config);
  json["tie_word_embeddings"] = config.tie_word_embeddings;
  json["torch_dtype"] = torch_dtype;
  if (config.bos_token_id >= 0) json["bos_token_id"] = config.bos_token_id;
  if (config.eos_token_id >= 0) json["eos_token_id"] = config.eos_token_id;

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Internal("SaveHfFolder: cannot create " + dir + ": " + ec.message());
  const fs::path config_path = fs::path(dir) / "config.json";
  {
    std::ofstream out(config_path, std::ios::binary | std::ios::trunc);
    out << json.dump(2) << "\n";
    if (!out) return Internal("SaveHfFolder: cannot write " + config_path.string());
  }
  HfTensorList tensors(dtype);
  if (gpt2) {
    AddGpt2(config, weights, tensors);
  } else {
    AddLlama(config, weights, tensors);
  }
  return tensors.Write((fs::path(dir) / "model.safetensors").string());
}

}  // namespace kvpool
