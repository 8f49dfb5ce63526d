// GenerateStream and Client::Generate/Stream: one streaming Generate call, read token by
// token, assembled into a GenerateResult with client-side timings. It owns the retry
// rule for streams: an attempt that ends UNAVAILABLE before any token or summary arrived
// is repeated on the next address after the backoff; once a token has arrived the error
// is returned, because a retry would generate (and show) those tokens again.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "client/channels.h"
#include "kvpool/client.h"

namespace kvpool {

using Clock = std::chrono::steady_clock;

struct GenerateStream::State {
  std::shared_ptr<client_internal::Channels> channels;
  v1::GenerateRequest request;
  Clock::time_point start;
  client_internal::Deadline deadline;
  int num_samples = 1;  // request.n, at least 1
  size_t address = 0;
  int attempt = 0;

  std::mutex mutex;  // guards context (its replacement) and cancelled, for Cancel()
  std::condition_variable cancel_cv;  // wakes a retry backoff when cancelled
  std::unique_ptr<grpc::ClientContext> context;
  bool cancelled = false;
  // Declared after context: destroyed before it.
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;

  bool done = false;      // no more tokens; status and result are final
  bool finished = false;  // Finish() returned
  bool has_summary = false;
  size_t num_tokens = 0;
  Status status;
  GenerateResult result;

  double Elapsed() const { return std::chrono::duration<double>(Clock::now() - start).count(); }
  bool IsCancelled() {
    std::lock_guard<std::mutex> lock(mutex);
    return cancelled;
  }
  void StartAttempt();
  void EndAttempt();
  void Record(const v1::GeneratedToken& token, TokenEvent* event);
  void Fail(Status error);
};

void GenerateStream::State::StartAttempt() {
  ++attempt;
  {
    std::lock_guard<std::mutex> lock(mutex);
    context = std::make_unique<grpc::ClientContext>();
    channels->Prepare(deadline, context.get());
    if (cancelled) context->TryCancel();
  }
  result.server = channels->address(address);
  reader = channels->worker(address).Generate(context.get(), request);
}

void GenerateStream::State::EndAttempt() {
  const grpc::Status grpc_status = reader->Finish();
  reader.reset();
  const bool first_tokens_lost = num_tokens > 0 || has_summary;
  if (grpc_status.error_code() == grpc::StatusCode::UNAVAILABLE && !first_tokens_lost &&
      attempt < channels->max_attempts()) {
    std::unique_lock<std::mutex> lock(mutex);
    cancel_cv.wait_for(lock, channels->options().retry_backoff, [&] { return cancelled; });
    if (!cancelled) {
      lock.unlock();
      address = (address + 1) % channels->size();
      StartAttempt();
      return;
    }
  }
  done = true;
  result.client_total_s = Elapsed();
  if (!status.ok()) return;  // a protocol error found while reading
  status = IsCancelled() ? Cancelled("the call was cancelled by the client")
                         : FromGrpcStatus(grpc_status);
  if (status.ok() && !has_summary) status = Internal("the stream ended without a summary");
  if (status.ok()) {  // samples that produced no token still have an entry
    result.tokens.resize(std::max(result.tokens.size(), static_cast<size_t>(num_samples)));
    result.text.resize(result.tokens.size());
  }
}

void GenerateStream::State::Record(const v1::GeneratedToken& token, TokenEvent* event) {
  const double arrival_s = Elapsed();
  const size_t sample = static_cast<size_t>(token.index());
  if (++num_tokens == 1) result.client_ttft_s = arrival_s;
  result.token_arrival_s.push_back(arrival_s);
  if (sample >= result.tokens.size()) {  // grown on demand: n is the server's to check
    result.tokens.resize(sample + 1);
    result.text.resize(sample + 1);
  }
  result.tokens[sample].push_back(token.token_id());
  result.text[sample] += token.text();
  event->index = token.index();
  event->token_id = token.token_id();
  event->text = token.text();
  event->step_latency_s = token.step_latency_s();
  event->arrival_s = arrival_s;
  event->kv_bytes_reserved = token.kv_bytes_reserved();
  event->kv_bytes_used = token.kv_bytes_used();
}

void GenerateStream::State::Fail(Status error) {
  status = std::move(error);
  std::lock_guard<std::mutex> lock(mutex);
  context->TryCancel();
}

GenerateStream::GenerateStream(std::unique_ptr<State> state) : state_(std::move(state)) {}

GenerateStream::~GenerateStream() {
  if (state_->done) return;
  Cancel();
  v1::GenerateResponse ignored;
  while (state_->reader->Read(&ignored)) {
  }
  state_->reader->Finish();
}

bool GenerateStream::Next(TokenEvent* event) {
  State& s = *state_;
  while (!s.done) {
    v1::GenerateResponse response;
    if (!s.reader->Read(&response)) {
      s.EndAttempt();
      continue;
    }
    if (!s.status.ok()) continue;  // drain after a protocol error
    if (response.has_summary()) {
      s.result.summary = std::move(*response.mutable_summary());
      s.has_summary = true;
    } else if (response.has_token()) {
      const int index = response.token().index();
      if (index < 0 || index >= s.num_samples) {
        s.Fail(Internal("the server sent a token of sample " + std::to_string(index) +
                        " but the request has " + std::to_string(s.num_samples)));
        continue;
      }
      s.Record(response.token(), event);
      return true;
    }
  }
  return false;
}

StatusOr<GenerateResult> GenerateStream::Finish() {
  if (state_->finished) return FailedPrecondition("GenerateStream::Finish called twice");
  TokenEvent ignored;
  while (Next(&ignored)) {
  }
  state_->finished = true;
  if (!state_->status.ok()) return state_->status;
  return std::move(state_->result);
}

void GenerateStream::Cancel() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->cancelled = true;
  if (state_->context) state_->context->TryCancel();
  state_->cancel_cv.notify_all();
}

StatusOr<std::unique_ptr<GenerateStream>> Client::Stream(const v1::GenerateRequest& request) {
  KVPOOL_RETURN_IF_ERROR(channels_->CheckAddress(kAnyAddress));
  auto state = std::make_unique<GenerateStream::State>();
  state->channels = channels_;
  state->request = request;
  state->start = Clock::now();
  state->deadline = channels_->NewDeadline();
  state->address = channels_->PickAddress();
  state->num_samples = std::max(1, request.n());
  state->StartAttempt();
  return std::unique_ptr<GenerateStream>(new GenerateStream(std::move(state)));
}

StatusOr<std::unique_ptr<GenerateStream>> Client::Stream(const GenerateParams& params) {
  KVPOOL_ASSIGN_OR_RETURN(const v1::GenerateRequest request, ToGenerateRequest(params));
  return Stream(request);
}

StatusOr<GenerateResult> Client::Generate(const v1::GenerateRequest& request,
                                          TokenCallback on_token) {
  KVPOOL_ASSIGN_OR_RETURN(std::unique_ptr<GenerateStream> stream, Stream(request));
  TokenEvent event;
  while (stream->Next(&event)) {
    if (on_token && !on_token(event)) {
      stream->Cancel();
      break;
    }
  }
  return stream->Finish();
}

StatusOr<GenerateResult> Client::Generate(const GenerateParams& params, TokenCallback on_token) {
  KVPOOL_ASSIGN_OR_RETURN(const v1::GenerateRequest request, ToGenerateRequest(params));
  return Generate(request, std::move(on_token));
}

}  // namespace kvpool
