// Hugging Face folder -> engine weights; see hf_loader.h.
#include "weights/hf_loader.h"

#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "weights/safetensors.h"
#include "weights/safetensors_aten.h"

namespace kvpool {
namespace {

namespace fs = std::filesystem;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

StatusOr<std::string> ReadTextFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return DataLoss("cannot read " + path.string());
  return text.str();
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// True for "<prefix><digits><suffix>".
bool IsLayerName(const std::string& name, const std::string& prefix, const std::string& suffix) {
  if (!StartsWith(name, prefix) || name.size() <= prefix.size() + suffix.size()) return false;
  if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return false;
  for (size_t i = prefix.size(); i < name.size() - suffix.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(name[i]))) return false;
  }
  return true;
}

// GPT-2's causal-mask buffers, saved by older transformers versions.
bool IsGpt2Buffer(const std::string& name) {
  return IsLayerName(name, "h.", ".attn.bias") || IsLayerName(name, "h.", ".attn.masked_bias");
}

bool IsLlamaBuffer(const std::string& name) {
  return IsLayerName(name, "model.layers.", ".self_attn.rotary_emb.inv_freq");
}

// Every tensor stored in a folder, under its canonical name (a stripped prefix), each
// handed out at most once so that leftovers can be reported.
class TensorStore {
 public:
  static StatusOr<TensorStore> Open(const fs::path& dir, const std::string& strip_prefix,
                                    const std::function<bool(const std::string&)>& ignored);

  bool Has(const std::string& name) const { return where_.count(name) > 0; }
  // An fp32 copy of `name`, which must have exactly `shape`.
  StatusOr<at::Tensor> Take(const std::string& name, std::vector<int64_t> shape);
  // InvalidArgument naming the first tensor nobody took.
  Status CheckAllTaken() const;

 private:
  struct Location {
    size_t file;
    std::string stored_name;
  };
  Status Add(size_t file, const std::string& stored_name, const std::string& strip_prefix,
             const std::function<bool(const std::string&)>& ignored);

  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, Location> where_;
  std::set<std::string> taken_;
};

// The shards named by an index's "weight_map", each opened once, in first-mention order.
StatusOr<std::vector<SafetensorsFile>> OpenShards(const fs::path& dir, const fs::path& index_path) {
  KVPOOL_ASSIGN_OR_RETURN(std::string text, ReadTextFile(index_path));
  const nlohmann::json index = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
      !index["weight_map"].is_object()) {
    return DataLoss(index_path.string() + ": not a JSON object with a \"weight_map\" object");
  }
  std::vector<SafetensorsFile> files;
  std::map<std::string, size_t> file_of_shard;
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    if (!shard.is_string() || shard.get<std::string>().empty()) {
      return DataLoss(index_path.string() + ": weight_map entry for tensor '" + tensor +
                      "' is not a file name");
    }
    const std::string shard_name = shard.get<std::string>();
    if (!file_of_shard.count(shard_name)) {
      StatusOr<SafetensorsFile> file = SafetensorsFile::Open((dir / shard_name).string());
      if (!file.ok()) {
        return Status(file.status().code(), "shard '" + shard_name + "' (holding tensor '" +
                                                tensor + "', listed in " + index_path.string() +
                                                "): " + file.status().message());
      }
      file_of_shard[shard_name] = files.size();
      files.push_back(std::move(file).value());
    }
    if (!files[file_of_shard[shard_name]].Contains(tensor)) {
      return DataLoss(index_path.string() + ": tensor '" + tensor + "' is listed in shard '" +
                      shard_name + "' but that file does not hold it");
    }
  }
  return files;
}

// Like transformers: model.safetensors if present, else the index and its shards.
StatusOr<TensorStore> TensorStore::Open(const fs::path& dir, const std::string& strip_prefix,
                                        const std::function<bool(const std::string&)>& ignored) {
  TensorStore store;
  store.dir_ = dir.string();
  const fs::path single = dir / kSingleFile;
  const fs::path index = dir / kIndexFile;
  std::error_code ec;
  if (fs::exists(single, ec)) {
    KVPOOL_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(single.string()));
    store.files_.push_back(std::move(file));
  } else if (fs::exists(index, ec)) {
    KVPOOL_ASSIGN_OR_RETURN(store.files_, OpenShards(dir, index));
  } else {
    return NotFound("model folder " + dir.string() + ": neither " + kSingleFile + " nor " +
                    kIndexFile + " (only safetensors weights are supported)");
  }
  for (size_t f = 0; f < store.files_.size(); ++f) {
    for (const std::string& name : store.files_[f].TensorNames()) {
      KVPOOL_RETURN_IF_ERROR(store.Add(f, name, strip_prefix, ignored));
    }
  }
  return store;
}

Status TensorStore::Add(size_t file, const std::string& stored_name,
                        const std::string& strip_prefix,
                        const std::function<bool(const std::string&)>& ignored) {
  std::string name = stored_name;
  if (!strip_prefix.empty() && StartsWith(name, strip_prefix)) name.erase(0, strip_prefix.size());
  if (ignored(name)) return Status::Ok();
  auto [it, inserted] = where_.emplace(name, Location{file, stored_name});
  if (!inserted) {
    return InvalidArgument("model folder " + dir_ + ": tensor '" + stored_name + "' (in " +
                           files_[file].path() + ") duplicates '" + it->second.stored_name +
                           "' (in " + files_[it->second.file].path() + ")");
  }
  return Status::Ok();
}

StatusOr<at::Tensor> TensorStore::Take(const std::string& name, std::vector<int64_t> shape) {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return NotFound("model folder " + dir_ + ": missing tensor '" + name + "' (expected shape " +
                    FormatShape(shape) + ")");
  }
  const SafetensorsFile& file = files_[it->second.file];
  KVPOOL_ASSIGN_OR_RETURN(TensorView view, file.Get(it->second.stored_name));
  if (view.shape != shape) {
    return InvalidArgument("model folder " + dir_ + ": tensor '" + it->second.stored_name +
                           "' has shape " + FormatShape(view.shape) + ", expected " +
                           FormatShape(shape));
  }
  StatusOr<at::Tensor> tensor = FloatTensorFromView(view);
  if (!tensor.ok()) {
    return Status(tensor.status().code(), file.path() + ": " + tensor.status().message());
  }
  taken_.insert(name);
  return tensor;
}

Status TensorStore::CheckAllTaken() const {
  for (const auto& [name, location] : where_) {
    if (!taken_.count(name)) {
      return InvalidArgument("model folder " + dir_ + ": unexpected tensor '" +
                             location.stored_name + "' in " + files_[location.file].path() +
                             " (not a parameter of this model)");
    }
  }
  return Status::Ok();
}

// HF GPT-2 Conv1D stores [in, out]; the engine wants [out, in].
StatusOr<at::Tensor> TakeConv1D(TensorStore& store, const std::string& name, int64_t in,
                                int64_t out) {
  KVPOOL_ASSIGN_OR_RETURN(at::Tensor w, store.Take(name, {in, out}));
  return w.t().contiguous();
}

Status TakeHead(TensorStore& store, const ModelConfig& config, ModelWeights& w) {
  const std::string name = "lm_head.weight";
  if (!config.tie_word_embeddings) {
    KVPOOL_ASSIGN_OR_RETURN(w.lm_head, store.Take(name, {config.vocab_size, config.hidden_size}));
    return Status::Ok();
  }
  w.lm_head = w.token_embedding;
  if (store.Has(name)) {
    KVPOOL_ASSIGN_OR_RETURN(at::Tensor head,
                            store.Take(name, {config.vocab_size, config.hidden_size}));
    if (!at::equal(head, w.token_embedding)) {
      return InvalidArgument("tensor '" + name + "' differs from the token embedding but " +
                             "config '" + config.name + "' ties them");
    }
  }
  return Status::Ok();
}

StatusOr<ModelWeights> LoadGpt2(TensorStore& store, const ModelConfig& c) {
  const int64_t h = c.hidden_size;
  const int64_t qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
  const int64_t attn = c.num_heads * c.head_dim;
  ModelWeights w;
  KVPOOL_ASSIGN_OR_RETURN(w.token_embedding, store.Take("wte.weight", {c.vocab_size, h}));
  KVPOOL_ASSIGN_OR_RETURN(w.position_embedding, store.Take("wpe.weight", {c.max_position, h}));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "h." + std::to_string(i) + ".";
    LayerWeights l;
    KVPOOL_ASSIGN_OR_RETURN(l.attn_norm_w, store.Take(p + "ln_1.weight", {h}));
    KVPOOL_ASSIGN_OR_RETURN(l.attn_norm_b, store.Take(p + "ln_1.bias", {h}));
    KVPOOL_ASSIGN_OR_RETURN(l.qkv_w, TakeConv1D(store, p + "attn.c_attn.weight", h, qkv));
    KVPOOL_ASSIGN_OR_RETURN(l.qkv_b, store.Take(p + "attn.c_attn.bias", {qkv}));
    KVPOOL_ASSIGN_OR_RETURN(l.o_w, TakeConv1D(store, p + "attn.c_proj.weight", attn, h));
    KVPOOL_ASSIGN_OR_RETURN(l.o_b, store.Take(p + "attn.c_proj.bias", {h}));
    KVPOOL_ASSIGN_OR_RETURN(l.mlp_norm_w, store.Take(p + "ln_2.weight", {h}));
    KVPOOL_ASSIGN_OR_RETURN(l.mlp_norm_b, store.Take(p + "ln_2.bias", {h}));
    KVPOOL_ASSIGN_OR_RETURN(l.up_w,
                            TakeConv1D(store, p + "mlp.c_fc.weight", h, c.intermediate_size));
    KVPOOL_ASSIGN_OR_RETURN(l.up_b, store.Take(p + "mlp.c_fc.bias", {c.intermediate_size}));
    KVPOOL_ASSIGN_OR_RETURN(l.down_w,
                            TakeConv1D(store, p + "mlp.c_proj.weight", c.intermediate_size, h));
    KVPOOL_ASSIGN_OR_RETURN(l.down_b, store.Take(p + "mlp.c_proj.bias", {h}));
    w.layers.push_back(std::move(l));
  }
  KVPOOL_ASSIGN_OR_RETURN(w.final_norm_w, store.Take("ln_f.weight", {h}));
  KVPOOL_ASSIGN_OR_RETURN(w.final_norm_b, store.Take("ln_f.bias", {h}));
  KVPOOL_RETURN_IF_ERROR(TakeHead(store, c, w));
  return w;
}

StatusOr<ModelWeights> LoadLlama(TensorStore& store, const ModelConfig& c) {
  const int64_t h = c.hidden_size;
  const int64_t q_rows = c.num_heads * c.head_dim;
  const int64_t kv_rows = c.num_kv_heads * c.head_dim;
  const int64_t inter = c.intermediate_size;
  ModelWeights w;
  KVPOOL_ASSIGN_OR_RETURN(w.token_embedding,
                          store.Take("model.embed_tokens.weight", {c.vocab_size, h}));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights l;
    KVPOOL_ASSIGN_OR_RETURN(l.attn_norm_w, store.Take(p + "input_layernorm.weight", {h}));
    KVPOOL_ASSIGN_OR_RETURN(at::Tensor q, store.Take(p + "self_attn.q_proj.weight", {q_rows, h}));
    KVPOOL_ASSIGN_OR_RETURN(at::Tensor k, store.Take(p + "self_attn.k_proj.weight", {kv_rows, h}));
    KVPOOL_ASSIGN_OR_RETURN(at::Tensor v, store.Take(p + "self_attn.v_proj.weight", {kv_rows, h}));
    l.qkv_w = at::cat({q, k, v}, 0);
    KVPOOL_ASSIGN_OR_RETURN(l.o_w, store.Take(p + "self_attn.o_proj.weight", {h, q_rows}));
    KVPOOL_ASSIGN_OR_RETURN(l.mlp_norm_w, store.Take(p + "post_attention_layernorm.weight", {h}));
    KVPOOL_ASSIGN_OR_RETURN(at::Tensor gate, store.Take(p + "mlp.gate_proj.weight", {inter, h}));
    KVPOOL_ASSIGN_OR_RETURN(at::Tensor up, store.Take(p + "mlp.up_proj.weight", {inter, h}));
    l.up_w = at::cat({gate, up}, 0);
    KVPOOL_ASSIGN_OR_RETURN(l.down_w, store.Take(p + "mlp.down_proj.weight", {h, inter}));
    w.layers.push_back(std::move(l));
  }
  KVPOOL_ASSIGN_OR_RETURN(w.final_norm_w, store.Take("model.norm.weight", {h}));
  KVPOOL_RETURN_IF_ERROR(TakeHead(store, c, w));
  return w;
}

}  // namespace

StatusOr<ModelConfig> LoadHfConfig(const std::string& dir) {
  std::string trimmed = dir;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  std::string name = fs::path(trimmed).filename().string();
  if (name.empty() || name == "." || name == "..") {
    std::error_code ec;
    name = fs::weakly_canonical(fs::path(trimmed), ec).filename().string();
  }
  KVPOOL_ASSIGN_OR_RETURN(std::string text, ReadTextFile(fs::path(dir) / "config.json"));
  return ModelConfigFromHfJson(text, name);
}

StatusOr<ModelWeights> LoadHfWeights(const std::string& dir, const ModelConfig& config) {
  const bool gpt2 = config.arch == Architecture::kGpt2;
  KVPOOL_ASSIGN_OR_RETURN(
      TensorStore store,
      TensorStore::Open(fs::path(dir), gpt2 ? "transformer." : "",
                        gpt2 ? std::function<bool(const std::string&)>(IsGpt2Buffer)
                             : std::function<bool(const std::string&)>(IsLlamaBuffer)));
  KVPOOL_ASSIGN_OR_RETURN(ModelWeights weights,
                          gpt2 ? LoadGpt2(store, config) : LoadLlama(store, config));
  KVPOOL_RETURN_IF_ERROR(store.CheckAllTaken());
  KVPOOL_RETURN_IF_ERROR(weights.Validate(config));
  return weights;
}

}  // namespace kvpool
