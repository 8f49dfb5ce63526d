// The engine on a GPU (LibTorch CUDA + kvpool's CUDA kernels + CUDA graphs):
// the three modes give the same greedy tokens; GPU fp32 logits equal the CPU engine's
// and Hugging Face's; graphs equal eager; mixed steps, chunked prefill and swap equal
// their unbroken runs; and a second process that maps the pool
// through CUDA IPC reuses a prefix the first process wrote (a prefix hit across
// processes). Blocks come from the manager's core in process (OfflineEngine), except
// where a test hands the engine its tables itself. Skips without a CUDA device.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "../engine/engine_trace.h"
#include "cache_service/cuda_pool_host.h"
#include "cuda/cuda_pool.h"
#include "engine/engine.h"
#include "engine/model_loader.h"
#include "gpu_test_util.h"
#include "service/offline_engine.h"
#include "weights/safetensors.h"
#include "weights/safetensors_aten.h"

extern char** environ;

namespace kvpool {
namespace {

using testing::MaxDiff;
using testing::RandomPrompt;
using testing::RunBatch;
using testing::Trace;
using worker::OfflineEngine;

std::unique_ptr<OfflineEngine> MakeEngine(const std::string& model, const std::string& device,
                                   at::ScalarType dtype, bool graphs = true,
                                   int32_t block_size = 16, std::optional<KvPool> pool = {}) {
  ModelConfig config = BuiltinModelConfig(model).value();
  EngineOptions options;
  options.device = device;
  options.dtype = dtype;
  options.cuda_graphs = graphs;
  options.block_size = block_size;
  options.num_blocks = pool ? pool->geometry().num_blocks : 256;
  auto engine =
      OfflineEngine::Create(config, RandomWeights(config, 7), options, {}, std::move(pool));
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return std::move(engine).value();
}

TEST(EngineGpuTest, ThreeModesSameGreedyTokensFp16) {
  KVPOOL_SKIP_WITHOUT_GPU();
  auto engine = MakeEngine("gpt2", "cuda", at::kHalf);
  for (const std::vector<int64_t>& lengths :
       std::vector<std::vector<int64_t>>{{23}, {5, 17, 33, 9}}) {
    const Trace none = RunBatch(*engine, KvMode::kNone, lengths, 8);
    const Trace contiguous = RunBatch(*engine, KvMode::kContiguous, lengths, 8);
    const Trace paged = RunBatch(*engine, KvMode::kPaged, lengths, 8);
    EXPECT_EQ(none.tokens, contiguous.tokens) << "batch " << lengths.size();
    EXPECT_EQ(none.tokens, paged.tokens) << "batch " << lengths.size();
    EXPECT_LE(MaxDiff(contiguous, paged), 1e-6) << "same kernel, same K/V: bitwise equal";
  }
}

class GpuVsCpuTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuVsCpuTest, Fp32LogitsEqualTheCpuEngine) {
  KVPOOL_SKIP_WITHOUT_GPU();
  auto gpu = MakeEngine(GetParam(), "cuda", at::kFloat);
  auto cpu = MakeEngine(GetParam(), "cpu", at::kFloat);
  for (KvMode mode : {KvMode::kNone, KvMode::kPaged}) {
    const Trace g = RunBatch(*gpu, mode, {5, 40, 17}, 6);
    const Trace c = RunBatch(*cpu, mode, {5, 40, 17}, 6);
    EXPECT_LE(MaxDiff(g, c), 1e-3) << KvModeName(mode);
    EXPECT_EQ(g.tokens, c.tokens) << KvModeName(mode);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GpuVsCpuTest, ::testing::Values("gpt2", "llama-gqa-small"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) ch = ch == '-' ? '_' : ch;
                           return n;
                         });

TEST(EngineGpuTest, CudaGraphsEqualEager) {
  KVPOOL_SKIP_WITHOUT_GPU();
  auto graphs = MakeEngine("gpt2", "cuda", at::kHalf, /*graphs=*/true);
  auto eager = MakeEngine("gpt2", "cuda", at::kHalf, /*graphs=*/false);
  // Batch sizes 1, 3 (padded to 4) and 8 exercise three captured graphs.
  for (const std::vector<int64_t>& lengths :
       std::vector<std::vector<int64_t>>{{30}, {5, 70, 12}, {3, 9, 27, 81, 11, 50, 7, 20}}) {
    const Trace a = RunBatch(*graphs, KvMode::kPaged, lengths, 10);
    const Trace b = RunBatch(*eager, KvMode::kPaged, lengths, 10);
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_LE(MaxDiff(a, b), 1e-2);
  }
}

TEST(EngineGpuTest, UnsupportedHeadDimIsRefusedUpFront) {
  KVPOOL_SKIP_WITHOUT_GPU();
  ModelConfig tiny = BuiltinModelConfig("tiny-gpt2").value();  // head_dim 16
  EngineOptions options;
  options.device = "cuda";
  auto engine = Engine::Create(tiny, RandomWeights(tiny, 1), options);
  EXPECT_EQ(engine.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(engine.status().message(), ::testing::HasSubstr("head_dim 16"));
}

GenerationRequest MixedRequest(int len, uint64_t seed, KvMode mode) {
  GenerationRequest r;
  r.prompt = RandomPrompt(len, 50257, seed);
  r.max_tokens = 10;
  r.mode = mode;
  r.ignore_eos = true;
  return r;
}

// A mixed step (new prompts and running sequences' next tokens in one forward, what
// the worker's scheduler runs whenever it admits) takes the runner's eager path on the
// GPU: the same tokens and logits as the CPU engine's mixed steps, then decode steps
// (graphs) that go on from the K/V it wrote.
TEST(EngineGpuTest, MixedStepEqualsTheCpuEngine) {
  KVPOOL_SKIP_WITHOUT_GPU();
  auto gpu = MakeEngine("gpt2", "cuda", at::kFloat);
  auto cpu = MakeEngine("gpt2", "cpu", at::kFloat);
  for (KvMode mode : {KvMode::kContiguous, KvMode::kPaged}) {
    std::vector<SequenceId> g, c;
    auto add = [&](int len, uint64_t seed) {
      g.push_back(gpu->AddSequence(MixedRequest(len, seed, mode)).value());
      c.push_back(cpu->AddSequence(MixedRequest(len, seed, mode)).value());
    };
    add(11, 1);
    ASSERT_TRUE(gpu->Prefill({g[0]}).ok());
    ASSERT_TRUE(cpu->Prefill({c[0]}).ok());
    ASSERT_TRUE(gpu->Decode({g[0]}).ok());
    ASSERT_TRUE(cpu->Decode({c[0]}).ok());
    add(19, 2);
    add(5, 3);
    ASSERT_TRUE(gpu->Step({g[1], g[2]}, {g[0]}).ok());
    ASSERT_TRUE(cpu->Step({c[1], c[2]}, {c[0]}).ok());
    for (int step = 0; step < 3; ++step) {
      ASSERT_TRUE(gpu->Decode(g).ok());
      ASSERT_TRUE(cpu->Decode(c).ok());
    }
    for (size_t i = 0; i < g.size(); ++i) {
      EXPECT_EQ(gpu->sequence(g[i]).tokens, cpu->sequence(c[i]).tokens) << i;
      EXPECT_LE((gpu->sequence(g[i]).last_logits.cpu() - cpu->sequence(c[i]).last_logits)
                    .abs()
                    .max()
                    .item<double>(),
                1e-3)
          << KvModeName(mode) << " sequence " << i;
      gpu->Release(g[i]);
      cpu->Release(c[i]);
    }
  }
}

// Chunked prefill on the GPU (the worker's --max-num-batched-tokens): a 300-token
// prompt computed in chunks beside another sequence's decode steps gives the logits and
// tokens of one whole prefill; a chunk short of the prompt's end samples nothing.
// fp32: the chunked and whole products see the same K/V up to the GEMMs' rounding.
TEST(EngineGpuTest, ChunkedPrefillEqualsAWholeOne) {
  KVPOOL_SKIP_WITHOUT_GPU();
  auto chunked = MakeEngine("gpt2", "cuda", at::kFloat);
  auto whole = MakeEngine("gpt2", "cuda", at::kFloat);
  constexpr int kPrompt = 300;
  for (int64_t chunk : {1, 64, 111}) {
    const uint64_t seed = 500 + static_cast<uint64_t>(chunk);  // no prefix hits between cases
    const SequenceId other = *chunked->AddSequence(MixedRequest(9, seed + 1, KvMode::kPaged));
    ASSERT_TRUE(chunked->Prefill({other}).ok());
    const SequenceId c = *chunked->AddSequence(MixedRequest(kPrompt, seed, KvMode::kPaged));
    const SequenceId w = *whole->AddSequence(MixedRequest(kPrompt, seed, KvMode::kPaged));
    ASSERT_TRUE(whole->Prefill({w}).ok());
    int steps = 0;
    while (!chunked->sequence(c).prefilled) {
      const std::vector<SequenceId> decoding = chunked->sequence(other).finished()
                                                   ? std::vector<SequenceId>{}
                                                   : std::vector<SequenceId>{other};
      ASSERT_TRUE(chunked->Step({c}, decoding, {chunk}).ok());
      ++steps;
      if (!chunked->sequence(c).prefilled) {
        EXPECT_EQ(chunked->sequence(c).tokens.size(), size_t{kPrompt}) << "a partial chunk sampled";
      }
    }
    EXPECT_EQ(steps, (kPrompt + chunk - 1) / chunk) << "chunk " << chunk;
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(chunked->Decode({c}).ok());
      ASSERT_TRUE(whole->Decode({w}).ok());
      EXPECT_LE((chunked->sequence(c).last_logits - whole->sequence(w).last_logits)
                    .abs()
                    .max()
                    .item<double>(),
                1e-3)
          << "chunk " << chunk << " step " << i;
    }
    EXPECT_EQ(chunked->sequence(c).tokens, whole->sequence(w).tokens) << "chunk " << chunk;
    chunked->Release(c);
    chunked->Release(other);
    whole->Release(w);
  }
}

// Swap preemption on a GPU pool: the K/V copied to host memory and written back into
// other blocks gives the logits of the sequence that was never interrupted.
TEST(EngineGpuTest, SwappedOutSequenceResumesInOtherBlocksWithTheSameLogits) {
  KVPOOL_SKIP_WITHOUT_GPU();
  ModelConfig config = BuiltinModelConfig("gpt2").value();
  EngineOptions options;
  options.device = "cuda";
  options.dtype = at::kHalf;
  options.block_size = 16;
  options.num_blocks = 16;
  auto engine = Engine::Create(config, RandomWeights(config, 7), options).value();
  GenerationRequest r = MixedRequest(29, 4, KvMode::kPaged);
  r.block_table = {1, 2};
  const SequenceId a = engine->AddSequence(r).value();
  ASSERT_TRUE(engine->Prefill({a}).ok());
  for (int step = 0; step < 3; ++step) ASSERT_TRUE(engine->Decode({a}).ok());
  const Sequence before = engine->sequence(a);
  ASSERT_EQ(before.num_kv_tokens, 32);  // 29 + the prefill's token + 3, less the last
  StatusOr<SwappedKv> swapped = engine->SwapOut(a);
  ASSERT_TRUE(swapped.ok()) << swapped.status().ToString();
  EXPECT_TRUE(swapped->blocks.device().is_cpu());
  // The reference: the same sequence going on uninterrupted.
  ASSERT_TRUE(engine->AppendBlocks(a, {3}).ok());
  ASSERT_TRUE(engine->Decode({a}).ok());
  const std::vector<int32_t> reference = engine->sequence(a).tokens;
  const at::Tensor reference_logits = engine->sequence(a).last_logits.cpu();
  engine->Release(a);
  // Block 2 is overwritten by another sequence, as if the pool had given it away.
  GenerationRequest other = MixedRequest(16, 5, KvMode::kPaged);
  other.block_table = {2, 4};
  const SequenceId scribbler = engine->AddSequence(other).value();
  ASSERT_TRUE(engine->Prefill({scribbler}).ok());
  GenerationRequest resumed = r;
  resumed.prompt = before.tokens;
  resumed.max_tokens = r.max_tokens - static_cast<int32_t>(before.num_generated());
  resumed.rng = before.rng;
  resumed.block_table = {1, 7, 8};  // block 1 a prefix hit; 7 written back; 8 fresh
  resumed.cached_tokens = 16;
  resumed.swapped = std::make_shared<const SwappedKv>(*swapped);
  const SequenceId b = engine->AddSequence(resumed).value();
  EXPECT_EQ(engine->sequence(b).num_kv_tokens, 32);
  ASSERT_TRUE(engine->Prefill({b}).ok());
  EXPECT_EQ(engine->sequence(b).tokens, reference);
  EXPECT_LE((engine->sequence(b).last_logits.cpu() - reference_logits).abs().max().item<double>(),
            2e-2);  // fp16: the same K/V, a prefill kernel instead of a decode one
}

// Hugging Face's logits for full-size GPT-2 on our own random weights, exported with
// kvpool-export-hf, when KVPOOL_HF_GPT2_DIR names that folder (scripts/gpu-check.sh
// sets it). The committed tiny fixtures (head_dim 16) are checked on the CPU.
TEST(EngineGpuTest, Fp32LogitsEqualHuggingFace) {
  KVPOOL_SKIP_WITHOUT_GPU();
  std::vector<std::string> dirs;
  if (const char* extra = std::getenv("KVPOOL_HF_GPT2_DIR")) dirs.push_back(extra);
  if (dirs.empty()) GTEST_SKIP() << "set KVPOOL_HF_GPT2_DIR (scripts/gpu-check.sh does)";
  for (const std::string& dir : dirs) {
    if (!std::filesystem::exists(dir + "/reference.safetensors")) {
      ADD_FAILURE() << dir << "/reference.safetensors is missing";
      continue;
    }
    auto loaded = LoadModel(dir);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    EngineOptions options;
    options.device = "cuda";
    options.dtype = at::kFloat;
    options.block_size = 16;
    auto engine =
        OfflineEngine::Create(loaded->config, std::move(loaded->weights), options).value();
    auto ref = SafetensorsFile::Open(dir + "/reference.safetensors").value();
    double worst = 0;
    for (int p = 0; ref.Contains("prompt" + std::to_string(p) + ".ids"); ++p) {
      const std::string key = "prompt" + std::to_string(p);
      auto read_ids = [&](const std::string& name) {
        TensorView v = ref.Get(name).value();
        std::vector<int64_t> raw(v.NumElements());
        std::memcpy(raw.data(), v.data, raw.size() * sizeof(int64_t));
        return std::vector<int32_t>(raw.begin(), raw.end());
      };
      const std::vector<int32_t> prompt = read_ids(key + ".ids");
      const std::vector<int32_t> want = read_ids(key + ".greedy_use_cache");
      const at::Tensor logits = FloatTensorFromView(ref.Get(key + ".logits").value()).value();
      GenerationRequest r;
      r.prompt = prompt;
      r.max_tokens = static_cast<int32_t>(want.size());
      r.ignore_eos = true;
      SequenceId id = engine->AddSequence(r).value();
      ASSERT_TRUE(engine->Prefill({id}).ok());
      for (size_t step = 0;; ++step) {
        const at::Tensor w = logits[static_cast<int64_t>(prompt.size() + step) - 1];
        worst = std::max(worst, (engine->sequence(id).last_logits - w).abs().max().item<double>());
        if (engine->sequence(id).finished()) break;
        ASSERT_TRUE(engine->Decode({id}).ok());
      }
      const Sequence& s = engine->sequence(id);
      EXPECT_EQ(std::vector<int32_t>(s.tokens.begin() + s.prompt_len(), s.tokens.end()), want)
          << dir;
      engine->Release(id);
    }
    std::printf("[ hf ] %s: max |logit diff| vs transformers = %.3g\n", dir.c_str(), worst);
    EXPECT_LE(worst, 1e-3) << dir;
  }
}

// ---- a prefix hit across processes through CUDA IPC ----
constexpr char kChildEnv[] = "KVPOOL_ENGINE_IPC_CHILD";
constexpr int kBlockSize = 16;
constexpr int kPromptLen = 40;  // 2 full blocks of prefix + 8 tokens

GenerationRequest IpcRequest() {
  GenerationRequest r;
  r.prompt = RandomPrompt(kPromptLen, 50257, 99);
  r.max_tokens = 6;
  r.ignore_eos = true;
  return r;
}

TEST(EngineGpuIpcTest, SecondProcessReusesThePrefixTheFirstWrote) {
  KVPOOL_SKIP_WITHOUT_GPU();
  if (std::getenv(kChildEnv) != nullptr) GTEST_SKIP() << "child process";
  ModelConfig config = BuiltinModelConfig("gpt2").value();
  EngineOptions options;
  options.block_size = kBlockSize;
  options.num_blocks = 64;
  const PoolGeometry g = Engine::GeometryFor(config, options, KvDtype::kFloat16);
  // This process plays the manager: it hosts the pool (and also runs an engine on it).
  auto host = std::make_shared<manager::CudaPoolHost>(manager::CudaPoolHost::Create(0, g).value());
  auto engine =
      MakeEngine("gpt2", "cuda", at::kHalf, true, kBlockSize, KvPool::Adopt(g, host->base(), host));
  SequenceId id = engine->AddSequence(IpcRequest()).value();
  ASSERT_TRUE(engine->Prefill({id}).ok());
  std::vector<int32_t> generated = {engine->sequence(id).tokens.back()};
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(engine->Decode({id}).ok());
    generated.push_back(engine->sequence(id).tokens.back());
  }
  // The child gets the handle, the blocks this process holds and the tokens it expects.
  std::ostringstream spec;
  spec << gpu::IpcHandleToHex(host->ipc_handle()) << " " << host->gpu_uuid();
  for (int32_t b : engine->sequence(id).block_table) spec << " b" << b;
  for (int32_t t : generated) spec << " t" << t;
  const std::string env_entry = std::string(kChildEnv) + "=" + spec.str();
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  envp.push_back(const_cast<char*>(env_entry.c_str()));
  envp.push_back(nullptr);
  std::string filter = "--gtest_filter=EngineGpuIpcTest.Child";
  char* argv[] = {const_cast<char*>("engine_gpu_test"), filter.data(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, envp.data()), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child process failed: see its output above";
}

TEST(EngineGpuIpcTest, Child) {
  const char* spec_env = std::getenv(kChildEnv);
  if (spec_env == nullptr) GTEST_SKIP() << "runs only as the child of the test above";
  std::istringstream spec(spec_env);
  std::string hex, uuid, item;
  spec >> hex >> uuid;
  std::vector<int32_t> parent_blocks, want_tokens;
  while (spec >> item)
    (item[0] == 'b' ? parent_blocks : want_tokens).push_back(std::stoi(item.substr(1)));
  ModelConfig config = BuiltinModelConfig("gpt2").value();
  EngineOptions options;
  options.block_size = kBlockSize;
  options.num_blocks = 64;
  const PoolGeometry g = Engine::GeometryFor(config, options, KvDtype::kFloat16);
  auto handle = gpu::IpcHandleFromHex(hex).value();
  auto attached = std::make_shared<gpu::CudaPoolAttachment>(
      gpu::CudaPoolAttachment::Open(handle, uuid, g).value());
  options.device = "cuda";
  options.dtype = at::kHalf;
  auto engine = Engine::Create(config, RandomWeights(config, 7), options, {},
                               KvPool::Adopt(g, attached->base(), attached))
                    .value();
  // The table a manager would give: the parent's two full blocks (32 tokens it
  // wrote, a prefix hit) and a block the parent does not hold.
  GenerationRequest r = IpcRequest();
  int32_t fresh = 0;
  while (std::find(parent_blocks.begin(), parent_blocks.end(), fresh) != parent_blocks.end())
    ++fresh;
  r.block_table = {parent_blocks[0], parent_blocks[1], fresh};
  r.cached_tokens = 2 * kBlockSize;
  SequenceId id = engine->AddSequence(r).value();
  EXPECT_EQ(engine->sequence(id).num_kv_tokens, 2 * kBlockSize);
  ASSERT_TRUE(engine->Prefill({id}).ok());  // computes only the last 8 prompt tokens
  std::vector<int32_t> got = {engine->sequence(id).tokens.back()};
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(engine->Decode({id}).ok());
    got.push_back(engine->sequence(id).tokens.back());
  }
  EXPECT_EQ(got, want_tokens) << "greedy tokens from the shared prefix differ from the parent's";
  for (int32_t b : engine->sequence(id).block_table) {
    EXPECT_TRUE(std::find(parent_blocks.begin() + 2, parent_blocks.end(), b) == parent_blocks.end())
        << "the child wrote into a block the parent owns";
  }
}

}  // namespace
}  // namespace kvpool
