// `kvpool bench --openai-url`: the scenarios that run one request at a time, measured
// against any OpenAI-compatible completions server (kvpool's gateway, vLLM, llama.cpp's
// server) from the client's side, so that two servers run the same requests side by
// side: the original experiment (greedy), decode latency vs context, and prefix
// sharing. Every request is a streamed completion of token ids (greedy, ignore_eos);
// times are the client's: TTFT to the first text event, inter-token latency between
// events. Against kvpool (/v1/models owned_by "kvpool") each scenario runs in the
// three KV modes (the gateway's kv_mode); against another server once, as "server".
// The server's tokenizer is unknown, so prompts are ids in [100, 1000), ordinary
// tokens in every real vocabulary.
#include <algorithm>
#include <numeric>
#include <sstream>

#include "client/bench/bench.h"
#include "client/cli/openai_stream.h"

namespace kvpool::bench {
namespace {

using Json = nlohmann::json;

std::vector<int32_t> Prompt(int n, uint32_t seed) {
  std::vector<int32_t> ids = RandomTokens(n, seed, 900);
  for (int32_t& id : ids) id += 100;
  return ids;
}

struct Timed {
  double ttft_s = 0, total_s = 0;
  std::vector<double> gaps_s;  // between text events
  int events = 0;
  int64_t completion_tokens = 0, cached_tokens = 0;
};

StatusOr<Timed> Time(cli::OpenAiStream& stream, const std::string& model,
                     const std::vector<int32_t>& prompt, int max_tokens, const std::string& extra) {
  KVPOOL_ASSIGN_OR_RETURN(cli::OpenAiCompletion c,
                          stream.Complete(model, prompt, max_tokens, extra));
  Timed t;
  t.ttft_s = c.ttft_s;
  t.events = static_cast<int>(c.token_arrival_s.size());
  t.total_s = c.token_arrival_s.empty() ? 0 : c.token_arrival_s.back();
  for (size_t i = 1; i < c.token_arrival_s.size(); ++i) {
    t.gaps_s.push_back(c.token_arrival_s[i] - c.token_arrival_s[i - 1]);
  }
  t.completion_tokens = c.completion_tokens;
  t.cached_tokens = c.cached_tokens;
  return t;
}

double Mean(const std::vector<double>& v) {
  return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

}  // namespace

Status RunOpenAiScenarios(const BenchOptions& o, Json& report) {
  KVPOOL_ASSIGN_OR_RETURN(std::unique_ptr<cli::OpenAiStream> stream,
                          cli::OpenAiStream::Connect(o.openai_url, o.openai_token));
  KVPOOL_ASSIGN_OR_RETURN(cli::OpenAiModel model, stream->FirstModel());
  const bool kvpool = model.owned_by == "kvpool";
  const std::vector<std::string> modes =
      kvpool ? std::vector<std::string>{"none", "contiguous", "paged"}
             : std::vector<std::string>{"server"};
  const auto extra = [&](const std::string& mode) {
    return kvpool ? "\"kv_mode\":\"" + mode + "\"" : std::string();
  };
  const int context = model.max_model_len > 0 ? static_cast<int>(model.max_model_len) : 2048;
  Json out = {{"url", o.openai_url},
              {"model", model.id},
              {"owned_by", model.owned_by},
              {"modes", modes},
              {"max_context", context},
              {"max_context_from_server", model.max_model_len > 0},
              {"timing", "client: TTFT to the first text event, ITL between text events"}};

  if (o.Wants("original")) {
    for (const std::string& mode : modes) {
      o.progress("openai original experiment: " + mode + ", greedy");
      KVPOOL_ASSIGN_OR_RETURN(
          Timed t, Time(*stream, model.id, Prompt(16, o.seed), o.max_tokens, extra(mode)));
      out["original"][mode] = {
          {"ttft_s", t.ttft_s},           {"itl_median_s", Median(t.gaps_s)},
          {"itl_mean_s", Mean(t.gaps_s)}, {"total_s", t.total_s},
          {"text_events", t.events},      {"completion_tokens", t.completion_tokens}};
    }
  }
  if (o.Wants("context_sweep")) {
    constexpr int kSteps = 6;  // tokens per point; the median of the last five gaps
    Json points = Json::array();
    for (double f : o.quick ? std::vector<double>{0.0625, 0.25, 0.5, 0.97}
                            : std::vector<double>{0.03, 0.0625, 0.125, 0.25, 0.5, 0.75, 0.97}) {
      const int position = std::max(8, static_cast<int>(f * context));
      const int prompt = std::min(position, context - kSteps - 1);
      Json row = {{"context", position}};
      for (const std::string& mode : modes) {
        o.progress("openai context sweep: " + mode + " at " + std::to_string(position));
        KVPOOL_ASSIGN_OR_RETURN(
            Timed t,
            Time(*stream, model.id, Prompt(prompt, o.seed + static_cast<uint32_t>(position)),
                 kSteps, extra(mode)));
        row[mode] = Median(t.gaps_s);
      }
      points.push_back(row);
    }
    out["context_sweep"] = {{"steps_per_point", kSteps - 1}, {"points", points}};
  }
  if (o.Wants("prefix_sharing")) {
    const int requests = o.quick ? 4 : 8;
    constexpr int kSuffix = 16;
    const std::string mode = kvpool ? "paged" : "server";
    Json points = Json::array();
    for (int system_tokens : {128, 512}) {
      if (system_tokens + kSuffix + 8 >= context) continue;
      o.progress("openai prefix sharing: " + std::to_string(system_tokens) + "-token prefix");
      std::vector<double> miss, hit;
      int64_t prompt_tokens = 0, cached = 0;
      for (int i = 0; i < requests; ++i) {  // each with a prefix of its own
        KVPOOL_ASSIGN_OR_RETURN(
            Timed t, Time(*stream, model.id,
                          Prompt(system_tokens + kSuffix, o.seed * 7919 + system_tokens + i), 4,
                          extra(mode)));
        miss.push_back(t.ttft_s);
      }
      const std::vector<int32_t> shared = Prompt(system_tokens, o.seed * 104729 + system_tokens);
      for (int i = 0; i <= requests; ++i) {  // one shared prefix, after a first that fills it
        std::vector<int32_t> prompt = shared;
        for (int32_t id : Prompt(kSuffix, o.seed + 31 * i + 1)) prompt.push_back(id);
        KVPOOL_ASSIGN_OR_RETURN(Timed t, Time(*stream, model.id, prompt, 4, extra(mode)));
        if (i == 0) continue;
        hit.push_back(t.ttft_s);
        prompt_tokens += static_cast<int64_t>(prompt.size());
        cached += t.cached_tokens;
      }
      points.push_back({{"prefix_tokens", system_tokens},
                        {"requests", requests},
                        {"cached_token_share", static_cast<double>(cached) / prompt_tokens},
                        {"ttft_miss_s", Median(miss)},
                        {"ttft_hit_s", Median(hit)},
                        {"ttft_hit_over_miss", Median(hit) / Median(miss)}});
    }
    out["prefix_sharing"] = {{"suffix_tokens", kSuffix}, {"mode", mode}, {"points", points}};
  }
  report["openai"] = out;
  return Status::Ok();
}

void OpenAiMarkdown(const Json& report, std::ostream& md) {
  if (!report.contains("openai")) return;
  const Json& r = report["openai"];
  const auto ms = [](const Json& v) {
    char b[32];
    std::snprintf(b, sizeof(b), "%.2f ms", v.is_number() ? 1e3 * v.get<double>() : 0.0);
    return std::string(b);
  };
  md << "## OpenAI endpoint " << r.value("url", "") << "\n\nModel `" << r.value("model", "")
     << "` (owned by " << r.value("owned_by", "?") << "), context " << r["max_context"]
     << (r.value("max_context_from_server", false) ? "" : " (assumed: the server did not say)")
     << ". Streamed greedy completions of token ids, timed by the client (" << r.value("timing", "")
     << ").\n\n";
  if (r.contains("original")) {
    md << "| mode | TTFT | ITL median | ITL mean | total | text events |\n"
          "|---|---:|---:|---:|---:|---:|\n";
    for (const Json& name : r["modes"]) {
      const std::string mode = name.get<std::string>();
      if (!r["original"].contains(mode)) continue;
      const Json& row = r["original"][mode];
      md << "| " << mode << " | " << ms(row["ttft_s"]) << " | " << ms(row["itl_median_s"]) << " | "
         << ms(row["itl_mean_s"]) << " | " << ms(row["total_s"]) << " | " << row["text_events"]
         << " |\n";
    }
    md << "\n";
  }
  if (r.contains("context_sweep")) {
    md << "| context |";
    for (const Json& mode : r["modes"]) md << " ITL " << mode.get<std::string>() << " |";
    md << "\n|---:|";
    for (size_t i = 0; i < r["modes"].size(); ++i) md << "---:|";
    md << "\n";
    for (const Json& p : r["context_sweep"]["points"]) {
      md << "| " << p["context"] << " |";
      for (const Json& mode : r["modes"]) md << " " << ms(p[mode.get<std::string>()]) << " |";
      md << "\n";
    }
    md << "\n";
  }
  if (r.contains("prefix_sharing")) {
    md << "| shared prefix | cached tokens / prompt | TTFT miss | TTFT hit | hit / miss |\n"
          "|---:|---:|---:|---:|---:|\n";
    for (const Json& p : r["prefix_sharing"]["points"]) {
      char share[32], ratio[32];
      std::snprintf(share, sizeof(share), "%.1f%%", 100 * p["cached_token_share"].get<double>());
      std::snprintf(ratio, sizeof(ratio), "%.3f", p["ttft_hit_over_miss"].get<double>());
      md << "| " << p["prefix_tokens"] << " | " << share << " | " << ms(p["ttft_miss_s"]) << " | "
         << ms(p["ttft_hit_s"]) << " | " << ratio << " |\n";
    }
    md << "\n";
  }
}

}  // namespace kvpool::bench
