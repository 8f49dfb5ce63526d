// OfflineEngine: runs requests on an Engine with no worker service, taking every
// block from a ManagerApi, so that the engine tools (kvpool-engine-run,
// kvpool-engine-bench) and the engine tests use the product's one allocator: the cache
// manager's core, linked in process (InProcessManager; no gRPC, no LibTorch in it).
// Per sequence it opens a manager sequence (its block table and prefix hit), grants
// the next token's slots and commits the full blocks before each decode step (the
// commit planner, as the worker's scheduler does), and publishes and closes at
// release. It has no admission queue and no preemption: a full pool is
// RESOURCE_EXHAUSTED to the caller. It never reads a request twice (the request check
// runs once, here) and holds no K/V of its own. One thread drives it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache_service/cache_manager.h"
#include "engine/engine.h"
#include "service/in_process_manager.h"
#include "service/manager_api.h"

namespace kvpool::worker {

// One request run to completion by OfflineEngine::Generate.
struct GenerationResult {
  std::vector<int32_t> tokens;  // generated tokens only
  FinishReason finish = FinishReason::kRunning;
  double ttft_s = 0;           // prefill, to the first sampled token
  std::vector<double> step_s;  // each later decode step
  std::vector<int64_t> step_kv_reserved_bytes, step_kv_used_bytes;
  double total_s = 0;
};

class OfflineEngine {
 public:
  // An engine with a manager core of its pool's geometry (one worker, no tenant
  // quota); `pool` as Engine::Create takes it (none: the engine makes its own).
  static StatusOr<std::unique_ptr<OfflineEngine>> Create(
      ModelConfig config, ModelWeights weights, EngineOptions options,
      std::shared_ptr<const Tokenizer> tokenizer = {}, std::optional<KvPool> pool = std::nullopt);
  // Drives `engine` with blocks from `manager`; both outlive this, and the manager's
  // pool is the engine's (several engines over one shared pool and one manager).
  OfflineEngine(Engine* engine, ManagerApi* manager);

  // Checks the request, opens its manager sequence (none mode: none) for `client`
  // (the in-process manager's tenant; empty: "default") and adds it to the engine.
  StatusOr<SequenceId> AddSequence(GenerationRequest request, const std::string& client = {});
  Status Prefill(const std::vector<SequenceId>& ids) { return Step(ids, {}); }
  Status Decode(const std::vector<SequenceId>& ids) { return Step({}, ids); }
  // Grants the decode sequences' next slots (committing their full blocks), then one
  // forward for both (Engine::Step, `chunks` as there).
  Status Step(const std::vector<SequenceId>& prefill, const std::vector<SequenceId>& decode,
              const std::vector<int64_t>& chunks = {});
  // Publishes the sequence's full blocks (paged), closes its manager sequence and
  // drops it from the engine.
  Status Release(SequenceId id);
  // Runs the requests together to completion (prefill together, then batched decode
  // steps until every one finishes) and releases them. Timings are per step.
  StatusOr<std::vector<GenerationResult>> Generate(std::vector<GenerationRequest> requests);

  Engine& engine() { return *engine_; }
  const Sequence& sequence(SequenceId id) const { return engine_->sequence(id); }
  const ModelConfig& config() const { return engine_->config(); }
  // The manager core Create made (null for an engine over a given manager).
  manager::CacheManager* core() { return core_.get(); }

 private:
  struct Open {
    int64_t manager_id = 0;  // 0: none mode
    int64_t committed = 0;   // tokens the manager counts as committed
  };
  // Step calls until `ids` hold their slots (grant) or their full blocks are
  // published (!grant), within the manager's per-call budget.
  Status Commit(const std::vector<SequenceId>& ids, bool grant);

  std::unique_ptr<Engine> own_engine_;
  std::unique_ptr<manager::CacheManager> core_;
  std::unique_ptr<InProcessManager> own_manager_;
  Engine* engine_;
  ManagerApi* manager_;
  std::map<SequenceId, Open> open_;
};

}  // namespace kvpool::worker
