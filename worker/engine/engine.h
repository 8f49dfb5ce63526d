// The engine: sequences over block tables it is given, and the prefill / decode
// phases. It never allocates a block: every table comes from the cache manager (the
// worker's scheduler, or the offline engine over the manager's core in process), per
// mode:
//   none        no table; every step recomputes the whole sequence, its K/V living
//               only in a scratch area for that forward.
//   contiguous  one run of consecutive blocks for prompt + max_tokens, reserved when
//               the sequence opens (Hugging Face / FasterTransformer style).
//   paged       the prompt's blocks when it opens, then one more appended
//               (AppendBlocks) whenever the sequence fills its last (vLLM PagedAttention).
//
// All three run the same model and the same attention kernel; only the block
// tables differ. One Decode call runs a batch of sequences of different lengths.
// Not thread-safe: one caller drives an Engine.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/kv_mode.h"
#include "common/status.h"
#include "engine/kv_pool.h"
#include "engine/model_runner.h"
#include "engine/sampler.h"
#include "engine/stop_matcher.h"

namespace kvpool {

class Tokenizer;

enum class FinishReason { kRunning, kLength, kEos, kStop, kContext };
const char* FinishReasonName(FinishReason reason);

// A preempted sequence's K/V copied out of the pool into host memory (vLLM's swap
// preemption), so that it can give its blocks back and later resume without
// recomputing its prompt: the whole blocks holding its first `num_tokens` positions,
// as uint8 [num_layers][2 (K, V)][blocks][block bytes of one layer's K or V], on the CPU.
struct SwappedKv {
  at::Tensor blocks;
  int64_t num_tokens = 0;
  int64_t bytes() const { return blocks.defined() ? blocks.numel() : 0; }
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int32_t max_tokens = 16;
  KvMode mode = KvMode::kPaged;
  SamplingParams sampling;
  std::vector<std::string> stop;        // stop strings (needs the engine's tokenizer)
  std::vector<int32_t> stop_token_ids;  // a sample ends (kStop) after one of these
  bool ignore_eos = false;
  // 0: none; k in [1, 5]: each sampled token's log-probability under the model
  // (log-softmax of its raw logits) and the k most likely tokens' (OpenAI's logprobs).
  int32_t logprobs = 0;
  // EOS and stop_token_ids cannot be drawn before this many tokens are generated (a
  // resumed sequence: the rest of its min_tokens, like max_tokens).
  int32_t min_tokens = 0;
  // A resumed sequence: how many tokens at the end of `prompt` it had generated
  // before its preemption (the penalties count them as generated).
  int32_t generated_before = 0;
  // Blocks handed out by the cache manager (not in `none` mode): the table covering
  // the prompt (contiguous: prompt + max_tokens), of whose tokens the first
  // `cached_tokens` already hold K/V (a prefix-cache hit, written by this or another
  // process sharing the pool; never prefilled again). The engine never allocates or
  // frees blocks: the caller appends them (AppendBlocks) before a step needs them and
  // gives them back to the manager.
  std::vector<int32_t> block_table;
  int64_t cached_tokens = 0;
  // Resuming a preempted sequence whose prompt now ends with the tokens it had
  // generated: its sampler state and generated text (for stop strings) carry over.
  std::optional<std::mt19937_64> rng;
  std::string generated_text;
  // The K/V it had when it was preempted (SwapOut). AddSequence
  // writes the positions the manager did not find cached back into block_table, so
  // that only the prompt's last token is computed again.
  std::shared_ptr<const SwappedKv> swapped;
};

struct EngineOptions {
  std::string device = "cpu";         // "cpu" or "cuda[:N]"
  at::ScalarType dtype = at::kFloat;  // weights and KV on CUDA (fp32 on the CPU)
  // The CPU's linear-layer weights: at::kFloat, at::kBFloat16 or at::kHalf (weights
  // beyond fp16's range are then refused: CheckFitsFp16).
  at::ScalarType cpu_weight_dtype = at::kFloat;
  // The CPU's KV pool dtype (any KvDtype; a shared pool's must match it).
  KvDtype cpu_kv_dtype = KvDtype::kFloat32;
  bool cuda_graphs = true;  // capture decode steps (CUDA only)
  int32_t block_size = 16;
  int64_t num_blocks = 0;  // 0: room for 4 sequences of the full context
  int32_t threads = 0;     // 0: leave LibTorch's default
};

// fp16 holds magnitudes up to 65504: a matrix with larger values would hold infinities
// (a bf16 checkpoint can: bf16 has fp32's range). INVALID_ARGUMENT naming the first such
// matrix and its largest magnitude.
Status CheckFitsFp16(const ModelWeights& weights);
// --weight-dtype auto after the weights are loaded: its choice, unless that is fp16 and
// the weights do not fit it; then fp32, with `why` saying so.
at::ScalarType FitAutoWeightDtype(const ModelWeights& weights, at::ScalarType chosen,
                                  std::string* why);

using SequenceId = int64_t;

struct Sequence {
  GenerationRequest request;
  std::vector<int32_t> tokens;       // prompt, then generated tokens
  std::vector<int32_t> block_table;  // pool blocks (empty in `none` mode)
  int64_t num_kv_tokens = 0;         // tokens whose K/V are in the pool
  bool prefilled = false;
  FinishReason finish = FinishReason::kRunning;
  at::Tensor last_logits;       // [vocab], from the latest forward
  TokenLogprobs last_logprobs;  // of the latest token, when the request asks for them
  std::string text;             // generated text, kept when stop strings are set
  // Stop strings as an automaton (null without stops) and where this sequence is in it.
  std::shared_ptr<const StopMatcher> stop_matcher;
  StopMatcher::State stop_state = StopMatcher::kStart;
  std::mt19937_64 rng;

  int64_t prompt_len() const { return static_cast<int64_t>(request.prompt.size()); }
  int64_t num_generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len(); }
  bool finished() const { return finish != FinishReason::kRunning; }
};

struct KvUsage {
  int64_t blocks_in_use = 0;
  int64_t bytes_reserved = 0;  // blocks held by live sequences
  int64_t bytes_used = 0;      // of those, bytes holding real tokens' K/V
  int64_t scratch_bytes = 0;   // `none` mode: K/V recomputed for the latest forward
};

// Makes glibc keep the forward's large temporaries instead of returning them to the
// kernel after each use (mmap only above 32 MiB, glibc's ceiling; trim the heap only
// above 256 MiB free): otherwise every step faults the same pages in again, which
// perf showed as 11-17% of CPU time in page clearing. For the process's main(), before
// the model loads; a process that mostly allocates elsewhere need not call it.
void KeepLargeAllocations();

class Engine {
 public:
  // `pool`, when given, is memory someone else set up (an attached shared pool); its
  // geometry must match the model and options.
  static StatusOr<std::unique_ptr<Engine>> Create(ModelConfig config, ModelWeights weights,
                                                  EngineOptions options,
                                                  std::shared_ptr<const Tokenizer> tokenizer = {},
                                                  std::optional<KvPool> pool = std::nullopt);
  // The geometry this engine's pool has for a model and options.
  static PoolGeometry GeometryFor(const ModelConfig& config, const EngineOptions& options,
                                  KvDtype dtype);
  // The block-side preconditions of a request (its block table and cached tokens):
  // INVALID_ARGUMENT when they do not fit the pool or the prompt.
  Status CheckBlocks(const GenerationRequest& request) const;
  // Admits a request over its block table (request_check.h has checked the rest).
  StatusOr<SequenceId> AddSequence(GenerationRequest request);
  // Runs the prompts of these (new) sequences in one forward and samples each one's
  // first token.
  Status Prefill(const std::vector<SequenceId>& ids);
  // One decode step for these (prefilled, running) sequences: one token each.
  Status Decode(const std::vector<SequenceId>& ids);
  // Both in one forward (a mixed batch, as vLLM's scheduler builds them): the prompts of
  // `prefill` and the next token of each of `decode`. The linear layers then read the
  // weights once for all of them, where Prefill then Decode would read them twice.
  // `chunks` (chunked prefill, as vLLM's): prefill[i] computes at most chunks[i] more of
  // its prompt's tokens (0 or no entry: the rest of the prompt); a sequence whose prompt
  // is not done yet stays unprefilled, samples nothing, and is passed to `prefill` again
  // in a later step. Sequences in mode none always take their whole prompt.
  Status Step(const std::vector<SequenceId>& prefill, const std::vector<SequenceId>& decode,
              const std::vector<int64_t>& chunks = {});
  // Forgets the sequence (its blocks are the manager's to free).
  void Release(SequenceId id);
  // Appends blocks the manager gave the sequence to its table.
  Status AppendBlocks(SequenceId id, const std::vector<int32_t>& blocks);
  // Copies the K/V the sequence holds (its first num_kv_tokens positions) out of the
  // pool, for a preemption that resumes from it (GenerationRequest::swapped).
  StatusOr<SwappedKv> SwapOut(SequenceId id) const;
  // Parallel sampling (n > 1) after `parent`'s prefill: a sequence with the parent's
  // prompt and prompt K/V that samples its own first token from the parent's logits
  // with `seed`, over the manager's Fork table: shared full blocks and
  // a fresh last block, into which copy_src's K/V is first copied (-1: nothing to copy).
  // `none` mode needs no table.
  StatusOr<SequenceId> Fork(SequenceId parent, std::vector<int32_t> block_table, int32_t copy_src,
                            int32_t copy_dst, uint64_t seed);

  const Sequence& sequence(SequenceId id) const { return sequences_.at(id); }
  int64_t num_sequences() const { return static_cast<int64_t>(sequences_.size()); }
  const EngineOptions& options() const { return options_; }
  KvUsage Usage() const;
  const ModelConfig& config() const { return runner_->config(); }
  ModelRunner& runner() { return *runner_; }
  const PoolGeometry& geometry() const { return pool_.geometry(); }
  bool has_tokenizer() const { return tokenizer_ != nullptr; }

 private:
  Engine(std::unique_ptr<ModelRunner> runner, KvPool pool, EngineOptions options,
         std::shared_ptr<const Tokenizer> tok);
  // FAILED_PRECONDITION unless the table covers `num_tokens`.
  Status CheckCovered(const Sequence& seq, int64_t num_tokens) const;
  // `none` mode: recomputes whole sequences in the scratch area.
  StatusOr<at::Tensor> Recompute(const std::vector<Sequence*>& seqs);
  void SampleNext(Sequence& seq, const at::Tensor& logits_row);
  // SampleNext for several sequences, row rows[i] of `logits` for seqs[i]: the draws run
  // on the intra-op threads (a draw touches only its own sequence's rng), then the
  // tokens are taken in order.
  void SampleNext(const std::vector<Sequence*>& seqs, const at::Tensor& logits,
                  const std::vector<int64_t>& rows);
  // The next token from a logits row under the sequence's sampling parameters.
  int32_t DrawToken(Sequence& seq, const float* logits_row) const;
  // Appends `token` (drawn from logits_row) and applies the stop rules.
  void TakeToken(Sequence& seq, const at::Tensor& logits_row, int32_t token);
  // Copies one block's K/V (every layer) to another block of the pool.
  void CopyBlock(int32_t src, int32_t dst);
  // Bytes of one block of one layer's K or V.
  int64_t BlockPartBytes() const;
  // Writes blocks [first, swapped.blocks.size(1)) of `swapped` into table[first...].
  void SwapIn(const SwappedKv& swapped, const std::vector<int32_t>& table, int64_t first);

  std::unique_ptr<ModelRunner> runner_;
  KvPool pool_;
  EngineOptions options_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::optional<KvPool> scratch_;
  int64_t scratch_bytes_ = 0;
  std::map<SequenceId, Sequence> sequences_;
  SequenceId next_id_ = 1;
  ForwardBatch batch_;  // reused across steps
};

}  // namespace kvpool
