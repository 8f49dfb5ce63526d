// Bench scenario h, pinning: a shared system prompt under eviction pressure, with and
// without a pin. Each arm gets a fresh node with a pool of about four system prompts'
// worth of blocks; every round sends the system prompt with a suffix of its own
// (serial, 4 tokens out: its prefix hit and TTFT are what is measured), then one-off
// prompts at concurrency 2 that together fill the pool more than once, so LRU evicts
// the system prompt between rounds unless it is pinned. The pinned arm pins it with the
// worker's PinPrompt first (what an operator does for a system prompt: vLLM #23083).
#include <random>

#include "client/bench/bench.h"
#include "client/cli/cli_util.h"

namespace kvpool::bench {

using Json = nlohmann::json;

Status RunPinning(const BenchOptions& o, LocalNode* node, const v1::GetModelInfoResponse& info,
                  Json& report) {
  constexpr int kBlockSize = 16;
  const int context = info.max_context();
  const int system_tokens = std::min(256, context / 4) / kBlockSize * kBlockSize;
  const int other_tokens = std::min(256, context / 4);
  // Four system prompts' worth: the pin (a quarter) fits the default pinned-block cap.
  const int64_t pool_blocks = 4 * (system_tokens / kBlockSize + 2);
  const int rounds = o.quick ? 4 : 8;
  // One-off prompts per round: their blocks pass the pool's size 1.5 times.
  const int others = static_cast<int>(3 * pool_blocks / (2 * (other_tokens / kBlockSize + 1))) + 1;
  const std::vector<int32_t> system = RandomTokens(system_tokens, o.seed + 401, info.vocab_size());
  Json arms = Json::object();
  for (const bool pinned : {false, true}) {
    const std::string arm = pinned ? "pinned" : "unpinned";
    o.progress("pinning: " + arm + " system prompt under eviction pressure");
    KVPOOL_RETURN_IF_ERROR(node->Start(pool_blocks, kBlockSize));
    ClientOptions options;
    options.addresses = {node->worker()};
    options.deadline = std::chrono::minutes(10);
    Client client(options);
    if (pinned) {
      v1::PinPromptRequest pin;
      pin.mutable_token_ids()->Add(system.begin(), system.end());
      pin.mutable_retention()->set_pin_ttl_ms(3600 * 1000);
      KVPOOL_ASSIGN_OR_RETURN(const v1::PinPromptResponse made, client.PinPrompt(pin));
      (void)made;
    }
    std::vector<double> ttft_s;
    int64_t prompt_tokens = 0, cached_tokens = 0;
    for (int round = 0; round < rounds; ++round) {
      WorkItem ask;
      ask.prompt = system;
      for (int32_t t :
           RandomTokens(8, o.seed + 500 + static_cast<uint32_t>(round), info.vocab_size())) {
        ask.prompt.push_back(t);
      }
      ask.output = ask.max_tokens = 4;
      LoadResult r = RunLoad(client, {ask}, 1, "paged");
      KVPOOL_RETURN_IF_ERROR(r.status);
      if (round > 0) {  // the first is a miss either way (pinned: PinPrompt computed it)
        ttft_s.insert(ttft_s.end(), r.ttft_s.begin(), r.ttft_s.end());
        prompt_tokens += r.prompt_tokens;
        cached_tokens += r.cached_tokens;
      }
      std::vector<WorkItem> pressure;
      for (int i = 0; i < others; ++i) {
        WorkItem w;
        w.prompt = RandomTokens(
            other_tokens,
            o.seed + 1000 * static_cast<uint32_t>(round + 1) + static_cast<uint32_t>(i),
            info.vocab_size());
        w.output = w.max_tokens = 8;
        pressure.push_back(std::move(w));
      }
      KVPOOL_RETURN_IF_ERROR(RunLoad(client, pressure, 2, "paged").status);
    }
    ClientOptions on_manager;
    on_manager.addresses = {node->manager()};
    KVPOOL_ASSIGN_OR_RETURN(const v1::GetStatsResponse stats, Client(on_manager).ManagerStats());
    arms[arm] = {{"system_prompt_hit_rate",
                  prompt_tokens > 0 ? static_cast<double>(cached_tokens) / prompt_tokens : 0.0},
                 {"system_prompt_ttft_p50_s", cli::Percentile(ttft_s, 0.5)},
                 {"system_prompt_ttft_max_s", cli::Percentile(ttft_s, 1.0)},
                 {"evictions", stats.evictions()},
                 {"pinned_blocks", stats.pinned_blocks()}};
  }
  report["scenarios"]["pinning"] = {{"pool_blocks", pool_blocks},
                                    {"block_size", kBlockSize},
                                    {"system_prompt_tokens", system_tokens},
                                    {"rounds", rounds},
                                    {"one_off_prompts_per_round", others},
                                    {"one_off_prompt_tokens", other_tokens},
                                    {"arms", arms}};
  return Status::Ok();
}

void PinningMarkdown(const Json& pinning, std::ostream& md) {
  md << "## Pinning a system prompt under eviction pressure\n\n"
     << "A " << pinning["system_prompt_tokens"].get<int>() << "-token system prompt in a "
     << pinning["pool_blocks"].get<int>() << "-block pool, asked once per round for "
     << pinning["rounds"].get<int>() << " rounds, with "
     << pinning["one_off_prompts_per_round"].get<int>() << " one-off prompts of "
     << pinning["one_off_prompt_tokens"].get<int>()
     << " tokens between asks (the first ask of each arm not counted).\n\n"
     << "| arm | system prompt hit rate | its TTFT p50 | its TTFT max | evictions |\n"
     << "|---|---:|---:|---:|---:|\n";
  for (const char* arm : {"unpinned", "pinned"}) {
    const Json& a = pinning["arms"][arm];
    char line[256];
    std::snprintf(line, sizeof(line), "| %s | %.1f%% | %.1f ms | %.1f ms | %lld |\n", arm,
                  100 * a["system_prompt_hit_rate"].get<double>(),
                  1e3 * a["system_prompt_ttft_p50_s"].get<double>(),
                  1e3 * a["system_prompt_ttft_max_s"].get<double>(),
                  static_cast<long long>(a["evictions"].get<int64_t>()));
    md << line;
  }
  md << "\n";
}

}  // namespace kvpool::bench
