// Worker metrics rendering and the heartbeat's load. See worker_metrics.h.
#include "service/worker_metrics.h"

#include "common/observability/prometheus.h"

namespace kvpool::worker {

std::string RenderWorkerMetrics(const Scheduler& scheduler, const ManagerLink& link) {
  const WorkerCounters& c = scheduler.counters();
  PrometheusText out;
  const std::shared_ptr<const Attachment> attachment = link.current();
  out.Metric("kvpool_worker_attached", "gauge",
             "1 while the worker is registered with its manager and serving on the pool.",
             attachment != nullptr && scheduler.serving() ? 1 : 0);
  out.Metric("kvpool_requests_running", "gauge", "Requests with sequences being decoded.",
             static_cast<double>(c.running.load()));
  out.Metric("kvpool_requests_waiting", "gauge", "Requests queued for admission.",
             static_cast<double>(c.waiting.load()));
  const struct {
    const char* name;
    const char* help;
    int64_t value;
  } counters[] = {
      {"kvpool_requests_finished_total", "Requests that ended normally.", c.finished.load()},
      {"kvpool_requests_failed_total", "Requests that ended with an error status.",
       c.failed.load()},
      {"kvpool_preemptions_total",
       "Sequences preempted for lack of blocks (resumed from swap space or by recomputation).",
       c.preemptions.load()},
      {"kvpool_prompt_tokens_total", "Prompt tokens of admitted requests.", c.prompt_tokens.load()},
      {"kvpool_prompt_cached_tokens_total", "Prompt tokens served from the prefix cache.",
       c.cached_tokens.load()},
      {"kvpool_generation_tokens_total", "Tokens generated.", c.generated_tokens.load()},
      {"kvpool_scheduler_steps_total", "Scheduler iterations (prefill and/or decode).",
       c.steps.load()},
      {"kvpool_manager_calls_total", "RPCs to the manager (Open, Step, Fork, Close).",
       c.manager_calls.load()},
      {"kvpool_reattachments_total", "Registrations after losing the manager.",
       link.reattachments()},
      {"kvpool_recomputed_tokens_total", "Tokens prefilled again after preemptions.",
       c.recomputed_tokens.load()},
      {"kvpool_swapped_tokens_total",
       "Tokens whose K/V was written back from swap space when a preempted sequence resumed.",
       c.swapped_tokens.load()},
  };
  for (const auto& m : counters) {
    out.Metric(m.name, "counter", m.help, static_cast<double>(m.value));
  }
  out.Header("kvpool_scheduler_seconds_total", "counter",
             "The scheduler thread's time by phase: prefill, recompute (after preemption), "
             "decode, manager (RPCs), idle, other (sampling, streaming, bookkeeping).");
  for (int p = 0; p < static_cast<int>(SchedulerPhase::kCount); ++p) {
    out.Sample("kvpool_scheduler_seconds_total",
               std::string("phase=\"") + SchedulerPhaseName(static_cast<SchedulerPhase>(p)) + "\"",
               static_cast<double>(c.phase_ns[p].load()) * 1e-9);
  }
  out.Metric("kvpool_swap_space_used_bytes", "gauge",
             "Host memory holding preempted sequences' K/V until they resume.",
             static_cast<double>(c.swap_bytes.load()));
  out.Metric("kvpool_worker_kv_blocks", "gauge", "Pool blocks this worker's sequences hold.",
             static_cast<double>(c.blocks_held.load()));
  out.Metric("kvpool_worker_kv_reserved_bytes", "gauge",
             "Bytes of the blocks this worker's sequences hold.",
             static_cast<double>(c.bytes_reserved.load()));
  out.Metric("kvpool_worker_kv_used_bytes", "gauge", "Of those, bytes holding tokens' K/V.",
             static_cast<double>(c.bytes_used.load()));
  const struct {
    const char* name;
    const char* help;
    const Histogram& histogram;
  } histograms[] = {
      {"kvpool_time_to_first_token_seconds", "Arrival to first token, per request.", c.ttft_s},
      {"kvpool_inter_token_latency_seconds", "Time between tokens of one sequence.", c.itl_s},
      {"kvpool_e2e_request_latency_seconds", "Arrival to last token, per finished request.",
       c.e2e_s},
      {"kvpool_request_queue_time_seconds", "Arrival to admission, per finished request.",
       c.queue_s},
  };
  for (const auto& h : histograms) {
    out.Header(h.name, "histogram", h.help);
    h.histogram.Render(out, h.name, "");
  }
  return out.str();
}

void FillWorkerLoad(const WorkerCounters& c, v1::WorkerLoad* load) {
  load->set_requests_running(c.running.load());
  load->set_requests_waiting(c.waiting.load());
  load->set_requests_finished_total(c.finished.load());
  load->set_requests_failed_total(c.failed.load());
  load->set_preemptions_total(c.preemptions.load());
  load->set_prompt_tokens_total(c.prompt_tokens.load());
  load->set_generated_tokens_total(c.generated_tokens.load());
  load->set_ttft_sum_s(c.ttft_s.sum());
  load->set_ttft_count(static_cast<int64_t>(c.ttft_s.count()));
  load->set_itl_sum_s(c.itl_s.sum());
  load->set_itl_count(static_cast<int64_t>(c.itl_s.count()));
}

}  // namespace kvpool::worker
