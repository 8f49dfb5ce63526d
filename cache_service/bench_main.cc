// kvpool-manager-bench: what the manager's control plane costs. alloc_free_per_s is
// in process: open + close pairs per second of a one-block paged sequence (8-token
// prompt) through CacheManager, i.e. lock, lease renewal, prefix lookup, block
// allocate + free, sequence table insert + erase. Then it starts the real
// kvpool-manager (next to this binary, or --manager) on 127.0.0.1 and measures one
// Step RPC carrying 32 decoding sequences (each +1 token, 1 committed token):
// step_call_p50_us / step_call_p99_us from one client, and step_calls_per_s with 8
// client threads, each its own worker with its own 32 sequences. --kv-events starts the
// manager with KV events on (a ZMQ PUB socket on loopback; a full block every 16
// tokens per sequence is a BlockStored), to compare with events off.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cache_service/cache_manager.h"
#include "kvpool/v1/manager.grpc.pb.h"

namespace kvpool::manager {
namespace {

using BenchClock = std::chrono::steady_clock;
constexpr int kSequencesPerStep = 32;
constexpr int kPromptTokens = 16;
constexpr int kMaxDecodeTokens = 1024;  // then the sequences are closed and reopened

double Seconds(BenchClock::duration d) { return std::chrono::duration<double>(d).count(); }

double AllocFreePerSecond(int64_t pairs) {
  CacheManagerOptions options;
  options.geometry.num_layers = 1;
  options.geometry.num_kv_heads = 1;
  options.geometry.head_dim = 8;
  options.geometry.block_size = 16;
  options.geometry.num_blocks = 1024;
  CacheManager core(options);
  const auto now = Clock::now();
  OpenRequest open;
  open.worker_id = core.RegisterWorker(now).worker_id;
  open.tenant = "bench";
  open.token_ids = {1, 2, 3, 4, 5, 6, 7, 8};
  open.max_tokens = 8;
  const auto start = BenchClock::now();
  for (int64_t i = 0; i < pairs; ++i) {
    StatusOr<OpenResult> opened = core.OpenSequence(open, now);
    if (!opened.ok() || !core.CloseSequence(open.worker_id, opened->sequence_id, now).ok()) {
      std::fprintf(stderr, "kvpool-manager-bench: in-process open/close failed\n");
      std::exit(1);
    }
  }
  return pairs / Seconds(BenchClock::now() - start);
}

// A worker with 32 decoding sequences, driven one Step call at a time.
class StepClient {
 public:
  StepClient(std::shared_ptr<grpc::Channel> channel, int index)
      : stub_(v1::CacheManager::NewStub(std::move(channel))), index_(index) {
    grpc::ClientContext ctx;
    v1::RegisterWorkerResponse worker;
    Check(stub_->RegisterWorker(&ctx, {}, &worker), "RegisterWorker");
    worker_id_ = worker.worker_id();
    instance_ = worker.manager_instance();
    Reopen();
  }

  // One timed Step call; closing and reopening at the length cap is not timed.
  BenchClock::duration Step() {
    if (num_tokens_ >= kPromptTokens + kMaxDecodeTokens) Reopen();
    ++num_tokens_;
    v1::StepRequest request;
    request.set_worker_id(worker_id_);
    request.set_manager_instance(instance_);
    for (size_t s = 0; s < sequences_.size(); ++s) {
      v1::StepItem* item = request.add_items();
      item->set_sequence_id(sequences_[s]);
      item->set_num_tokens(num_tokens_);
      if (num_tokens_ == kPromptTokens + 1) {
        for (int i = 0; i < kPromptTokens; ++i) item->add_commit_token_ids(Prompt(s, i));
      } else {
        item->add_commit_token_ids(num_tokens_);
      }
    }
    v1::StepResponse response;
    grpc::ClientContext ctx;
    const auto start = BenchClock::now();
    Check(stub_->Step(&ctx, request, &response), "Step");
    const auto took = BenchClock::now() - start;
    for (const v1::StepItemResult& result : response.results()) {
      if (result.code() != 0) Fail("Step item: " + result.message());
    }
    return took;
  }

 private:
  int32_t Prompt(size_t sequence, int i) const {
    return static_cast<int32_t>((index_ * kSequencesPerStep + sequence) * 1000 + i);
  }
  void Reopen() {
    for (int64_t id : sequences_) {
      grpc::ClientContext ctx;
      v1::CloseSequenceRequest close;
      close.set_worker_id(worker_id_);
      close.set_manager_instance(instance_);
      close.set_sequence_id(id);
      v1::CloseSequenceResponse closed;
      Check(stub_->CloseSequence(&ctx, close, &closed), "CloseSequence");
    }
    sequences_.clear();
    for (int s = 0; s < kSequencesPerStep; ++s) {
      grpc::ClientContext ctx;
      v1::OpenSequenceRequest open;
      open.set_worker_id(worker_id_);
      open.set_manager_instance(instance_);
      for (int i = 0; i < kPromptTokens; ++i) open.add_token_ids(Prompt(s, i));
      open.set_max_tokens(kMaxDecodeTokens);
      open.set_mode(v1::SEQUENCE_MODE_PAGED);
      v1::OpenSequenceResponse opened;
      Check(stub_->OpenSequence(&ctx, open, &opened), "OpenSequence");
      sequences_.push_back(opened.sequence_id());
    }
    num_tokens_ = kPromptTokens;
  }
  static void Fail(const std::string& what) {
    std::fprintf(stderr, "kvpool-manager-bench: %s\n", what.c_str());
    std::exit(1);
  }
  static void Check(const grpc::Status& status, const char* call) {
    if (!status.ok()) Fail(std::string(call) + ": " + status.error_message());
  }

  std::unique_ptr<v1::CacheManager::Stub> stub_;
  int index_;
  int64_t worker_id_ = 0;
  std::string instance_;
  std::vector<int64_t> sequences_;
  int64_t num_tokens_ = 0;
};

// Starts kvpool-manager on 127.0.0.1:0; returns its pid and gRPC address.
pid_t StartManager(const std::string& binary, bool kv_events, std::string* address) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  std::vector<std::string> args = {
      binary,  "--listen",     "127.0.0.1:0", "--http",         "127.0.0.1:0", "--model",
      "bench", "--num-layers", "1",           "--num-kv-heads", "1",           "--head-dim",
      "8",     "--num-blocks", "65536",       "--lease-ttl-ms", "600000"};
  if (kv_events) args.insert(args.end(), {"--kv-events-endpoint", "tcp://127.0.0.1:*"});
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  FILE* out = fdopen(fds[0], "r");
  static const std::string kPrefix = "kvpool-manager listening on ";
  char line[256];
  while (std::fgets(line, sizeof(line), out) != nullptr) {
    const std::string text(line);
    if (text.rfind(kPrefix, 0) == 0) {
      *address = text.substr(kPrefix.size(), text.find_last_not_of("\r\n") + 1 - kPrefix.size());
      break;
    }
  }
  // The manager's later stdout is not read; it prints nothing more.
  return address->empty() ? -1 : pid;
}

int Run(int argc, char** argv) {
  bool json = false, kv_events = false;
  int64_t pairs = 200000;
  int calls = 3000;
  double seconds = 2.0;
  int threads = 8;
  std::string manager_bin;
  CLI::App app{"kvpool-manager-bench: cost of the manager's control plane"};
  app.add_flag("--json", json, "print one JSON object");
  app.add_option("--pairs", pairs, "in-process open+close pairs")->capture_default_str();
  app.add_option("--calls", calls, "timed Step calls for the latency percentiles")
      ->capture_default_str();
  app.add_option("--seconds", seconds, "duration of the multi-client run")->capture_default_str();
  app.add_option("--threads", threads, "client threads of the throughput run")
      ->capture_default_str();
  app.add_option("--manager", manager_bin, "kvpool-manager binary (default: next to this one)");
  app.add_flag("--kv-events", kv_events, "run the manager with KV events published");
  CLI11_PARSE(app, argc, argv);
  if (manager_bin.empty()) {
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    std::string dir = n > 0 ? std::string(self, n) : std::string(argv[0]);
    manager_bin = dir.substr(0, dir.rfind('/') + 1) + "kvpool-manager";
  }

  const double alloc_free_per_s = AllocFreePerSecond(pairs);

  std::string address;
  const pid_t manager = StartManager(manager_bin, kv_events, &address);
  if (manager < 0) {
    std::fprintf(stderr, "kvpool-manager-bench: could not start %s\n", manager_bin.c_str());
    return 1;
  }
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());

  std::vector<double> latencies_us;
  {
    StepClient client(channel, 0);
    for (int i = 0; i < 200; ++i) client.Step();  // warm up
    for (int i = 0; i < calls; ++i) {
      latencies_us.push_back(std::chrono::duration<double, std::micro>(client.Step()).count());
    }
  }
  std::sort(latencies_us.begin(), latencies_us.end());
  auto percentile = [&](double p) {
    return latencies_us[std::min(latencies_us.size() - 1,
                                 static_cast<size_t>(p * latencies_us.size()))];
  };

  std::atomic<int64_t> total_calls{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      // Each thread its own channel, as separate worker processes would have.
      grpc::ChannelArguments args;
      args.SetInt("bench_channel", t);
      StepClient client(
          grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args), t + 1);
      int64_t done = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        client.Step();
        ++done;
      }
      total_calls += done;
    });
  }
  const auto start = BenchClock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (std::thread& w : workers) w.join();
  const double step_calls_per_s = total_calls.load() / Seconds(BenchClock::now() - start);

  kill(manager, SIGTERM);
  waitpid(manager, nullptr, 0);

  if (json) {
    std::printf(
        "{\"alloc_free_per_s\": %.0f, \"step_call_p50_us\": %.1f, \"step_call_p99_us\": %.1f, "
        "\"step_calls_per_s\": %.0f, \"sequences_per_step\": %d, \"client_threads\": %d, "
        "\"kv_events\": %s}\n",
        alloc_free_per_s, percentile(0.50), percentile(0.99), step_calls_per_s, kSequencesPerStep,
        threads, kv_events ? "true" : "false");
  } else {
    std::printf("in-process open+close of a 1-block sequence: %.0f pairs/s\n", alloc_free_per_s);
    std::printf("Step RPC with %d sequences: p50 %.1f us, p99 %.1f us\n", kSequencesPerStep,
                percentile(0.50), percentile(0.99));
    std::printf("Step RPCs with %d client threads: %.0f calls/s\n", threads, step_calls_per_s);
  }
  return 0;
}

}  // namespace
}  // namespace kvpool::manager

int main(int argc, char** argv) { return kvpool::manager::Run(argc, argv); }
