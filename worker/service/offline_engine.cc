// OfflineEngine: see offline_engine.h.
#include "service/offline_engine.h"

#include <algorithm>
#include <chrono>

#include "engine/request_check.h"
#include "service/commit_planner.h"
#include "service/sequence_progress.h"

namespace kvpool::worker {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

StatusOr<std::unique_ptr<OfflineEngine>> OfflineEngine::Create(
    ModelConfig config, ModelWeights weights, EngineOptions options,
    std::shared_ptr<const Tokenizer> tokenizer, std::optional<KvPool> pool) {
  KVPOOL_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                          Engine::Create(std::move(config), std::move(weights), options,
                                         std::move(tokenizer), std::move(pool)));
  manager::CacheManagerOptions core_options;
  core_options.geometry = engine->geometry();
  core_options.max_context_tokens = engine->config().max_position;
  auto core = std::make_unique<manager::CacheManager>(core_options);
  auto link = std::make_unique<InProcessManager>(core.get());
  auto offline = std::make_unique<OfflineEngine>(engine.get(), link.get());
  offline->own_engine_ = std::move(engine);
  offline->core_ = std::move(core);
  offline->own_manager_ = std::move(link);
  return offline;
}

OfflineEngine::OfflineEngine(Engine* engine, ManagerApi* manager)
    : engine_(engine), manager_(manager) {}

StatusOr<SequenceId> OfflineEngine::AddSequence(GenerationRequest request,
                                                const std::string& client) {
  KVPOOL_RETURN_IF_ERROR(CheckGeneration(request, engine_->config(), engine_->has_tokenizer()));
  Open open;
  if (request.mode != KvMode::kNone) {
    KVPOOL_ASSIGN_OR_RETURN(OpenedSequence opened, manager_->Open(request.prompt, request.mode,
                                                                  request.max_tokens, -1, client));
    open.manager_id = opened.sequence_id;
    open.committed = opened.cached_tokens;
    request.block_table = std::move(opened.block_table);
    request.cached_tokens = opened.cached_tokens;
  }
  StatusOr<SequenceId> id = engine_->AddSequence(std::move(request));
  if (!id.ok()) {
    if (open.manager_id != 0) (void)manager_->Close(open.manager_id);
    return id.status();
  }
  open_[*id] = open;
  return *id;
}

Status OfflineEngine::Commit(const std::vector<SequenceId>& ids, bool grant) {
  const int64_t block_size = engine_->geometry().block_size;
  for (;;) {
    std::vector<SequenceId> live;
    std::vector<CommitProgress> progress;
    for (SequenceId id : ids) {
      auto it = open_.find(id);
      if (it == open_.end()) return NotFound("unknown sequence " + std::to_string(id));
      if (it->second.manager_id == 0) continue;
      live.push_back(id);
      progress.push_back(ProgressOf(engine_->sequence(id), block_size, it->second.committed));
    }
    const StepPlan plan = PlanStep(progress, block_size, manager_->CommitBudget(), grant);
    if (plan.items.empty()) return Status::Ok();
    std::vector<StepItemRequest> items;
    for (const PlannedItem& planned : plan.items) {
      const SequenceId id = live[planned.index];
      const std::vector<int32_t>& tokens = engine_->sequence(id).tokens;
      StepItemRequest& item = items.emplace_back();
      item.sequence_id = open_[id].manager_id;
      item.num_tokens = planned.num_tokens;
      item.commit_token_ids.assign(tokens.begin() + open_[id].committed,
                                   tokens.begin() + planned.commit_to);
    }
    KVPOOL_ASSIGN_OR_RETURN(std::vector<StepItemOutcome> outcomes, manager_->Step(items));
    // Every accepted item first, so that the engine's tables stay the manager's even
    // when another item of the call was refused.
    Status first_error = Status::Ok();
    for (size_t i = 0; i < plan.items.size(); ++i) {
      Status status = std::move(outcomes[i].status);
      if (status.ok()) {
        const SequenceId id = live[plan.items[i].index];
        open_[id].committed = plan.items[i].commit_to;
        status = engine_->AppendBlocks(id, outcomes[i].new_blocks);
      }
      if (!status.ok() && first_error.ok()) first_error = std::move(status);
    }
    KVPOOL_RETURN_IF_ERROR(first_error);
  }
}

Status OfflineEngine::Step(const std::vector<SequenceId>& prefill,
                           const std::vector<SequenceId>& decode,
                           const std::vector<int64_t>& chunks) {
  // The decode sequences' next slots; a prefill's table came with its Open.
  std::vector<SequenceId> running;
  for (SequenceId id : decode) {
    auto it = open_.find(id);
    if (it == open_.end()) return NotFound("unknown sequence " + std::to_string(id));
    if (engine_->sequence(id).prefilled && !engine_->sequence(id).finished()) running.push_back(id);
  }
  KVPOOL_RETURN_IF_ERROR(Commit(running, /*grant=*/true));
  return engine_->Step(prefill, decode, chunks);
}

Status OfflineEngine::Release(SequenceId id) {
  auto it = open_.find(id);
  if (it == open_.end()) return NotFound("unknown sequence " + std::to_string(id));
  Status status = Status::Ok();
  if (it->second.manager_id != 0) {
    status = Commit({id}, /*grant=*/false);
    const Status closed = manager_->Close(it->second.manager_id);
    if (status.ok()) status = closed;
  }
  open_.erase(it);
  engine_->Release(id);
  return status;
}

StatusOr<std::vector<GenerationResult>> OfflineEngine::Generate(
    std::vector<GenerationRequest> requests) {
  const auto t_start = std::chrono::steady_clock::now();
  std::vector<SequenceId> ids;
  auto release_all = [&] {
    for (SequenceId id : ids) (void)Release(id);
  };
  for (GenerationRequest& r : requests) {
    StatusOr<SequenceId> id = AddSequence(std::move(r));
    if (!id.ok()) {
      release_all();
      return id.status();
    }
    ids.push_back(*id);
  }
  std::vector<GenerationResult> results(ids.size());
  // Records one step's latency and the pool's KV bytes for the sequences it ran.
  auto record = [&](const std::vector<SequenceId>& stepped, double step_s, bool first) {
    const KvUsage u = engine_->Usage();
    for (size_t i = 0; i < ids.size(); ++i) {
      if (std::find(stepped.begin(), stepped.end(), ids[i]) == stepped.end()) continue;
      (first ? results[i].ttft_s : results[i].step_s.emplace_back()) = step_s;
      results[i].step_kv_reserved_bytes.push_back(u.bytes_reserved);
      results[i].step_kv_used_bytes.push_back(u.bytes_used);
    }
  };
  auto t0 = std::chrono::steady_clock::now();
  Status st = Prefill(ids);
  if (!st.ok()) {
    release_all();
    return st;
  }
  record(ids, SecondsSince(t0), true);
  for (;;) {
    std::vector<SequenceId> running;
    for (SequenceId id : ids) {
      if (!engine_->sequence(id).finished()) running.push_back(id);
    }
    if (running.empty()) break;
    t0 = std::chrono::steady_clock::now();
    st = Decode(running);
    if (!st.ok()) {
      release_all();
      return st;
    }
    record(running, SecondsSince(t0), false);
  }
  const double total = SecondsSince(t_start);
  for (size_t i = 0; i < ids.size(); ++i) {
    const Sequence& s = engine_->sequence(ids[i]);
    results[i].tokens.assign(s.tokens.begin() + s.prompt_len(), s.tokens.end());
    results[i].finish = s.finish;
    results[i].total_s = total;
  }
  release_all();
  return results;
}

}  // namespace kvpool::worker
