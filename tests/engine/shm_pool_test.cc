// The engine on the manager's shared-memory pool: two engines (two workers) map the
// segment the manager's PoolHost created and take their blocks from one manager core
// (in process); the second finds the prefix the first wrote and committed (a prefix
// hit across mappings) and gets the same logits; a pool whose size does not match
// the model is refused.
#include "engine/shm_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cache_service/cache_manager.h"
#include "cache_service/pool_host.h"
#include "engine/engine.h"
#include "engine_trace.h"
#include "service/in_process_manager.h"
#include "service/offline_engine.h"

namespace kvpool {
namespace {

using ::testing::HasSubstr;

TEST(ShmPoolTest, TwoEnginesShareThePrefixOneWrote) {
  ModelConfig config = BuiltinModelConfig("tiny-gpt2").value();
  EngineOptions options;
  options.block_size = 4;
  options.num_blocks = 64;
  const PoolGeometry g = Engine::GeometryFor(config, options, KvDtype::kFloat32);
  auto host = manager::PoolHost::Create(manager::PoolBackend::kShm, g);
  ASSERT_TRUE(host.ok()) << host.status().ToString();
  manager::CacheManagerOptions core_options;
  core_options.geometry = g;
  manager::CacheManager core(core_options);
  auto attach = [&]() -> std::unique_ptr<Engine> {
    auto mapping = ShmPoolAttachment::Open(host->shm_name(), g);
    EXPECT_TRUE(mapping.ok()) << mapping.status().ToString();
    auto owner = std::make_shared<ShmPoolAttachment>(std::move(mapping).value());
    void* base = owner->base();
    return Engine::Create(config, RandomWeights(config, 7), options, {},
                          KvPool::Adopt(g, base, std::move(owner)))
        .value();
  };
  std::unique_ptr<Engine> first_engine = attach(), second_engine = attach();
  worker::InProcessManager first_link(&core), second_link(&core);  // two workers
  worker::OfflineEngine first(first_engine.get(), &first_link);
  worker::OfflineEngine second(second_engine.get(), &second_link);
  GenerationRequest r;
  r.prompt = testing::RandomPrompt(19, config.vocab_size, 3);
  r.max_tokens = 3;
  r.ignore_eos = true;
  const SequenceId a = first.AddSequence(r).value();
  ASSERT_TRUE(first.Prefill({a}).ok());
  const at::Tensor prefill_logits = first.sequence(a).last_logits.clone();
  ASSERT_TRUE(first.Decode({a}).ok());  // its grant commits the 4 full blocks
  const SequenceId b = second.AddSequence(r).value();
  EXPECT_EQ(second.sequence(b).num_kv_tokens, 16);  // written by `first`
  ASSERT_TRUE(second.Prefill({b}).ok());            // computes only the last 3 prompt tokens
  EXPECT_LE((prefill_logits - second.sequence(b).last_logits).abs().max().item<double>(), 1e-5);
  ASSERT_TRUE(second.Decode({b}).ok());
  EXPECT_EQ(first.sequence(a).tokens, second.sequence(b).tokens);
  EXPECT_TRUE(first.Release(a).ok());
  EXPECT_TRUE(second.Release(b).ok());
  EXPECT_TRUE(core.CheckInvariants().ok());
  EXPECT_EQ(core.Stats().in_use_blocks, 0);
}

TEST(ShmPoolTest, MismatchedGeometryOrNameIsRefused) {
  PoolGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = 4;
  g.head_dim = 16;
  g.block_size = 4;
  g.num_blocks = 8;
  auto host = manager::PoolHost::Create(manager::PoolBackend::kShm, g);
  ASSERT_TRUE(host.ok());
  PoolGeometry other = g;
  other.num_layers = 3;
  auto wrong = ShmPoolAttachment::Open(host->shm_name(), other);
  EXPECT_EQ(wrong.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(wrong.status().message(), HasSubstr("does not match"));
  auto missing = ShmPoolAttachment::Open("/kvpool-no-such-pool", g);
  EXPECT_EQ(missing.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(missing.status().message(), HasSubstr("cannot open"));
  EXPECT_TRUE(ShmPoolAttachment::Open(host->shm_name(), g).ok());
}

}  // namespace
}  // namespace kvpool
