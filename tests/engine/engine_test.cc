// The three KV modes run the same model: their logits agree at every step, at batch
// 1 and at batch 4 with different lengths, for GPT-2 and a GQA Llama; plus request
// validation, pool exhaustion, prefix hits and finish reasons. Blocks come from the
// cache manager's core in process (OfflineEngine), the allocator the product runs.
#include "engine/engine.h"

#include <execinfo.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <fstream>
#include <random>

#include "engine/request_check.h"
#include "engine_trace.h"
#include "service/offline_engine.h"
#include "tokenizer/tokenizer.h"

namespace kvpool {
namespace {

using ::testing::HasSubstr;
using testing::RandomPrompt;
using testing::RunBatch;
using testing::Trace;
using worker::OfflineEngine;

std::unique_ptr<OfflineEngine> MakeEngine(const std::string& model, EngineOptions options = {},
                                          std::shared_ptr<const Tokenizer> tok = {}) {
  ModelConfig config = BuiltinModelConfig(model).value();
  ModelWeights weights = RandomWeights(config, 7);
  auto engine = OfflineEngine::Create(config, std::move(weights), options, std::move(tok));
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return std::move(engine).value();
}

// Blocks held by open sequences (cached ones are free to evict), after checking the
// manager's own invariants.
int64_t BlocksInUse(OfflineEngine& engine) {
  const Status invariants = engine.core()->CheckInvariants();
  EXPECT_TRUE(invariants.ok()) << invariants.ToString();
  return engine.core()->Stats().in_use_blocks;
}

// A greedy request of `len` random prompt tokens (seeded) for `max_tokens` tokens,
// ignoring EOS.
GenerationRequest GreedyRequest(int len, uint64_t seed, KvMode mode, int32_t max_tokens) {
  GenerationRequest r;
  r.prompt = RandomPrompt(len, 1000, seed);
  r.max_tokens = max_tokens;
  r.mode = mode;
  r.ignore_eos = true;
  return r;
}

void ExpectSameTraces(const Trace& a, const Trace& b, const std::string& what) {
  ASSERT_EQ(a.logits.size(), b.logits.size());
  for (size_t i = 0; i < a.logits.size(); ++i) {
    EXPECT_EQ(a.tokens[i], b.tokens[i]) << what << " sequence " << i;
    for (size_t s = 0; s < a.logits[i].size(); ++s) {
      const double diff = (a.logits[i][s] - b.logits[i][s]).abs().max().item<double>();
      EXPECT_LE(diff, 1e-4) << what << " sequence " << i << " step " << s;
    }
  }
}

class ModesAgreeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ModesAgreeTest, BatchOne) {
  auto engine = MakeEngine(GetParam());
  const Trace none = RunBatch(*engine, KvMode::kNone, {23}, 6);
  ExpectSameTraces(none, RunBatch(*engine, KvMode::kContiguous, {23}, 6), "contiguous vs none");
  ExpectSameTraces(none, RunBatch(*engine, KvMode::kPaged, {23}, 6), "paged vs none");
  EXPECT_EQ(BlocksInUse(*engine), 0);
}

TEST_P(ModesAgreeTest, BatchFourDifferentLengths) {
  EngineOptions options;
  options.block_size = 8;  // several blocks per sequence, block boundaries crossed
  auto engine = MakeEngine(GetParam(), options);
  const std::vector<int64_t> lengths = {5, 17, 33, 9};
  const Trace none = RunBatch(*engine, KvMode::kNone, lengths, 5);
  ExpectSameTraces(none, RunBatch(*engine, KvMode::kContiguous, lengths, 5), "contiguous vs none");
  ExpectSameTraces(none, RunBatch(*engine, KvMode::kPaged, lengths, 5), "paged vs none");
  // A batch gives each sequence what it gets alone.
  for (size_t i = 0; i < lengths.size(); ++i) {
    Trace alone = RunBatch(*engine, KvMode::kPaged, {lengths[i]}, 5, 100 + i);
    alone.logits.insert(alone.logits.begin(), i, {});
    alone.tokens.insert(alone.tokens.begin(), i, {});
    EXPECT_EQ(alone.tokens[i], none.tokens[i]) << "sequence " << i;
    for (size_t s = 0; s < none.logits[i].size(); ++s) {
      EXPECT_LE((alone.logits[i][s] - none.logits[i][s]).abs().max().item<double>(), 1e-4);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ModesAgreeTest, ::testing::Values("gpt2", "llama-gqa-small"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) ch = ch == '-' ? '_' : ch;
                           return n;
                         });

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EngineOptions options;
    options.block_size = 4;
    options.num_blocks = 16;
    engine_ = MakeEngine("tiny-gpt2", options);
  }
  GenerationRequest Request(int64_t prompt_len, int32_t max_tokens, KvMode mode) {
    GenerationRequest r;
    r.prompt = RandomPrompt(prompt_len, engine_->config().vocab_size, 3);
    r.max_tokens = max_tokens;
    r.mode = mode;
    r.ignore_eos = true;
    return r;
  }
  std::unique_ptr<OfflineEngine> engine_;
};

// The one request check every API makes (the engine only asserts it).
TEST_F(EngineTest, TheRequestCheckRefusesBadRequestsNamingTheField) {
  auto expect_invalid = [&](GenerationRequest r, const std::string& needle) {
    Status st = CheckGeneration(r, engine_->config(), /*has_tokenizer=*/false);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
    EXPECT_THAT(st.message(), HasSubstr(needle));
  };
  expect_invalid(Request(0, 4, KvMode::kPaged), "prompt is empty");
  expect_invalid(Request(512, 4, KvMode::kPaged), "context of 512");
  expect_invalid(Request(500, 20, KvMode::kPaged), "exceeds the context");
  expect_invalid(Request(4, 0, KvMode::kPaged), "max_tokens must be > 0");
  expect_invalid(Request(4, -3, KvMode::kNone), "max_tokens must be > 0");
  GenerationRequest r = Request(4, 4, KvMode::kPaged);
  r.prompt[2] = 50257;
  expect_invalid(r, "outside the vocabulary");
  r = Request(4, 4, KvMode::kPaged);
  r.sampling.top_p = 0;
  expect_invalid(r, "top_p");
  r.sampling.top_p = 1.01;
  expect_invalid(r, "top_p");
  r = Request(4, 4, KvMode::kPaged);
  r.sampling.temperature = std::nan("");
  expect_invalid(r, "temperature");
  r = Request(4, 4, KvMode::kPaged);
  r.stop = {"x"};
  expect_invalid(r, "stop strings need a tokenizer");
  // The API's own field names.
  r = Request(4, 4, KvMode::kPaged);
  r.prompt[1] = -1;
  r.sampling.top_k = -2;
  RequestFieldNames names;
  names.prompt = "token_ids";
  names.sampling = "sampling.";
  EXPECT_THAT(CheckGeneration(r, engine_->config(), false, names).message(),
              HasSubstr("token_ids[1] is -1"));
  r.prompt[1] = 1;
  EXPECT_THAT(CheckGeneration(r, engine_->config(), false, names).message(),
              HasSubstr("sampling.top_k"));
  EXPECT_TRUE(CheckGeneration(Request(4, 4, KvMode::kPaged), engine_->config(), false).ok());
}

TEST_F(EngineTest, GenerateChecksItsRequestsAndLeaksNothing) {
  GenerationRequest fine = Request(4, 2, KvMode::kPaged);
  GenerationRequest bad = Request(4, 0, KvMode::kPaged);
  const auto refused = engine_->Generate({fine, bad});
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("max_tokens must be > 0"));
  EXPECT_EQ(BlocksInUse(*engine_), 0);  // the first one's blocks came back
}

// A mixed step (new prompts and running sequences' next tokens in one forward) gives
// what a prefill and then a decode step give, in every mode.
TEST_P(ModesAgreeTest, MixedStepEqualsPrefillThenDecode) {
  for (KvMode mode : {KvMode::kNone, KvMode::kContiguous, KvMode::kPaged}) {
    auto mixed = MakeEngine(GetParam());
    auto split = MakeEngine(GetParam());
    auto request = [&](int len, uint64_t seed) { return GreedyRequest(len, seed, mode, 8); };
    const SequenceId a1 = *mixed->AddSequence(request(11, 1));
    const SequenceId a2 = *split->AddSequence(request(11, 1));
    ASSERT_TRUE(mixed->Prefill({a1}).ok());
    ASSERT_TRUE(split->Prefill({a2}).ok());
    ASSERT_TRUE(mixed->Decode({a1}).ok());
    ASSERT_TRUE(split->Decode({a2}).ok());
    const SequenceId b1 = *mixed->AddSequence(request(19, 2));
    const SequenceId c1 = *mixed->AddSequence(request(5, 3));
    const SequenceId b2 = *split->AddSequence(request(19, 2));
    const SequenceId c2 = *split->AddSequence(request(5, 3));
    ASSERT_TRUE(mixed->Step({b1, c1}, {a1}).ok());
    ASSERT_TRUE(split->Prefill({b2, c2}).ok());
    ASSERT_TRUE(split->Decode({a2}).ok());
    for (auto [x, y] : {std::pair{a1, a2}, std::pair{b1, b2}, std::pair{c1, c2}}) {
      EXPECT_EQ(mixed->sequence(x).tokens, split->sequence(y).tokens) << static_cast<int>(mode);
      EXPECT_EQ(mixed->sequence(x).num_kv_tokens, split->sequence(y).num_kv_tokens);
      EXPECT_LE((mixed->sequence(x).last_logits - split->sequence(y).last_logits)
                    .abs()
                    .max()
                    .item<double>(),
                1e-4);
    }
    // The decoding ones must be prefilled, the prefilling ones not yet.
    EXPECT_EQ(mixed->Step({a1}, {}).code(), StatusCode::kFailedPrecondition);
    const SequenceId d1 = *mixed->AddSequence(request(7, 4));
    EXPECT_EQ(mixed->Step({}, {d1}).code(), StatusCode::kFailedPrecondition);
  }
}

// Chunked prefill: a prompt computed a few tokens per step (beside another sequence's
// decode steps) gives the logits and tokens of one whole prefill; a chunk short of the
// prompt's end samples nothing and leaves the sequence to be prefilled further.
TEST_P(ModesAgreeTest, ChunkedPrefillEqualsAWholeOne) {
  EngineOptions options;
  options.block_size = 8;
  auto chunked = MakeEngine(GetParam(), options);
  auto whole = MakeEngine(GetParam(), options);
  for (KvMode mode : {KvMode::kContiguous, KvMode::kPaged}) {
    for (int64_t chunk : {1, 5, 16, 37}) {
      auto request = [&](int len, uint64_t seed) { return GreedyRequest(len, seed, mode, 6); };
      // A prompt of its own per case: an earlier case's blocks would be prefix hits.
      const uint64_t seed = 100 * static_cast<uint64_t>(chunk) + static_cast<uint64_t>(mode);
      const SequenceId other = *chunked->AddSequence(request(9, seed + 1));
      ASSERT_TRUE(chunked->Prefill({other}).ok());
      const SequenceId c = *chunked->AddSequence(request(45, seed));
      const SequenceId w = *whole->AddSequence(request(45, seed));
      ASSERT_TRUE(whole->Prefill({w}).ok());
      int steps = 0;
      while (!chunked->sequence(c).prefilled) {
        const int64_t before = chunked->sequence(c).num_kv_tokens;
        const std::vector<SequenceId> decoding = chunked->sequence(other).finished()
                                                     ? std::vector<SequenceId>{}
                                                     : std::vector<SequenceId>{other};
        ASSERT_TRUE(chunked->Step({c}, decoding, {chunk}).ok());
        ++steps;
        const Sequence& s = chunked->sequence(c);
        EXPECT_EQ(s.num_kv_tokens, std::min<int64_t>(45, before + chunk));
        if (!s.prefilled) {
          EXPECT_EQ(s.tokens.size(), 45u) << "a partial chunk sampled";
        }
      }
      EXPECT_EQ(steps, (45 + chunk - 1) / chunk) << "chunk " << chunk;
      for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(chunked->Decode({c}).ok());
        ASSERT_TRUE(whole->Decode({w}).ok());
        EXPECT_LE((chunked->sequence(c).last_logits - whole->sequence(w).last_logits)
                      .abs()
                      .max()
                      .item<double>(),
                  1e-4)
            << "chunk " << chunk << " step " << i;
      }
      EXPECT_EQ(chunked->sequence(c).tokens, whole->sequence(w).tokens) << "chunk " << chunk;
      ASSERT_TRUE(chunked->Release(c).ok());
      ASSERT_TRUE(chunked->Release(other).ok());
      ASSERT_TRUE(whole->Release(w).ok());
      EXPECT_EQ(BlocksInUse(*chunked), 0);
    }
  }
}

TEST(EngineConfigTest, Fp16WeightsRefuseValuesBeyondFp16sRange) {
  ModelConfig config = BuiltinModelConfig("tiny-gpt2").value();
  EngineOptions options;
  options.cpu_weight_dtype = at::kHalf;
  ASSERT_TRUE(OfflineEngine::Create(config, RandomWeights(config, 7), options).ok());
  ModelWeights weights = RandomWeights(config, 7);
  weights.layers[1].down_w[3][5] = -70000.0;  // fine in bf16 or fp32, infinite in fp16
  auto refused = OfflineEngine::Create(config, std::move(weights), options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("layer 1's MLP down projection"));
  EXPECT_THAT(refused.status().message(), HasSubstr("use --weight-dtype bf16 or fp32"));
  options.cpu_weight_dtype = at::kBFloat16;
  ModelWeights again = RandomWeights(config, 7);
  again.layers[1].down_w[3][5] = -70000.0;
  EXPECT_TRUE(OfflineEngine::Create(config, std::move(again), options).ok());
}

TEST(EngineConfigTest, AutoFp16FallsBackToFp32WhereTheWeightsDoNotFit) {
  ModelConfig config = BuiltinModelConfig("tiny-gpt2").value();
  ModelWeights fits = RandomWeights(config, 7);
  ModelWeights beyond = RandomWeights(config, 7);
  beyond.layers[1].down_w[3][5] = -70000.0;
  std::string why = "fp16 weights (auto)";
  EXPECT_EQ(FitAutoWeightDtype(fits, at::kHalf, &why), at::kHalf);
  EXPECT_EQ(why, "fp16 weights (auto)");
  EXPECT_EQ(FitAutoWeightDtype(beyond, at::kBFloat16, &why), at::kBFloat16);
  EXPECT_EQ(FitAutoWeightDtype(beyond, at::kHalf, &why), at::kFloat);
  EXPECT_THAT(why, HasSubstr("fp32 weights (auto: fp16 on this CPU, but layer 1's MLP down "
                             "projection holds a value of magnitude 70000"));
  // And the engine runs on what it fell back to.
  EngineOptions options;
  options.cpu_weight_dtype = at::kFloat;
  EXPECT_TRUE(OfflineEngine::Create(config, std::move(beyond), options).ok());
}

TEST(EngineConfigTest, UnknownModelAndCalculationOnlyShapes) {
  auto unknown = BuiltinModelConfig("gpt5");
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(unknown.status().message(), HasSubstr("unknown model 'gpt5'"));
  EXPECT_THAT(ParseKvMode("pagd").status().message(), HasSubstr("unknown KV mode"));
  ModelConfig big = BuiltinModelConfig("llama-7b").value();
  EXPECT_FALSE(big.runnable);
  EXPECT_EQ(big.KvBytesPerToken(2) * 4096, int64_t{2} << 30);  // 2 GiB per 4096-token sequence
  ModelConfig c = BuiltinModelConfig("gpt2").value();
  EXPECT_EQ(c.NumParameters(), 124439808);  // GPT-2 small, tied head counted once
  EXPECT_EQ(c.KvBytesPerToken(), 73728);
}

TEST_F(EngineTest, ContiguousNeedsARunPagedDoesNot) {
  // 16 blocks of 4 tokens. Fill them with four 4-block paged sequences, free the 1st and
  // 3rd: 8 blocks free, but no run of 5.
  std::vector<SequenceId> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(*engine_->AddSequence(Request(16, 1, KvMode::kPaged)));
  EXPECT_EQ(BlocksInUse(*engine_), 16);
  EXPECT_EQ(engine_->AddSequence(Request(4, 1, KvMode::kPaged)).status().code(),
            StatusCode::kResourceExhausted);
  ASSERT_TRUE(engine_->Release(ids[0]).ok());
  ASSERT_TRUE(engine_->Release(ids[2]).ok());
  auto contiguous = engine_->AddSequence(Request(12, 8, KvMode::kContiguous));  // 5 blocks
  EXPECT_EQ(contiguous.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(contiguous.status().message(), HasSubstr("fragmentation"));
  auto paged = engine_->AddSequence(Request(20, 8, KvMode::kPaged));  // 5 blocks, any ids
  ASSERT_TRUE(paged.ok()) << paged.status().ToString();
  std::vector<int32_t> table = engine_->sequence(*paged).block_table;
  std::sort(table.begin(), table.end());
  EXPECT_EQ(table.size(), 5u);
  EXPECT_TRUE(std::includes(std::vector<int32_t>{0, 1, 2, 3, 8, 9, 10, 11}.begin(),
                            std::vector<int32_t>{0, 1, 2, 3, 8, 9, 10, 11}.end(), table.begin(),
                            table.end()));
}

TEST_F(EngineTest, PagedGrowsOneBlockAtATimeAndReportsUsage) {
  SequenceId id = *engine_->AddSequence(Request(5, 8, KvMode::kPaged));
  EXPECT_EQ(engine_->sequence(id).block_table.size(), 2u);
  ASSERT_TRUE(engine_->Prefill({id}).ok());
  EXPECT_EQ(engine_->engine().Usage().bytes_used,
            5 * int64_t(engine_->engine().geometry().token_bytes()));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(engine_->Decode({id}).ok());
  // 9 tokens have K/V; the 10th (latest sampled) has none yet: 3 blocks.
  EXPECT_EQ(engine_->sequence(id).num_kv_tokens, 9);
  EXPECT_EQ(engine_->sequence(id).block_table.size(), 3u);
  const KvUsage u = engine_->engine().Usage();
  EXPECT_EQ(u.bytes_reserved, 3 * int64_t(engine_->engine().geometry().block_bytes()));
  EXPECT_EQ(u.bytes_used, 9 * int64_t(engine_->engine().geometry().token_bytes()));
  // A contiguous sequence reserves prompt + max_tokens up front.
  SequenceId c = *engine_->AddSequence(Request(5, 8, KvMode::kContiguous));
  EXPECT_EQ(engine_->sequence(c).block_table, (std::vector<int32_t>{3, 4, 5, 6}));
}

TEST_F(EngineTest, FinishesAtMaxTokensAndRejectsFurtherSteps) {
  auto results = engine_->Generate({Request(6, 5, KvMode::kPaged), Request(3, 2, KvMode::kNone)});
  ASSERT_TRUE(results.ok()) << results.status().ToString();
  EXPECT_EQ((*results)[0].tokens.size(), 5u);
  EXPECT_EQ((*results)[0].finish, FinishReason::kLength);
  EXPECT_EQ((*results)[0].step_s.size(), 4u);
  EXPECT_EQ((*results)[1].tokens.size(), 2u);
  EXPECT_EQ(BlocksInUse(*engine_), 0);
  SequenceId id = *engine_->AddSequence(Request(3, 1, KvMode::kPaged));
  ASSERT_TRUE(engine_->Prefill({id}).ok());
  EXPECT_EQ(engine_->Decode({id}).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine_->Decode({12345}).code(), StatusCode::kNotFound);
}

// The manager finds the prompt's committed full blocks: the second request computes
// only the rest, over the first one's blocks, and gets the same logits.
TEST(EnginePrefixTest, PrefixHitSkipsPrefillAndGivesTheSameLogits) {
  EngineOptions options;
  options.block_size = 8;
  auto engine = MakeEngine("gpt2", options);
  GenerationRequest r;
  r.prompt = RandomPrompt(37, 50257, 11);
  r.max_tokens = 4;
  r.ignore_eos = true;
  SequenceId first = *engine->AddSequence(r);
  EXPECT_EQ(engine->sequence(first).num_kv_tokens, 0);
  ASSERT_TRUE(engine->Prefill({first}).ok());
  const at::Tensor first_prefill = engine->sequence(first).last_logits.clone();
  // Its next step commits the four full blocks the prefill wrote.
  ASSERT_TRUE(engine->Decode({first}).ok());
  const at::Tensor first_decode = engine->sequence(first).last_logits.clone();
  const std::vector<int32_t> table = engine->sequence(first).block_table;
  SequenceId second = *engine->AddSequence(r);
  EXPECT_EQ(engine->sequence(second).num_kv_tokens, 32);  // 5 tokens left to compute
  const std::vector<int32_t>& shared = engine->sequence(second).block_table;
  EXPECT_EQ(std::vector<int32_t>(shared.begin(), shared.begin() + 4),
            std::vector<int32_t>(table.begin(), table.begin() + 4));
  ASSERT_TRUE(engine->Prefill({second}).ok());
  EXPECT_LE((first_prefill - engine->sequence(second).last_logits).abs().max().item<double>(),
            1e-4);
  ASSERT_TRUE(engine->Decode({second}).ok());
  EXPECT_LE((first_decode - engine->sequence(second).last_logits).abs().max().item<double>(), 1e-4);
  // Releasing the second gives back only its own block; the shared ones stay in use.
  const int64_t in_use = BlocksInUse(*engine);
  ASSERT_TRUE(engine->Release(second).ok());
  EXPECT_EQ(BlocksInUse(*engine), in_use - 1);
  // A prompt that is all cached blocks still computes its last block; a contiguous
  // sequence shares nothing.
  r.prompt.resize(32);
  SequenceId whole = *engine->AddSequence(r);
  EXPECT_EQ(engine->sequence(whole).num_kv_tokens, 24);
  r.mode = KvMode::kContiguous;
  SequenceId contiguous = *engine->AddSequence(r);
  EXPECT_EQ(engine->sequence(contiguous).num_kv_tokens, 0);
}

TEST(EngineStopTest, EosEndsGenerationUnlessIgnored) {
  // Find the greedy first token, then make it the model's EOS.
  ModelConfig config = BuiltinModelConfig("tiny-gpt2").value();
  GenerationRequest r;
  r.prompt = RandomPrompt(6, config.vocab_size, 5);
  r.max_tokens = 5;
  auto probe = OfflineEngine::Create(config, RandomWeights(config, 7), {}).value();
  const int32_t first = (*probe->Generate({r}))[0].tokens[0];
  config.eos_token_id = first;
  auto engine = OfflineEngine::Create(config, RandomWeights(config, 7), {}).value();
  auto stopped = engine->Generate({r});
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ((*stopped)[0].finish, FinishReason::kEos);
  EXPECT_EQ((*stopped)[0].tokens, std::vector<int32_t>{first});
  r.ignore_eos = true;
  auto ignored = engine->Generate({r});
  EXPECT_EQ((*ignored)[0].finish, FinishReason::kLength);
  EXPECT_EQ((*ignored)[0].tokens.size(), 5u);
}

TEST(EngineStopTest, StopTokenIdsEndAndMinTokensHoldBackEosAndStops) {
  ModelConfig config = BuiltinModelConfig("tiny-gpt2").value();
  GenerationRequest r;
  r.prompt = RandomPrompt(6, config.vocab_size, 5);
  r.max_tokens = 5;
  r.ignore_eos = true;
  auto engine = OfflineEngine::Create(config, RandomWeights(config, 7), {}).value();
  const std::vector<int32_t> free_run = (*engine->Generate({r}))[0].tokens;
  ASSERT_EQ(free_run.size(), 5u);
  // The last new token of the free run ends the sample at its first appearance.
  size_t k = free_run.size() - 1;
  while (k > 0 && std::find(free_run.begin(), free_run.begin() + static_cast<std::ptrdiff_t>(k),
                            free_run[k]) != free_run.begin() + static_cast<std::ptrdiff_t>(k)) {
    --k;
  }
  r.stop_token_ids = {free_run[k]};
  auto stopped = engine->Generate({r});
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ((*stopped)[0].finish, FinishReason::kStop);
  const size_t first = static_cast<size_t>(
      std::find(free_run.begin(), free_run.end(), free_run[k]) - free_run.begin());
  EXPECT_EQ((*stopped)[0].tokens,
            std::vector<int32_t>(free_run.begin(),
                                 free_run.begin() + static_cast<std::ptrdiff_t>(first) + 1));
  // min_tokens 3: the stop token cannot be drawn at the second step, so greedy takes
  // the next best there and the run differs from the free one.
  r.stop_token_ids = {free_run[0]};
  r.min_tokens = 3;
  auto held = engine->Generate({r});
  ASSERT_TRUE(held.ok());
  EXPECT_NE((*held)[0].tokens[0], free_run[0]);
  EXPECT_GE((*held)[0].tokens.size(), 3u);
  r.min_tokens = 6;  // more than max_tokens
  EXPECT_THAT(engine->Generate({r}).status().message(), HasSubstr("min_tokens"));
}

// logprobs: the sampled token's log-softmax under the raw logits, and the k most
// likely tokens best first (greedy: the sampled one is the first).
TEST(EngineLogprobsTest, SampledAndTopTokensCarryTheirLogSoftmax) {
  auto engine = MakeEngine("tiny-gpt2");
  GenerationRequest r;
  r.prompt = RandomPrompt(9, 50257, 4);
  r.max_tokens = 3;
  r.logprobs = 3;
  r.ignore_eos = true;
  const SequenceId id = *engine->AddSequence(r);
  ASSERT_TRUE(engine->Prefill({id}).ok());
  const Sequence& s = engine->sequence(id);
  const at::Tensor want = at::log_softmax(s.last_logits.to(at::kDouble), 0);
  const int32_t token = s.tokens.back();
  EXPECT_NEAR(s.last_logprobs.logprob, want[token].item<double>(), 1e-4);
  ASSERT_EQ(s.last_logprobs.top.size(), 3u);
  EXPECT_EQ(s.last_logprobs.top[0].first, token);
  EXPECT_FLOAT_EQ(s.last_logprobs.top[0].second, s.last_logprobs.logprob);
  EXPECT_GE(s.last_logprobs.top[1].second, s.last_logprobs.top[2].second);
  EXPECT_NEAR(s.last_logprobs.top[2].second, want[s.last_logprobs.top[2].first].item<double>(),
              1e-4);
  r.logprobs = 6;
  EXPECT_THAT(engine->AddSequence(r).status().message(), HasSubstr("logprobs"));
}

TEST(EngineStopTest, StopStringEndsGeneration) {
  std::shared_ptr<const Tokenizer> tok;
  try {
    tok = LoadDefaultGpt2Tokenizer();
  } catch (const std::exception& e) {
    GTEST_SKIP() << "GPT-2 rank file absent (scripts/install-deps.sh fetches it): " << e.what();
  }
  EngineOptions options;
  options.block_size = 4;
  auto engine = MakeEngine("tiny-gpt2", options, tok);
  GenerationRequest r;
  r.prompt = tok->Encode("The attention mechanism");
  r.max_tokens = 12;
  r.ignore_eos = true;
  auto first = engine->Generate({r});
  ASSERT_TRUE(first.ok());
  ASSERT_EQ((*first)[0].tokens.size(), 12u);
  // Stop on the text of the 4th token: generation ends right there.
  r.stop = {tok->TokenText((*first)[0].tokens[3])};
  auto stopped = engine->Generate({r});
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ((*stopped)[0].finish, FinishReason::kStop);
  EXPECT_LE((*stopped)[0].tokens.size(), 4u);
}

}  // namespace
}  // namespace kvpool

namespace kvpool {
namespace {

// libsentencepiece bundles protobuf-lite; in a process that also has LibTorch's
// libprotobuf, linking it directly crashed at start-up. It is loaded as an isolated
// module instead: this binary links LibTorch and must still tokenize.
// A crash here must leave a trace: on the GPU machine (PyTorch's LibTorch, Ubuntu's
// libsentencepiece) this test died with SIGSEGV and no debugger was at hand.
void PrintBacktraceAndDie(int sig) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  backtrace_symbols_fd(frames, n, 2);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

TEST(SentencePieceBesideTorchTest, LoadsAndEncodesInATorchProcess) {
#if KVPOOL_HAVE_SENTENCEPIECE
  std::signal(SIGSEGV, PrintBacktraceAndDie);
  auto tok = LoadSentencePiece(KVPOOL_TEST_DATA_DIR "/tokenizer/sentencepiece/tokenizer.model");
  const std::vector<int32_t> ids = tok->Encode("hello world");
  EXPECT_FALSE(ids.empty());
  EXPECT_EQ(tok->Decode(ids), "hello world");
  EXPECT_GT(at::ones({2}).sum().item<float>(), 1.5f);  // LibTorch still works beside it
#else
  GTEST_SKIP() << "built without libsentencepiece";
#endif
}

}  // namespace
}  // namespace kvpool
