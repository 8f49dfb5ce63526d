// The external check that our GPT-2 and Llama are the real architectures: Hugging
// Face transformers' own logits and greedy continuations (use_cache True and False)
// for tiny random models, made by scripts/make-hf-fixtures.py and committed under
// tests/data/hf/. Each folder is loaded with our loader and run in all three modes,
// with fp32 weights (equal within fp32 rounding; fp16 weights too on the fp16-stored
// checkpoint, whose values they hold exactly), and with bf16 or fp16 weights and each
// reduced KV dtype on the CPU (within their rounding; a token that differs between modes
// or from transformers' only where the two candidates' logits nearly tie).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>

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

// A greedy sequence of `prompt` for `max_tokens` tokens in `mode`, prefilled.
SequenceId StartGreedy(worker::OfflineEngine& engine, const std::vector<int32_t>& prompt,
                       size_t max_tokens, KvMode mode) {
  GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = static_cast<int32_t>(max_tokens);
  r.mode = mode;
  r.ignore_eos = true;
  SequenceId id = engine.AddSequence(r).value();
  EXPECT_TRUE(engine.Prefill({id}).ok());
  return id;
}

// A fixture folder's engine (blocks of 4 tokens: prompts and continuations cross
// several) and transformers' reference file.
struct Fixture {
  std::unique_ptr<worker::OfflineEngine> engine;
  std::optional<SafetensorsFile> ref;
};
void OpenFixture(const std::string& folder, EngineOptions options, Fixture* out) {
  const std::string dir = kHfDir + folder;
  ASSERT_TRUE(std::filesystem::exists(dir + "/reference.safetensors"))
      << dir << " is missing: run scripts/make-hf-fixtures.py";
  auto loaded = LoadModel(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  out->ref.emplace(std::move(ref).value());
  options.block_size = 4;
  auto engine = worker::OfflineEngine::Create(loaded->config, std::move(loaded->weights), options);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  out->engine = std::move(engine).value();
}

class HfReferenceTest : public ::testing::TestWithParam<std::string> {};

// The engine (with `options`) against transformers' logits within fp32 rounding and
// its greedy tokens exactly, in every mode.
void ExpectExact(const std::string& folder, const EngineOptions& options) {
  Fixture fixture;
  ASSERT_NO_FATAL_FAILURE(OpenFixture(folder, options, &fixture));
  const SafetensorsFile& ref = *fixture.ref;
  worker::OfflineEngine& engine = *fixture.engine;
  for (int p = 0; ref.Contains("prompt" + std::to_string(p) + ".ids"); ++p) {
    const std::string key = "prompt" + std::to_string(p);
    const std::vector<int32_t> prompt = ReadIds(ref, key + ".ids");
    const std::vector<int32_t> want_cached = ReadIds(ref, key + ".greedy_use_cache");
    const std::vector<int32_t> want_uncached = ReadIds(ref, key + ".greedy_no_cache");
    EXPECT_EQ(want_cached, want_uncached) << "transformers disagrees with itself on " << key;
    const at::Tensor logits = FloatTensorFromView(ref.Get(key + ".logits").value()).value();
    for (KvMode mode : {KvMode::kNone, KvMode::kContiguous, KvMode::kPaged}) {
      const SequenceId id = StartGreedy(engine, prompt, want_cached.size(), mode);
      for (size_t step = 0;; ++step) {
        const at::Tensor want = logits[static_cast<int64_t>(prompt.size() + step) - 1];
        const double diff = (engine.sequence(id).last_logits - want).abs().max().item<double>();
        EXPECT_LE(diff, 1e-4) << folder << " " << key << " mode " << KvModeName(mode) << " step "
                              << step;
        if (engine.sequence(id).finished()) break;
        ASSERT_TRUE(engine.Decode({id}).ok());
      }
      const Sequence& s = engine.sequence(id);
      EXPECT_EQ(std::vector<int32_t>(s.tokens.begin() + s.prompt_len(), s.tokens.end()),
                want_cached)
          << folder << " " << key << " mode " << KvModeName(mode);
      ASSERT_TRUE(engine.Release(id).ok());
    }
  }
}

TEST_P(HfReferenceTest, LogitsAndGreedyTokensMatchTransformersInEveryMode) {
  ExpectExact(GetParam(), EngineOptions());
}

TEST(HfReferenceFp16Test, Fp16WeightsOfAnFp16CheckpointAreExact) {
  // The checkpoint's weights are fp16 values: kept in fp16 they are not rounded at all,
  // so the engine matches transformers' fp32 computation on them as closely as fp32
  // weights do (bf16 would round each to 8 significant bits).
  EngineOptions options;
  options.cpu_weight_dtype = at::kHalf;
  ExpectExact("tiny-gpt2-fp16", options);
}

// The engine with reduced precision (`options`: weights, KV or both) against
// transformers' fp32 logits: the first logits within `share` of the largest logit, the
// three modes' greedy tokens equal up to a near tie, and transformers' tokens matched up
// to a near tie. `what` names the precision in failures.
void ExpectWithinRounding(const std::string& folder, EngineOptions options, double share,
                          const std::string& what) {
  SCOPED_TRACE(folder + ", " + what);
  Fixture fixture;
  ASSERT_NO_FATAL_FAILURE(OpenFixture(folder, options, &fixture));
  const SafetensorsFile& ref = *fixture.ref;
  worker::OfflineEngine& engine = *fixture.engine;
  for (int p = 0; ref.Contains("prompt" + std::to_string(p) + ".ids"); ++p) {
    const std::string key = "prompt" + std::to_string(p);
    const std::vector<int32_t> prompt = ReadIds(ref, key + ".ids");
    const std::vector<int32_t> want = ReadIds(ref, key + ".greedy_use_cache");
    const at::Tensor logits = FloatTensorFromView(ref.Get(key + ".logits").value()).value();
    const double tolerance = share * logits.abs().max().item<double>();
    std::vector<std::vector<int32_t>> generated;
    std::vector<std::vector<at::Tensor>> step_logits;  // per mode, the logits of each step
    for (KvMode mode : {KvMode::kNone, KvMode::kContiguous, KvMode::kPaged}) {
      const SequenceId id = StartGreedy(engine, prompt, want.size(), mode);
      const at::Tensor first = logits[static_cast<int64_t>(prompt.size()) - 1];
      const double diff = (engine.sequence(id).last_logits - first).abs().max().item<double>();
      EXPECT_LE(diff, tolerance) << folder << " " << key << " " << KvModeName(mode);
      step_logits.emplace_back();
      for (;;) {
        step_logits.back().push_back(engine.sequence(id).last_logits.clone());
        if (engine.sequence(id).finished()) break;
        ASSERT_TRUE(engine.Decode({id}).ok());
      }
      const Sequence& s = engine.sequence(id);
      generated.emplace_back(s.tokens.begin() + s.prompt_len(), s.tokens.end());
      ASSERT_TRUE(engine.Release(id).ok());
    }
    // The modes differ in rounding only (a recompute's many rows take ATen's bf16
    // product, a decode step's one row the kernel): where their tokens part, the two
    // candidates' logits must nearly tie.
    for (size_t a = 0; a + 1 < generated.size(); ++a) {
      for (size_t i = 0; i < want.size(); ++i) {
        const int32_t x = generated[a][i], y = generated[a + 1][i];
        if (x == y) continue;
        const at::Tensor& row = step_logits[a][i];
        const double gap = (row[x] - row[y]).item<double>();
        EXPECT_LE(gap, 2 * tolerance) << folder << " " << key << " modes " << a << "/" << a + 1
                                      << " step " << i << ": not a near tie";
        break;
      }
    }
    // Up to the first token that differs from transformers' (after it the contexts
    // differ), and there its two best logits must nearly tie.
    for (size_t i = 0; i < want.size(); ++i) {
      if (generated[2][i] == want[i]) continue;
      const at::Tensor row = logits[static_cast<int64_t>(prompt.size() + i) - 1];
      const at::Tensor top = std::get<0>(row.topk(2));
      const double gap = (top[0] - top[1]).item<double>();
      EXPECT_LE(gap, 2 * tolerance)
          << folder << " " << key << " step " << i << ": a flip that is not a near tie";
      break;
    }
  }
}

TEST_P(HfReferenceTest, Bf16WeightsStayWithinTheirRoundingOfTransformers) {
  // bf16 keeps 8 significant bits: each weight is off by up to 2^-9 of itself, and a
  // logit by about that share of its magnitude; 2% of the largest logit bounds it.
  EngineOptions options;
  options.cpu_weight_dtype = at::kBFloat16;
  ExpectWithinRounding(GetParam(), options, 0.02, "bf16 weights");
}

TEST_P(HfReferenceTest, ReducedKvDtypesStayWithinTheirRoundingOfTransformers) {
  // K and V rounded once each as they are stored: fp16 (11 bits), bf16 (8), int8 (half a
  // step of 1/127 of the head's max) and fp8 e4m3 (4 bits, up to 1/16 of a value). The
  // same 2% of the largest logit bounds all but fp8 (6%); bf16 weights with int8 K/V
  // add the two.
  for (const auto& [dtype, share] :
       {std::pair(KvDtype::kFloat16, 0.02), std::pair(KvDtype::kBFloat16, 0.02),
        std::pair(KvDtype::kInt8, 0.02), std::pair(KvDtype::kFp8E4m3, 0.06)}) {
    EngineOptions options;
    options.cpu_kv_dtype = dtype;
    ExpectWithinRounding(GetParam(), options, share, std::string(KvDtypeName(dtype)) + " K/V");
  }
  EngineOptions both;
  both.cpu_weight_dtype = at::kBFloat16;
  both.cpu_kv_dtype = KvDtype::kInt8;
  ExpectWithinRounding(GetParam(), both, 0.04, "bf16 weights, int8 K/V");
}

TEST_P(HfReferenceTest, Fp16WeightsStayWithinTheirRoundingOfTransformers) {
  // fp16 keeps 11 significant bits (8 times bf16's precision): 0.3% of the largest
  // logit bounds it, with fp32 and bf16 K/V.
  for (KvDtype kv : {KvDtype::kFloat32, KvDtype::kBFloat16}) {
    EngineOptions options;
    options.cpu_weight_dtype = at::kHalf;
    options.cpu_kv_dtype = kv;
    ExpectWithinRounding(GetParam(), options, kv == KvDtype::kFloat32 ? 0.003 : 0.02,
                         std::string("fp16 weights, ") + KvDtypeName(kv) + " K/V");
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
