// `kvpool loadgen`: a closed-loop load test. --concurrency threads share one Client and
// pull request numbers from a counter until --requests are done. Prompts are random
// token ids from a seeded std::mt19937 (made before the clock starts, so they do not
// depend on thread timing; the first --shared-prefix-tokens are the same in every
// prompt), decoding is greedy with ignore_eos so every request yields exactly
// --max-tokens. Reports throughput and client-side latencies, as text or --json.
// --openai-url sends the same requests as streaming OpenAI completions instead (to
// kvpool's gateway or any OpenAI-compatible server), one kept-alive connection per
// thread, each server-sent event with text timed as one token.
#include <atomic>
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "client/cli/cli_util.h"
#include "client/cli/openai_stream.h"
#include "client/cli/progress.h"

namespace kvpool::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct LoadgenFlags {
  ConnectionFlags connection;
  int concurrency = 1;
  int requests = 16;
  int prompt_tokens = 32;
  int max_tokens = 16;
  std::string mode;
  int vocab = 50257;
  uint64_t seed = 0;
  int shared_prefix_tokens = 0;
  bool json = false;
  std::string openai_url, openai_model;
  bool quiet = false;
};

// What the threads collect; guarded by `mutex`.
struct Samples {
  std::mutex mutex;
  std::vector<double> ttft_s, itl_s, tpot_s;
  int64_t completion_tokens = 0, cached_tokens = 0;
  int failed = 0;
  std::map<std::string, int> failures_by_code;
  std::string first_error;
};

std::vector<std::vector<int32_t>> MakePrompts(const LoadgenFlags& flags) {
  std::mt19937 random(static_cast<std::mt19937::result_type>(flags.seed));
  std::uniform_int_distribution<int32_t> token(0, flags.vocab - 1);
  std::vector<int32_t> prefix(static_cast<size_t>(flags.shared_prefix_tokens));
  for (int32_t& id : prefix) id = token(random);
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(flags.requests), prefix);
  for (std::vector<int32_t>& prompt : prompts) {
    while (prompt.size() < static_cast<size_t>(flags.prompt_tokens))
      prompt.push_back(token(random));
  }
  return prompts;
}

// One request's outcome: a failure counted by code, or its client-side times (since
// the request was sent: the first token, then every token's arrival) and token counts.
void RecordFailure(const Status& status, Samples* samples) {
  std::lock_guard<std::mutex> lock(samples->mutex);
  ++samples->failed;
  ++samples->failures_by_code[StatusCodeName(status.code())];
  if (samples->first_error.empty()) samples->first_error = status.ToString();
}

void RecordTimes(double ttft_s, const std::vector<double>& arrivals, int64_t completion_tokens,
                 int64_t cached_tokens, Samples* samples) {
  std::lock_guard<std::mutex> lock(samples->mutex);
  samples->ttft_s.push_back(ttft_s);
  for (size_t i = 1; i < arrivals.size(); ++i)
    samples->itl_s.push_back(arrivals[i] - arrivals[i - 1]);
  if (arrivals.size() > 1) {
    samples->tpot_s.push_back((arrivals.back() - arrivals.front()) /
                              static_cast<double>(arrivals.size() - 1));
  }
  samples->completion_tokens += completion_tokens;
  samples->cached_tokens += cached_tokens;
}

void Record(const StatusOr<GenerateResult>& result, Samples* samples) {
  if (!result.ok()) return RecordFailure(result.status(), samples);
  RecordTimes(result->client_ttft_s, result->token_arrival_s,
              result->summary.usage().completion_tokens(), result->summary.usage().cached_tokens(),
              samples);
}

void RecordOpenAi(const StatusOr<OpenAiCompletion>& result, Samples* samples) {
  if (!result.ok()) return RecordFailure(result.status(), samples);
  RecordTimes(result->ttft_s, result->token_arrival_s, result->completion_tokens,
              result->cached_tokens, samples);
}

nlohmann::json Report(const LoadgenFlags& flags, const Samples& s, double wall_s) {
  const int succeeded = flags.requests - s.failed;
  nlohmann::json report = {
      {"wall_s", wall_s},
      {"requests", flags.requests},
      {"failed", s.failed},
      {"completion_tokens", s.completion_tokens},
      {"tokens_per_s", wall_s > 0 ? s.completion_tokens / wall_s : 0.0},
      {"requests_per_s", wall_s > 0 ? succeeded / wall_s : 0.0},
      {"ttft_p50_s", Percentile(s.ttft_s, 0.5)},
      {"ttft_p99_s", Percentile(s.ttft_s, 0.99)},
      {"itl_p50_s", Percentile(s.itl_s, 0.5)},
      {"itl_p99_s", Percentile(s.itl_s, 0.99)},
      {"tpot_median_s", Percentile(s.tpot_s, 0.5)},
      {"cached_tokens", s.cached_tokens},
      {"failures", s.failures_by_code},
  };
  return report;
}

void PrintText(const nlohmann::json& r, const Samples& s) {
  std::printf(
      "requests        %d (%d failed) in %.3f s: %.2f requests/s\n"
      "tokens          %lld completion, %lld cached prompt: %.1f tokens/s\n"
      "ttft            p50 %.4f s, p99 %.4f s\n"
      "inter-token     p50 %.4f s, p99 %.4f s; per token (median) %.4f s\n",
      r["requests"].get<int>(), r["failed"].get<int>(), r["wall_s"].get<double>(),
      r["requests_per_s"].get<double>(), r["completion_tokens"].get<long long>(),
      r["cached_tokens"].get<long long>(), r["tokens_per_s"].get<double>(),
      r["ttft_p50_s"].get<double>(), r["ttft_p99_s"].get<double>(), r["itl_p50_s"].get<double>(),
      r["itl_p99_s"].get<double>(), r["tpot_median_s"].get<double>());
  for (const auto& [code, count] : s.failures_by_code) {
    std::printf("failures        %s: %d\n", code.c_str(), count);
  }
  if (!s.first_error.empty()) std::printf("first error     %s\n", s.first_error.c_str());
}

int Finish(const LoadgenFlags& flags, const Samples& samples, double wall_s) {
  const nlohmann::json report = Report(flags, samples, wall_s);
  if (flags.json) {
    std::printf("%s\n", report.dump().c_str());
  } else {
    PrintText(report, samples);
  }
  return samples.failed == 0 ? 0 : 1;
}

int RunOpenAi(const LoadgenFlags& flags, const std::vector<std::vector<int32_t>>& prompts) {
  StatusOr<std::string> token = ReadTokenFile(flags.connection.token_file);
  if (!token.ok()) return ReportError("loadgen", token.status());
  const int threads_n = std::min(flags.concurrency, flags.requests);
  std::vector<std::unique_ptr<OpenAiStream>> streams;
  for (int t = 0; t < threads_n; ++t) {
    StatusOr<std::unique_ptr<OpenAiStream>> s = OpenAiStream::Connect(flags.openai_url, *token);
    if (!s.ok()) return ReportError("loadgen", s.status());
    streams.push_back(std::move(*s));
  }
  std::string model = flags.openai_model;
  if (model.empty()) {
    StatusOr<OpenAiModel> first = streams[0]->FirstModel();
    if (!first.ok()) return ReportError("loadgen", first.status());
    model = first->id;
  }
  const std::string extra = flags.mode.empty() ? "" : "\"kv_mode\":\"" + flags.mode + "\"";
  Samples samples;
  std::atomic<int> next_request{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  {
    ProgressBar progress("kvpool loadgen", flags.quiet);
    progress.SetTotal(flags.requests);
    progress.Stage("requests at concurrency " + std::to_string(threads_n));
    for (int t = 0; t < threads_n; ++t) {
      threads.emplace_back([&, t] {
        for (int i = next_request++; i < flags.requests; i = next_request++) {
          RecordOpenAi(streams[static_cast<size_t>(t)]->Complete(
                           model, prompts[static_cast<size_t>(i)], flags.max_tokens, extra),
                       &samples);
          progress.Advance();
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
  }
  return Finish(flags, samples, std::chrono::duration<double>(Clock::now() - start).count());
}

int RunLoadgen(const LoadgenFlags& flags) {
  if (flags.shared_prefix_tokens > flags.prompt_tokens) {
    return ReportError("loadgen", InvalidArgument("--shared-prefix-tokens must be <= "
                                                  "--prompt-tokens"));
  }
  if (flags.openai_url.empty() == flags.connection.servers.empty()) {
    return ReportError("loadgen", InvalidArgument("give --server (gRPC) or --openai-url"));
  }
  const std::vector<std::vector<int32_t>> prompts = MakePrompts(flags);
  if (!flags.openai_url.empty()) return RunOpenAi(flags, prompts);
  StatusOr<ClientOptions> options = MakeClientOptions(flags.connection);
  if (!options.ok()) return ReportError("loadgen", options.status());
  Client client(std::move(*options));
  GenerateParams base;
  base.max_tokens = flags.max_tokens;
  base.mode = flags.mode;
  base.ignore_eos = true;
  base.seed = flags.seed;  // greedy anyway: the seed only makes runs reproducible

  Samples samples;
  std::atomic<int> next_request{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  {
    const int threads_n = std::min(flags.concurrency, flags.requests);
    ProgressBar progress("kvpool loadgen", flags.quiet);
    progress.SetTotal(flags.requests);
    progress.Stage("requests at concurrency " + std::to_string(threads_n));
    for (int t = 0; t < threads_n; ++t) {
      threads.emplace_back([&] {
        for (int i = next_request++; i < flags.requests; i = next_request++) {
          GenerateParams params = base;
          params.token_ids = prompts[static_cast<size_t>(i)];
          Record(client.Generate(params), &samples);
          progress.Advance();
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
  }
  const double wall_s = std::chrono::duration<double>(Clock::now() - start).count();

  return Finish(flags, samples, wall_s);
}

}  // namespace

void AddLoadgenCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<LoadgenFlags>();
  CLI::App* command = app.add_subcommand("loadgen", "closed-loop load test of workers");
  AddConnectionFlags(command, &flags->connection, /*server_required=*/false);
  command->add_option("--openai-url", flags->openai_url,
                      "http://HOST:PORT of an OpenAI-compatible server: streaming completions "
                      "instead of gRPC (--token-file is the bearer token)");
  command->add_option("--openai-model", flags->openai_model,
                      "the model id to send (default: the first of /v1/models)");
  command->add_option("--concurrency", flags->concurrency, "requests in flight")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--requests", flags->requests, "requests in all")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--prompt-tokens", flags->prompt_tokens, "prompt length in tokens")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--max-tokens", flags->max_tokens, "tokens generated per request")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--mode", flags->mode, "KV cache: none | contiguous | paged")
      ->check(CLI::IsMember({"none", "contiguous", "paged"}));
  command->add_option("--vocab", flags->vocab, "token ids are drawn from [0, vocab)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--seed", flags->seed, "prompt and sampling seed")->capture_default_str();
  command
      ->add_option("--shared-prefix-tokens", flags->shared_prefix_tokens,
                   "leading tokens identical in every prompt")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  command->add_flag("--json", flags->json, "print one JSON object");
  command->add_flag("--quiet", flags->quiet, "no progress on stderr");
  command->callback([flags, exit_code] { *exit_code = RunLoadgen(*flags); });
}

}  // namespace kvpool::cli
