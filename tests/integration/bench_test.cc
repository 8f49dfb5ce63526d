// `kvpool bench --quick` on a tiny model, end to end: it starts its own manager and
// worker, runs every scenario, and leaves a report.json with the documented schema
// (docs/bench-report.md), the CSVs, report.md and non-empty PNG plots. With
// --openai-url against a worker's OpenAI gateway: the client-timed scenarios in the
// three KV modes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "system_harness.h"

namespace kvpool::integration {
namespace {

namespace fs = std::filesystem;

TEST(BenchTest, QuickRunWritesTheReportCsvsAndPlots) {
  const fs::path out = fs::path(::testing::TempDir()) / "kvpool-bench-quick";
  fs::remove_all(out);
  const std::string command = std::string(KVPOOL_CLI_BIN) +
                              " bench --quick --model tiny-gpt2 --threads 1 --out " + out.string() +
                              " >" + out.string() + ".log 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << "see " << out.string() << ".log";

  std::ifstream in(out / "report.json");
  ASSERT_TRUE(in.good());
  const nlohmann::json r = nlohmann::json::parse(in);
  EXPECT_EQ(r["schema_version"], 1);
  for (const char* mode : {"none", "contiguous", "paged"}) {
    const nlohmann::json& m = r["modes"][mode];
    for (const char* key : {"avg_token_latency_s", "ttft_s", "total_s", "peak_kv_reserved_bytes",
                            "peak_kv_used_bytes", "peak_rss_bytes"}) {
      ASSERT_TRUE(m.contains(key) && m[key].is_number()) << mode << "." << key;
    }
    EXPECT_GT(m["avg_token_latency_s"].get<double>(), 0) << mode;
    EXPECT_GT(m["peak_rss_bytes"].get<double>(), 0) << mode;
    EXPECT_EQ(m["tokens"], 50) << mode;
  }
  // KV memory: none keeps nothing; the cache modes hold what they reserve or less.
  EXPECT_EQ(r["modes"]["none"]["peak_kv_reserved_bytes"], 0);
  EXPECT_GT(r["modes"]["paged"]["peak_kv_used_bytes"].get<double>(), 0);
  EXPECT_LE(r["modes"]["paged"]["peak_kv_used_bytes"].get<double>(),
            r["modes"]["paged"]["peak_kv_reserved_bytes"].get<double>());
  EXPECT_GT(r["bandwidth_floor_s_per_token"].get<double>(), 0);
  for (const char* scenario :
       {"context_sweep", "memory_efficiency", "throughput", "prefix_sharing", "cache_size"}) {
    EXPECT_TRUE(r["scenarios"].contains(scenario)) << scenario;
  }
  EXPECT_GE(r["scenarios"]["context_sweep"]["points"].size(), 3u);
  // Noise: repeats with the modes interleaved, the spread beside the median.
  EXPECT_EQ(r["modes"]["paged"]["repeats"], 3);
  for (const char* mode : {"none", "contiguous", "paged"}) {
    const nlohmann::json& m = r["modes"][mode];
    EXPECT_LE(m["avg_token_latency_s_min"].get<double>(), m["avg_token_latency_s"].get<double>());
    EXPECT_GE(m["avg_token_latency_s_max"].get<double>(), m["avg_token_latency_s"].get<double>());
    EXPECT_TRUE(m["noisy"].is_boolean());
    const nlohmann::json& p = r["scenarios"]["context_sweep"]["points"][0];
    EXPECT_LE(p[std::string(mode) + "_min"].get<double>(), p[mode].get<double>());
    EXPECT_GE(p[std::string(mode) + "_max"].get<double>(), p[mode].get<double>());
  }
  const nlohmann::json& efficiency = r["scenarios"]["memory_efficiency"];
  EXPECT_GT(efficiency["paged"]["kv_utilisation"].get<double>(),
            efficiency["contiguous"]["kv_utilisation"].get<double>());
  EXPECT_GT(efficiency["paged"]["largest_batch_in_small_pool"].get<int>(),
            efficiency["contiguous"]["largest_batch_in_small_pool"].get<int>());
  EXPECT_EQ(r["scenarios"]["throughput"]["points"].size(), 4u);
  for (const nlohmann::json& p : r["scenarios"]["throughput"]["points"]) {
    EXPECT_EQ(p["repeats"], 2);
    EXPECT_LE(p["paged"]["tokens_per_s_min"].get<double>(),
              p["paged"]["tokens_per_s_max"].get<double>());
  }
  // The cache-size scenario checks the manager's predicted curve against reruns at 4
  // smaller pools (serial requests: what the curve models).
  const nlohmann::json& cache = r["scenarios"]["cache_size"];
  ASSERT_EQ(cache["pool_sizes"].size(), 5u) << cache.dump();
  EXPECT_GT(cache["predicted_curve"]["cache_blocks"].size(), 10u);
  for (const nlohmann::json& p : cache["pool_sizes"]) {
    EXPECT_NEAR(p["predicted_hit_rate"].get<double>(), p["hit_rate"].get<double>(), 0.05) << p;
  }
  EXPECT_LE(cache["worst_prediction_error"].get<double>(), 0.05);
  // Pinning: the pinned system prompt keeps hitting under the eviction pressure that
  // evicts it unpinned.
  const nlohmann::json& pinning = r["scenarios"]["pinning"]["arms"];
  EXPECT_GT(pinning["pinned"]["system_prompt_hit_rate"].get<double>(), 0.9) << pinning;
  EXPECT_LT(pinning["unpinned"]["system_prompt_hit_rate"].get<double>(), 0.1) << pinning;
  EXPECT_GT(pinning["unpinned"]["evictions"].get<int64_t>(), 0);
  for (const nlohmann::json& point : r["scenarios"]["throughput"]["points"]) {
    const nlohmann::json& paged = point["paged"];
    EXPECT_EQ(paged["requests"].get<int>(),
              std::max(4, 2 * point["concurrency"].get<int>()));  // --quick
    EXPECT_GT(paged["sustained_s"].get<double>(), 0);
    EXPECT_LT(paged["sustained_s"].get<double>(), paged["wall_s"].get<double>());
    EXPECT_GT(paged["sustained_tokens_per_s"].get<double>(), 0);
  }
  EXPECT_GT(r["scenarios"]["prefix_sharing"]["points"][0]["hit_rate"].get<double>(), 0.5);
  EXPECT_TRUE(r.contains("targets"));
  // Precision: fp32/fp32 first (the reference: no difference from itself), then every
  // other weight x KV dtype; the 8-bit K/V take fewer bytes per token, so more fit.
  const nlohmann::json& precision = r["scenarios"]["precision"]["configurations"];
  ASSERT_EQ(precision.size(), 12u);  // fp32, bf16 and fp16 weights x 4 KV dtypes
  EXPECT_EQ(precision[0]["weight_dtype"], "fp32");
  EXPECT_EQ(precision[0]["kv_dtype"], "fp32");
  EXPECT_EQ(precision[0]["max_abs_logit_diff"].get<double>(), 0);
  EXPECT_EQ(precision[0]["greedy_agreement"].get<double>(), 1);
  for (const nlohmann::json& c : precision) {
    EXPECT_GT(c["decode_ms_per_token"]["200"]["median_ms"].get<double>(), 0);
    EXPECT_GE(c["top1_agreement"].get<double>(), 0.5) << c.dump();
    EXPECT_GE(c["mean_kl"].get<double>(), 0) << c.dump();
    if (c["kv_dtype"] == "int8" || c["kv_dtype"] == "fp8") {
      EXPECT_LT(c["kv_bytes_per_token"].get<int64_t>(),
                precision[0]["kv_bytes_per_token"].get<int64_t>() / 3);
      EXPECT_GT(c["largest_batch"].get<int64_t>(),
                3 * precision[0]["largest_batch"].get<int64_t>());
    }
  }

  for (const char* file :
       {"report.md", "original_steps.csv", "context_sweep.csv", "memory_efficiency.csv",
        "throughput.csv", "prefix_sharing.csv", "cache_size.csv"}) {
    EXPECT_GT(fs::exists(out / file) ? fs::file_size(out / file) : 0, 0u) << file;
  }
  for (const char* png : {"original_steps.png", "original_bars.png", "original_normalised.png",
                          "context_sweep.png", "throughput.png", "cache_size.png"}) {
    std::ifstream image(out / png, std::ios::binary);
    char magic[8] = {};
    image.read(magic, sizeof(magic));
    EXPECT_EQ(std::string(magic + 1, 3), "PNG") << png;
    EXPECT_GT(fs::exists(out / png) ? fs::file_size(out / png) : 0, 1000u) << png;
  }

  // --rewrite-report redoes everything derived from report.json; with a Hugging Face
  // baseline in it (here written by hand: CI has no torch) the report compares them.
  nlohmann::json with_hf = r;
  with_hf["baseline"]["hf"] = {
      {"transformers", "x"},
      {"torch", "y"},
      {"context", 200},
      {"steps", 10},
      {"use_cache_false", {{"decode_ms_per_token", 400.0}, {"generate_ms_per_token", 90.0}}},
      {"use_cache_true", {{"decode_ms_per_token", 30.0}, {"generate_ms_per_token", 30.0}}}};
  std::ofstream(out / "report.json") << with_hf.dump();
  fs::remove(out / "report.md");
  fs::remove(out / "throughput.csv");
  const std::string rewrite = std::string(KVPOOL_CLI_BIN) + " bench --rewrite-report --out " +
                              out.string() + " >>" + out.string() + ".log 2>&1";
  ASSERT_EQ(std::system(rewrite.c_str()), 0) << "see " << out.string() << ".log";
  EXPECT_TRUE(fs::exists(out / "throughput.csv"));
  std::ifstream md(out / "report.md");
  const std::string text((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("## Hugging Face transformers on the same weights"), std::string::npos);
  std::ifstream again(out / "report.json");
  const nlohmann::json c = nlohmann::json::parse(again)["baseline"]["comparison"];
  const double contiguous = r["original"]["greedy"]["contiguous"]["avg_token_latency_s"];
  const double none = r["original"]["greedy"]["none"]["avg_token_latency_s"];
  EXPECT_DOUBLE_EQ(c["contiguous_vs_hf_use_cache_true"].get<double>(), 0.030 / contiguous);
  EXPECT_DOUBLE_EQ(c["none_vs_hf_use_cache_false"].get<double>(), 0.090 / none);
  EXPECT_DOUBLE_EQ(c["hf_cache_speedup"].get<double>(), 3.0);
}

// --baseline vllm without vLLM (CI has none): kvpool's side is measured on a bf16 node
// and the report says why vLLM's is missing; with a vLLM side written by hand, the
// rewritten report states kvpool's ratio for each measure.
TEST(BenchTest, VllmBaselineMeasuresKvpoolAndSaysWhyVllmIsMissing) {
  const fs::path out = fs::path(::testing::TempDir()) / "kvpool-bench-vllm";
  fs::remove_all(out);
  const std::string command = "KVPOOL_VLLM_PYTHON=/bin/false " + std::string(KVPOOL_CLI_BIN) +
                              " bench --model tiny-gpt2 --threads 1 --scenarios bandwidth_floor "
                              "--baseline vllm --out " +
                              out.string() + " >" + out.string() + ".log 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << "see " << out.string() << ".log";
  // It needs the local node: with --server it refuses before measuring anything.
  const std::string with_server = std::string(KVPOOL_CLI_BIN) +
                                  " bench --server 127.0.0.1:1 --baseline vllm --out " +
                                  out.string() + "-server >" + out.string() + "-server.log 2>&1";
  EXPECT_NE(std::system(with_server.c_str()), 0);
  std::ifstream refusal(out.string() + "-server.log");
  const std::string refused((std::istreambuf_iterator<char>(refusal)),
                            std::istreambuf_iterator<char>());
  EXPECT_NE(refused.find("INVALID_ARGUMENT: --baseline vllm starts its own bf16 node"),
            std::string::npos)
      << refused;

  std::ifstream in(out / "report.json");
  nlohmann::json r = nlohmann::json::parse(in);
  const nlohmann::json& v = r["baseline"]["vllm"];
  EXPECT_NE(v.value("error", "").find("could not run vLLM's CPU engine"), std::string::npos)
      << v.dump();
  const nlohmann::json& k = v["kvpool"];
  ASSERT_EQ(k["decode"].size(), 1u) << k.dump();  // tiny-gpt2's 512 positions: no context 1000
  EXPECT_EQ(k["decode"][0]["context"], 200);
  EXPECT_GT(k["decode"][0]["ms_per_token"].get<double>(), 0);
  EXPECT_GT(k["prefill_200_ms"].get<double>(), 0);
  EXPECT_EQ(k["throughput"]["output_tokens"], 64 * 130);
  EXPECT_GT(k["throughput"]["tokens_per_s"].get<double>(), 0);
  // Five rounds of the load (alone: vLLM never became ready); the one reported is the
  // median round, whole.
  ASSERT_EQ(k["throughput"]["rounds"].size(), 5u) << k["throughput"].dump();
  std::vector<double> rates;
  for (const nlohmann::json& round : k["throughput"]["rounds"]) {
    EXPECT_EQ(round["output_tokens"], 64 * 130);
    rates.push_back(round["tokens_per_s"].get<double>());
  }
  std::sort(rates.begin(), rates.end());
  EXPECT_EQ(k["throughput"]["tokens_per_s"].get<double>(), rates[2]);
  EXPECT_FALSE(v.contains("throughput_ratio_by_round")) << v.dump();
  EXPECT_EQ(k["prefix"]["prompt_tokens"], 510);
  EXPECT_GE(k["prefix"]["hit_cached_tokens"].get<int>(), 496);  // the full blocks before the change
  std::ifstream md_before(out / "report.md");
  const std::string before((std::istreambuf_iterator<char>(md_before)),
                           std::istreambuf_iterator<char>());
  EXPECT_NE(before.find("Not measured: /bin/false could not run"), std::string::npos);

  nlohmann::json vllm = k;
  vllm["vllm"] = "0.0-test";
  vllm["torch"] = "x";
  vllm["throughput"]["tokens_per_s"] = k["throughput"]["tokens_per_s"].get<double>() / 2;
  r["baseline"]["vllm"]["vllm"] = vllm;
  r["baseline"]["vllm"]["throughput_ratio_by_round"] = {2.5, 1.5, 2.0, 3.0, 1.75};
  r["baseline"]["vllm"]["throughput_ratio_median"] = 2.0;
  std::ofstream(out / "report.json") << r.dump();
  const std::string rewrite = std::string(KVPOOL_CLI_BIN) + " bench --rewrite-report --out " +
                              out.string() + " >>" + out.string() + ".log 2>&1";
  ASSERT_EQ(std::system(rewrite.c_str()), 0) << "see " << out.string() << ".log";
  std::ifstream md(out / "report.md");
  const std::string text((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("## vLLM's CPU engine on the same weights"), std::string::npos);
  EXPECT_NE(text.find("vLLM 0.0-test"), std::string::npos);
  EXPECT_NE(text.find("| 2.00 (higher is better) |"), std::string::npos) << text;
  EXPECT_NE(text.find("| decode, batch 1, context 200 |"), std::string::npos);
  EXPECT_NE(text.find("each side's median round of 5"), std::string::npos) << text;
  EXPECT_NE(text.find("by round: 2.50, 1.50, 2.00, 3.00, 1.75, median **2.00**"), std::string::npos)
      << text;
}

// The turns of --baseline vllm's load rounds, with a process standing in for
// scripts/vllm-baseline.py (CI has no vLLM; the real one's runs are in
// docs/benchmarks.md) that speaks its --reply-fd protocol: ready, then one reply per
// "round" line, at a fixed 100 tokens/s. Each round's ratio is kvpool's over that
// round's vLLM figure; a stand-in that ends after two rounds leaves an error and
// kvpool's five rounds.
TEST(BenchTest, VllmBaselineTakesTheLoadRoundsInTurn) {
  for (const int vllm_rounds : {5, 2}) {
    const fs::path out =
        fs::path(::testing::TempDir()) / ("kvpool-bench-vllm-turns-" + std::to_string(vllm_rounds));
    fs::remove_all(out);
    fs::create_directories(out);
    const fs::path stand_in = out / "vllm-stand-in";
    std::ofstream(stand_in) << "#!/usr/bin/env python3\n"
                               "import json, os, sys\n"
                               "assert sys.argv[1].endswith('scripts/vllm-baseline.py')\n"
                               "assert sys.argv[sys.argv.index('--reply-fd') + 1] == '3'\n"
                               "reply = os.fdopen(3, 'w', buffering=1)\n"
                               "reply.write(json.dumps({'ready': {'vllm': 'stand-in', "
                               "'decode': [], 'prefill_200_ms': 1.0, "
                               "'prefix': {'miss_ms': 1.0, 'hit_ms': 1.0}}}) + '\\n')\n"
                               "for i, line in enumerate(sys.stdin):\n"
                               "    assert line == 'round\\n'\n"
                               "    if i == "
                            << vllm_rounds
                            << ": sys.exit(1)\n"
                               "    reply.write(json.dumps({'round': {'wall_s': 83.2, "
                               "'output_tokens': 8320, 'tokens_per_s': 100.0, "
                               "'ttft_p50_s': 0.5}}) + '\\n')\n";
    fs::permissions(stand_in, fs::perms::owner_all);
    const std::string command = "KVPOOL_VLLM_PYTHON=" + stand_in.string() + " " +
                                std::string(KVPOOL_CLI_BIN) +
                                " bench --model tiny-gpt2 --threads 1 --scenarios bandwidth_floor "
                                "--baseline vllm --out " +
                                out.string() + " >" + out.string() + ".log 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << "see " << out.string() << ".log";
    std::ifstream in(out / "report.json");
    const nlohmann::json r = nlohmann::json::parse(in);
    const nlohmann::json& v = r["baseline"]["vllm"];
    const nlohmann::json& k_rounds = v["kvpool"]["throughput"]["rounds"];
    ASSERT_EQ(k_rounds.size(), 5u) << v.dump();
    if (vllm_rounds == 2) {
      EXPECT_NE(v.value("error", "").find("vLLM's engine stopped during its load rounds"),
                std::string::npos)
          << v.dump();
      EXPECT_FALSE(v.contains("vllm")) << v.dump();
      continue;
    }
    EXPECT_FALSE(v.contains("error")) << v.dump();
    ASSERT_EQ(v["vllm"]["throughput"]["rounds"].size(), 5u) << v.dump();
    EXPECT_EQ(v["vllm"]["throughput"]["tokens_per_s"], 100.0);
    EXPECT_EQ(v["vllm"]["vllm"], "stand-in");
    const nlohmann::json& ratios = v["throughput_ratio_by_round"];
    ASSERT_EQ(ratios.size(), 5u) << v.dump();
    std::vector<double> expected;
    for (size_t i = 0; i < 5; ++i) {
      expected.push_back(k_rounds[i]["tokens_per_s"].get<double>() / 100.0);
      EXPECT_DOUBLE_EQ(ratios[i].get<double>(), expected.back());
    }
    std::sort(expected.begin(), expected.end());
    EXPECT_DOUBLE_EQ(v["throughput_ratio_median"].get<double>(), expected[2]);
    std::ifstream md(out / "report.md");
    const std::string text((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find("The rounds alternate between the engines"), std::string::npos) << text;
  }
}

TEST(BenchTest, OpenAiUrlRunsTheClientTimedScenariosInEachMode) {
  ManagerProcess manager({"--model", "tiny-gpt2", "--num-blocks", "512"});
  ASSERT_FALSE(manager.address().empty());
  WorkerProcess worker(manager.address(), {"--model", "tiny-gpt2", "--threads", "1"});
  ASSERT_FALSE(worker.http_address().empty());
  const fs::path out = fs::path(::testing::TempDir()) / "kvpool-bench-openai";
  fs::remove_all(out);
  const std::string command = std::string(KVPOOL_CLI_BIN) + " bench --quick --max-tokens 8 " +
                              "--openai-url http://" + worker.http_address() + " --out " +
                              out.string() + " >" + out.string() + ".log 2>&1";
  ASSERT_EQ(std::system(command.c_str()), 0) << "see " << out.string() << ".log";
  std::ifstream in(out / "report.json");
  const nlohmann::json r = nlohmann::json::parse(in)["openai"];
  EXPECT_EQ(r["owned_by"], "kvpool");
  EXPECT_EQ(r["max_context"], 512);
  ASSERT_EQ(r["modes"], nlohmann::json({"none", "contiguous", "paged"}));
  for (const char* mode : {"none", "contiguous", "paged"}) {
    const nlohmann::json& row = r["original"][mode];
    EXPECT_EQ(row["completion_tokens"], 8) << mode;
    EXPECT_GT(row["ttft_s"].get<double>(), 0) << mode;
    EXPECT_GT(row["itl_median_s"].get<double>(), 0) << mode;
  }
  ASSERT_EQ(r["context_sweep"]["points"].size(), 4u);
  // At the longest context recomputing the sequence costs far more than reading the cache.
  const nlohmann::json& longest = r["context_sweep"]["points"].back();
  EXPECT_GT(longest["none"].get<double>(), 2 * longest["paged"].get<double>()) << longest;
  EXPECT_GT(r["prefix_sharing"]["points"][0]["cached_token_share"].get<double>(), 0.5);
  std::ifstream md(out / "report.md");
  const std::string text((std::istreambuf_iterator<char>(md)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("## OpenAI endpoint http://" + worker.http_address()), std::string::npos);

  // A URL that is not http://HOST:PORT, and --openai-url with --server: refused.
  EXPECT_NE(std::system((std::string(KVPOOL_CLI_BIN) + " bench --openai-url https://x:1 --out " +
                         out.string() + " >/dev/null 2>&1")
                            .c_str()),
            0);
  EXPECT_NE(std::system((std::string(KVPOOL_CLI_BIN) + " bench --openai-url http://x:1 " +
                         "--server x:2 --out " + out.string() + " >/dev/null 2>&1")
                            .c_str()),
            0);
}

}  // namespace
}  // namespace kvpool::integration
