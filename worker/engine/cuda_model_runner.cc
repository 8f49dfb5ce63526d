// The CUDA model runner: the one transformer forward (engine/transformer.h) over a
// CUDA backend, on a GPU through LibTorch CUDA (cuBLAS, or kvpool's GEMV for a few
// rows, for the linear layers), with kvpool's CUDA kernels (cuda/paged_attention.h) writing K/V
// into and reading it from the pool through the block tables. Decode steps of up to kMaxGraphBatch
// sequences replay a captured CUDA graph: one launch per step instead of ~150.
//
// Built only against a CUDA LibTorch (KVPOOL_HAVE_CUDA_TORCH). A private pool is plain
// device memory; a shared one is the manager's (cache_service/cuda_pool_host.h),
// mapped through cuda/cuda_pool.h's CudaPoolAttachment and handed to the Engine.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <utility>

#include "cuda/device_buffer.h"
#include "cuda/gemv.h"
#include "cuda/paged_attention.h"
#include "engine/model_runner.h"
#include "engine/transformer.h"

namespace kvpool {
namespace {

constexpr int64_t kGraphBatches[] = {1, 2, 4, 8};
constexpr int64_t kMaxGraphBatch = 8;

// Device-side inputs of one forward. Decode graphs keep one of these alive as the
// static buffers their replays read.
struct DeviceInputs {
  at::Tensor packed64, packed32;                       // what the views below slice
  at::Tensor token_ids, positions, slots, logit_rows;  // int64
  at::Tensor context_lens, query_start, block_tables;  // int32
  at::Tensor decode_workspace;                         // bytes, may be empty
  int64_t num_seqs = 0, num_tokens = 0, max_blocks = 0;
  int32_t max_query_len = 0, max_context_len = 0;
  bool decode = false;
};

class CudaModelRunner : public ModelRunner {
 public:
  CudaModelRunner(ModelConfig config, ModelWeights weights, int device, at::ScalarType dtype,
                  bool graphs)
      : config_(std::move(config)),
        weights_(std::move(weights)),
        device_(device),
        dtype_(dtype),
        graphs_(graphs) {
    if (const char* t = std::getenv("KVPOOL_CUDA_TIMING"); t != nullptr && *t == '1') {
      timing_ = std::make_unique<Timing>();
    }
    // KVPOOL_CUDA_GEMV=0 sends skinny products to cuBLAS instead (for comparison:
    // scripts/gpu-tune.sh; docs/benchmarks.md has the numbers).
    const char* gemv = std::getenv("KVPOOL_CUDA_GEMV");
    gemv_kernel_ = gemv == nullptr || *gemv != '0';
    if (config_.arch == Architecture::kLlama) {
      const RotaryTables tables = MakeRotaryTables(config_);
      rope_cos_ = tables.cos.to(Device(), dtype_);
      rope_sin_ = tables.sin.to(Device(), dtype_);
    }
  }

  const ModelConfig& config() const override { return config_; }
  std::string device() const override { return "cuda:" + std::to_string(device_); }
  KvDtype kv_dtype() const override { return KvDtypeOf(dtype_); }

  StatusOr<KvPool> CreatePool(const PoolGeometry& geometry) const override {
    // A private pool (no manager): plain device memory. A pool shared with other
    // processes comes from the manager's CudaPoolHost and is attached instead.
    c10::cuda::CUDAGuard guard(device_);
    KVPOOL_ASSIGN_OR_RETURN(gpu::DeviceBuffer buffer,
                            gpu::DeviceBuffer::Allocate(geometry.pool_bytes()));
    if (cudaMemset(buffer.data(), 0, geometry.pool_bytes()) != cudaSuccess) {
      return Internal("cudaMemset of the KV pool failed");
    }
    auto owner = std::make_shared<gpu::DeviceBuffer>(std::move(buffer));
    void* base = owner->data();
    return KvPool::Adopt(geometry, base, std::move(owner));
  }

  at::Tensor Forward(const ForwardBatch& batch, const KvPool& pool) override {
    c10::cuda::CUDAGuard guard(device_);
    const bool use_graph = graphs_ && batch.decode_only() && batch.num_seqs() <= kMaxGraphBatch;
    if (!use_graph) {
      DeviceInputs in = Upload(batch, batch.num_seqs());
      return RunLayers(in, pool).to(at::kCPU, at::kFloat);
    }
    int64_t bucket = kMaxGraphBatch;
    for (int64_t b : kGraphBatches) {
      if (b >= batch.num_seqs()) {
        bucket = b;
        break;
      }
    }
    const int32_t max_blocks = static_cast<int32_t>(
        (config_.max_position + pool.geometry().block_size - 1) / pool.geometry().block_size);
    auto key = std::make_pair(bucket, pool.base());
    auto it = graphs_by_batch_.find(key);
    if (it == graphs_by_batch_.end())
      it = graphs_by_batch_.emplace(key, Capture(bucket, max_blocks, pool)).first;
    DecodeGraph& g = *it->second;
    // New inputs into the graph's static buffers, then one replay.
    // The host packing of a padded decode batch has the static buffers' layout: two
    // copies refresh every input.
    const auto t0 = std::chrono::steady_clock::now();
    auto [h64, h32] = PackHost(batch, bucket, max_blocks);
    g.inputs.packed64.copy_(h64, /*non_blocking=*/true);
    g.inputs.packed32.copy_(h32, /*non_blocking=*/true);
    if (timing_) timing_->before.record();
    g.graph.replay();
    if (timing_) timing_->after.record();
    // Through reused pinned memory: a pageable copy would stage and sync twice.
    const int64_t n = batch.num_seqs(), vocab = g.logits.size(1);
    if (!host_logits_.defined() || host_logits_.numel() < n * vocab) {
      host_logits_ =
          at::empty({kMaxGraphBatch * vocab}, at::TensorOptions(at::kFloat).pinned_memory(true));
    }
    at::Tensor staged = host_logits_.narrow(0, 0, n * vocab).view({n, vocab});
    staged.copy_(g.logits.narrow(0, 0, n), /*non_blocking=*/true);
    c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).synchronize();
    at::Tensor logits = staged.clone();
    if (timing_) timing_->Add(t0);
    return logits;
  }

  ~CudaModelRunner() override {
    if (timing_ && timing_->steps > 0) {
      std::fprintf(stderr,
                   "[kvpool cuda] %ld graph steps: %.1f us per step host wall, %.1f us of it "
                   "the graph on the GPU\n",
                   static_cast<long>(timing_->steps), timing_->wall_us / timing_->steps,
                   timing_->graph_us / timing_->steps);
    }
  }

 private:
  // KVPOOL_CUDA_TIMING=1: where a graph step's time goes (host wall vs GPU graph).
  struct Timing {
    at::cuda::CUDAEvent before{cudaEventDefault}, after{cudaEventDefault};
    int64_t steps = 0;
    double wall_us = 0, graph_us = 0;
    void Add(std::chrono::steady_clock::time_point t0) {
      ++steps;
      wall_us +=
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      graph_us += 1e3 * before.elapsed_time(after);
    }
  };

  struct DecodeGraph {
    at::cuda::CUDAGraph graph;
    DeviceInputs inputs;
    at::Tensor logits;
  };

  at::Device Device() const {
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device_));
  }

  struct Layout {
    int64_t seqs = 0, tokens = 0, rows = 0, max_blocks = 1;
    int32_t max_query_len = 1, max_context_len = 0;
  };

  Layout LayoutOf(const ForwardBatch& b, int64_t pad_seqs, int64_t max_blocks) const {
    Layout l;
    for (const auto* t : b.block_tables) max_blocks = std::max<int64_t>(max_blocks, t->size());
    l.seqs = pad_seqs;
    l.tokens = static_cast<int64_t>(b.token_ids.size()) + (pad_seqs - b.num_seqs());
    l.rows = b.decode_only() ? pad_seqs : static_cast<int64_t>(b.logit_rows.size());
    l.max_blocks = std::max<int64_t>(max_blocks, 1);
    for (int64_t s = 0; s < b.num_seqs(); ++s) {
      l.max_query_len = std::max(l.max_query_len, b.query_start[s + 1] - b.query_start[s]);
      l.max_context_len = std::max(l.max_context_len, b.context_lens[s]);
    }
    return l;
  }

  // Packs the batch's metadata into two reused pinned host buffers (int64: ids,
  // positions, slots, logit rows; int32: context lengths, query starts, block tables).
  // `pad_seqs` >= num_seqs pads a decode batch: padded rows write no K/V (slot -1) and
  // attend to nothing (context 0). The buffers are rewritten only after the previous
  // step's logits came back, so no copy from them is still in flight.
  std::pair<at::Tensor, at::Tensor> PackHost(const ForwardBatch& b, int64_t pad_seqs,
                                             int64_t max_blocks) {
    const Layout l = LayoutOf(b, pad_seqs, max_blocks);
    const int64_t n64 = 3 * l.tokens + l.rows, n32 = 2 * l.seqs + 1 + l.seqs * l.max_blocks;
    if (!host64_.defined() || host64_.numel() < n64) {
      host64_ = at::empty({std::max<int64_t>(n64, 4096)},
                          at::TensorOptions(at::kLong).pinned_memory(true));
    }
    if (!host32_.defined() || host32_.numel() < n32) {
      host32_ = at::empty({std::max<int64_t>(n32, 4096)},
                          at::TensorOptions(at::kInt).pinned_memory(true));
    }
    int64_t* p = host64_.data_ptr<int64_t>();
    const int64_t real_tokens = static_cast<int64_t>(b.token_ids.size());
    for (int64_t i = 0; i < l.tokens; ++i) {
      const bool real = i < real_tokens;
      p[i] = real ? b.token_ids[i] : 0;
      p[l.tokens + i] = real ? b.positions[i] : 0;
      p[2 * l.tokens + i] = real ? b.slots[i] : -1;
    }
    for (int64_t r = 0; r < l.rows; ++r) {
      p[3 * l.tokens + r] = r < static_cast<int64_t>(b.logit_rows.size()) ? b.logit_rows[r] : r;
    }
    int32_t* q = host32_.data_ptr<int32_t>();
    int32_t* starts = q + l.seqs;
    int32_t* tables = starts + l.seqs + 1;
    std::fill(q, q + n32, 0);
    for (int64_t s = 0; s < l.seqs; ++s) {
      const bool real = s < b.num_seqs();
      q[s] = real ? b.context_lens[s] : 0;
      starts[s + 1] = real ? b.query_start[s + 1] : starts[s] + 1;
      if (real)
        std::copy(b.block_tables[s]->begin(), b.block_tables[s]->end(), tables + s * l.max_blocks);
    }
    return {host64_.narrow(0, 0, n64), host32_.narrow(0, 0, n32)};
  }

  // Device inputs for one forward: views into two device buffers laid out like PackHost's.
  DeviceInputs Upload(const ForwardBatch& b, int64_t pad_seqs, int64_t max_blocks = 0) {
    const Layout l = LayoutOf(b, pad_seqs, max_blocks);
    auto [h64, h32] = PackHost(b, pad_seqs, max_blocks);
    DeviceInputs in;
    in.num_seqs = l.seqs;
    in.num_tokens = l.tokens;
    in.max_blocks = l.max_blocks;
    in.max_query_len = l.max_query_len;
    in.max_context_len = l.max_context_len;
    in.decode = b.decode_only();
    in.packed64 = h64.to(Device(), /*non_blocking=*/true);
    in.packed32 = h32.to(Device(), /*non_blocking=*/true);
    in.token_ids = in.packed64.narrow(0, 0, l.tokens);
    in.positions = in.packed64.narrow(0, l.tokens, l.tokens);
    in.slots = in.packed64.narrow(0, 2 * l.tokens, l.tokens);
    in.logit_rows = in.packed64.narrow(0, 3 * l.tokens, l.rows);
    in.context_lens = in.packed32.narrow(0, 0, l.seqs);
    in.query_start = in.packed32.narrow(0, l.seqs, l.seqs + 1);
    in.block_tables =
        in.packed32.narrow(0, 2 * l.seqs + 1, l.seqs * l.max_blocks).view({l.seqs, l.max_blocks});
    return in;
  }

  std::unique_ptr<DecodeGraph> Capture(int64_t bucket, int32_t max_blocks, const KvPool& pool) {
    auto g = std::make_unique<DecodeGraph>();
    // Static inputs: a padded batch of `bucket` empty sequences.
    ForwardBatch empty;
    empty.Clear();
    g->inputs = Upload(empty, bucket, max_blocks);  // owns its packed buffers: static
    g->inputs.decode = true;
    g->inputs.max_context_len = static_cast<int32_t>(config_.max_position);
    AllocateWorkspace(g->inputs, pool.geometry());
    const auto index = static_cast<c10::DeviceIndex>(device_);
    c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream(index);
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(false, index);
    at::cuda::CUDAEvent ready;
    ready.record(main);
    ready.block(side);
    {
      c10::cuda::CUDAStreamGuard stream_guard(side);
      for (int i = 0; i < 2; ++i) RunLayers(g->inputs, pool);  // warm-up (cuBLAS handles, plans)
      g->graph.capture_begin();
      g->logits = RunLayers(g->inputs, pool);
      g->graph.capture_end();
    }
    at::cuda::CUDAEvent done;
    done.record(side);
    done.block(main);
    return g;
  }

  void AllocateWorkspace(DeviceInputs& in, const PoolGeometry& geometry) {
    gpu::PagedAttentionDecodeParams p;
    p.geometry = geometry;
    p.num_seqs = static_cast<int32_t>(in.num_seqs);
    p.num_heads = static_cast<int32_t>(config_.num_heads);
    p.max_context_len = in.max_context_len;
    const size_t bytes = gpu::PagedAttentionDecodeWorkspaceBytes(p);
    if (bytes > 0)
      in.decode_workspace =
          at::empty({static_cast<int64_t>(bytes)}, at::TensorOptions(at::kByte).device(Device()));
  }

  // y = [gelu](x W^T + b) [+ residual]. Up to kGemvMaxRows rows (decode) go through
  // kvpool's GEMV kernel with the epilogue fused; more rows through cuBLAS.
  at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                    const at::Tensor& residual = {}, bool gelu_tanh = false) const {
    const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
    const bool aligned = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 &&
                         (k * static_cast<int64_t>(x.element_size())) % 16 == 0;
    if (gemv_kernel_ && m <= gpu::kGemvMaxRows && x.is_contiguous() && aligned) {
      at::Tensor y = at::empty({m, n}, x.options());
      gpu::GemvParams p;
      p.dtype = KvDtypeOf(x.scalar_type());
      p.w = w.data_ptr();
      p.x = x.data_ptr();
      p.bias = b.defined() ? b.data_ptr() : nullptr;
      p.residual = residual.defined() ? residual.contiguous().data_ptr() : nullptr;
      p.y = y.data_ptr();
      p.m = static_cast<int32_t>(m);
      p.n = static_cast<int32_t>(n);
      p.k = static_cast<int32_t>(k);
      p.gelu_tanh = gelu_tanh;
      Check(gpu::Gemv(p, Stream()), "Gemv");
      return y;
    }
    at::Tensor y = at::linear(x, w, b);
    if (gelu_tanh) y = at::gelu(y, "tanh");
    return residual.defined() ? residual + y : y;
  }

  cudaStream_t Stream() const {
    return c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream();
  }

  static void Check(const Status& st, const char* what) {
    TORCH_CHECK(st.ok(), what, ": ", st.ToString());
  }

  at::Tensor Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
    const int64_t half = config_.head_dim / 2;
    at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
    return at::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
  }

  // One forward's CUDA backend: the device inputs and pool it runs over, and the
  // rotary tables gathered at the batch's positions (Llama).
  class CudaBackend : public ForwardBackend {
   public:
    CudaBackend(CudaModelRunner& runner, DeviceInputs& in, const KvPool& pool)
        : r_(runner), in_(in), pool_(pool) {
      if (r_.config_.arch == Architecture::kLlama) {
        cos_ = r_.rope_cos_.index_select(0, in.positions).unsqueeze(1);
        sin_ = r_.rope_sin_.index_select(0, in.positions).unsqueeze(1);
      }
    }

    at::Tensor Linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                      const at::Tensor& residual, bool gelu_tanh) override {
      return r_.Linear(x, w, b, residual, gelu_tanh);
    }

    at::Tensor Attention(int32_t l, const at::Tensor& qkv) override {
      const ModelConfig& c = r_.config_;
      const int64_t t = in_.num_tokens, hd = c.num_heads * c.head_dim,
                    kvd = c.num_kv_heads * c.head_dim;
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
      cudaStream_t stream = r_.Stream();
      at::Tensor q = qkv.narrow(1, 0, hd), k = qkv.narrow(1, hd, kvd);
      at::Tensor v = qkv.narrow(1, hd + kvd, kvd).contiguous();
      if (c.arch == Architecture::kLlama) {
        q = r_.Rope(q.view({t, c.num_heads, c.head_dim}), cos_, sin_).view({t, hd});
        k = r_.Rope(k.view({t, c.num_kv_heads, c.head_dim}), cos_, sin_).view({t, kvd});
      }
      q = q.contiguous();
      k = k.contiguous();
      const PoolGeometry& g = pool_.geometry();
      gpu::WriteKvCacheParams wp;
      wp.geometry = g;
      wp.k_cache = pool_.RegionBytes(l, KvPart::kKey);
      wp.v_cache = pool_.RegionBytes(l, KvPart::kValue);
      wp.k = k.data_ptr();
      wp.v = v.data_ptr();
      wp.slot_mapping = in_.slots.data_ptr<int64_t>();
      wp.num_tokens = t;
      Check(gpu::WriteKvCache(wp, stream), "WriteKvCache");
      at::Tensor attn = at::empty({t, hd}, q.options());
      if (in_.decode) {
        gpu::PagedAttentionDecodeParams p;
        p.geometry = g;
        p.k_cache = wp.k_cache;
        p.v_cache = wp.v_cache;
        p.q = q.data_ptr();
        p.out = attn.data_ptr();
        p.block_tables = in_.block_tables.data_ptr<int32_t>();
        p.context_lens = in_.context_lens.data_ptr<int32_t>();
        p.num_seqs = static_cast<int32_t>(in_.num_seqs);
        p.num_heads = static_cast<int32_t>(c.num_heads);
        p.max_blocks_per_seq = static_cast<int32_t>(in_.max_blocks);
        p.max_context_len = in_.max_context_len;
        p.scale = scale;
        if (in_.decode_workspace.defined()) {
          p.workspace = in_.decode_workspace.data_ptr();
          p.workspace_bytes = static_cast<size_t>(in_.decode_workspace.numel());
        }
        Check(gpu::PagedAttentionDecode(p, stream), "PagedAttentionDecode");
      } else {
        gpu::PagedAttentionPrefillParams p;
        p.geometry = g;
        p.k_cache = wp.k_cache;
        p.v_cache = wp.v_cache;
        p.q = q.data_ptr();
        p.out = attn.data_ptr();
        p.query_start_loc = in_.query_start.data_ptr<int32_t>();
        p.context_lens = in_.context_lens.data_ptr<int32_t>();
        p.block_tables = in_.block_tables.data_ptr<int32_t>();
        p.num_seqs = static_cast<int32_t>(in_.num_seqs);
        p.num_heads = static_cast<int32_t>(c.num_heads);
        p.max_blocks_per_seq = static_cast<int32_t>(in_.max_blocks);
        p.max_query_len = in_.max_query_len;
        p.scale = scale;
        Check(gpu::PagedAttentionPrefill(p, stream), "PagedAttentionPrefill");
      }
      return attn;
    }

   private:
    CudaModelRunner& r_;
    DeviceInputs& in_;
    const KvPool& pool_;
    at::Tensor cos_, sin_;
  };

  // The forward on the current stream; no host synchronisation (capturable).
  at::Tensor RunLayers(DeviceInputs& in, const KvPool& pool) {
    if (in.decode && !in.decode_workspace.defined()) AllocateWorkspace(in, pool.geometry());
    CudaBackend backend(*this, in, pool);
    return TransformerForward(config_, weights_, backend, in.token_ids, in.positions,
                              in.logit_rows);
  }

  ModelConfig config_;
  ModelWeights weights_;
  int device_;
  at::ScalarType dtype_;
  bool graphs_;
  at::Tensor rope_cos_, rope_sin_;
  at::Tensor host64_, host32_;  // pinned staging for the per-step metadata
  at::Tensor host_logits_;      // pinned staging for a graph step's logits
  std::unique_ptr<Timing> timing_;
  bool gemv_kernel_ = true;
  std::map<std::pair<int64_t, void*>, std::unique_ptr<DecodeGraph>> graphs_by_batch_;
};

}  // namespace

StatusOr<std::unique_ptr<ModelRunner>> CreateCudaModelRunner(const ModelConfig& config,
                                                             const ModelWeights& weights,
                                                             int device_index, at::ScalarType dtype,
                                                             bool use_cuda_graphs) {
  if (dtype != at::kHalf && dtype != at::kBFloat16 && dtype != at::kFloat) {
    return InvalidArgument("CUDA runner dtype must be fp16, bf16 or fp32");
  }
  if (config.head_dim != 64 && config.head_dim != 128) {
    return FailedPrecondition("model '" + config.name + "' has head_dim " +
                              std::to_string(config.head_dim) +
                              "; the CUDA attention kernels support 64 and 128");
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device_index < 0 || device_index >= count) {
    return FailedPrecondition("no CUDA device " + std::to_string(device_index) + " (" +
                              std::to_string(count) + " visible)");
  }
  const at::Device device(at::kCUDA, static_cast<c10::DeviceIndex>(device_index));
  return std::unique_ptr<ModelRunner>(
      new CudaModelRunner(config, weights.To(device, dtype), device_index, dtype, use_cuda_graphs));
}

}  // namespace kvpool
