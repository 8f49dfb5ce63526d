// The Engine: see engine.h. Creation, request checks, sequences and their block tables
// per mode (added, forked, grown, released, swapped out and in); the forward steps are
// engine_step.cc. It never talks to the manager and never allocates a block: block
// tables come from outside (the worker's scheduler, or the offline engine).
#include "engine/engine.h"

#include <ATen/Parallel.h>
#include <malloc.h>

#include <algorithm>
#include <cassert>
#include <cstdlib>

#include "engine/model.h"
#include "engine/request_check.h"
#include "tokenizer/tokenizer.h"

namespace kvpool {
const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kRunning:
      return "running";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kContext:
      return "context";
  }
  return "?";
}

Status CheckFitsFp16(const ModelWeights& w) {
  constexpr double kFp16Max = 65504;
  const auto check = [&](const at::Tensor& t, const std::string& name) -> Status {
    if (!t.defined()) return Status::Ok();
    const double largest = t.abs().max().item<double>();
    if (largest <= kFp16Max) return Status::Ok();  // NaN compares false: refused too
    return InvalidArgument(name + " holds a value of magnitude " + std::to_string(largest) +
                           ", beyond fp16's largest (65504)");
  };
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const LayerWeights& l = w.layers[i];
    const std::string layer = "layer " + std::to_string(i) + "'s ";
    KVPOOL_RETURN_IF_ERROR(check(l.qkv_w, layer + "q/k/v projection"));
    KVPOOL_RETURN_IF_ERROR(check(l.o_w, layer + "output projection"));
    KVPOOL_RETURN_IF_ERROR(check(l.up_w, layer + "MLP up projection"));
    KVPOOL_RETURN_IF_ERROR(check(l.down_w, layer + "MLP down projection"));
  }
  return check(w.lm_head, "the LM head");
}

at::ScalarType FitAutoWeightDtype(const ModelWeights& weights, at::ScalarType chosen,
                                  std::string* why) {
  if (chosen != at::kHalf) return chosen;
  const Status fits = CheckFitsFp16(weights);
  if (fits.ok()) return chosen;
  *why = "fp32 weights (auto: fp16 on this CPU, but " + fits.message() + ")";
  return at::kFloat;
}

void KeepLargeAllocations() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_TOP_PAD, 16 << 20);
}

StatusOr<std::unique_ptr<Engine>> Engine::Create(ModelConfig config, ModelWeights weights,
                                                 EngineOptions options,
                                                 std::shared_ptr<const Tokenizer> tokenizer,
                                                 std::optional<KvPool> external_pool) {
  KVPOOL_RETURN_IF_ERROR(config.Validate());
  if (!config.runnable) {
    return InvalidArgument("model '" + config.name +
                           "' is a shape for memory calculations only; it cannot run here");
  }
  KVPOOL_RETURN_IF_ERROR(weights.Validate(config));
  if (options.block_size <= 0 || options.block_size > 1024) {
    return InvalidArgument("block_size must be in [1, 1024], got " +
                           std::to_string(options.block_size));
  }
  if (options.threads < 0) return InvalidArgument("threads must be >= 0");
  if (options.threads > 0) at::set_num_threads(options.threads);
  std::unique_ptr<ModelRunner> runner;
  if (options.device == "cpu") {
    if (options.cpu_weight_dtype != at::kFloat && options.cpu_weight_dtype != at::kBFloat16 &&
        options.cpu_weight_dtype != at::kHalf) {
      return InvalidArgument("CPU weights are fp32, bf16 or fp16");
    }
    if (options.cpu_weight_dtype == at::kHalf) {
      if (Status fits = CheckFitsFp16(weights); !fits.ok()) {
        return InvalidArgument("--weight-dtype fp16: " + fits.message() +
                               "; use --weight-dtype bf16 or fp32");
      }
    }
    runner = std::make_unique<Model>(std::move(config), std::move(weights),
                                     options.cpu_weight_dtype, options.cpu_kv_dtype);
  } else if (options.device.rfind("cuda", 0) == 0) {
    int index = 0;
    if (options.device.size() > 5 && options.device[4] == ':')
      index = std::atoi(options.device.c_str() + 5);
    KVPOOL_ASSIGN_OR_RETURN(
        runner, CreateCudaModelRunner(config, weights, index, options.dtype, options.cuda_graphs));
  } else {
    return InvalidArgument("unknown device '" + options.device + "' (cpu, cuda, cuda:N)");
  }
  const PoolGeometry g = GeometryFor(runner->config(), options, runner->kv_dtype());
  if (external_pool && external_pool->geometry() != g) {
    const PoolGeometry& p = external_pool->geometry();
    if (p.dtype != g.dtype) {
      return FailedPrecondition(
          std::string("the shared KV pool holds ") + KvDtypeName(p.dtype) + " K/V, and this " +
          runner->device() + " engine writes " + KvDtypeName(g.dtype) +
          ": start the manager with --kv-cache-dtype " + KvDtypeName(g.dtype) +
          " (the KV dtype must match; weights may differ)");
    }
    const auto shape = [](const PoolGeometry& x) {
      return std::to_string(x.num_layers) + " layers x " + std::to_string(x.num_kv_heads) +
             " KV heads x " + std::to_string(x.head_dim) + " dims, blocks of " +
             std::to_string(x.block_size) + " tokens";
    };
    return FailedPrecondition("the shared KV pool's geometry (" + shape(p) +
                              ") does not match model '" + runner->config().name + "' (" +
                              shape(g) + ")");
  }
  std::optional<KvPool> pool = std::move(external_pool);
  if (!pool) {
    KVPOOL_ASSIGN_OR_RETURN(KvPool own, runner->CreatePool(g));
    pool.emplace(std::move(own));
  }
  return std::unique_ptr<Engine>(
      new Engine(std::move(runner), std::move(*pool), options, std::move(tokenizer)));
}

PoolGeometry Engine::GeometryFor(const ModelConfig& c, const EngineOptions& options,
                                 KvDtype dtype) {
  PoolGeometry g;
  g.num_layers = static_cast<int32_t>(c.num_layers);
  g.num_kv_heads = static_cast<int32_t>(c.num_kv_heads);
  g.head_dim = static_cast<int32_t>(c.head_dim);
  g.block_size = options.block_size;
  g.num_blocks =
      options.num_blocks > 0 ? options.num_blocks : 4 * CeilDiv(c.max_position, options.block_size);
  g.dtype = dtype;
  return g;
}

Engine::Engine(std::unique_ptr<ModelRunner> runner, KvPool pool, EngineOptions options,
               std::shared_ptr<const Tokenizer> tok)
    : runner_(std::move(runner)),
      pool_(std::move(pool)),
      options_(options),
      tokenizer_(std::move(tok)) {}

Status Engine::CheckBlocks(const GenerationRequest& r) const {
  // What the caller asks for was checked at the API's edge (request_check.h).
  assert(CheckGeneration(r, runner_->config(), tokenizer_ != nullptr).ok());
  const auto n = static_cast<int64_t>(r.prompt.size());
  if (r.mode != KvMode::kNone) {
    const int64_t covered = r.mode == KvMode::kContiguous ? n + r.max_tokens : n;
    const int64_t need = CeilDiv(covered, options_.block_size);
    if (static_cast<int64_t>(r.block_table.size()) < need) {
      return InvalidArgument("block_table has " + std::to_string(r.block_table.size()) +
                             " blocks; the sequence needs " + std::to_string(need));
    }
    for (int32_t b : r.block_table) {
      if (b < 0 || b >= pool_.geometry().num_blocks) {
        return InvalidArgument("block " + std::to_string(b) + " is outside the pool");
      }
    }
    if (r.cached_tokens < 0 || r.cached_tokens >= n) {
      return InvalidArgument("cached_tokens must be in [0, prompt length), got " +
                             std::to_string(r.cached_tokens));
    }
  } else if (!r.block_table.empty() || r.cached_tokens != 0) {
    return InvalidArgument("a sequence in mode none takes no block_table or cached_tokens");
  }
  return Status::Ok();
}

Status Engine::CheckCovered(const Sequence& seq, int64_t num_tokens) const {
  const int64_t need = CeilDiv(num_tokens, options_.block_size);
  const int64_t have = static_cast<int64_t>(seq.block_table.size());
  if (need <= have) return Status::Ok();
  return FailedPrecondition("the sequence needs " + std::to_string(need) + " blocks and holds " +
                            std::to_string(have) + "; append the manager's blocks before the step");
}

StatusOr<SequenceId> Engine::AddSequence(GenerationRequest request) {
  KVPOOL_RETURN_IF_ERROR(CheckBlocks(request));
  Sequence seq;
  seq.tokens = request.prompt;
  if (request.rng) {
    seq.rng = *request.rng;
  } else {
    seq.rng.seed(request.sampling.seed);
  }
  seq.text = request.generated_text;
  if (!request.stop.empty()) {
    seq.stop_matcher = std::make_shared<const StopMatcher>(request.stop);
    // A resumed sequence continues from the text it had generated.
    seq.stop_matcher->Feed(seq.stop_state, seq.text);
  }
  seq.request = std::move(request);
  const int64_t prompt_len = seq.prompt_len();
  if (seq.request.mode != KvMode::kNone) {
    seq.block_table = seq.request.block_table;
    seq.num_kv_tokens = seq.request.cached_tokens;
    const std::shared_ptr<const SwappedKv> swapped = std::move(seq.request.swapped);
    const int32_t bs = options_.block_size;
    // The manager's hits are whole blocks (shared: never written here); the swapped
    // positions after them go back into this sequence's own blocks.
    if (swapped && swapped->num_tokens > seq.num_kv_tokens && seq.num_kv_tokens % bs == 0) {
      const int64_t blocks = CeilDiv(swapped->num_tokens, bs);
      if (swapped->num_tokens >= prompt_len || swapped->blocks.dim() != 4 ||
          swapped->blocks.size(2) != blocks ||
          static_cast<int64_t>(seq.block_table.size()) < blocks) {
        return InvalidArgument("the swapped K/V (" + std::to_string(swapped->num_tokens) +
                               " tokens) does not fit this request's prompt and block table");
      }
      SwapIn(*swapped, seq.block_table, seq.num_kv_tokens / bs);
      seq.num_kv_tokens = swapped->num_tokens;
    }
  }
  const SequenceId id = next_id_++;
  sequences_.emplace(id, std::move(seq));
  return id;
}

void Engine::Release(SequenceId id) { sequences_.erase(id); }

Status Engine::AppendBlocks(SequenceId id, const std::vector<int32_t>& blocks) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return NotFound("unknown sequence " + std::to_string(id));
  for (int32_t b : blocks) {
    if (b < 0 || b >= pool_.geometry().num_blocks) {
      return InvalidArgument("block " + std::to_string(b) + " is outside the pool");
    }
  }
  it->second.block_table.insert(it->second.block_table.end(), blocks.begin(), blocks.end());
  return Status::Ok();
}

StatusOr<SequenceId> Engine::Fork(SequenceId parent_id, std::vector<int32_t> block_table,
                                  int32_t copy_src, int32_t copy_dst, uint64_t seed) {
  auto it = sequences_.find(parent_id);
  if (it == sequences_.end()) return NotFound("unknown sequence " + std::to_string(parent_id));
  const Sequence& parent = it->second;
  if (!parent.prefilled || parent.num_generated() != 1) {
    return FailedPrecondition("fork a sequence right after its prefill");
  }
  Sequence child;
  child.request = parent.request;
  child.request.sampling.seed = seed;
  child.request.rng.reset();
  child.rng.seed(seed);
  child.tokens = parent.request.prompt;
  child.prefilled = true;
  if (parent.request.mode != KvMode::kNone) {
    if (parent.request.mode != KvMode::kPaged) {
      return FailedPrecondition("Fork shares blocks only for paged sequences");
    }
    const PoolGeometry& g = pool_.geometry();
    const int64_t need = CeilDiv(parent.num_kv_tokens, g.block_size);
    if (static_cast<int64_t>(block_table.size()) < need) {
      return InvalidArgument("fork table has " + std::to_string(block_table.size()) +
                             " blocks; the prompt needs " + std::to_string(need));
    }
    if ((copy_src >= 0) != (copy_dst >= 0) || copy_src >= g.num_blocks ||
        copy_dst >= g.num_blocks) {
      return InvalidArgument("bad copy-on-write blocks " + std::to_string(copy_src) + " -> " +
                             std::to_string(copy_dst));
    }
    if (copy_src >= 0) CopyBlock(copy_src, copy_dst);
    child.block_table = std::move(block_table);
    child.num_kv_tokens = parent.num_kv_tokens;
  }
  child.text.clear();
  child.stop_state = StopMatcher::kStart;
  SampleNext(child, parent.last_logits);
  const SequenceId id = next_id_++;
  sequences_.emplace(id, std::move(child));
  return id;
}

int64_t Engine::BlockPartBytes() const {
  const PoolGeometry& g = pool_.geometry();
  return g.block_stride_bytes();  // the block's elements and, for int8/fp8, its scales
}

StatusOr<SwappedKv> Engine::SwapOut(SequenceId id) const {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return NotFound("unknown sequence " + std::to_string(id));
  const Sequence& s = it->second;
  if (s.request.mode == KvMode::kNone) {
    return FailedPrecondition("a sequence in mode none holds no K/V to swap out");
  }
  const PoolGeometry& g = pool_.geometry();
  const int64_t bytes = BlockPartBytes();
  const int64_t blocks = CeilDiv(s.num_kv_tokens, g.block_size);
  SwappedKv out;
  out.num_tokens = s.num_kv_tokens;
  out.blocks = at::empty({g.num_layers, 2, blocks, bytes}, at::TensorOptions().dtype(at::kByte));
  const auto options = at::TensorOptions().dtype(at::kByte).device(runner_->device());
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int part = 0; part < 2; ++part) {
      const char* region = static_cast<const char*>(
          pool_.RegionBytes(layer, part == 0 ? KvPart::kKey : KvPart::kValue));
      for (int64_t b = 0; b < blocks; ++b) {
        at::Tensor from =
            at::from_blob(const_cast<char*>(region) + s.block_table[b] * bytes, {bytes}, options);
        out.blocks[layer][part][b].copy_(from);
      }
    }
  }
  return out;
}

void Engine::SwapIn(const SwappedKv& swapped, const std::vector<int32_t>& table, int64_t first) {
  const PoolGeometry& g = pool_.geometry();
  const int64_t bytes = BlockPartBytes();
  const auto options = at::TensorOptions().dtype(at::kByte).device(runner_->device());
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int part = 0; part < 2; ++part) {
      char* region =
          static_cast<char*>(pool_.RegionBytes(layer, part == 0 ? KvPart::kKey : KvPart::kValue));
      for (int64_t b = first; b < swapped.blocks.size(2); ++b) {
        at::Tensor to = at::from_blob(region + table[b] * bytes, {bytes}, options);
        to.copy_(swapped.blocks[layer][part][b]);
      }
    }
  }
}

void Engine::CopyBlock(int32_t src, int32_t dst) {
  const PoolGeometry& g = pool_.geometry();
  const int64_t bytes = BlockPartBytes();
  const auto options = at::TensorOptions().dtype(at::kByte).device(runner_->device());
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (KvPart part : {KvPart::kKey, KvPart::kValue}) {
      char* region = static_cast<char*>(pool_.RegionBytes(layer, part));
      at::Tensor from = at::from_blob(region + src * bytes, {bytes}, options);
      at::Tensor to = at::from_blob(region + dst * bytes, {bytes}, options);
      to.copy_(from);
    }
  }
}

}  // namespace kvpool
