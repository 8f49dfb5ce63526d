// kvpool-engine-run: the original experiment in process. Generates from one prompt
// in each KV mode (none, contiguous, paged) and prints per-mode average latency per
// token, time to first token, total time and KV memory (reserved vs holding tokens).
// Blocks come from the cache manager's allocator linked in process (OfflineEngine).
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "engine/cpu_linear.h"
#include "engine/engine.h"
#include "engine/model_loader.h"
#include "service/offline_engine.h"
#include "tokenizer/tokenizer.h"
#include "tools/cpu_dtype_flags.h"

namespace kvpool {
namespace {

int Main(int argc, char** argv) {
  CLI::App app{"Generate from one prompt in each KV mode and compare latency and KV memory"};
  std::string model = "gpt2", prompt = "深度学习中的注意力机制是一种",
              modes_arg = "none,contiguous,paged";
  int max_tokens = 50, threads = 2, block_size = 16;
  double temperature = 0.0, top_p = 1.0;
  int top_k = 0;
  uint64_t seed = 42;
  bool json = false;
  app.add_option("--model", model, "built-in name or Hugging Face folder");
  app.add_option("--prompt", prompt, "prompt text");
  int prompt_tokens = 0;
  app.add_option("--prompt-tokens", prompt_tokens,
                 "instead of --prompt: this many random token ids (seeded by --seed), like "
                 "`kvpool loadgen`")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-tokens", max_tokens, "new tokens per mode");
  app.add_option("--modes", modes_arg, "comma-separated KV modes");
  app.add_option("--threads", threads)->check(CLI::PositiveNumber);
  app.add_option("--block-size", block_size)->check(CLI::Range(1, 1024));
  app.add_option("--temperature", temperature, "0 = greedy");
  app.add_option("--top-p", top_p);
  app.add_option("--top-k", top_k);
  app.add_option("--seed", seed);
  app.add_flag("--json", json, "print one JSON object");
  CpuDtypeFlags cpu_dtypes;
  cpu_dtypes.Add(app);
  CLI11_PARSE(app, argc, argv);

  auto fail = [](const std::string& message) {
    std::cerr << "kvpool-engine-run: " << message << "\n";
    return 2;
  };
  EngineOptions options;
  if (Status s = cpu_dtypes.Apply(&options); !s.ok()) return fail(s.message());
  auto loaded = LoadModel(model);
  if (!loaded.ok()) return fail(loaded.status().ToString());
  cpu_dtypes.FitToWeights(loaded->weights, &options);
  if (!loaded->tokenizer)
    return fail("no tokenizer for '" + model + "': " + loaded->tokenizer_note);
  std::shared_ptr<const Tokenizer> tok = loaded->tokenizer;
  std::vector<int32_t> prompt_ids = tok->Encode(prompt);
  if (prompt_tokens > 0) {
    std::mt19937 random(static_cast<std::mt19937::result_type>(seed));
    std::uniform_int_distribution<int32_t> token(
        0, static_cast<int32_t>(loaded->config.vocab_size) - 1);
    prompt_ids.assign(prompt_tokens, 0);
    for (int32_t& t : prompt_ids) t = token(random);
    prompt = "<" + std::to_string(prompt_tokens) + " random token ids>";
  }
  options.threads = threads;
  options.block_size = block_size;
  const std::string source = loaded->source;
  auto engine_or =
      worker::OfflineEngine::Create(loaded->config, std::move(loaded->weights), options, tok);
  if (!engine_or.ok()) return fail(engine_or.status().ToString());
  worker::OfflineEngine& engine = **engine_or;

  nlohmann::json report;
  report["model"] = engine.config().name;
  report["weights"] = source;
  report["weight_dtype"] = cpu_dtypes.weight_why;
  report["kv_cache_dtype"] = KvDtypeName(options.cpu_kv_dtype);
  report["prompt"] = prompt;
  report["prompt_tokens"] = prompt_ids.size();
  report["max_tokens"] = max_tokens;
  report["threads"] = threads;
  std::printf("model: %s\nprompt: \"%s\" (%zu tokens), %d new tokens, %s, %d threads\n\n",
              source.c_str(), prompt.c_str(), prompt_ids.size(), max_tokens,
              temperature == 0 ? "greedy" : ("temperature " + std::to_string(temperature)).c_str(),
              threads);
  std::string modes_list = modes_arg;
  std::vector<std::string> modes;
  for (size_t pos; (pos = modes_list.find(',')) != std::string::npos;
       modes_list.erase(0, pos + 1)) {
    modes.push_back(modes_list.substr(0, pos));
  }
  modes.push_back(modes_list);
  std::printf("%-11s %14s %10s %10s %16s %16s\n", "mode", "avg s/token", "ttft s", "total s",
              "KV reserved MB", "KV holding MB");
  for (const std::string& name : modes) {
    auto mode = ParseKvMode(name);
    if (!mode.ok()) return fail(mode.status().ToString());
    GenerationRequest r;
    r.prompt = prompt_ids;
    r.max_tokens = max_tokens;
    r.mode = *mode;
    r.sampling = {temperature, top_k, top_p, seed};
    r.ignore_eos = true;  // same token count in every mode
    auto results = engine.Generate({r});
    if (!results.ok()) return fail(results.status().ToString());
    const worker::GenerationResult& g = (*results)[0];
    const double per_token = g.total_s / static_cast<double>(g.tokens.size());
    const double peak_reserved =
        *std::max_element(g.step_kv_reserved_bytes.begin(), g.step_kv_reserved_bytes.end());
    const double peak_used =
        *std::max_element(g.step_kv_used_bytes.begin(), g.step_kv_used_bytes.end());
    std::printf("%-11s %14.4f %10.4f %10.3f %16.2f %16.2f\n", name.c_str(), per_token, g.ttft_s,
                g.total_s, peak_reserved / 1e6, peak_used / 1e6);
    report["modes"][name] = {{"avg_token_latency_s", per_token},
                             {"ttft_s", g.ttft_s},
                             {"total_s", g.total_s},
                             {"peak_kv_reserved_bytes", peak_reserved},
                             {"peak_kv_used_bytes", peak_used},
                             {"step_latency_s", g.step_s},
                             {"text", tok->Decode(g.tokens)}};
  }
  std::printf(
      "\n(avg s/token = total time / new tokens, prefill included, as the original experiment "
      "measured)\n");
  // Random weights emit any bytes: invalid UTF-8 in the text becomes U+FFFD.
  if (json) {
    std::cout << report.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  }
  return 0;
}

}  // namespace
}  // namespace kvpool

int main(int argc, char** argv) {
  kvpool::KeepLargeAllocations();
  return kvpool::Main(argc, argv);
}
