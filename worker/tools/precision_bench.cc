// kvpool-precision-bench: what each weight dtype and KV dtype costs and buys on the
// CPU, against fp32 weights with fp32 K/V on the same weights, in process (the logits
// it compares never cross the wire; `kvpool bench --scenarios precision` runs it and
// puts its JSON in the report). Per (weight dtype, KV dtype):
// - paged decode ms/token at batch 1 and two contexts, prefill time of a prompt
//   (medians; every configuration's points interleaved round by round, so a noisy
//   spell of the machine hits them alike);
// - KV bytes per token (scales included) and the largest batch of full-context
//   sequences that a pool of --pool-bytes holds;
// - accuracy over --positions teacher-forced positions of one sequence (every
//   position's logits from one forward that writes and reads the pool in that dtype):
//   the largest |logit - fp32 logit|, the mean KL(fp32 || this) of the next-token
//   distributions, and how often the top token agrees; and over a --greedy-tokens
//   greedy continuation, the share of tokens equal to fp32's and where they first
//   part.
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "engine/cpu_linear.h"
#include "engine/model.h"
#include "engine/model_loader.h"
#include "tools/engine_timing.h"

namespace kvpool {
namespace {

struct Config {
  std::string weight_name;  // "fp32" / "bf16" / "fp16"
  at::ScalarType weight_dtype;
  KvDtype kv_dtype;
  std::unique_ptr<OfflineEngine> engine;
  std::vector<std::vector<double>> decode_s;  // [context][round]
  std::vector<double> prefill_s;              // [round]
};

// Every position's next-token logits of `tokens`, teacher-forced, in one paged
// forward over a pool of its own: [tokens, vocab].
at::Tensor TeacherForcedLogits(const ModelConfig& config, const ModelWeights& weights,
                               at::ScalarType weight_dtype, KvDtype kv_dtype,
                               const std::vector<int32_t>& tokens, int32_t block_size) {
  Model model(config, weights, weight_dtype, kv_dtype);
  PoolGeometry g;
  g.num_layers = static_cast<int32_t>(config.num_layers);
  g.num_kv_heads = static_cast<int32_t>(config.num_kv_heads);
  g.head_dim = static_cast<int32_t>(config.head_dim);
  g.block_size = block_size;
  g.num_blocks = CeilDiv(static_cast<int64_t>(tokens.size()), block_size);
  g.dtype = kv_dtype;
  KvPool pool = KvPool::Create(g).value();
  std::vector<int32_t> table(static_cast<size_t>(g.num_blocks));
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  ForwardBatch batch;
  batch.AddTokens(tokens, 0, static_cast<int64_t>(tokens.size()), table, block_size, true);
  batch.logit_rows.clear();
  for (size_t i = 0; i < tokens.size(); ++i) batch.logit_rows.push_back(static_cast<int64_t>(i));
  return model.Forward(batch, pool);
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab) - 1);
  std::vector<int32_t> out(static_cast<size_t>(n));
  for (int32_t& t : out) t = dist(rng);
  return out;
}

StatusOr<std::vector<int32_t>> Greedy(OfflineEngine& engine, const std::vector<int32_t>& prompt,
                                      int32_t tokens) {
  GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = tokens;
  r.mode = KvMode::kPaged;
  r.ignore_eos = true;
  KVPOOL_ASSIGN_OR_RETURN(std::vector<worker::GenerationResult> results, engine.Generate({r}));
  return results.at(0).tokens;
}

int Main(int argc, char** argv) {
  CLI::App app{"Cost and accuracy of each CPU weight dtype and KV dtype against fp32"};
  std::string model = "gpt2";
  int threads = 2, steps = 10, rounds = 3, block_size = 16;
  int64_t positions = 256, greedy_tokens = 200, prefill_tokens = 200;
  int64_t pool_bytes = int64_t{1} << 30;
  std::vector<int64_t> contexts = {200, 1000};
  std::vector<std::string> weight_names = {"fp32", "bf16", "fp16"};
  std::vector<std::string> kv_names = {"fp32", "bf16", "int8", "fp8"};
  bool json = false, quick = false;
  app.add_option("--model", model, "built-in name or Hugging Face folder");
  app.add_option("--threads", threads, "intra-op threads")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed decode steps per point and round")
      ->check(CLI::Range(1, 1000));
  app.add_option("--rounds", rounds, "rounds of interleaved timing")->check(CLI::Range(1, 20));
  app.add_option("--contexts", contexts, "decode contexts to time")
      ->delimiter(',')
      ->check(CLI::Range(1, 100000));
  app.add_option("--prefill-tokens", prefill_tokens, "prompt length of the timed prefill")
      ->check(CLI::Range(1, 100000));
  app.add_option("--positions", positions, "teacher-forced positions compared")
      ->check(CLI::Range(2, 100000));
  app.add_option("--greedy-tokens", greedy_tokens, "greedy tokens compared")
      ->check(CLI::Range(1, 100000));
  app.add_option("--pool-bytes", pool_bytes, "pool size for the largest-batch column")
      ->check(CLI::PositiveNumber);
  app.add_option("--weight-dtypes", weight_names, "CPU weight dtypes (fp32, bf16, fp16)")->delimiter(',');
  app.add_option("--kv-cache-dtypes", kv_names, "KV dtypes (fp32, fp16, bf16, int8, fp8)")
      ->delimiter(',');
  app.add_flag("--quick", quick, "fewer steps, one round, shorter sequences (smoke test)");
  app.add_flag("--json", json, "print one JSON object");
  CLI11_PARSE(app, argc, argv);
  auto fail = [](const std::string& message) {
    std::cerr << "kvpool-precision-bench: " << message << "\n";
    return 2;
  };
  if (quick) {
    steps = std::min(steps, 3);
    rounds = 1;
    positions = std::min<int64_t>(positions, 64);
    greedy_tokens = std::min<int64_t>(greedy_tokens, 32);
    prefill_tokens = std::min<int64_t>(prefill_tokens, 64);
  }
  auto loaded = LoadModel(model);
  if (!loaded.ok()) return fail(loaded.status().ToString());
  const ModelConfig config = loaded->config;
  const int64_t longest = *std::max_element(contexts.begin(), contexts.end());
  if (std::max({longest + steps + 3, positions, prefill_tokens + 1, 32 + greedy_tokens}) >
      config.max_position) {
    return fail("the contexts, --positions and --greedy-tokens must fit the model's " +
                std::to_string(config.max_position) + " positions");
  }

  // The configurations, fp32/fp32 first (the reference).
  std::vector<Config> configs;
  for (const std::string& w : weight_names) {
    std::string why;
    StatusOr<at::ScalarType> weight_dtype = CpuWeightDtype(w, &why);
    if (!weight_dtype.ok()) return fail(weight_dtype.status().message());
    for (const std::string& k : kv_names) {
      KvDtype kv;
      if (!ParseKvDtype(k, &kv)) {
        return fail("--kv-cache-dtypes: " + k + " is not one of " + kKvDtypeNames);
      }
      configs.push_back({w, *weight_dtype, kv, nullptr, {}, {}});
    }
  }
  std::stable_partition(configs.begin(), configs.end(), [](const Config& c) {
    return c.weight_dtype == at::kFloat && c.kv_dtype == KvDtype::kFloat32;
  });
  if (configs.empty() || configs[0].weight_dtype != at::kFloat ||
      configs[0].kv_dtype != KvDtype::kFloat32) {
    configs.insert(configs.begin(), Config{"fp32", at::kFloat, KvDtype::kFloat32, nullptr, {}, {}});
  }
  for (Config& c : configs) {
    EngineOptions options;
    options.threads = threads;
    options.block_size = block_size;
    options.cpu_weight_dtype = c.weight_dtype;
    options.cpu_kv_dtype = c.kv_dtype;
    auto engine = OfflineEngine::Create(config, loaded->weights, options);
    if (!engine.ok()) return fail(engine.status().ToString());
    c.engine = std::move(engine).value();
    c.decode_s.resize(contexts.size());
  }

  if (!json)
    std::fprintf(stderr, "timing %zu configurations, %d rounds ...\n", configs.size(), rounds);
  std::vector<Point> points;
  for (int64_t context : contexts) points.push_back({KvMode::kPaged, context});
  for (int r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < configs.size(); ++i) {
      Config& c = configs[(i + static_cast<size_t>(r)) % configs.size()];
      StatusOr<std::vector<double>> decode = DecodeSecondsPerToken(*c.engine, points, 2, steps);
      if (!decode.ok()) return fail(decode.status().ToString());
      for (size_t p = 0; p < contexts.size(); ++p) c.decode_s[p].push_back((*decode)[p]);
      StatusOr<double> prefill = PrefillSeconds(*c.engine, prefill_tokens, r == 0 ? 1 : 0, 1,
                                                static_cast<uint32_t>(1000000 * (r + 1)));
      if (!prefill.ok()) return fail(prefill.status().ToString());
      c.prefill_s.push_back(*prefill);
    }
  }

  if (!json) std::fprintf(stderr, "comparing logits and greedy tokens with fp32 ...\n");
  const std::vector<int32_t> sequence = RandomTokens(positions, config.vocab_size, 7);
  const std::vector<int32_t> prompt = RandomTokens(32, config.vocab_size, 8);
  at::Tensor reference;
  std::vector<int32_t> reference_tokens;
  nlohmann::json rows = nlohmann::json::array();
  for (Config& c : configs) {
    const at::Tensor logits = TeacherForcedLogits(config, loaded->weights, c.weight_dtype,
                                                  c.kv_dtype, sequence, block_size);
    StatusOr<std::vector<int32_t>> tokens =
        Greedy(*c.engine, prompt, static_cast<int32_t>(greedy_tokens));
    if (!tokens.ok()) return fail(tokens.status().ToString());
    if (!reference.defined()) {
      reference = logits;
      reference_tokens = *tokens;
    }
    // In float64: the KL of near-equal distributions is a small difference of large sums.
    const at::Tensor ref_logp = at::log_softmax(reference.to(at::kDouble), -1);
    const at::Tensor logp = at::log_softmax(logits.to(at::kDouble), -1);
    const double kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean().item<double>();
    const double top1 =
        at::eq(reference.argmax(-1), logits.argmax(-1)).to(at::kDouble).mean().item<double>();
    int64_t same = 0, first_diff = -1;
    for (size_t i = 0; i < tokens->size() && i < reference_tokens.size(); ++i) {
      if ((*tokens)[i] == reference_tokens[i]) {
        ++same;
      } else if (first_diff < 0) {
        first_diff = static_cast<int64_t>(i);
      }
    }
    const PoolGeometry& g = c.engine->engine().geometry();
    const int64_t seq_bytes = CeilDiv(longest, block_size) * static_cast<int64_t>(g.block_bytes());
    nlohmann::json decode = nlohmann::json::object();
    for (size_t p = 0; p < contexts.size(); ++p) {
      decode[std::to_string(contexts[p])] = {
          {"median_ms", Median(c.decode_s[p]) * 1e3},
          {"min_ms", *std::min_element(c.decode_s[p].begin(), c.decode_s[p].end()) * 1e3},
          {"max_ms", *std::max_element(c.decode_s[p].begin(), c.decode_s[p].end()) * 1e3}};
    }
    rows.push_back(
        {{"weight_dtype", c.weight_name},
         {"kv_dtype", KvDtypeName(c.kv_dtype)},
         {"decode_ms_per_token", decode},
         {"prefill_ms", Median(c.prefill_s) * 1e3},
         {"kv_bytes_per_token", static_cast<int64_t>(g.token_bytes())},
         {"largest_batch", pool_bytes / seq_bytes},
         {"max_abs_logit_diff", (logits - reference).abs().max().item<double>()},
         {"mean_kl", kl},
         {"top1_agreement", top1},
         {"greedy_agreement",
          static_cast<double>(same) / static_cast<double>(std::max<size_t>(1, tokens->size()))},
         {"greedy_first_difference", first_diff}});
  }
  nlohmann::json out = {
      {"model", config.name},
      {"weights", loaded->source},
      {"threads", threads},
      {"cpu_linear_kernel", CpuLinearKernelName()},
      {"bf16_decode_rounds_x_to_bf16", !CpuLinearBf16KeepsFp32Activations(1)},
      {"contexts", contexts},
      {"prefill_tokens", prefill_tokens},
      {"positions", positions},
      {"greedy_tokens", greedy_tokens},
      {"pool_bytes", pool_bytes},
      {"largest_batch_context", longest},
      {"rounds", rounds},
      {"steps", steps},
      {"method",
       "decode: median over rounds of each round's median paged batch-1 step, configurations "
       "interleaved; accuracy: against fp32 weights with fp32 K/V on the same weights"},
      {"configurations", rows}};
  if (json) {
    std::cout << out.dump(2) << std::endl;
    return 0;
  }
  std::printf("%s, %d threads (decode ms/token at batch 1; accuracy against fp32/fp32)\n",
              loaded->source.c_str(), threads);
  std::printf("%-8s %-6s", "weights", "KV");
  for (int64_t c : contexts) std::printf(" %9s", ("ctx " + std::to_string(c)).c_str());
  std::printf(" %10s %10s %8s %10s %10s %7s %7s\n", "prefill ms", "KV B/tok", "batch",
              "max |dlogit|", "mean KL", "top-1", "greedy");
  for (const nlohmann::json& r : rows) {
    std::printf("%-8s %-6s", r["weight_dtype"].get<std::string>().c_str(),
                r["kv_dtype"].get<std::string>().c_str());
    for (int64_t c : contexts) {
      std::printf(" %9.2f", r["decode_ms_per_token"][std::to_string(c)]["median_ms"].get<double>());
    }
    std::printf(" %10.1f %10lld %8lld %10.4f %10.2e %7.3f %7.3f\n", r["prefill_ms"].get<double>(),
                static_cast<long long>(r["kv_bytes_per_token"].get<int64_t>()),
                static_cast<long long>(r["largest_batch"].get<int64_t>()),
                r["max_abs_logit_diff"].get<double>(), r["mean_kl"].get<double>(),
                r["top1_agreement"].get<double>(), r["greedy_agreement"].get<double>());
  }
  return 0;
}

}  // namespace
}  // namespace kvpool

int main(int argc, char** argv) { return kvpool::Main(argc, argv); }
