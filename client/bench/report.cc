// Bench outputs: targets, report.json, CSVs, report.md, the terminal summary.
#include "client/bench/report.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "client/bench/bench.h"

namespace kvpool::bench {
namespace {

using Json = nlohmann::json;
const char* const kModes[] = {"none", "contiguous", "paged"};

std::string Fmt(double v, const char* format = "%.4g") {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), format, v);
  return buffer;
}

std::string Ms(double s) { return Fmt(s * 1e3, "%.2f") + " ms"; }
// A median with its repeats' range, "12.34 ms [11.90-13.10]", flagged when they
// disagree by more than 20% (where the repeats were recorded).
std::string MsSpread(double median, double min, double max, bool noisy) {
  std::string out = Ms(median);
  if (!std::isnan(min) && !std::isnan(max)) {
    out += " [" + Fmt(min * 1e3, "%.2f") + "-" + Fmt(max * 1e3, "%.2f") + "]";
  }
  return noisy ? out + " ⚠" : out;
}
std::string MiB(double bytes) { return Fmt(bytes / (1 << 20), "%.2f") + " MiB"; }

double Num(const Json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

void Target(Json& targets, const char* name, double value, double target, bool at_least,
            const std::string& what) {
  if (std::isnan(value)) return;
  targets[name] = {{"value", value},
                   {"target", target},
                   {"at_least", at_least},
                   {"met", at_least ? value >= target : value <= target},
                   {"what", what}};
}

void WriteCsv(const std::string& path, const std::vector<std::string>& header,
              const std::vector<std::vector<std::string>>& rows) {
  std::ofstream out(path);
  for (size_t i = 0; i < header.size(); ++i) out << (i ? "," : "") << header[i];
  out << "\n";
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) out << (i ? "," : "") << row[i];
    out << "\n";
  }
}

std::string S(const Json& v) {
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_number()) return Fmt(v.get<double>(), "%.6g");
  if (v.is_string()) return v.get<std::string>();
  return "";
}

// The throughput runs seen from the worker: its scheduler's time by phase and its
// preemptions (points measured before the worker reported them are skipped).
void WorkerTimeTable(const Json& throughput, std::ostringstream& md) {
  static const char* const kPhases[] = {"prefill", "recompute", "decode",
                                        "manager", "other",     "idle"};
  std::ostringstream rows;
  for (const Json& p : throughput["points"]) {
    for (const char* mode : {"contiguous", "paged"}) {
      if (!p.contains(mode) || !p[mode].contains("worker") ||
          !p[mode]["worker"].contains("scheduler_seconds")) {
        continue;
      }
      const Json& w = p[mode]["worker"];
      const double steps = Num(w, "scheduler_steps");
      rows << "| " << S(p["concurrency"]) << " | " << mode << " | " << S(w["scheduler_steps"])
           << " | " << Fmt(steps > 0 ? Num(w, "generated_tokens") / steps : 0.0, "%.1f") << " | "
           << S(w["preemptions"]) << " | " << S(w["recomputed_tokens"]);
      for (const char* phase : kPhases) {
        rows << " | " << Fmt(w["scheduler_seconds"].value(phase, 0.0), "%.2f");
      }
      rows << " |\n";
    }
  }
  if (rows.str().empty()) return;
  md << "Where the worker's time went in those runs (seconds of its scheduler thread; "
        "recompute: prompts prefilled again after a preemption; other: sampling, streaming "
        "and bookkeeping):\n\n| concurrency | mode | steps | tokens / step | preemptions | "
        "recomputed tokens | prefill s | recompute s | decode s | manager s | other s | idle s "
        "|\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
     << rows.str() << "\n";
}

// The precision scenario's table (kvpool-precision-bench's JSON).
void PrecisionMarkdown(const Json& p, std::ostringstream& md) {
  md << "## Precision (in process, kvpool-precision-bench)\n\n"
     << S(p["weights"]) << ", " << S(p["threads"])
     << " threads. Decode: paged, batch 1, median (min - max) over " << S(p["rounds"])
     << " interleaved rounds. Accuracy against fp32 weights with fp32 K/V: " << S(p["positions"])
     << " teacher-forced positions, " << S(p["greedy_tokens"])
     << " greedy tokens. Largest batch: sequences of " << S(p["largest_batch_context"])
     << " tokens in " << MiB(Num(p, "pool_bytes")) << ".\n\n| weights | KV |";
  for (const Json& c : p["contexts"]) md << " decode @ " << S(c) << " |";
  md << " prefill " << S(p["prefill_tokens"])
     << " | KV B/token | largest batch | max abs logit diff | mean KL | top-1 | greedy |\n"
     << "|---|---|";
  for (size_t i = 0; i < p["contexts"].size(); ++i) md << "---:|";
  md << "---:|---:|---:|---:|---:|---:|---:|\n";
  for (const Json& r : p["configurations"]) {
    md << "| " << S(r["weight_dtype"]) << " | " << S(r["kv_dtype"]) << " |";
    for (const Json& c : p["contexts"]) {
      const Json& d = r["decode_ms_per_token"][S(c)];
      md << " " << Fmt(Num(d, "median_ms"), "%.2f") << " ms (" << Fmt(Num(d, "min_ms"), "%.2f")
         << " - " << Fmt(Num(d, "max_ms"), "%.2f") << ") |";
    }
    md << " " << Fmt(Num(r, "prefill_ms"), "%.1f") << " ms | " << S(r["kv_bytes_per_token"])
       << " | " << S(r["largest_batch"]) << " | " << Fmt(Num(r, "max_abs_logit_diff"), "%.3g")
       << " | " << Fmt(Num(r, "mean_kl"), "%.2e") << " | "
       << Fmt(100 * Num(r, "top1_agreement"), "%.1f") << "% | "
       << Fmt(100 * Num(r, "greedy_agreement"), "%.1f") << "% |\n";
  }
  md << "\n";
}

}  // namespace

void AddTargets(Json& report) {
  Json targets = Json::object();
  const Json& sc = report["scenarios"];
  if (sc.contains("context_sweep")) {
    // The point nearest context 512.
    const Json* best = nullptr;
    for (const Json& p : sc["context_sweep"]["points"]) {
      if (!best ||
          std::abs(p["context"].get<int>() - 512) < std::abs((*best)["context"].get<int>() - 512)) {
        best = &p;
      }
    }
    if (best) {
      Target(targets, "contiguous_vs_none_at_512", Num(*best, "none") / Num(*best, "contiguous"),
             10, true,
             "per-token decode speedup of the KV cache over recompute at context " +
                 std::to_string((*best)["context"].get<int>()));
    }
  }
  if (report.contains("modes")) {
    Target(targets, "paged_over_contiguous_batch1",
           Num(report["modes"]["paged"], "decode_step_median_s") /
               Num(report["modes"]["contiguous"], "decode_step_median_s"),
           1.05, false, "paged decode step / contiguous decode step, batch 1");
  }
  if (sc.contains("memory_efficiency")) {
    Target(targets, "paged_kv_utilisation", Num(sc["memory_efficiency"]["paged"], "kv_utilisation"),
           0.96, true, "fraction of reserved KV bytes holding tokens, mixed workload, paged");
  }
  if (sc.contains("throughput")) {
    for (const Json& p : sc["throughput"]["points"]) {
      if (p["concurrency"] != 32) continue;
      const double paged = Num(p["paged"], "sustained_tokens_per_s"),
                   contiguous = Num(p["contiguous"], "sustained_tokens_per_s");
      Target(targets, "paged_over_contiguous_throughput_at_32", paged / contiguous, 2, true,
             "tokens/s with 32 requests in flight in the same pool, paged / contiguous");
      Target(targets, "paged_tokens_per_s_at_32", paged, 200, true,
             "paged tokens/s with 32 requests in flight");
    }
  }
  if (sc.contains("prefix_sharing")) {
    for (const Json& p : sc["prefix_sharing"]["points"]) {
      if (p["system_prompt_tokens"] != 512) continue;
      Target(targets, "prefix512_ttft_hit_over_miss", Num(p, "ttft_hit_over_miss"), 0.2, false,
             "TTFT with a 512-token cached prefix / TTFT of a miss");
    }
  }
  report["targets"] = targets;

  // kvpool against Hugging Face generate() on the same weights: both greedy, the same
  // number of new tokens, a short prompt, the same threads; above 1: kvpool is faster.
  if (report.contains("baseline") && report["baseline"].contains("hf") &&
      report.contains("original") && report["original"].contains("greedy")) {
    const Json& hf = report["baseline"]["hf"];
    const Json& greedy = report["original"]["greedy"];
    const double hf_no_cache = Num(hf["use_cache_false"], "generate_ms_per_token") * 1e-3,
                 hf_cache = Num(hf["use_cache_true"], "generate_ms_per_token") * 1e-3;
    const double none = Num(greedy["none"], "avg_token_latency_s"),
                 contiguous = Num(greedy["contiguous"], "avg_token_latency_s"),
                 paged = Num(greedy["paged"], "avg_token_latency_s");
    report["baseline"]["comparison"] = {
        {"what",
         "avg latency per new token, greedy, the same number of new tokens; hf / kvpool "
         "(above 1: kvpool is faster)"},
        {"hf_use_cache_false_s", hf_no_cache},
        {"hf_use_cache_true_s", hf_cache},
        {"kvpool_none_s", none},
        {"kvpool_contiguous_s", contiguous},
        {"kvpool_paged_s", paged},
        {"none_vs_hf_use_cache_false", hf_no_cache / none},
        {"contiguous_vs_hf_use_cache_true", hf_cache / contiguous},
        {"paged_vs_hf_use_cache_true", hf_cache / paged},
        {"paged_vs_hf_use_cache_false", hf_no_cache / paged},
        {"hf_cache_speedup", hf_no_cache / hf_cache},
        {"kvpool_cache_speedup", none / contiguous}};
  }
}

void WriteReport(const std::string& dir, const Json& report) {
  std::ofstream(dir + "/report.json")
      << report.dump(2, ' ', false, Json::error_handler_t::replace) << "\n";
  const Json& sc = report.contains("scenarios") ? report["scenarios"] : Json::object();
  std::vector<std::vector<std::string>> rows;
  if (report.contains("original")) {
    for (const char* sampling : {"temperature_0.7", "greedy"}) {
      for (const char* mode : kModes) {
        if (!report["original"].contains(sampling) || !report["original"][sampling].contains(mode))
          continue;
        const Json& steps = report["original"][sampling][mode]["steps"];
        for (size_t i = 0; i < steps["step_latency_s"].size(); ++i) {
          rows.push_back({sampling, mode, std::to_string(i), S(steps["step_latency_s"][i]),
                          S(steps["kv_reserved_bytes"][i]), S(steps["kv_used_bytes"][i])});
        }
      }
    }
    WriteCsv(dir + "/original_steps.csv",
             {"sampling", "mode", "step", "latency_s", "kv_reserved_bytes", "kv_used_bytes"}, rows);
  }
  if (sc.contains("context_sweep")) {
    rows.clear();
    for (const Json& p : sc["context_sweep"]["points"]) {
      rows.push_back({S(p["context"]), S(p["none"]), S(p["contiguous"]), S(p["paged"])});
    }
    WriteCsv(dir + "/context_sweep.csv", {"context", "none_s", "contiguous_s", "paged_s"}, rows);
  }
  if (sc.contains("memory_efficiency")) {
    rows.clear();
    for (const char* mode : {"contiguous", "paged"}) {
      const Json& m = sc["memory_efficiency"][mode];
      rows.push_back({mode, S(m["kv_utilisation"]), S(m["largest_batch_in_small_pool"])});
    }
    WriteCsv(dir + "/memory_efficiency.csv", {"mode", "kv_utilisation", "largest_batch"}, rows);
  }
  if (sc.contains("throughput")) {
    rows.clear();
    for (const Json& p : sc["throughput"]["points"]) {
      for (const char* mode : kModes) {
        if (!p.contains(mode)) continue;
        const Json& m = p[mode];
        rows.push_back({S(p["concurrency"]), mode, S(m["tokens_per_s"]),
                        S(m.value("sustained_tokens_per_s", 0.0)), S(m["requests_per_s"]),
                        S(m["ttft_p50_s"]), S(m["ttft_p99_s"]), S(m["itl_p50_s"]),
                        S(m["itl_p99_s"])});
      }
    }
    WriteCsv(dir + "/throughput.csv",
             {"concurrency", "mode", "tokens_per_s", "sustained_tokens_per_s", "requests_per_s",
              "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s"},
             rows);
  }
  if (sc.contains("prefix_sharing")) {
    rows.clear();
    for (const Json& p : sc["prefix_sharing"]["points"]) {
      rows.push_back({S(p["system_prompt_tokens"]), S(p["hit_rate"]), S(p["ttft_miss_s"]),
                      S(p["ttft_hit_s"]), S(p["blocks_saved"])});
    }
    WriteCsv(dir + "/prefix_sharing.csv",
             {"system_prompt_tokens", "hit_rate", "ttft_miss_s", "ttft_hit_s", "blocks_saved"},
             rows);
  }
  if (sc.contains("cache_size")) {
    rows.clear();
    for (const char* key : {"pool_sizes", "block_sizes"}) {
      for (const Json& p : sc["cache_size"][key]) {
        rows.push_back({key, S(p["pool_blocks"]), S(p["block_size"]), S(p["pool_over_working_set"]),
                        S(p["hit_rate"]), S(p.value("predicted_hit_rate", Json())),
                        S(p["tokens_per_s"]), S(p["requests_per_s"])});
      }
    }
    WriteCsv(dir + "/cache_size.csv",
             {"sweep", "pool_blocks", "block_size", "pool_over_working_set", "hit_rate",
              "predicted_hit_rate", "tokens_per_s", "requests_per_s"},
             rows);
  }

  // report.md
  std::ostringstream md;
  md << "# kvpool bench report\n\n"
     << report.value("date", "") << ", commit `" << report.value("git_commit", "") << "`\n\n";
  if (report.contains("machine")) {
    const Json& m = report["machine"];
    md << "Machine: " << S(m["cpu_model"]) << ", " << S(m["cpus"]) << " CPUs, "
       << Fmt(Num(m, "memory_bytes") / (1 << 30), "%.1f") << " GiB. ";
    if (!report.contains("model")) md << "\n\n";
  }
  if (report.contains("model")) {
    const Json& m = report["model"];
    md << "Model: " << S(m["name"]) << " (" << S(m["source"]) << "), KV " << S(m["kv_dtype"])
       << ", blocks of " << S(m["block_size"]) << " tokens.\n\n";
  }
  if (report.contains("modes")) {
    const Json& c = report["configuration"];
    md << "## The original experiment\n\nPrompt \"" << S(c["prompt"]) << "\", "
       << S(c["max_tokens"]) << " new tokens, temperature 0.7 (seed " << S(c["seed"])
       << "), through the worker:\n\n"
       << "| mode | avg latency / token | decode step (median) | TTFT | total | peak KV reserved | "
          "peak KV holding tokens | peak worker RSS |\n|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const char* mode : kModes) {
      const Json& r = report["modes"][mode];
      md << "| " << mode << " | "
         << MsSpread(Num(r, "avg_token_latency_s"), Num(r, "avg_token_latency_s_min"),
                     Num(r, "avg_token_latency_s_max"), r.value("noisy", false))
         << " | " << Ms(Num(r, "decode_step_median_s")) << " | " << Ms(Num(r, "ttft_s")) << " | "
         << Fmt(Num(r, "total_s"), "%.3f") << " s | " << MiB(Num(r, "peak_kv_reserved_bytes"))
         << " | " << MiB(Num(r, "peak_kv_used_bytes")) << " | " << MiB(Num(r, "peak_rss_bytes"))
         << " |\n";
    }
    md << "\nAverage latency per token: the median of "
       << S(report["modes"]["paged"].value("repeats", Json(1)))
       << " repeats with the modes interleaved, [min-max] of the repeats; ⚠ marks a mode whose "
          "repeats disagree by more than 20% (a noisy moment: rerun before quoting it).\n";
    const Json& sp = report["original"]["speedups"];
    md << "\nWith a KV cache each token costs " << Fmt(Num(sp, "contiguous_vs_none"), "%.1f")
       << "x less than recomputing the sequence (contiguous vs none); paging it costs "
       << Fmt(Num(sp, "paged_vs_contiguous"), "%.3f")
       << "x the contiguous speed (paged vs contiguous: above 1 is faster), and paged is "
       << Fmt(Num(sp, "paged_vs_none"), "%.1f") << "x faster than no cache. ";
    if (report.contains("bandwidth_floor_s_per_token")) {
      md << "The memory-bandwidth floor (weights / read bandwidth) is "
         << Ms(report["bandwidth_floor_s_per_token"].get<double>()) << " per token.";
    }
    md << "\n\n";
  }
  if (report.contains("baseline") && report["baseline"].contains("comparison")) {
    const Json& c = report["baseline"]["comparison"];
    const Json& hf = report["baseline"]["hf"];
    md << "## Hugging Face transformers on the same weights\n\n"
       << "transformers " << S(hf["transformers"]) << ", torch " << S(hf["torch"])
       << ", `generate()` greedy, " << S(report["configuration"]["max_tokens"])
       << " new tokens after a 16-token prompt, same threads; kvpool's original experiment, "
          "greedy, through the worker:\n\n"
       << "| | avg latency / new token | Hugging Face / kvpool |\n|---|---:|---:|\n"
       << "| HF `use_cache=False` | " << Ms(Num(c, "hf_use_cache_false_s")) << " | |\n"
       << "| HF `use_cache=True` | " << Ms(Num(c, "hf_use_cache_true_s")) << " | |\n"
       << "| kvpool `none` | " << Ms(Num(c, "kvpool_none_s")) << " | "
       << Fmt(Num(c, "none_vs_hf_use_cache_false"), "%.2f") << "x (vs `use_cache=False`) |\n"
       << "| kvpool `contiguous` | " << Ms(Num(c, "kvpool_contiguous_s")) << " | "
       << Fmt(Num(c, "contiguous_vs_hf_use_cache_true"), "%.2f") << "x (vs `use_cache=True`) |\n"
       << "| kvpool `paged` | " << Ms(Num(c, "kvpool_paged_s")) << " | "
       << Fmt(Num(c, "paged_vs_hf_use_cache_true"), "%.2f") << "x (vs `use_cache=True`), "
       << Fmt(Num(c, "paged_vs_hf_use_cache_false"), "%.1f") << "x (vs `use_cache=False`) |\n\n"
       << "Hugging Face's own cache makes a token " << Fmt(Num(c, "hf_cache_speedup"), "%.1f")
       << "x cheaper; kvpool's " << Fmt(Num(c, "kvpool_cache_speedup"), "%.1f") << "x. Decode step "
       << "at context " << S(hf["context"]) << " (median of " << S(hf["steps"]) << "): HF "
       << Fmt(Num(hf["use_cache_false"], "decode_ms_per_token"), "%.1f") << " ms without cache, "
       << Fmt(Num(hf["use_cache_true"], "decode_ms_per_token"), "%.1f") << " ms with.\n\n";
  }
  if (sc.contains("context_sweep")) {
    md << "## Decode latency vs context\n\nThe median step of each mode over "
       << S(sc["context_sweep"].value("repeats", Json(1)))
       << " repeats with the modes interleaved, [min-max] of the repeats; ⚠: they disagree by "
          "more than 20%.\n\n| context | none | contiguous | paged |\n|---:|---:|---:|---:|\n";
    for (const Json& p : sc["context_sweep"]["points"]) {
      md << "| " << S(p["context"]);
      for (const char* mode : kModes) {
        bool noisy = false;
        for (const Json& m : p.value("noisy", Json::array())) noisy = noisy || m == mode;
        const std::string key(mode);
        md << " | "
           << MsSpread(Num(p, mode), Num(p, (key + "_min").c_str()), Num(p, (key + "_max").c_str()),
                       noisy);
      }
      md << " |\n";
    }
    md << "\n";
  }
  if (sc.contains("memory_efficiency")) {
    const Json& m = sc["memory_efficiency"];
    md << "## Memory efficiency (mixed workload, " << S(m["requests"])
       << " requests)\n\n| mode | KV bytes holding tokens / reserved | largest batch in a "
       << S(m["small_pool_blocks"]) << "-block pool |\n|---|---:|---:|\n";
    for (const char* mode : {"contiguous", "paged"}) {
      md << "| " << mode << " | " << Fmt(100 * Num(m[mode], "kv_utilisation"), "%.1f") << "% | "
         << S(m[mode]["largest_batch_in_small_pool"]) << " |\n";
    }
    md << "\n";
  }
  if (sc.contains("throughput")) {
    md << "## Throughput vs concurrency (pool of " << S(sc["throughput"]["pool_blocks"])
       << " blocks). Sustained: tokens/s while that many requests were in flight (until the "
          "last was issued); overall: all tokens over the whole run, ramp-down included. "
          "contiguous and paged repeat with the modes interleaved: the median repeat, "
          "[min-max] of the repeats, ⚠ when they disagree by more than 20%.\n\n"
          "| concurrency | mode | sustained tokens/s | overall tokens/s | requests/s | TTFT p50 | "
          "TTFT p99 | ITL p50 | ITL p99 |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const Json& p : sc["throughput"]["points"]) {
      for (const char* mode : kModes) {
        if (!p.contains(mode)) continue;
        const Json& m = p[mode];
        std::string sustained = Fmt(m.value("sustained_tokens_per_s", 0.0), "%.1f");
        if (m.contains("tokens_per_s_min") &&
            Num(m, "tokens_per_s_min") < Num(m, "tokens_per_s_max")) {
          sustained += " [" + Fmt(Num(m, "tokens_per_s_min"), "%.1f") + "-" +
                       Fmt(Num(m, "tokens_per_s_max"), "%.1f") + "]";
        }
        if (m.value("noisy", false)) sustained += " ⚠";
        md << "| " << S(p["concurrency"]) << " | " << mode << " | " << sustained << " | "
           << Fmt(Num(m, "tokens_per_s"), "%.1f") << " | " << Fmt(Num(m, "requests_per_s"), "%.2f")
           << " | " << Ms(Num(m, "ttft_p50_s")) << " | " << Ms(Num(m, "ttft_p99_s")) << " | "
           << Ms(Num(m, "itl_p50_s")) << " | " << Ms(Num(m, "itl_p99_s")) << " |\n";
      }
    }
    md << "\n";
    WorkerTimeTable(sc["throughput"], md);
  }
  if (sc.contains("prefix_sharing")) {
    md << "## Prefix sharing\n\n| system prompt | hit rate | TTFT miss | TTFT hit | hit / miss | "
          "blocks saved |\n|---:|---:|---:|---:|---:|---:|\n";
    for (const Json& p : sc["prefix_sharing"]["points"]) {
      md << "| " << S(p["system_prompt_tokens"]) << " | " << Fmt(100 * Num(p, "hit_rate"), "%.1f")
         << "% | " << Ms(Num(p, "ttft_miss_s")) << " | " << Ms(Num(p, "ttft_hit_s")) << " | "
         << Fmt(Num(p, "ttft_hit_over_miss"), "%.3f") << " | " << S(p["blocks_saved"]) << " |\n";
    }
    md << "\n";
  }
  if (sc.contains("cache_size")) {
    const Json& cs = sc["cache_size"];
    md << "## Cache size under LRU eviction\n\n";
    if (cs.contains("predicted_curve")) {
      md << "The manager's predicted hit-rate curve (LRU stack distances), recorded by one "
            "serial run at the largest pool, against serial runs at smaller pools "
            "(cache_size.png draws both). Largest gap: "
         << Fmt(100 * Num(cs, "worst_prediction_error"), "%.1f") << " points.\n\n";
    }
    md << "| pool blocks | block size | pool / working set | hit rate | predicted | tokens/s |\n"
          "|---:|---:|---:|---:|---:|---:|\n";
    for (const char* key : {"pool_sizes", "block_sizes"}) {
      for (const Json& p : cs[key]) {
        md << "| " << S(p["pool_blocks"]) << " | " << S(p["block_size"]) << " | "
           << Fmt(Num(p, "pool_over_working_set"), "%.2f") << " | "
           << Fmt(100 * Num(p, "hit_rate"), "%.1f") << "% | "
           << (p.contains("predicted_hit_rate")
                   ? Fmt(100 * Num(p, "predicted_hit_rate"), "%.1f") + "%"
                   : std::string("–"))
           << " | " << Fmt(Num(p, "tokens_per_s"), "%.1f") << " |\n";
      }
    }
    md << "\n";
  }
  if (sc.contains("pinning")) PinningMarkdown(sc["pinning"], md);
  if (sc.contains("precision")) PrecisionMarkdown(sc["precision"], md);
  OpenAiMarkdown(report, md);
  VllmMarkdown(report, md);
  if (report.contains("targets") && !report["targets"].empty()) {
    md << "## Targets\n\n| target | value | wanted | met |\n|---|---:|---:|---|\n";
    for (const auto& [name, t] : report["targets"].items()) {
      md << "| " << S(t["what"]) << " | " << Fmt(Num(t, "value"), "%.3f") << " | "
         << (t["at_least"].get<bool>() ? "≥ " : "≤ ") << S(t["target"]) << " | "
         << (t["met"].get<bool>() ? "yes" : "**no**") << " |\n";
    }
    md << "\n";
  }
  if (report.contains("modes")) {
    md << "Plots: original_steps.png, original_bars.png, original_normalised.png, "
          "context_sweep.png, throughput.png, cache_size.png. ";
  }
  md << "Schema: docs/bench-report.md.\n";
  std::ofstream(dir + "/report.md") << md.str();
}

std::string Summary(const Json& report) {
  std::ostringstream out;
  if (report.contains("modes")) {
    out << "\nmode          avg/token   decode step   TTFT        KV reserved   KV holding "
           "tokens\n";
    for (const char* mode : kModes) {
      const Json& r = report["modes"][mode];
      char line[256];
      std::snprintf(line, sizeof(line), "%-12s %9.2f ms %10.2f ms %8.1f ms %10.2f MiB %10.2f MiB\n",
                    mode, 1e3 * Num(r, "avg_token_latency_s"), 1e3 * Num(r, "decode_step_median_s"),
                    1e3 * Num(r, "ttft_s"), Num(r, "peak_kv_reserved_bytes") / (1 << 20),
                    Num(r, "peak_kv_used_bytes") / (1 << 20));
      out << line;
    }
  }
  if (report.contains("targets")) {
    out << "\n";
    for (const auto& [name, t] : report["targets"].items()) {
      out << (t["met"].get<bool>() ? "  met   " : "  MISSED ") << S(t["what"]) << ": "
          << Fmt(Num(t, "value"), "%.3f") << " (want "
          << (t["at_least"].get<bool>() ? ">= " : "<= ") << S(t["target"]) << ")\n";
    }
  }
  return out.str();
}

}  // namespace kvpool::bench
