#include "engine/engine.h"

#include <ATen/Parallel.h>
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>

#include "engine/model.h"
#include "tokenizer/tokenizer.h"

namespace kvpool {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

const char* KvModeName(KvMode mode) {
  switch (mode) {
    case KvMode::kNone:
      return "none";
    case KvMode::kContiguous:
      return "contiguous";
    case KvMode::kPaged:
      return "paged";
  }
  return "?";
}

StatusOr<KvMode> ParseKvMode(const std::string& name) {
  if (name == "none") return KvMode::kNone;
  if (name == "contiguous") return KvMode::kContiguous;
  if (name == "paged") return KvMode::kPaged;
  return InvalidArgument("unknown KV mode '" + name + "' (none, contiguous, paged)");
}

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
    runner = std::make_unique<Model>(std::move(config), std::move(weights));
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
    return FailedPrecondition("the shared KV pool's geometry does not match model '" +
                              runner->config().name + "' with block size " +
                              std::to_string(options.block_size));
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

Status Engine::ReserveBlocks(const std::vector<int32_t>& blocks) {
  return allocator_.Claim(blocks);
}

Engine::Engine(std::unique_ptr<ModelRunner> runner, KvPool pool, EngineOptions options,
               std::shared_ptr<const Tokenizer> tok)
    : runner_(std::move(runner)),
      pool_(std::move(pool)),
      allocator_(pool_.geometry().num_blocks),
      options_(options),
      tokenizer_(std::move(tok)) {}

Status Engine::ValidateRequest(const GenerationRequest& r) const {
  const ModelConfig& c = runner_->config();
  const int64_t n = static_cast<int64_t>(r.prompt.size());
  if (n == 0) return InvalidArgument("prompt is empty: give at least one token");
  for (int64_t i = 0; i < n; ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= c.vocab_size) {
      return InvalidArgument("prompt token " + std::to_string(i) + " is " +
                             std::to_string(r.prompt[i]) + ", outside the vocabulary [0, " +
                             std::to_string(c.vocab_size) + ")");
    }
  }
  if (n >= c.max_position) {
    return InvalidArgument("prompt has " + std::to_string(n) + " tokens; model '" + c.name +
                           "' has a context of " + std::to_string(c.max_position) +
                           " and needs room for at least one new token");
  }
  if (r.max_tokens <= 0) {
    return InvalidArgument("max_tokens must be > 0, got " + std::to_string(r.max_tokens));
  }
  if (n + r.max_tokens > c.max_position) {
    return InvalidArgument("prompt (" + std::to_string(n) + " tokens) + max_tokens (" +
                           std::to_string(r.max_tokens) + ") exceeds the context of " +
                           std::to_string(c.max_position));
  }
  KVPOOL_RETURN_IF_ERROR(r.sampling.Validate());
  if (!r.prefix_blocks.empty()) {
    if (r.mode != KvMode::kPaged) return InvalidArgument("prefix blocks need the paged mode");
    const int64_t cached = static_cast<int64_t>(r.prefix_blocks.size()) * options_.block_size;
    if (cached >= n) {
      return InvalidArgument("a prefix hit must leave at least one prompt token to compute (" +
                             std::to_string(cached) + " cached of " + std::to_string(n) + ")");
    }
    for (int32_t b : r.prefix_blocks) {
      if (b < 0 || b >= pool_.geometry().num_blocks) {
        return InvalidArgument("prefix block " + std::to_string(b) + " is outside the pool");
      }
    }
  }
  if (options_.external_blocks && r.mode != KvMode::kNone) {
    if (!r.prefix_blocks.empty()) {
      return InvalidArgument("an engine on external blocks takes block_table, not prefix_blocks");
    }
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
    return InvalidArgument("block_table and cached_tokens need an engine on external blocks");
  }
  if (!r.stop.empty() && tokenizer_ == nullptr) {
    return InvalidArgument("stop strings need a tokenizer; this engine has none");
  }
  return Status::Ok();
}

Status Engine::EnsureBlocks(Sequence& seq, int64_t num_tokens) {
  const int64_t need = CeilDiv(num_tokens, options_.block_size);
  const int64_t have = static_cast<int64_t>(seq.block_table.size());
  if (need <= have) return Status::Ok();
  if (seq.request.mode == KvMode::kContiguous) {
    return Internal("contiguous sequence outgrew its reservation");  // ValidateRequest bounds it
  }
  if (options_.external_blocks) {
    return FailedPrecondition("the sequence needs " + std::to_string(need) + " blocks and holds " +
                              std::to_string(have) +
                              "; append the manager's blocks before the step");
  }
  KVPOOL_ASSIGN_OR_RETURN(std::vector<int32_t> fresh, allocator_.Allocate(need - have));
  seq.block_table.insert(seq.block_table.end(), fresh.begin(), fresh.end());
  return Status::Ok();
}

StatusOr<SequenceId> Engine::AddSequence(GenerationRequest request) {
  KVPOOL_RETURN_IF_ERROR(ValidateRequest(request));
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
  if (options_.external_blocks && seq.request.mode != KvMode::kNone) {
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
  } else if (seq.request.mode == KvMode::kContiguous) {
    KVPOOL_ASSIGN_OR_RETURN(seq.block_table,
                            allocator_.AllocateContiguous(
                                CeilDiv(prompt_len + seq.request.max_tokens, options_.block_size)));
  } else if (seq.request.mode == KvMode::kPaged) {
    seq.block_table = seq.request.prefix_blocks;
    seq.num_shared_blocks = static_cast<int64_t>(seq.block_table.size());
    seq.num_kv_tokens = seq.num_shared_blocks * options_.block_size;
    KVPOOL_RETURN_IF_ERROR(EnsureBlocks(seq, prompt_len));
  }
  const SequenceId id = next_id_++;
  sequences_.emplace(id, std::move(seq));
  return id;
}

void Engine::Release(SequenceId id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  const Sequence& s = it->second;
  if (!options_.external_blocks) {
    allocator_.Free(
        std::vector<int32_t>(s.block_table.begin() + s.num_shared_blocks, s.block_table.end()));
  }
  sequences_.erase(it);
}

Status Engine::AppendBlocks(SequenceId id, const std::vector<int32_t>& blocks) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return NotFound("unknown sequence " + std::to_string(id));
  if (!options_.external_blocks) {
    return FailedPrecondition("AppendBlocks needs an engine on external blocks");
  }
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
    if (!options_.external_blocks || parent.request.mode != KvMode::kPaged) {
      return FailedPrecondition("Fork shares blocks only for paged sequences on external blocks");
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
  return static_cast<int64_t>(g.block_size) * g.num_kv_heads * g.head_dim * KvDtypeBytes(g.dtype);
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

StatusOr<at::Tensor> Engine::Recompute(const std::vector<Sequence*>& seqs) {
  const PoolGeometry& g = pool_.geometry();
  int64_t blocks = 0;
  for (const Sequence* s : seqs) blocks += CeilDiv(s->tokens.size(), g.block_size);
  if (!scratch_ || scratch_->geometry().num_blocks < blocks) {
    PoolGeometry sg = g;
    sg.num_blocks = blocks;
    KVPOOL_ASSIGN_OR_RETURN(KvPool scratch, runner_->CreatePool(sg));
    scratch_ = std::move(scratch);
  }
  scratch_bytes_ = static_cast<int64_t>(g.block_bytes()) * blocks;
  // Consecutive scratch blocks per sequence; tables must outlive the forward.
  std::vector<std::vector<int32_t>> tables(seqs.size());
  batch_.Clear();
  int32_t next_block = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t n = static_cast<int64_t>(seqs[i]->tokens.size());
    for (int64_t b = 0; b < CeilDiv(n, g.block_size); ++b) tables[i].push_back(next_block++);
    batch_.AddTokens(seqs[i]->tokens, 0, n, tables[i], g.block_size, /*want_logits=*/true);
  }
  return runner_->Forward(batch_, *scratch_);
}

void Engine::SampleNext(Sequence& seq, const at::Tensor& logits_row) {
  seq.last_logits = logits_row;
  const ModelConfig& c = runner_->config();
  const int32_t token =
      SampleToken(logits_row.data_ptr<float>(), c.vocab_size, seq.request.sampling, seq.rng);
  seq.tokens.push_back(token);
  if (seq.stop_matcher) {
    // Only the new token's bytes are matched: the cost per token does not grow with
    // the number of stop strings or the text so far.
    const std::string piece = tokenizer_->TokenText(token);
    seq.text += piece;
    if (seq.stop_matcher->Feed(seq.stop_state, piece)) {
      seq.finish = FinishReason::kStop;
      return;
    }
  }
  if (!seq.request.ignore_eos && token == c.eos_token_id) {
    seq.finish = FinishReason::kEos;
  } else if (seq.num_generated() >= seq.request.max_tokens) {
    seq.finish = FinishReason::kLength;
  } else if (static_cast<int64_t>(seq.tokens.size()) >= c.max_position) {
    seq.finish = FinishReason::kContext;
  }
}

Status Engine::Prefill(const std::vector<SequenceId>& ids) { return Step(ids, {}); }

Status Engine::Decode(const std::vector<SequenceId>& ids) { return Step({}, ids); }

Status Engine::Step(const std::vector<SequenceId>& prefill_ids,
                    const std::vector<SequenceId>& decode_ids) {
  // The sequences in the order their logits rows come: prefills, then decodes.
  std::vector<Sequence*> cached, recomputed;
  std::vector<bool> cached_is_prefill;
  auto take = [&](Sequence* s, bool prefill) {
    if (s->request.mode == KvMode::kNone) {
      recomputed.push_back(s);  // its whole sequence, prefill or not
      return;
    }
    cached.push_back(s);
    cached_is_prefill.push_back(prefill);
  };
  for (SequenceId id : prefill_ids) {
    auto it = sequences_.find(id);
    if (it == sequences_.end()) return NotFound("unknown sequence " + std::to_string(id));
    if (it->second.prefilled) {
      return FailedPrecondition("sequence " + std::to_string(id) + " is already prefilled");
    }
    take(&it->second, true);
  }
  for (SequenceId id : decode_ids) {
    auto it = sequences_.find(id);
    if (it == sequences_.end()) return NotFound("unknown sequence " + std::to_string(id));
    Sequence& s = it->second;
    if (!s.prefilled || s.finished()) {
      return FailedPrecondition("sequence " + std::to_string(id) +
                                (s.finished() ? " has finished" : " is not prefilled yet"));
    }
    take(&s, false);
  }
  // Blocks first (the batch keeps pointers into the tables), then one forward for the
  // prompts' uncached tokens and every decoding sequence's next token.
  for (size_t i = 0; i < cached.size(); ++i) {
    if (!cached_is_prefill[i]) {
      KVPOOL_RETURN_IF_ERROR(EnsureBlocks(*cached[i], cached[i]->tokens.size()));
    }
  }
  if (!cached.empty()) {
    batch_.Clear();
    for (size_t i = 0; i < cached.size(); ++i) {
      Sequence* s = cached[i];
      const int64_t end =
          cached_is_prefill[i] ? s->prompt_len() : static_cast<int64_t>(s->tokens.size());
      batch_.AddTokens(s->tokens, s->num_kv_tokens, end, s->block_table, options_.block_size, true);
    }
    at::Tensor logits = runner_->Forward(batch_, pool_);
    for (size_t i = 0; i < cached.size(); ++i) {
      Sequence* s = cached[i];
      s->num_kv_tokens =
          cached_is_prefill[i] ? s->prompt_len() : static_cast<int64_t>(s->tokens.size());
      s->prefilled = true;
      SampleNext(*s, logits[static_cast<int64_t>(i)]);
    }
  }
  if (!recomputed.empty()) {
    KVPOOL_ASSIGN_OR_RETURN(at::Tensor logits, Recompute(recomputed));
    for (size_t i = 0; i < recomputed.size(); ++i) {
      recomputed[i]->prefilled = true;
      SampleNext(*recomputed[i], logits[static_cast<int64_t>(i)]);
    }
  }
  return Status::Ok();
}

KvUsage Engine::Usage() const {
  KvUsage u;
  const PoolGeometry& g = pool_.geometry();
  for (const auto& [id, s] : sequences_) {
    u.blocks_in_use += static_cast<int64_t>(s.block_table.size());
    u.bytes_used += s.num_kv_tokens * static_cast<int64_t>(g.token_bytes());
  }
  u.bytes_reserved = u.blocks_in_use * static_cast<int64_t>(g.block_bytes());
  u.scratch_bytes = scratch_bytes_;
  return u;
}

StatusOr<std::vector<GenerationResult>> Engine::Generate(std::vector<GenerationRequest> requests) {
  const auto t_start = std::chrono::steady_clock::now();
  std::vector<SequenceId> ids;
  auto release_all = [&] {
    for (SequenceId id : ids) Release(id);
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
    const KvUsage u = Usage();
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
      if (!sequences_.at(id).finished()) running.push_back(id);
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
    const Sequence& s = sequences_.at(ids[i]);
    results[i].tokens.assign(s.tokens.begin() + s.prompt_len(), s.tokens.end());
    results[i].finish = s.finish;
    results[i].total_s = total;
  }
  release_all();
  return results;
}

}  // namespace kvpool
