// ManagerService: request validation, auth, Status mapping and proto <-> core
// conversion for the kvpool.v1.CacheManager service. See grpc_service.h.
#include "cache_service/grpc_service.h"

#include <algorithm>
#include <exception>

#include "common/grpc_status.h"
#include "common/metadata.h"
#include "common/text_field.h"

namespace kvpool::manager {
namespace {

using v1::ToGrpcStatus;

// Bounds of the manager's inputs besides those in CacheManagerOptions (prompt and
// commit tokens per call, sequences per worker, context), listed in docs/design.md.
// A Step call may carry at most this many items; more is a malformed request.
constexpr int kMaxStepItems = 1 << 16;
// RegisterWorker's worker_name and model_name, in bytes.
constexpr size_t kMaxNameBytes = 256;

v1::KvDtype ToProto(KvDtype dtype) {
  switch (dtype) {
    case KvDtype::kFloat32:
      return v1::KV_DTYPE_FP32;
    case KvDtype::kFloat16:
      return v1::KV_DTYPE_FP16;
    case KvDtype::kBFloat16:
      return v1::KV_DTYPE_BF16;
    case KvDtype::kInt8:
      return v1::KV_DTYPE_INT8;
    case KvDtype::kFp8E4m3:
      return v1::KV_DTYPE_FP8_E4M3;
  }
  return v1::KV_DTYPE_UNSPECIFIED;
}

// First field where the worker's expected geometry differs from the pool's.
Status CheckGeometry(const v1::PoolGeometry& want, const v1::PoolDescriptor& have) {
  auto differ = [](const char* field, int64_t w, int64_t h) {
    return FailedPrecondition("worker expects " + std::string(field) + " = " + std::to_string(w) +
                              " but the pool has " + std::to_string(h) +
                              "; start the worker with the manager's model and pool settings");
  };
  if (want.num_layers() != have.num_layers())
    return differ("num_layers", want.num_layers(), have.num_layers());
  if (want.num_kv_heads() != have.num_kv_heads())
    return differ("num_kv_heads", want.num_kv_heads(), have.num_kv_heads());
  if (want.head_dim() != have.head_dim())
    return differ("head_dim", want.head_dim(), have.head_dim());
  if (want.block_size() != have.block_size())
    return differ("block_size", want.block_size(), have.block_size());
  if (want.num_blocks() != 0 && want.num_blocks() != have.num_blocks())
    return differ("num_blocks", want.num_blocks(), have.num_blocks());
  if (want.dtype() != v1::KV_DTYPE_UNSPECIFIED && want.dtype() != have.dtype()) {
    return FailedPrecondition("worker expects dtype " + v1::KvDtype_Name(want.dtype()) +
                              " but the pool has " + v1::KvDtype_Name(have.dtype()) +
                              "; start the worker with the manager's model and pool settings");
  }
  return Status::Ok();
}

Status CheckSequenceId(int64_t sequence_id) {
  if (sequence_id < 0) {
    return InvalidArgument("sequence_id " + std::to_string(sequence_id) +
                           " is negative; use the id OpenSequence returned");
  }
  return Status::Ok();
}

// What only the wire can get wrong; num_tokens and the token ids are the core's checks.
Status CheckStepItem(const v1::StepItem& item) { return CheckSequenceId(item.sequence_id()); }

}  // namespace

v1::PoolDescriptor DescribePool(const PoolHost& host, const PoolGeometry& g,
                                const std::string& model_name) {
  v1::PoolDescriptor pool;
  pool.set_backend(host.backend_name());
  pool.set_shm_name(host.shm_name());
  pool.set_cuda_ipc_handle(host.cuda_ipc_handle());
  pool.set_gpu_uuid(host.gpu_uuid());
  pool.set_model_name(model_name);
  pool.set_num_layers(g.num_layers);
  pool.set_num_kv_heads(g.num_kv_heads);
  pool.set_head_dim(g.head_dim);
  pool.set_block_size(g.block_size);
  pool.set_num_blocks(g.num_blocks);
  pool.set_dtype(ToProto(g.dtype));
  pool.set_token_stride_bytes(g.token_stride_bytes());
  pool.set_block_stride_bytes(g.block_stride_bytes());
  if (KvDtypeScaled(g.dtype)) {
    pool.set_scale_layout(v1::KV_SCALE_LAYOUT_FP32_PER_TOKEN_HEAD);
    pool.set_block_scales_offset_bytes(g.block_scales_offset());
  }
  pool.set_region_bytes(static_cast<int64_t>(g.region_bytes()));
  pool.set_block_bytes(static_cast<int64_t>(g.block_bytes()));
  pool.set_pool_bytes(static_cast<int64_t>(g.pool_bytes()));
  return pool;
}

std::vector<std::string> ManagerService::MethodNames() {
  return {"RegisterWorker",
          "Heartbeat",
          "OpenSequence",
          "Step",
          "Fork",
          "CloseSequence",
          "GetStats",
          "CheckInvariants",
          "AuthenticateClient",
          "PinPrefix",
          "ListPins",
          "Unpin",
          "ResetPrefixCache"};
}

ManagerService::ManagerService(CacheManager* core, v1::PoolDescriptor pool,
                               const Authenticator* auth, ServiceMetrics* metrics)
    : core_(core), pool_(std::move(pool)), auth_(auth), metrics_(metrics) {}

grpc::Status ManagerService::Serve(Method method, const grpc::ServerContext* context,
                                   const std::function<Status(const Caller&)>& body) {
  const auto start = Clock::now();
  std::optional<std::string> authorization;
  const auto& metadata = context->client_metadata();
  if (const auto it = metadata.find(v1::kAuthorizationHeader); it != metadata.end()) {
    authorization.emplace(it->second.data(), it->second.size());
  }
  std::string auth_error;
  const std::optional<Caller> caller = auth_->Authenticate(authorization, &auth_error);
  const bool worker_call = method != kGetStats && method != kCheckInvariants;
  grpc::Status result;
  if (!caller.has_value()) {
    result = ToGrpcStatus(Unauthenticated(auth_error));
  } else if (worker_call && !caller->Has(kRoleWorker)) {
    result = ToGrpcStatus(PermissionDenied(
        MethodNames()[method] +
        " is a worker call and this token has the client role only: "
        "start workers with a token whose line in the manager's token file has the worker role"));
  } else {
    try {
      result = ToGrpcStatus(body(*caller));
    } catch (const std::exception& e) {
      result = ToGrpcStatus(Internal(std::string("unexpected error: ") + e.what()));
    }
  }
  metrics_->ObserveRpc(method, std::chrono::duration<double>(Clock::now() - start).count());
  return result;
}

Status ManagerService::CheckWorker(const std::string& tenant, const std::string& instance,
                                   int64_t worker_id) const {
  KVPOOL_RETURN_IF_ERROR(core_->CheckInstance(instance));
  if (worker_id <= 0) {
    return InvalidArgument("worker_id " + std::to_string(worker_id) +
                           " is not valid; use the id RegisterWorker returned");
  }
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = workers_.find(worker_id);
  if (it == workers_.end() || it->second.tenant != tenant) {
    return NotFound("unknown worker " + std::to_string(worker_id) +
                    "; its lease may have expired: call RegisterWorker again")
        .WithReason(reason::kWorkerNotRegistered);
  }
  return Status::Ok();
}

void ManagerService::ExpireLeases(Clock::time_point now) {
  const std::vector<WorkerId> expired = core_->ExpireLeases(now);
  if (expired.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (WorkerId id : expired) workers_.erase(id);
}

std::vector<WorkerSnapshot> ManagerService::Workers() const {
  std::vector<WorkerSnapshot> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, worker] : workers_) out.push_back(worker);
  }
  std::sort(out.begin(), out.end(),
            [](const WorkerSnapshot& a, const WorkerSnapshot& b) { return a.id < b.id; });
  return out;
}

grpc::Status ManagerService::RegisterWorker(grpc::ServerContext* context,
                                            const v1::RegisterWorkerRequest* request,
                                            v1::RegisterWorkerResponse* response) {
  return Serve(kRegisterWorker, context, [&](const Caller& caller) -> Status {
    const std::string& tenant = caller.tenant;
    KVPOOL_RETURN_IF_ERROR(
        v1::CheckTextField(request->worker_name(), "worker_name", kMaxNameBytes));
    KVPOOL_RETURN_IF_ERROR(v1::CheckTextField(request->model_name(), "model_name", kMaxNameBytes));
    if (!request->model_name().empty() && request->model_name() != pool_.model_name()) {
      return FailedPrecondition("worker serves model \"" + request->model_name() +
                                "\" but this manager's pool holds \"" + pool_.model_name() +
                                "\"; start the manager with --model " + request->model_name());
    }
    if (request->has_expected_geometry()) {
      KVPOOL_RETURN_IF_ERROR(CheckGeometry(request->expected_geometry(), pool_));
    }
    const WorkerLease lease = core_->RegisterWorker(Clock::now());
    {
      std::lock_guard<std::mutex> lock(mu_);
      WorkerSnapshot& worker = workers_[lease.worker_id];
      worker.id = lease.worker_id;
      worker.name = request->worker_name();
      worker.tenant = tenant;
      worker.registered_at = worker.last_heartbeat_at = Clock::now();
    }
    response->set_worker_id(lease.worker_id);
    response->set_lease_ttl_ms(lease.ttl.count());
    *response->mutable_pool() = pool_;
    response->set_max_tokens_per_call(core_->options().max_tokens_per_call);
    response->set_manager_instance(core_->instance_id());
    return Status::Ok();
  });
}

grpc::Status ManagerService::Heartbeat(grpc::ServerContext* context,
                                       const v1::HeartbeatRequest* request,
                                       v1::HeartbeatResponse* response) {
  return Serve(kHeartbeat, context, [&](const Caller& caller) -> Status {
    KVPOOL_RETURN_IF_ERROR(
        CheckWorker(caller.tenant, request->manager_instance(), request->worker_id()));
    const Clock::time_point now = Clock::now();
    KVPOOL_RETURN_IF_ERROR(core_->Heartbeat(request->worker_id(), now));
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = workers_.find(request->worker_id());
      if (it != workers_.end()) {
        it->second.last_heartbeat_at = now;
        if (request->has_load()) it->second.load = request->load();
      }
    }
    response->set_lease_ttl_ms(core_->options().lease_ttl.count());
    return Status::Ok();
  });
}

StatusOr<std::string> ManagerService::ClientTenant(const grpc::ServerContext* context,
                                                   const std::string& worker_tenant) const {
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find(v1::kClientAuthorizationHeader);
  if (it == metadata.end()) return worker_tenant;
  std::string error;
  const std::optional<Caller> client =
      auth_->Authenticate(std::string(it->second.data(), it->second.size()), &error);
  if (!client) return Unauthenticated("the client's token (" + error + ")");
  if (!client->Has(kRoleClient)) {
    return PermissionDenied(
        "the client's token has the worker role only: a worker token cannot be used as a "
        "client's credential; use a token whose line has the client role");
  }
  return client->tenant;
}

grpc::Status ManagerService::AuthenticateClient(grpc::ServerContext* context,
                                                const v1::AuthenticateClientRequest* request,
                                                v1::AuthenticateClientResponse* response) {
  return Serve(kAuthenticateClient, context, [&](const Caller& caller) -> Status {
    KVPOOL_RETURN_IF_ERROR(
        CheckWorker(caller.tenant, request->manager_instance(), request->worker_id()));
    KVPOOL_ASSIGN_OR_RETURN(const std::string client_tenant, ClientTenant(context, caller.tenant));
    response->set_tenant(client_tenant);
    return Status::Ok();
  });
}

grpc::Status ManagerService::OpenSequence(grpc::ServerContext* context,
                                          const v1::OpenSequenceRequest* request,
                                          v1::OpenSequenceResponse* response) {
  return Serve(kOpenSequence, context, [&](const Caller& caller) -> Status {
    const std::string& tenant = caller.tenant;
    KVPOOL_RETURN_IF_ERROR(CheckWorker(tenant, request->manager_instance(), request->worker_id()));
    OpenRequest open;
    switch (request->mode()) {
      case v1::SEQUENCE_MODE_CONTIGUOUS:
        open.mode = KvMode::kContiguous;
        break;
      case v1::SEQUENCE_MODE_PAGED:
        open.mode = KvMode::kPaged;
        break;
      default:
        return InvalidArgument("mode " + std::to_string(request->mode()) +
                               " is not SEQUENCE_MODE_CONTIGUOUS (1) or SEQUENCE_MODE_PAGED (2)");
    }
    // Token ids, max_tokens and the context are checked once, by the core.
    open.worker_id = request->worker_id();
    // A worker serving end clients forwards the client's own bearer token; the prefix
    // cache is then salted by the client's tenant (authenticated here, like any token),
    // while the worker id stays the worker's.
    KVPOOL_ASSIGN_OR_RETURN(open.tenant, ClientTenant(context, tenant));
    open.token_ids.assign(request->token_ids().begin(), request->token_ids().end());
    open.max_tokens = request->max_tokens();
    if (request->has_retention_priority()) open.retention_priority = request->retention_priority();
    KVPOOL_ASSIGN_OR_RETURN(OpenResult result, core_->OpenSequence(open, Clock::now()));
    response->set_sequence_id(result.sequence_id);
    response->mutable_block_table()->Add(result.block_table.begin(), result.block_table.end());
    response->set_cached_tokens(result.cached_tokens);
    response->set_allocatable_blocks(result.allocatable_blocks);
    return Status::Ok();
  });
}

grpc::Status ManagerService::Step(grpc::ServerContext* context, const v1::StepRequest* request,
                                  v1::StepResponse* response) {
  return Serve(kStep, context, [&](const Caller& caller) -> Status {
    KVPOOL_RETURN_IF_ERROR(
        CheckWorker(caller.tenant, request->manager_instance(), request->worker_id()));
    if (request->items_size() > kMaxStepItems) {
      return InvalidArgument("a Step call carries at most " + std::to_string(kMaxStepItems) +
                             " items, got " + std::to_string(request->items_size()));
    }
    // Malformed items get their own INVALID_ARGUMENT result; the rest go to the core.
    std::vector<StepItem> items;
    std::vector<Status> item_status(request->items_size());
    items.reserve(request->items_size());
    for (int i = 0; i < request->items_size(); ++i) {
      const v1::StepItem& in = request->items(i);
      item_status[i] = CheckStepItem(in);
      if (!item_status[i].ok()) continue;
      StepItem& item = items.emplace_back();
      item.sequence_id = in.sequence_id();
      item.num_tokens = in.num_tokens();
      item.commit_token_ids.assign(in.commit_token_ids().begin(), in.commit_token_ids().end());
    }
    KVPOOL_ASSIGN_OR_RETURN(std::vector<StepItemResult> results,
                            core_->Step(request->worker_id(), items, Clock::now()));
    if (results.size() != items.size()) {
      return Internal("core answered " + std::to_string(results.size()) + " step results for " +
                      std::to_string(items.size()) + " items");
    }
    size_t next = 0;
    for (int i = 0; i < request->items_size(); ++i) {
      v1::StepItemResult* out = response->add_results();
      out->set_sequence_id(request->items(i).sequence_id());
      const Status* status = &item_status[i];
      if (status->ok()) {
        const StepItemResult& result = results[next++];
        status = &result.status;
        out->mutable_new_blocks()->Add(result.new_blocks.begin(), result.new_blocks.end());
      }
      out->set_code(static_cast<int32_t>(status->code()));
      out->set_message(status->message());
      out->set_reason(std::string(status->reason()));
    }
    return Status::Ok();
  });
}

grpc::Status ManagerService::Fork(grpc::ServerContext* context, const v1::ForkRequest* request,
                                  v1::ForkResponse* response) {
  return Serve(kFork, context, [&](const Caller& caller) -> Status {
    KVPOOL_RETURN_IF_ERROR(
        CheckWorker(caller.tenant, request->manager_instance(), request->worker_id()));
    KVPOOL_RETURN_IF_ERROR(CheckSequenceId(request->sequence_id()));
    KVPOOL_ASSIGN_OR_RETURN(
        ForkResult result, core_->Fork(request->worker_id(), request->sequence_id(), Clock::now()));
    response->set_sequence_id(result.sequence_id);
    response->mutable_block_table()->Add(result.block_table.begin(), result.block_table.end());
    response->set_copy_src_block(result.copy_src_block);
    response->set_copy_dst_block(result.copy_dst_block);
    return Status::Ok();
  });
}

grpc::Status ManagerService::CloseSequence(grpc::ServerContext* context,
                                           const v1::CloseSequenceRequest* request,
                                           v1::CloseSequenceResponse*) {
  return Serve(kCloseSequence, context, [&](const Caller& caller) -> Status {
    KVPOOL_RETURN_IF_ERROR(
        CheckWorker(caller.tenant, request->manager_instance(), request->worker_id()));
    KVPOOL_RETURN_IF_ERROR(CheckSequenceId(request->sequence_id()));
    return core_->CloseSequence(request->worker_id(), request->sequence_id(), Clock::now());
  });
}

v1::HitRateCurves VisibleHitRateCurves(const CacheManager& core, const Caller& caller,
                                       Clock::time_point now) {
  const HitRateCurves all = core.PredictedHitRates(now);
  const bool operator_view = caller.Has(kRoleWorker);
  v1::HitRateCurves out;
  out.set_pool_blocks(all.pool_blocks);
  out.set_exact_blocks(all.exact_blocks);
  out.set_sample_rate(all.sample_rate);
  out.set_window_seconds(all.window_seconds);
  out.set_knee_min_gain(kKneeMinGain);
  out.mutable_cache_blocks()->Add(all.cache_blocks.begin(), all.cache_blocks.end());
  for (const HitRateCurve& c : all.curves) {
    if (!operator_view && c.tenant != caller.tenant) continue;
    v1::HitRateCurve* curve = out.add_curves();
    curve->set_tenant(c.tenant);
    curve->set_window(c.window);
    curve->set_query_tokens(c.query_tokens);
    curve->mutable_hit_rate()->Add(c.hit_rate.begin(), c.hit_rate.end());
    curve->set_knee_blocks(all.Knee(c, kKneeMinGain));
  }
  return out;
}

grpc::Status ManagerService::GetStats(grpc::ServerContext* context, const v1::GetStatsRequest*,
                                      v1::GetStatsResponse* response) {
  return Serve(kGetStats, context, [&](const Caller& caller) -> Status {
    const ManagerStats s = core_->Stats();
    const TenantStats* own = nullptr;
    for (const TenantStats& t : s.tenants) {
      if (t.tenant == caller.tenant) own = &t;
    }
    // A client sees the pool's occupancy and its own tenant's prefix counters only.
    const bool operator_view = caller.Has(kRoleWorker);
    response->set_num_blocks(s.num_blocks);
    response->set_free_blocks(s.free_blocks);
    response->set_cached_blocks(s.cached_blocks);
    response->set_in_use_blocks(s.in_use_blocks);
    response->set_num_sequences(s.num_sequences);
    response->set_num_workers(s.num_workers);
    response->set_prefix_queries_tokens(operator_view ? s.prefix_queries_tokens
                                                      : (own ? own->prefix_queries_tokens : 0));
    response->set_prefix_hits_tokens(operator_view ? s.prefix_hits_tokens
                                                   : (own ? own->prefix_hits_tokens : 0));
    response->set_tenant(caller.tenant);
    response->set_tenant_blocks_in_use(own ? own->blocks_in_use : 0);
    response->set_tenant_max_blocks(std::min(core_->TenantMaxBlocks(caller.tenant), s.num_blocks));
    response->set_evictions(s.evictions);
    response->set_expired_leases(s.expired_leases);
    response->set_bytes_reserved(s.bytes_reserved);
    response->set_bytes_used(s.bytes_used);
    response->set_kv_cache_usage_ratio(
        s.num_blocks > 0 ? static_cast<double>(s.in_use_blocks) / s.num_blocks : 0.0);
    *response->mutable_hit_rate_curves() = VisibleHitRateCurves(*core_, caller, Clock::now());
    response->set_pins(operator_view ? s.pins : (own ? own->pins : 0));
    response->set_pinned_blocks(operator_view ? s.pinned_blocks : (own ? own->pinned_blocks : 0));
    response->set_tenant_max_pinned_blocks(
        std::min(core_->options().tenant_max_pinned_blocks, response->tenant_max_blocks()));
    return Status::Ok();
  });
}

namespace {

void ToProto(const PinInfo& pin, v1::PinInfo* out) {
  out->set_pin_id(pin.pin_id);
  out->set_tenant(pin.tenant);
  out->set_pinned_blocks(pin.pinned_blocks);
  out->set_pinned_tokens(pin.pinned_tokens);
  out->set_expires_in_ms(pin.expires_in.count());
  if (pin.retention_priority >= 0) out->set_retention_priority(pin.retention_priority);
}

}  // namespace

grpc::Status ManagerService::PinPrefix(grpc::ServerContext* context,
                                       const v1::PinPrefixRequest* request,
                                       v1::PinPrefixResponse* response) {
  return Serve(kPinPrefix, context, [&](const Caller& caller) -> Status {
    KVPOOL_RETURN_IF_ERROR(
        CheckWorker(caller.tenant, request->manager_instance(), request->worker_id()));
    PinRequest pin;
    KVPOOL_ASSIGN_OR_RETURN(pin.tenant, ClientTenant(context, caller.tenant));
    pin.token_ids.assign(request->token_ids().begin(), request->token_ids().end());
    pin.ttl = std::chrono::milliseconds(request->ttl_ms());
    if (request->has_retention_priority()) {
      if (request->retention_priority() < 0) {
        return InvalidArgument("retention_priority " +
                               std::to_string(request->retention_priority()) +
                               " is outside 0..100");
      }
      pin.retention_priority = request->retention_priority();
    }
    KVPOOL_ASSIGN_OR_RETURN(const PinInfo info, core_->PinPrefix(pin, Clock::now()));
    ToProto(info, response->mutable_pin());
    return Status::Ok();
  });
}

grpc::Status ManagerService::ListPins(grpc::ServerContext* context,
                                      const v1::ListPinsRequest* request,
                                      v1::ListPinsResponse* response) {
  return Serve(kListPins, context, [&](const Caller& caller) -> Status {
    KVPOOL_RETURN_IF_ERROR(
        CheckWorker(caller.tenant, request->manager_instance(), request->worker_id()));
    KVPOOL_ASSIGN_OR_RETURN(const std::string tenant, ClientTenant(context, caller.tenant));
    for (const PinInfo& pin : core_->ListPins(tenant, Clock::now()))
      ToProto(pin, response->add_pins());
    return Status::Ok();
  });
}

grpc::Status ManagerService::Unpin(grpc::ServerContext* context, const v1::UnpinRequest* request,
                                   v1::UnpinResponse*) {
  return Serve(kUnpin, context, [&](const Caller& caller) -> Status {
    KVPOOL_RETURN_IF_ERROR(
        CheckWorker(caller.tenant, request->manager_instance(), request->worker_id()));
    KVPOOL_ASSIGN_OR_RETURN(const std::string tenant, ClientTenant(context, caller.tenant));
    return core_->Unpin(tenant, request->pin_id(), Clock::now());
  });
}

grpc::Status ManagerService::ResetPrefixCache(grpc::ServerContext* context,
                                              const v1::ResetPrefixCacheRequest*,
                                              v1::ResetPrefixCacheResponse* response) {
  return Serve(kResetPrefixCache, context, [&](const Caller&) -> Status {
    if (context->client_metadata().count(v1::kClientAuthorizationHeader) != 0) {
      return PermissionDenied(
          "ResetPrefixCache is an operator's call: it cannot be made on an end client's behalf");
    }
    const ResetResult reset = core_->ResetPrefixCache(Clock::now());
    response->set_evicted_blocks(reset.evicted_blocks);
    response->set_dropped_pins(reset.dropped_pins);
    return Status::Ok();
  });
}

grpc::Status ManagerService::CheckInvariants(grpc::ServerContext* context,
                                             const v1::CheckInvariantsRequest*,
                                             v1::CheckInvariantsResponse* response) {
  return Serve(kCheckInvariants, context, [&](const Caller&) -> Status {
    const Status status = core_->CheckInvariants();
    response->set_ok(status.ok());
    response->set_violation(status.message());
    return Status::Ok();
  });
}

}  // namespace kvpool::manager
