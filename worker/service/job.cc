// Job's stream messages: see job.h.
#include "service/job.h"

namespace kvpool::worker {
namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

void Job::PushToken(int32_t index, int32_t token_id, std::string text, double step_s,
                    int64_t kv_bytes_reserved, int64_t kv_bytes_used,
                    const TokenLogprobs* logprobs) {
  v1::GenerateResponse event;
  v1::GeneratedToken* out = event.mutable_token();
  out->set_index(index);
  out->set_token_id(token_id);
  out->set_text(std::move(text));
  out->set_step_latency_s(step_s);
  out->set_kv_bytes_reserved(kv_bytes_reserved);
  out->set_kv_bytes_used(kv_bytes_used);
  if (logprobs != nullptr) {
    out->set_logprob(logprobs->logprob);
    for (const auto& [id, logprob] : logprobs->top) {
      v1::TopLogprob* top = out->add_top_logprobs();
      top->set_token_id(id);
      top->set_logprob(logprob);
    }
  }
  Push(std::move(event));
}

void Job::PushSummary() {
  v1::GenerateResponse event;
  v1::GenerateSummary* summary = event.mutable_summary();
  summary->mutable_usage()->set_prompt_tokens(static_cast<int64_t>(request.prompt.size()));
  summary->mutable_usage()->set_cached_tokens(cached_tokens);
  summary->mutable_usage()->set_completion_tokens(completion_tokens);
  summary->set_ttft_s(Seconds(first_token_at - arrival));
  summary->set_time_per_output_token_s(gaps > 0 ? gap_sum_s / gaps : 0.0);
  summary->set_total_s(Seconds(last_token_at - arrival));
  summary->set_queue_s(Seconds(admitted_at - arrival));
  summary->set_kv_bytes_reserved(peak_reserved_bytes);
  summary->set_kv_bytes_used(peak_used_bytes);
  for (const std::string& reason : finish_reasons) summary->add_finish_reasons(reason);
  summary->set_preemptions(preemptions);
  if (pin_tried && pin.ok()) {
    v1::PrefixPin* out = summary->mutable_pin();
    out->set_pin_id(pin->pin_id);
    out->set_pinned_tokens(pin->pinned_tokens);
    out->set_expires_in_ms(pin->expires_in_ms);
    if (pin->priority >= 0) out->set_priority(pin->priority);
  } else if (pin_tried) {
    summary->set_pin_error(pin.status().message());
  }
  Push(std::move(event));
}

}  // namespace kvpool::worker
