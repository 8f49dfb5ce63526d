// The Hugging Face folder writer and loader on tiny GPT-2 and GQA Llama configs:
// exact fp32 round trips, fp16/bf16 within rounding, shards, and wrong, missing and
// extra tensors failing with messages that name the tensor.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "weights/hf_loader.h"
#include "weights/hf_writer.h"
#include "weights/safetensors.h"
#include "weights/weights.h"
#include "weights_test_files.h"

namespace kvpool {
namespace weights_test {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A tensor copied out of a file, so a folder can be edited and written back.
struct StoredTensor {
  std::string name;
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::vector<StoredTensor> ReadAll(const fs::path& path) {
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path.string());
  EXPECT_TRUE(file.ok()) << file.status().ToString();
  std::vector<StoredTensor> out;
  if (!file.ok()) return out;
  for (const std::string& name : file->TensorNames()) {
    TensorView v = file->Get(name).value();
    out.push_back(
        {name, v.dtype, v.shape, std::string(static_cast<const char*>(v.data), v.byte_size)});
  }
  return out;
}

void WriteAll(const fs::path& path, const std::vector<StoredTensor>& tensors) {
  std::vector<NamedBuffer> buffers;
  for (const StoredTensor& t : tensors)
    buffers.push_back({t.name, t.dtype, t.shape, t.bytes.data()});
  const Status s = WriteSafetensors(path.string(), buffers, {{"format", "pt"}});
  ASSERT_TRUE(s.ok()) << s.ToString();
}

StoredTensor* Find(std::vector<StoredTensor>& tensors, const std::string& name) {
  for (StoredTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  ADD_FAILURE() << "no tensor " << name;
  return nullptr;
}

ModelConfig TinyGpt2() {
  ModelConfig c;
  c.name = "tiny-gpt2-test";
  c.arch = Architecture::kGpt2;
  c.vocab_size = 64;
  c.num_layers = 2;
  c.hidden_size = 32;
  c.num_heads = 4;
  c.num_kv_heads = 4;
  c.head_dim = 8;
  c.intermediate_size = 128;
  c.max_position = 32;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  return c;
}

ModelConfig TinyLlama() {
  ModelConfig c;
  c.name = "tiny-llama-test";
  c.arch = Architecture::kLlama;
  c.vocab_size = 64;
  c.num_layers = 2;
  c.hidden_size = 32;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.intermediate_size = 48;
  c.max_position = 32;
  c.norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = false;
  return c;
}

// Every tensor of `w` with a name, undefined ones included (they must match too).
std::vector<std::pair<std::string, at::Tensor>> Flatten(const ModelWeights& w) {
  std::vector<std::pair<std::string, at::Tensor>> out = {
      {"token_embedding", w.token_embedding},
      {"position_embedding", w.position_embedding},
      {"final_norm_w", w.final_norm_w},
      {"final_norm_b", w.final_norm_b},
      {"lm_head", w.lm_head}};
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string p = "layers." + std::to_string(i) + ".";
    for (auto& [n, t] :
         std::vector<std::pair<const char*, const at::Tensor*>>{{"attn_norm_w", &l.attn_norm_w},
                                                                {"attn_norm_b", &l.attn_norm_b},
                                                                {"qkv_w", &l.qkv_w},
                                                                {"qkv_b", &l.qkv_b},
                                                                {"o_w", &l.o_w},
                                                                {"o_b", &l.o_b},
                                                                {"mlp_norm_w", &l.mlp_norm_w},
                                                                {"mlp_norm_b", &l.mlp_norm_b},
                                                                {"up_w", &l.up_w},
                                                                {"up_b", &l.up_b},
                                                                {"down_w", &l.down_w},
                                                                {"down_b", &l.down_b}}) {
      out.emplace_back(p + n, *t);
    }
  }
  return out;
}

// Expects `got` == `want` rounded through `dtype`, tensor by tensor.
void ExpectSameWeights(const ModelWeights& want, const ModelWeights& got,
                       at::ScalarType dtype = at::kFloat) {
  ASSERT_EQ(want.layers.size(), got.layers.size());
  const auto a = Flatten(want);
  const auto b = Flatten(got);
  for (size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE(a[i].first);
    ASSERT_EQ(a[i].second.defined(), b[i].second.defined());
    if (!a[i].second.defined()) continue;
    EXPECT_EQ(b[i].second.scalar_type(), at::kFloat);
    EXPECT_TRUE(b[i].second.is_contiguous());
    EXPECT_TRUE(at::equal(a[i].second.to(dtype).to(at::kFloat), b[i].second));
  }
}

class HfFolderTest : public TempDirTest {
 protected:
  // A folder `name` holding `config` with seeded random weights.
  fs::path SaveModel(const std::string& name, const ModelConfig& config,
                     ModelWeights* weights = nullptr, at::ScalarType dtype = at::kFloat) {
    const fs::path folder = dir_ / name;
    ModelWeights w = RandomWeights(config, 7);
    const Status s = SaveHfFolder(folder.string(), config, w, dtype);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (weights != nullptr) *weights = std::move(w);
    return folder;
  }

  // Rewrites folder/model.safetensors after `edit`.
  void EditModel(const fs::path& folder,
                 const std::function<void(std::vector<StoredTensor>&)>& edit) {
    std::vector<StoredTensor> tensors = ReadAll(folder / "model.safetensors");
    edit(tensors);
    WriteAll(folder / "model.safetensors", tensors);
  }
};

TEST_F(HfFolderTest, Gpt2FolderRoundTripsExactly) {
  const ModelConfig config = TinyGpt2();
  ModelWeights want;
  const fs::path folder = SaveModel("tiny-gpt2-folder", config, &want);

  StatusOr<ModelConfig> loaded_config = LoadHfConfig(folder.string() + "/");
  ASSERT_TRUE(loaded_config.ok()) << loaded_config.status().ToString();
  const ModelConfig& c = *loaded_config;
  EXPECT_EQ(c.name, "tiny-gpt2-folder");
  EXPECT_EQ(c.arch, Architecture::kGpt2);
  EXPECT_EQ(c.vocab_size, 64);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.max_position, 32);
  EXPECT_EQ(c.norm_eps, 1e-5);
  EXPECT_TRUE(c.tie_word_embeddings);

  const nlohmann::json json = nlohmann::json::parse(ReadBytes(folder / "config.json"));
  EXPECT_EQ(json["architectures"][0], "GPT2LMHeadModel");
  EXPECT_EQ(json["activation_function"], "gelu_new");
  EXPECT_EQ(json["torch_dtype"], "float32");

  StatusOr<ModelWeights> got = LoadHfWeights(folder.string(), c);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameWeights(want, *got);
  EXPECT_TRUE(got->lm_head.is_same(got->token_embedding));

  // HF naming: Conv1D stored [in, out], no lm_head when tied.
  StatusOr<SafetensorsFile> file = SafetensorsFile::Open((folder / "model.safetensors").string());
  ASSERT_TRUE(file.ok());
  EXPECT_THAT(file->Get("transformer.h.0.attn.c_attn.weight")->shape, ElementsAre(32, 96));
  EXPECT_THAT(file->Get("transformer.h.1.mlp.c_fc.weight")->shape, ElementsAre(32, 128));
  EXPECT_FALSE(file->Contains("lm_head.weight"));
  EXPECT_EQ(file->TensorNames().size(), 4u + 2 * 12);
  EXPECT_EQ(file->metadata().at("format"), "pt");
}

TEST_F(HfFolderTest, LlamaGqaFolderRoundTripsExactly) {
  const ModelConfig config = TinyLlama();
  ModelWeights want;
  const fs::path folder = SaveModel("tiny-llama-folder", config, &want);

  StatusOr<ModelConfig> c = LoadHfConfig(folder.string());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->name, "tiny-llama-folder");
  EXPECT_EQ(c->arch, Architecture::kLlama);
  EXPECT_EQ(c->num_heads, 4);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->intermediate_size, 48);
  EXPECT_EQ(c->norm_eps, 1e-6);
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_FALSE(c->tie_word_embeddings);

  StatusOr<ModelWeights> got = LoadHfWeights(folder.string(), *c);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameWeights(want, *got);

  StatusOr<SafetensorsFile> file = SafetensorsFile::Open((folder / "model.safetensors").string());
  ASSERT_TRUE(file.ok());
  EXPECT_THAT(file->Get("model.layers.0.self_attn.q_proj.weight")->shape, ElementsAre(32, 32));
  EXPECT_THAT(file->Get("model.layers.0.self_attn.k_proj.weight")->shape, ElementsAre(16, 32));
  EXPECT_THAT(file->Get("model.layers.1.mlp.gate_proj.weight")->shape, ElementsAre(48, 32));
  EXPECT_THAT(file->Get("lm_head.weight")->shape, ElementsAre(64, 32));
  EXPECT_EQ(file->TensorNames().size(), 3u + 2 * 9);
}

TEST_F(HfFolderTest, HalfPrecisionFoldersLoadWithinRounding) {
  for (at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
    for (const ModelConfig& config : {TinyGpt2(), TinyLlama()}) {
      SCOPED_TRACE(config.name + " " + c10::toString(dtype));
      ModelWeights want;
      const fs::path folder = SaveModel(config.name + c10::toString(dtype), config, &want, dtype);
      StatusOr<SafetensorsFile> file =
          SafetensorsFile::Open((folder / "model.safetensors").string());
      ASSERT_TRUE(file.ok());
      EXPECT_EQ(file->Get(file->TensorNames()[0])->dtype,
                dtype == at::kHalf ? SafetensorsDType::kF16 : SafetensorsDType::kBF16);
      StatusOr<ModelWeights> got = LoadHfWeights(folder.string(), config);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      ExpectSameWeights(want, *got, dtype);
      const double tol = dtype == at::kHalf ? 1e-3 : 8e-3;
      EXPECT_TRUE(at::allclose(got->layers[1].qkv_w, want.layers[1].qkv_w, tol, 1e-5));
    }
  }
}

TEST_F(HfFolderTest, ShardedFolderLoads) {
  const ModelConfig config = TinyLlama();
  ModelWeights want;
  const fs::path folder = SaveModel("sharded", config, &want);
  std::vector<StoredTensor> all = ReadAll(folder / "model.safetensors");
  fs::remove(folder / "model.safetensors");
  std::vector<StoredTensor> shards[2];
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t i = 0; i < all.size(); ++i) {
    const std::string shard = "model-0000" + std::to_string(i % 2 + 1) + "-of-00002.safetensors";
    shards[i % 2].push_back(all[i]);
    weight_map[all[i].name] = shard;
  }
  WriteAll(folder / "model-00001-of-00002.safetensors", shards[0]);
  WriteAll(folder / "model-00002-of-00002.safetensors", shards[1]);
  WriteBytes(folder / "model.safetensors.index.json",
             nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump());

  StatusOr<ModelWeights> got = LoadHfWeights(folder.string(), config);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameWeights(want, *got);

  // A shard named by the index but absent.
  fs::remove(folder / "model-00002-of-00002.safetensors");
  got = LoadHfWeights(folder.string(), config);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(got.status().message(), HasSubstr("model-00002-of-00002.safetensors"));
}

TEST_F(HfFolderTest, IndexNamingAnAbsentTensorIsDataLoss) {
  const ModelConfig config = TinyGpt2();
  const fs::path folder = SaveModel("badindex", config);
  fs::rename(folder / "model.safetensors", folder / "only.safetensors");
  WriteBytes(folder / "model.safetensors.index.json",
             R"({"weight_map":{"transformer.ghost.weight":"only.safetensors"}})");
  StatusOr<ModelWeights> got = LoadHfWeights(folder.string(), config);
  EXPECT_EQ(got.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(got.status().message(), HasSubstr("'transformer.ghost.weight'"));
}

TEST_F(HfFolderTest, WrongShapeNamesTensorAndShapes) {
  const ModelConfig config = TinyGpt2();
  const fs::path folder = SaveModel("wrongshape", config);
  EditModel(folder, [](std::vector<StoredTensor>& t) {
    StoredTensor* ln = Find(t, "transformer.ln_f.weight");
    ln->shape = {31};
    ln->bytes.resize(31 * 4);
  });
  StatusOr<ModelWeights> got = LoadHfWeights(folder.string(), config);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(got.status().message(), HasSubstr("'transformer.ln_f.weight'"));
  EXPECT_THAT(got.status().message(), HasSubstr("shape [31], expected [32]"));
}

TEST_F(HfFolderTest, MissingTensorIsNotFound) {
  const ModelConfig config = TinyLlama();
  const fs::path folder = SaveModel("missing", config);
  EditModel(folder, [](std::vector<StoredTensor>& t) {
    t.erase(t.begin() + (Find(t, "model.layers.1.self_attn.v_proj.weight") - t.data()));
  });
  StatusOr<ModelWeights> got = LoadHfWeights(folder.string(), config);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(got.status().message(), HasSubstr("'model.layers.1.self_attn.v_proj.weight'"));
  EXPECT_THAT(got.status().message(), HasSubstr("[16, 32]"));
}

TEST_F(HfFolderTest, ExtraTensorIsInvalidArgument) {
  const ModelConfig config = TinyGpt2();
  const fs::path folder = SaveModel("extra", config);
  EditModel(folder, [](std::vector<StoredTensor>& t) {
    t.push_back(
        {"transformer.h.0.attn.q_norm.weight", SafetensorsDType::kF32, {1}, FloatBytes({1})});
  });
  StatusOr<ModelWeights> got = LoadHfWeights(folder.string(), config);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(got.status().message(), HasSubstr("unexpected tensor"));
  EXPECT_THAT(got.status().message(), HasSubstr("'transformer.h.0.attn.q_norm.weight'"));
}

TEST_F(HfFolderTest, Gpt2WithoutPrefixBuffersAndTiedHeadLoads) {
  const ModelConfig config = TinyGpt2();
  ModelWeights want;
  const fs::path folder = SaveModel("noprefix", config, &want);
  const std::string prefix = "transformer.";
  std::string wte_bytes;
  EditModel(folder, [&](std::vector<StoredTensor>& t) {
    for (StoredTensor& s : t) s.name.erase(0, prefix.size());  // the original gpt2 layout
    wte_bytes = Find(t, "wte.weight")->bytes;
    t.push_back({"h.0.attn.bias", SafetensorsDType::kF32, {1}, FloatBytes({1})});
    t.push_back({"h.1.attn.masked_bias", SafetensorsDType::kF32, {1}, FloatBytes({-1e4f})});
    t.push_back({"lm_head.weight", SafetensorsDType::kF32, {64, 32}, wte_bytes});
  });
  StatusOr<ModelWeights> got = LoadHfWeights(folder.string(), config);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameWeights(want, *got);

  // A stored head that differs from the embedding contradicts a tied config.
  EditModel(folder, [](std::vector<StoredTensor>& t) { Find(t, "lm_head.weight")->bytes[0] ^= 1; });
  got = LoadHfWeights(folder.string(), config);
  EXPECT_EQ(got.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(got.status().message(), HasSubstr("'lm_head.weight'"));
}

TEST_F(HfFolderTest, LlamaRotaryBuffersAreIgnored) {
  const ModelConfig config = TinyLlama();
  ModelWeights want;
  const fs::path folder = SaveModel("rotary", config, &want);
  EditModel(folder, [](std::vector<StoredTensor>& t) {
    t.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq",
                 SafetensorsDType::kF32,
                 {4},
                 FloatBytes({1, 0.1f, 0.01f, 0.001f})});
  });
  StatusOr<ModelWeights> got = LoadHfWeights(folder.string(), config);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameWeights(want, *got);
}

TEST_F(HfFolderTest, FolderWithoutWeightsIsNotFound) {
  fs::create_directories(dir_ / "empty");
  StatusOr<ModelWeights> got = LoadHfWeights((dir_ / "empty").string(), TinyGpt2());
  EXPECT_EQ(got.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(got.status().message(), HasSubstr("model.safetensors"));
  StatusOr<ModelConfig> config = LoadHfConfig((dir_ / "empty").string());
  EXPECT_EQ(config.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr("config.json"));
}

}  // namespace
}  // namespace weights_test
}  // namespace kvpool
