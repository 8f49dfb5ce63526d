// ManagerLink: see manager_link.h. Registration, heartbeats, attaching the pool and
// noticing a lost manager, on the link's own thread; sequence calls are ManagerClient's.
#include "service/manager_link.h"

#include <algorithm>
#include <iostream>

#include "common/grpc_status.h"
#include "common/metadata.h"
#include "engine/shm_pool.h"
#ifdef KVPOOL_HAVE_CUDA_TORCH
#include "cuda/cuda_pool.h"
#endif

namespace kvpool::worker {
namespace {

StatusOr<KvDtype> FromProto(v1::KvDtype dtype) {
  switch (dtype) {
    case v1::KV_DTYPE_FP32:
      return KvDtype::kFloat32;
    case v1::KV_DTYPE_FP16:
      return KvDtype::kFloat16;
    case v1::KV_DTYPE_BF16:
      return KvDtype::kBFloat16;
    case v1::KV_DTYPE_INT8:
      return KvDtype::kInt8;
    case v1::KV_DTYPE_FP8_E4M3:
      return KvDtype::kFp8E4m3;
    default:
      return FailedPrecondition("the manager's pool has an unknown dtype " +
                                std::to_string(static_cast<int>(dtype)));
  }
}

// The pool must hold this model's K/V: same layers, K/V heads and head size.
Status CheckPoolFitsModel(const v1::PoolDescriptor& d, const ModelConfig& model) {
  if (d.num_layers() == model.num_layers && d.num_kv_heads() == model.num_kv_heads &&
      d.head_dim() == model.head_dim) {
    return Status::Ok();
  }
  return FailedPrecondition(
      "the manager's pool holds K/V for model '" + d.model_name() + "' (" +
      std::to_string(d.num_layers()) + " layers x " + std::to_string(d.num_kv_heads()) +
      " K/V heads x head dim " + std::to_string(d.head_dim()) + ") but this worker serves '" +
      model.name + "' (" + std::to_string(model.num_layers) + " x " +
      std::to_string(model.num_kv_heads) + " x " + std::to_string(model.head_dim) +
      "): start the manager with --model " + model.name + " or the worker with its model");
}

}  // namespace

bool IsLinkLoss(const grpc::Status& status) { return IsLinkLoss(v1::FromGrpcStatus(status)); }

ManagerLink::ManagerLink(ManagerLinkOptions options, ModelConfig model,
                         std::function<void()> on_change)
    : options_(std::move(options)), model_(std::move(model)), on_change_(std::move(on_change)) {
  grpc::ChannelArguments args;
  // Reconnect quickly once a restarted manager listens again.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  channel_ = grpc::CreateCustomChannel(
      options_.address,
      options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials(), args);
  stub_ = v1::CacheManager::NewStub(channel_);
}

ManagerLink::~ManagerLink() { Stop(); }

void ManagerLink::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void ManagerLink::ReportFatal(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fatal_error_.empty()) fatal_error_ = why;
}

void ManagerLink::Start() {
  thread_ = std::thread([this] { Run(); });
}

std::shared_ptr<const Attachment> ManagerLink::current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

std::string ManagerLink::fatal_error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return fatal_error_;
}

std::unique_ptr<grpc::ClientContext> ManagerLink::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + options_.call_timeout);
  if (!options_.token.empty()) {
    context->AddMetadata(v1::kAuthorizationHeader, "Bearer " + options_.token);
  }
  return context;
}

void ManagerLink::ReportLost(int64_t epoch, const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!current_ || current_->epoch != epoch) return;
    current_.reset();
  }
  std::cerr << "kvpool-worker: lost the manager at " << options_.address << ": " << why << "\n";
  wake_.notify_all();
  on_change_();
}

void ManagerLink::SetCurrent(std::shared_ptr<const Attachment> attachment) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    current_ = std::move(attachment);
  }
  on_change_();
}

StatusOr<std::shared_ptr<Attachment>> ManagerLink::Register(int64_t epoch) {
  v1::RegisterWorkerRequest request;
  request.set_worker_name(options_.worker_name);
  v1::RegisterWorkerResponse response;
  auto context = NewContext();
  KVPOOL_RETURN_IF_ERROR(v1::FromGrpcStatus(
      stub_->RegisterWorker(context.get(), request, &response), "RegisterWorker"));
  if (response.manager_instance().empty()) {
    return FailedPrecondition(
        "the manager at " + options_.address +
        " returned no manager_instance: it predates manager identity; upgrade it");
  }
  const v1::PoolDescriptor& d = response.pool();
  KVPOOL_RETURN_IF_ERROR(CheckPoolFitsModel(d, model_));
  auto attachment = std::make_shared<Attachment>();
  attachment->epoch = epoch;
  attachment->worker_id = response.worker_id();
  attachment->manager_instance = response.manager_instance();
  attachment->lease_ttl = std::chrono::milliseconds(response.lease_ttl_ms());
  attachment->max_tokens_per_call = response.max_tokens_per_call();
  attachment->descriptor = d;
  PoolGeometry& g = attachment->geometry;
  g.num_layers = d.num_layers();
  g.num_kv_heads = d.num_kv_heads();
  g.head_dim = d.head_dim();
  g.block_size = d.block_size();
  g.num_blocks = d.num_blocks();
  KVPOOL_ASSIGN_OR_RETURN(g.dtype, FromProto(d.dtype()));
  if (static_cast<int64_t>(g.pool_bytes()) != d.pool_bytes()) {
    return FailedPrecondition("the manager's pool is " + std::to_string(d.pool_bytes()) +
                              " bytes but its geometry says " + std::to_string(g.pool_bytes()));
  }
  // The layout as this worker reads it (common/kv_layout.h) must be the manager's, to
  // the byte: strides, and for int8/fp8 where and how the scales are kept.
  const v1::KvScaleLayout scales =
      KvDtypeScaled(g.dtype) ? v1::KV_SCALE_LAYOUT_FP32_PER_TOKEN_HEAD : v1::KV_SCALE_LAYOUT_NONE;
  if (d.token_stride_bytes() != g.token_stride_bytes() ||
      d.block_stride_bytes() != g.block_stride_bytes() || d.scale_layout() != scales ||
      (KvDtypeScaled(g.dtype) && d.block_scales_offset_bytes() != g.block_scales_offset())) {
    return FailedPrecondition(
        std::string("the manager's ") + KvDtypeName(g.dtype) + " pool is laid out as " +
        v1::KvScaleLayout_Name(d.scale_layout()) + " with token/block strides " +
        std::to_string(d.token_stride_bytes()) + "/" + std::to_string(d.block_stride_bytes()) +
        " bytes, and this worker reads " + v1::KvScaleLayout_Name(scales) + " with " +
        std::to_string(g.token_stride_bytes()) + "/" + std::to_string(g.block_stride_bytes()) +
        ": run a manager and workers of the same kvpool version");
  }
  if (d.backend() == "shm") {
    KVPOOL_ASSIGN_OR_RETURN(ShmPoolAttachment shm, ShmPoolAttachment::Open(d.shm_name(), g));
    auto owned = std::make_shared<ShmPoolAttachment>(std::move(shm));
    attachment->base = owned->base();
    attachment->mapping = std::move(owned);
  } else if (d.backend() == "cuda") {
#ifdef KVPOOL_HAVE_CUDA_TORCH
    if (d.cuda_ipc_handle().size() != sizeof(gpu::IpcHandleBytes)) {
      return FailedPrecondition("the manager's CUDA IPC handle has " +
                                std::to_string(d.cuda_ipc_handle().size()) + " bytes, not 64");
    }
    gpu::IpcHandleBytes handle;
    std::copy(d.cuda_ipc_handle().begin(), d.cuda_ipc_handle().end(), handle.begin());
    KVPOOL_ASSIGN_OR_RETURN(gpu::CudaPoolAttachment cuda,
                            gpu::CudaPoolAttachment::Open(handle, d.gpu_uuid(), g));
    auto owned = std::make_shared<gpu::CudaPoolAttachment>(std::move(cuda));
    attachment->base = owned->base();
    attachment->device = "cuda:" + std::to_string(owned->device());
    attachment->mapping = std::move(owned);
#else
    return FailedPrecondition(
        "the manager hosts its pool on a GPU (backend cuda) but this worker was built "
        "without CUDA LibTorch; build it on a GPU machine (scripts/gpu-check.sh)");
#endif
  } else {
    return FailedPrecondition("unknown pool backend '" + d.backend() + "' (shm, cuda)");
  }
  return attachment;
}

void ManagerLink::Run() {
  std::chrono::milliseconds backoff{100};
  bool down_logged = false;  // this streak of failed registrations logged a "down" one
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (!current_) {
      const int64_t epoch = last_epoch_ + 1;
      lock.unlock();
      StatusOr<std::shared_ptr<Attachment>> attached = Register(epoch);
      lock.lock();
      if (stop_) break;
      if (attached.ok()) {
        last_epoch_ = epoch;
        if (epoch > 1) reattachments_.fetch_add(1);
        const Attachment& a = **attached;
        std::cerr << "kvpool-worker: registered with " << options_.address << " as worker "
                  << a.worker_id << " (pool " << a.descriptor.backend() << " "
                  << (a.descriptor.backend() == "shm" ? a.descriptor.shm_name()
                                                      : a.descriptor.gpu_uuid())
                  << ", " << a.geometry.num_blocks << " blocks of " << a.geometry.block_size
                  << " tokens, " << KvDtypeName(a.geometry.dtype) << " K/V)\n";
        backoff = std::chrono::milliseconds(100);
        down_logged = false;
        lock.unlock();
        SetCurrent(*attached);
        lock.lock();
        continue;
      }
      const StatusCode code = attached.status().code();
      // A pool that cannot hold the model, a token without the worker role, or a name
      // the manager refuses (--name over 256 bytes or not UTF-8): no retry can fix them.
      if (code == StatusCode::kFailedPrecondition || code == StatusCode::kPermissionDenied ||
          code == StatusCode::kInvalidArgument) {
        fatal_error_ = attached.status().message();
        lock.unlock();
        on_change_();
        lock.lock();
        break;
      }
      // A manager that is down (UNAVAILABLE, DEADLINE_EXCEEDED) is logged once per
      // streak: a restart is routine, but a TLS mismatch fails the same way forever.
      const bool down = code == StatusCode::kUnavailable || code == StatusCode::kDeadlineExceeded;
      if (!down || !down_logged) {
        std::cerr << "kvpool-worker: registering with " << options_.address
                  << " failed: " << attached.status().ToString()
                  << (down ? " (retrying quietly)" : "") << "\n";
      }
      down_logged = down_logged || down;
      wake_.wait_for(lock, backoff, [&] { return stop_; });
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    const std::shared_ptr<const Attachment> attached = current_;
    const auto period = std::max(std::chrono::milliseconds(20), attached->lease_ttl / 4);
    if (wake_.wait_for(lock, period, [&] { return stop_ || current_ != attached; })) continue;
    lock.unlock();
    v1::HeartbeatRequest request;
    request.set_worker_id(attached->worker_id);
    request.set_manager_instance(attached->manager_instance);
    if (options_.report_load) options_.report_load(request.mutable_load());
    v1::HeartbeatResponse response;
    auto context = NewContext();
    const grpc::Status status = stub_->Heartbeat(context.get(), request, &response);
    if (!status.ok() && IsLinkLoss(status)) {
      ReportLost(attached->epoch, "heartbeat: " + status.error_message());
    }
    lock.lock();
  }
}

}  // namespace kvpool::worker
