// The engine on the block tables it is given (by the kvpool-manager, through the
// worker or the offline engine): any block ids in token order, blocks appended before
// a step needs them, cached tokens not computed again, swap in, Fork with copy on
// write of the last block, and the errors when a caller gets it wrong.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "engine/engine.h"
#include "engine_trace.h"
#include "service/offline_engine.h"

namespace kvpool {
namespace {

using ::testing::HasSubstr;
using testing::RandomPrompt;

EngineOptions Options() {
  EngineOptions options;
  options.block_size = 8;
  options.num_blocks = 32;
  return options;
}

std::unique_ptr<Engine> MakeEngine() {
  ModelConfig config = BuiltinModelConfig("tiny-gpt2").value();
  auto engine = Engine::Create(config, RandomWeights(config, 7), Options());
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return std::move(engine).value();
}

// The reference: the same model with its blocks from the manager's core in process.
std::unique_ptr<worker::OfflineEngine> MakeManaged() {
  ModelConfig config = BuiltinModelConfig("tiny-gpt2").value();
  auto engine = worker::OfflineEngine::Create(config, RandomWeights(config, 7), Options());
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return std::move(engine).value();
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

GenerationRequest Request(int prompt_len, uint64_t seed) {
  GenerationRequest r;
  r.prompt = RandomPrompt(prompt_len, 50257, seed);
  r.max_tokens = 12;
  r.ignore_eos = true;
  return r;
}

TEST(ExternalBlocksTest, GivenTablesGiveTheSameLogitsAsTheManagersBlocks) {
  auto own = MakeManaged();
  auto ext = MakeEngine();
  GenerationRequest r = Request(13, 1);
  const SequenceId a = *own->AddSequence(r);
  r.block_table = {9, 4};  // any blocks, in token order: 13 tokens need two of 8
  const SequenceId b = *ext->AddSequence(r);
  ASSERT_TRUE(own->Prefill({a}).ok());
  ASSERT_TRUE(ext->Prefill({b}).ok());
  EXPECT_LE(MaxDiff(own->sequence(a).last_logits, ext->sequence(b).last_logits), 1e-5);
  for (int step = 0; step < 6; ++step) {
    ASSERT_TRUE(own->Decode({a}).ok());
    // Token 16 needs a third block: the caller must append it first.
    const Status decoded = ext->Decode({b});
    if (!decoded.ok()) {
      EXPECT_EQ(decoded.code(), StatusCode::kFailedPrecondition);
      EXPECT_THAT(decoded.message(), HasSubstr("append the manager's blocks"));
      ASSERT_TRUE(ext->AppendBlocks(b, {17}).ok());
      ASSERT_TRUE(ext->Decode({b}).ok());
    }
    EXPECT_LE(MaxDiff(own->sequence(a).last_logits, ext->sequence(b).last_logits), 1e-5);
  }
  EXPECT_THAT(ext->sequence(b).block_table, ::testing::ElementsAre(9, 4, 17));
  EXPECT_EQ(ext->sequence(a).tokens, own->sequence(a).tokens);
  ext->Release(b);  // forgets the blocks: freeing them is the manager's
  EXPECT_EQ(ext->num_sequences(), 0);
}

TEST(ExternalBlocksTest, SwappedOutSequenceResumesInOtherBlocksWithTheSameLogits) {
  auto ext = MakeEngine();
  GenerationRequest r = Request(13, 3);
  r.block_table = {1, 2};
  const SequenceId a = *ext->AddSequence(r);
  ASSERT_TRUE(ext->Prefill({a}).ok());
  for (int step = 0; step < 3; ++step) ASSERT_TRUE(ext->Decode({a}).ok());
  const Sequence before = ext->sequence(a);
  ASSERT_EQ(before.tokens.size(), 17u);  // 13 + the prefill's token + 3
  ASSERT_EQ(before.num_kv_tokens, 16);   // the last sampled token has no K/V yet
  StatusOr<SwappedKv> swapped = ext->SwapOut(a);
  ASSERT_TRUE(swapped.ok()) << swapped.status().ToString();
  EXPECT_EQ(swapped->num_tokens, 16);
  EXPECT_EQ(swapped->blocks.size(2), 2);  // whole blocks: positions 0-15
  // The preempted sequence comes back with what it generated in its prompt, in
  // other blocks; the manager found the first block cached (a hit), the second not.
  GenerationRequest resumed = r;
  resumed.prompt = before.tokens;
  resumed.max_tokens = r.max_tokens - static_cast<int32_t>(before.num_generated());
  resumed.rng = before.rng;
  resumed.block_table = {1, 7, 8};
  resumed.cached_tokens = 8;
  resumed.swapped = std::make_shared<const SwappedKv>(*swapped);
  // Running the original on: the reference for the next tokens.
  ASSERT_TRUE(ext->AppendBlocks(a, {3}).ok());
  ASSERT_TRUE(ext->Decode({a}).ok());
  const std::vector<int32_t> reference = ext->sequence(a).tokens;
  const at::Tensor reference_logits = ext->sequence(a).last_logits.clone();
  // Block 2 is scribbled over, as if another sequence took it.
  ext->Release(a);
  GenerationRequest other = Request(8, 9);
  other.block_table = {2};
  const SequenceId scribbler = *ext->AddSequence(other);
  ASSERT_TRUE(ext->Prefill({scribbler}).ok());
  const SequenceId b = *ext->AddSequence(resumed);
  EXPECT_EQ(ext->sequence(b).num_kv_tokens, 16);  // only token 17 is computed again
  ASSERT_TRUE(ext->Prefill({b}).ok());
  EXPECT_EQ(ext->sequence(b).tokens, reference);
  EXPECT_LE(MaxDiff(ext->sequence(b).last_logits, reference_logits), 1e-5);
  // A swap that does not fit the request is refused, not written anywhere.
  GenerationRequest bad = resumed;
  bad.prompt.resize(10);
  bad.cached_tokens = 0;
  bad.block_table = {5, 6};
  EXPECT_EQ(ext->AddSequence(bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(ExternalBlocksTest, CachedTokensAreNotPrefilledAgain) {
  auto ext = MakeEngine();
  GenerationRequest r = Request(20, 2);
  r.block_table = {1, 2, 3};
  const SequenceId first = *ext->AddSequence(r);
  ASSERT_TRUE(ext->Prefill({first}).ok());
  // A second sequence shares the first two full blocks (16 tokens) and owns block 5.
  r.block_table = {1, 2, 5};
  r.cached_tokens = 16;
  const SequenceId second = *ext->AddSequence(r);
  EXPECT_EQ(ext->sequence(second).num_kv_tokens, 16);
  ASSERT_TRUE(ext->Prefill({second}).ok());
  EXPECT_LE(MaxDiff(ext->sequence(first).last_logits, ext->sequence(second).last_logits), 1e-5);
}

TEST(ExternalBlocksTest, ForkCopiesTheLastBlockAndFollowsTheParent) {
  auto ext = MakeEngine();
  GenerationRequest r = Request(21, 3);  // two full blocks and 5 tokens in the third
  r.block_table = {0, 1, 2};
  const SequenceId parent = *ext->AddSequence(r);
  ASSERT_TRUE(ext->Prefill({parent}).ok());
  // The manager's Fork: full blocks shared, the partial one copied to block 7.
  const SequenceId child = *ext->Fork(parent, {0, 1, 7}, 2, 7, /*seed=*/5);
  EXPECT_EQ(ext->sequence(child).num_kv_tokens, 21);
  EXPECT_EQ(ext->sequence(child).tokens, ext->sequence(parent).tokens);  // greedy
  for (int step = 0; step < 3; ++step) {  // 22..24 tokens: the three blocks hold them
    ASSERT_TRUE(ext->Decode({parent, child}).ok());
    EXPECT_LE(MaxDiff(ext->sequence(parent).last_logits, ext->sequence(child).last_logits), 1e-5);
  }
  EXPECT_THAT(ext->Fork(parent, {0, 1, 8}, 2, 8, 6).status().message(),
              HasSubstr("right after its prefill"));
}

TEST(ExternalBlocksTest, RejectsTablesThatDoNotFit) {
  auto ext = MakeEngine();
  GenerationRequest r = Request(20, 4);
  r.block_table = {1, 2};  // 20 tokens need 3 blocks of 8
  EXPECT_THAT(ext->AddSequence(r).status().message(), HasSubstr("needs 3"));
  r.block_table = {1, 2, 32};
  EXPECT_THAT(ext->AddSequence(r).status().message(), HasSubstr("outside the pool"));
  r.block_table = {1, 2, 3};
  r.cached_tokens = 20;
  EXPECT_THAT(ext->AddSequence(r).status().message(), HasSubstr("cached_tokens"));
  r.cached_tokens = 0;
  r.mode = KvMode::kContiguous;  // contiguous covers prompt + max_tokens = 32: 4 blocks
  EXPECT_THAT(ext->AddSequence(r).status().message(), HasSubstr("needs 4"));
  r.mode = KvMode::kNone;  // recomputed every step: no blocks at all
  EXPECT_THAT(ext->AddSequence(r).status().message(), HasSubstr("mode none takes no block_table"));
  r.mode = KvMode::kPaged;
  r.block_table = {1, 2, 3};
  const SequenceId id = *ext->AddSequence(r);
  EXPECT_THAT(ext->AppendBlocks(id, {32}).message(), HasSubstr("outside the pool"));
  EXPECT_EQ(ext->AppendBlocks(12345, {5}).code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvpool

namespace kvpool {
namespace {

// A pool made for another KV dtype or another model is refused when the engine
// attaches, naming what differs (the worker reports this and exits).
// A pool of geometry `g` over memory of its own, as a worker adopts the manager's.
KvPool AdoptedPool(const PoolGeometry& g) {
  std::shared_ptr<void> memory(std::calloc(g.pool_bytes(), 1), std::free);
  return KvPool::Adopt(g, memory.get(), memory);
}

TEST(EngineAttachTest, APoolOfAnotherKvDtypeOrShapeIsRefusedNamingTheDifference) {
  const ModelConfig config = BuiltinModelConfig("tiny-gpt2").value();
  PoolGeometry g;
  g.num_layers = static_cast<int32_t>(config.num_layers);
  g.num_kv_heads = static_cast<int32_t>(config.num_kv_heads);
  g.head_dim = static_cast<int32_t>(config.head_dim);
  g.block_size = 8;
  g.num_blocks = 32;
  g.dtype = KvDtype::kBFloat16;
  auto bf16 = Engine::Create(config, RandomWeights(config, 7), Options(), nullptr, AdoptedPool(g));
  ASSERT_FALSE(bf16.ok());
  EXPECT_EQ(bf16.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(bf16.status().message(), HasSubstr("holds bf16 K/V"));
  EXPECT_THAT(bf16.status().message(), HasSubstr("--kv-cache-dtype fp32"));
  // An int8 engine on that bf16 pool: refused too; on an int8 pool: attached.
  EngineOptions int8 = Options();
  int8.cpu_kv_dtype = KvDtype::kInt8;
  auto mixed = Engine::Create(config, RandomWeights(config, 7), int8, nullptr, AdoptedPool(g));
  ASSERT_FALSE(mixed.ok());
  EXPECT_THAT(mixed.status().message(),
              HasSubstr("holds bf16 K/V, and this cpu engine writes int8"));
  g.dtype = KvDtype::kInt8;
  EXPECT_TRUE(Engine::Create(config, RandomWeights(config, 7), int8, nullptr, AdoptedPool(g)).ok());
  g.dtype = KvDtype::kFloat32;
  g.num_layers += 1;
  auto other = Engine::Create(config, RandomWeights(config, 7), Options(), nullptr, AdoptedPool(g));
  ASSERT_FALSE(other.ok());
  EXPECT_THAT(other.status().message(), HasSubstr("3 layers x"));
  g.num_layers -= 1;
  EXPECT_TRUE(
      Engine::Create(config, RandomWeights(config, 7), Options(), nullptr, AdoptedPool(g)).ok());
}

}  // namespace
}  // namespace kvpool
