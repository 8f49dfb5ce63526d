// Scheduler: the worker's continuous-batching loop (iteration-level, as in Orca and
// vLLM), on one thread that alone drives the Engine. Each iteration it takes new jobs,
// admits the samples the policy lets in (KvPolicy: fair across tenants, within the
// pool's headroom and the prefill budget), makes ONE batched Step call for every
// running sample that needs a new block or has newly full blocks to commit, runs one
// forward for the new prompts and every running sample's next token together (a mixed
// batch), and streams the tokens through each Job. At batch 1 that is one manager call
// per block_size tokens. When the manager answers RESOURCE_EXHAUSTED the policy's
// victim (the newest sample; for a tenant at its quota, its own newest) is preempted:
// its K/V is copied to swap space (or, without room there, dropped and recomputed),
// its blocks go back, and it resumes later from its prompt plus what it generated (its
// sampler state carries over); admission pauses until a sample leaves, so nothing
// thrashes or deadlocks. Paged jobs with n > 1 fork after the prefill and share the
// prompt's blocks. `none` never touches the pool. Losing the manager fails the jobs in
// flight with UNAVAILABLE; a new attachment gets a fresh engine.
// Who does what: ManagerClient speaks to the manager, KvPolicy decides, the Engine
// runs the model, Job writes the client's stream; the Scheduler carries the decisions
// out (scheduler.cc: the loop and lifecycle; scheduler_batch.cc: admission, the forward,
// forks, streaming; scheduler_blocks.cc: grants, preemption, retiring, closing).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/observability/prometheus.h"
#include "engine/engine.h"
#include "service/job.h"
#include "service/kv_policy.h"
#include "service/manager_client.h"
#include "service/manager_link.h"
#include "service/sample.h"

namespace kvpool::worker {

struct SchedulerOptions {
  int32_t threads = 0;                // LibTorch intra-op threads (0: its default)
  int32_t max_running = 64;           // sequences decoded together at most
  int64_t max_prefill_tokens = 4096;  // prompt tokens admitted per iteration (>= one prompt)
  // Tokens one forward computes at most (vLLM's max_num_batched_tokens): a decoding
  // sequence's next token each, and prompt chunks in what is left, so that a long
  // prompt no longer stalls the running decodes for its whole prefill. 0: no limit
  // (every admitted prompt whole in one step).
  int64_t max_num_batched_tokens = 2048;
  // Admission stops while the pool has fewer free blocks than this per running
  // sequence (each needs a new block every block_size tokens; admitting into a full
  // pool only preempts someone soon).
  int64_t headroom_blocks = 4;
  // Host memory for the K/V of preempted sequences (vLLM's swap space): a preempted
  // sequence's K/V is copied out and written back when it resumes, instead of being
  // recomputed, while the copies fit. 0: always recompute.
  int64_t swap_space_bytes = int64_t{4} << 30;
  // The CPU engine's linear-layer weights: fp32 or bf16 (--weight-dtype).
  at::ScalarType cpu_weight_dtype = at::kFloat;
  // --kv-cache-dtype: the KV dtype this worker insists on; unset ("auto"): whatever the
  // manager's pool holds. A pool of another dtype stops the worker with a message.
  std::optional<KvDtype> kv_cache_dtype;
};

// Where the scheduler thread's time goes (cumulative, in nanoseconds): model forwards
// for new prompts, for prompts recomputed after a preemption, and for decode steps;
// calls to the manager; waiting for work; and the rest (sampling, streaming, bookkeeping),
// which is the loop's time less the others.
enum class SchedulerPhase { kPrefill, kRecompute, kDecode, kManager, kIdle, kOther, kCount };
const char* SchedulerPhaseName(SchedulerPhase phase);

// Written by the scheduler thread, read by GetStats, /metrics and the heartbeat.
struct WorkerCounters {
  std::atomic<int64_t> phase_ns[static_cast<int>(SchedulerPhase::kCount)] = {};
  std::atomic<int64_t> recomputed_tokens{0};  // prompt tokens prefilled again after preemption
  std::atomic<int64_t> swapped_tokens{0};     // tokens' K/V written back from swap space
  std::atomic<int64_t> swap_bytes{0};         // swap space in use now
  std::atomic<int64_t> running{0}, waiting{0};
  std::atomic<int64_t> finished{0}, failed{0}, preemptions{0};
  std::atomic<int64_t> prompt_tokens{0}, cached_tokens{0}, generated_tokens{0};
  std::atomic<int64_t> steps{0}, manager_calls{0};
  std::atomic<int64_t> blocks_held{0}, bytes_reserved{0}, bytes_used{0};
  Histogram ttft_s{RequestLatencyBucketsS()};   // arrival to first token, per request
  Histogram itl_s{TokenLatencyBucketsS()};      // between tokens of one sequence
  Histogram e2e_s{RequestLatencyBucketsS()};    // arrival to last token, per request
  Histogram queue_s{RequestLatencyBucketsS()};  // arrival to admission, per request
};

class Scheduler {
 public:
  // `on_serving` runs on the scheduler thread whenever serving() changes, before the
  // "attached" line is printed (the worker's health status follows it).
  Scheduler(SchedulerOptions options, ModelConfig config, ModelWeights weights,
            std::shared_ptr<const Tokenizer> tokenizer, ManagerLink* link,
            std::function<void(bool)> on_serving = {});
  ~Scheduler();  // stops the loop; jobs still in flight end UNAVAILABLE

  void Start();
  // Ends the loop: jobs in flight end UNAVAILABLE and their sequences are closed.
  void Stop();
  void Submit(std::shared_ptr<Job> job);
  // Wakes the loop (the link attached or lost the manager).
  void Wake();
  // An engine is running on an attached pool: requests can be served.
  bool serving() const { return serving_.load(); }
  const WorkerCounters& counters() const { return counters_; }
  const ModelConfig& config() const { return config_; }
  // The attached pool's block size and blocks (0 while detached).
  int32_t block_size() const { return block_size_.load(); }
  int64_t num_blocks() const { return num_blocks_.load(); }
  // Bytes of the weights as the CPU engine holds them (--weight-dtype bf16 halves the
  // linear layers' matrices; the rest stays fp32).
  int64_t CpuWeightBytes() const;

 private:
  void Run();
  void SyncAttachment();
  int64_t TimedNs() const;  // the forward and manager phases' time so far
  // Ends every job; the manager is told only when `close_at_manager` (it may be gone).
  void FailAll(const Status& status, bool close_at_manager = false);
  void DropCancelled();
  // Admits what the policy lets in: adds those samples to the engine (running, their
  // prompts not yet computed).
  void Admit();
  // One forward (a mixed batch): the next token of every decoding sample, after the
  // blocks for those tokens are granted, and the prompts not yet computed, oldest
  // first, within max_num_batched_tokens (a prompt that does not fit is cut into
  // chunks over several steps: chunked prefill).
  void Step();
  void ForkChildren(Sample& parent, double prefill_s);
  // Step rounds for `samples` until each holds the slots for its next token (full
  // blocks committed on the way); on RESOURCE_EXHAUSTED preempts the policy's victim
  // and asks again. Returns the samples still ready to decode.
  std::vector<Sample*> GrantBlocks(std::vector<Sample*> samples);
  // Admission pauses afterwards (the pool is full) unless the preemption was for a
  // tenant's quota, which the other tenants' admissions do not touch.
  void Preempt(Sample& sample, bool pause_admission = true);
  // One Step round for `samples` (see KvPolicy::Step), with their engine state.
  StepRound StepRoundFor(const std::vector<Sample*>& samples, bool grant);
  void DropSwap(Sample& sample);              // frees its swapped K/V (if any)
  void Retire(std::vector<Sample*> samples);  // finished samples: commit, close, account
  void Emit(Sample& sample, int32_t token, double step_s);
  void FailJob(const std::shared_ptr<Job>& job, const Status& status);
  void RetryCloses();  // sequences whose CloseSequence failed
  void Release(Sample& sample, bool close_at_manager);
  void RemoveDeadSamples();
  void TrackJobPeaks();  // each job's peak KV bytes, after a forward
  void UpdateUsage();    // the worker's counters
  void LinkLost(const std::string& why);
  // The tenant of the job's client (AuthenticateClient, cached per credential for the
  // attachment), which also authenticates every mode, none included, at intake.
  StatusOr<std::string> ResolveTenant(const Job& job);
  void SetServing(bool serving);

  const SchedulerOptions options_;
  const ModelConfig config_;
  const ModelWeights weights_;
  const std::shared_ptr<const Tokenizer> tokenizer_;
  ManagerLink* const link_;
  ManagerClient manager_;  // the sequence protocol, for the current attachment
  KvPolicy policy_;        // admission, Step rounds and preemption, against manager_
  const std::function<void(bool)> on_serving_;
  WorkerCounters counters_;
  std::atomic<bool> serving_{false};
  std::atomic<int32_t> block_size_{0};
  std::atomic<int64_t> num_blocks_{0};

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> incoming_;  // GUARDED_BY(mu_)
  bool stop_ = false;                          // GUARDED_BY(mu_)
  bool woken_ = false;                         // GUARDED_BY(mu_)

  // Scheduler thread only.
  std::unique_ptr<Engine> engine_;
  std::shared_ptr<const Attachment> attachment_;
  std::list<std::unique_ptr<Sample>> samples_;  // every live sample
  std::deque<Sample*> waiting_;                 // not admitted, in order (preempted at the front)
  std::vector<Sample*> running_;                // admitted, in admission order (newest last)
  int64_t swap_bytes_ = 0;                      // swap space the waiting preempted samples hold
  std::vector<int64_t> unclosed_;               // manager sequences a CloseSequence did not reach
  // Client credential -> tenant, for the current attachment (bounded: cleared when full).
  std::unordered_map<std::string, std::string> tenant_of_credential_;
  std::thread thread_;
};

}  // namespace kvpool::worker
