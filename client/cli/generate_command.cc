// `kvpool generate`: one Generate call. Text pieces go to stdout as they arrive (with
// --n > 1 each sample is printed whole at the end, prefixed by its index); the timing
// summary (server and client TTFT, inter-token latency, throughput, KV bytes, finish
// reasons) goes to stderr so stdout stays the generated text.
#include <cstdio>
#include <iostream>
#include <map>

#include "client/cli/cli_util.h"

namespace kvpool::cli {
namespace {

struct GenerateFlags {
  ConnectionFlags connection;
  GenerateParams params;
  float top_p = 1.0f;
  uint64_t seed = 0;
  CLI::Option* top_p_option = nullptr;
  CLI::Option* seed_option = nullptr;
};

std::string Join(const google::protobuf::RepeatedPtrField<std::string>& values) {
  std::string joined;
  for (const std::string& value : values) joined += (joined.empty() ? "" : ",") + value;
  return joined;
}

void PrintSummary(const GenerateResult& result,
                  const std::map<int, std::vector<double>>& arrivals_by_sample) {
  std::vector<double> gaps_s;
  for (const auto& [sample, arrivals] : arrivals_by_sample) {
    for (size_t i = 1; i < arrivals.size(); ++i) gaps_s.push_back(arrivals[i] - arrivals[i - 1]);
  }
  const v1::GenerateSummary& s = result.summary;
  const double tokens_per_s =
      result.client_total_s > 0 ? s.usage().completion_tokens() / result.client_total_s : 0.0;
  std::fprintf(stderr,
               "server        %s\n"
               "tokens        prompt %lld, cached %lld, completion %lld\n"
               "ttft          server %.4f s, client %.4f s (queue %.4f s)\n"
               "per token     server %.4f s; client inter-token p50 %.4f s, p99 %.4f s\n"
               "total         server %.4f s, client %.4f s, %.1f tokens/s\n"
               "kv bytes      reserved %lld, used %lld\n"
               "finish        %s\n"
               "preemptions   %d\n",
               result.server.c_str(), static_cast<long long>(s.usage().prompt_tokens()),
               static_cast<long long>(s.usage().cached_tokens()),
               static_cast<long long>(s.usage().completion_tokens()), s.ttft_s(),
               result.client_ttft_s, s.queue_s(), s.time_per_output_token_s(),
               Percentile(gaps_s, 0.5), Percentile(gaps_s, 0.99), s.total_s(),
               result.client_total_s, tokens_per_s, static_cast<long long>(s.kv_bytes_reserved()),
               static_cast<long long>(s.kv_bytes_used()), Join(s.finish_reasons()).c_str(),
               s.preemptions());
  if (s.has_pin()) {
    std::fprintf(stderr, "pin           %lld (%lld tokens, %lld ms)\n",
                 static_cast<long long>(s.pin().pin_id()),
                 static_cast<long long>(s.pin().pinned_tokens()),
                 static_cast<long long>(s.pin().expires_in_ms()));
  } else if (!s.pin_error().empty()) {
    std::fprintf(stderr, "pin           failed: %s\n", s.pin_error().c_str());
  }
}

int RunGenerate(GenerateFlags& flags) {
  if (flags.top_p_option->count() > 0) flags.params.top_p = flags.top_p;
  if (flags.seed_option->count() > 0) flags.params.seed = flags.seed;
  StatusOr<ClientOptions> options = MakeClientOptions(flags.connection);
  if (!options.ok()) return ReportError("generate", options.status());
  Client client(std::move(*options));
  const bool stream_text = flags.params.n <= 1;
  std::map<int, std::vector<double>> arrivals_by_sample;
  StatusOr<GenerateResult> result = client.Generate(flags.params, [&](const TokenEvent& event) {
    arrivals_by_sample[event.index].push_back(event.arrival_s);
    if (stream_text) {
      std::fwrite(event.text.data(), 1, event.text.size(), stdout);
      std::fflush(stdout);
    }
    return true;
  });
  if (stream_text && !arrivals_by_sample.empty()) std::fputs("\n", stdout);
  if (!result.ok()) return ReportError("generate", result.status());
  if (!stream_text) {
    for (size_t i = 0; i < result->text.size(); ++i) {
      std::printf("[%zu] %s\n", i, result->text[i].c_str());
    }
  }
  std::fflush(stdout);
  PrintSummary(*result, arrivals_by_sample);
  return 0;
}

}  // namespace

void AddGenerateCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<GenerateFlags>();
  GenerateParams& p = flags->params;
  CLI::App* command = app.add_subcommand("generate", "stream one request's tokens");
  AddConnectionFlags(command, &flags->connection);
  command->add_option("--prompt", p.prompt, "prompt text (tokenized by the worker)");
  command->add_option("--token-ids", p.token_ids, "prompt as token ids: 1,2,3")->delimiter(',');
  command->add_option("--mode", p.mode, "KV cache: none | contiguous | paged (default: worker's)")
      ->check(CLI::IsMember({"none", "contiguous", "paged"}));
  command->add_option("--max-tokens", p.max_tokens, "new tokens per sample")->capture_default_str();
  command->add_option("--temperature", p.temperature, "0 = greedy")->capture_default_str();
  flags->top_p_option = command->add_option("--top-p", flags->top_p, "nucleus sampling (0, 1]");
  command->add_option("--top-k", p.top_k, "0 = off")->capture_default_str();
  flags->seed_option = command->add_option("--seed", flags->seed, "sampling seed");
  command->add_option("--n", p.n, "parallel samples")->capture_default_str();
  command->add_option("--stop", p.stop, "stop string (repeatable)")->allow_extra_args(false);
  command->add_flag("--ignore-eos", p.ignore_eos, "generate max_tokens even past EOS");
  command->add_option("--min-p", p.min_p, "drop tokens under min_p x the top probability");
  command->add_option("--presence-penalty", p.presence_penalty, "[-2, 2]");
  command->add_option("--frequency-penalty", p.frequency_penalty, "[-2, 2]");
  command->add_option("--repetition-penalty", p.repetition_penalty, "(0, 2]; 1 = off");
  command->add_option("--min-tokens", p.min_tokens, "no EOS or stop token before this many");
  command->add_option("--stop-token-id", p.stop_token_ids, "a token id that ends a sample")
      ->delimiter(',');
  command->add_option("--pin-ttl-ms", p.pin_ttl_ms,
                      "pin the prompt's full blocks in the pool this long after the request");
  command->add_option("--retention-priority", p.retention_priority,
                      "0..100: the prompt's blocks are evicted after lower-priority ones");
  command->callback([flags, exit_code] { *exit_code = RunGenerate(*flags); });
}

}  // namespace kvpool::cli
