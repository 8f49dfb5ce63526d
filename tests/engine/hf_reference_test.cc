// The external check that our GPT-2 and Llama are the real architectures: Hugging
// Face transformers' own logits and greedy continuations (use_cache True and False)
// for tiny random models, made by scripts/make-hf-fixtures.py and committed under
// tests/data/hf/. Each folder is loaded with our loader and run in all three modes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "engine/engine.h"
#include "engine/model_loader.h"
#include "service/offline_engine.h"
#include "weights/safetensors.h"
#include "weights/safetensors_aten.h"

namespace kvpool {
namespace {

const std::string kHfDir = KVPOOL_TEST_DATA_DIR "/hf/";

std::vector<int32_t> ReadIds(const SafetensorsFile& file, const std::string& name) {
  TensorView v = file.Get(name).value();
  EXPECT_EQ(v.dtype, SafetensorsDType::kI64) << name;
  std::vector<int64_t> raw(v.NumElements());
  std::memcpy(raw.data(), v.data, raw.size() * sizeof(int64_t));
  return std::vector<int32_t>(raw.begin(), raw.end());
}

class HfReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfReferenceTest, LogitsAndGreedyTokensMatchTransformersInEveryMode) {
  const std::string dir = kHfDir + GetParam();
  ASSERT_TRUE(std::filesystem::exists(dir + "/reference.safetensors"))
      << dir << " is missing: run scripts/make-hf-fixtures.py";
  auto loaded = LoadModel(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  auto ref_or = SafetensorsFile::Open(dir + "/reference.safetensors");
  ASSERT_TRUE(ref_or.ok()) << ref_or.status().ToString();
  const SafetensorsFile& ref = *ref_or;
  EngineOptions options;
  options.block_size = 4;  // prompts and continuations cross several blocks
  auto engine_or =
      worker::OfflineEngine::Create(loaded->config, std::move(loaded->weights), options);
  ASSERT_TRUE(engine_or.ok()) << engine_or.status().ToString();
  worker::OfflineEngine& engine = **engine_or;
  for (int p = 0; ref.Contains("prompt" + std::to_string(p) + ".ids"); ++p) {
    const std::string key = "prompt" + std::to_string(p);
    const std::vector<int32_t> prompt = ReadIds(ref, key + ".ids");
    const std::vector<int32_t> want_cached = ReadIds(ref, key + ".greedy_use_cache");
    const std::vector<int32_t> want_uncached = ReadIds(ref, key + ".greedy_no_cache");
    EXPECT_EQ(want_cached, want_uncached) << "transformers disagrees with itself on " << key;
    const at::Tensor logits = FloatTensorFromView(ref.Get(key + ".logits").value()).value();
    for (KvMode mode : {KvMode::kNone, KvMode::kContiguous, KvMode::kPaged}) {
      GenerationRequest r;
      r.prompt = prompt;
      r.max_tokens = static_cast<int32_t>(want_cached.size());
      r.mode = mode;
      r.ignore_eos = true;
      SequenceId id = engine.AddSequence(r).value();
      ASSERT_TRUE(engine.Prefill({id}).ok());
      for (size_t step = 0;; ++step) {
        const at::Tensor want = logits[static_cast<int64_t>(prompt.size() + step) - 1];
        const double diff = (engine.sequence(id).last_logits - want).abs().max().item<double>();
        EXPECT_LE(diff, 1e-4) << GetParam() << " " << key << " mode " << KvModeName(mode)
                              << " step " << step;
        if (engine.sequence(id).finished()) break;
        ASSERT_TRUE(engine.Decode({id}).ok());
      }
      const Sequence& s = engine.sequence(id);
      EXPECT_EQ(std::vector<int32_t>(s.tokens.begin() + s.prompt_len(), s.tokens.end()),
                want_cached)
          << GetParam() << " " << key << " mode " << KvModeName(mode);
      ASSERT_TRUE(engine.Release(id).ok());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Folders, HfReferenceTest,
                         ::testing::Values("tiny-gpt2", "tiny-gpt2-fp16", "tiny-llama-gqa"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) ch = ch == '-' ? '_' : ch;
                           return n;
                         });

}  // namespace
}  // namespace kvpool
