// `kvpool up`: a local kvpool node for trying things out and for tests. Starts one
// kvpool-manager and --workers kvpool-workers (found next to the kvpool binary) on free
// loopback ports, prints "manager ADDR", one "worker ADDR" per worker and "ready" once
// every worker is attached, then waits. SIGINT/SIGTERM stop the workers, then the
// manager (SIGTERM, SIGKILL after 10 s) and exit 0; a child that dies on its own stops
// the rest and exits 1. It owns the children's lifecycle, never their flags' meaning:
// model, pool, auth and TLS flags are passed through.
#include <signal.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <iostream>

#include "client/cli/cli_util.h"
#include "common/subprocess.h"

namespace kvpool::cli {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kStopGrace = std::chrono::seconds(10);

struct UpFlags {
  int workers = 1;
  std::string model = "gpt2";
  int64_t num_blocks = 0;
  int block_size = 0;
  int threads = 0;
  std::string auth_token_file;
  std::string worker_token_file;
  int64_t lease_ttl_ms = 0;
  std::string kv_cache_dtype;  // the manager's pool (the workers follow it)
  std::string backend;         // the manager's pool memory: shm or cuda ("": its default, shm)
  int cuda_device = -1;        // --backend cuda: the device ordinal (-1: the manager's default)
  std::string weight_dtype;    // the workers' CPU weights
  // TLS, passed through: the servers' certificate (the manager's and every worker's),
  // the CA the workers trust for the manager, the client CA both servers then require
  // (mTLS) and the workers' client certificate for an mTLS manager.
  std::string tls_cert, tls_key, tls_ca, tls_client_ca, tls_client_cert, tls_client_key;
};

// Appends `flag value` to `argv` when `value` is set.
void AddIfSet(std::vector<std::string>& argv, const char* flag, const std::string& value) {
  if (!value.empty()) argv.insert(argv.end(), {flag, value});
}

// The server TLS flags of both kvpool-manager and kvpool-worker.
void AddServerTls(std::vector<std::string>& argv, const UpFlags& flags) {
  AddIfSet(argv, "--tls-cert", flags.tls_cert);
  AddIfSet(argv, "--tls-key", flags.tls_key);
  AddIfSet(argv, "--tls-client-ca", flags.tls_client_ca);
}

// Where the signals kvpool up waits for are blocked, so sigtimedwait receives them.
struct Signals {
  sigset_t waited;    // SIGINT, SIGTERM, SIGCHLD
  sigset_t original;  // the mask the children get back

  // A pending SIGINT or SIGTERM, waiting up to `timeout` (SIGCHLD just wakes the wait).
  bool StopRequested(std::chrono::milliseconds timeout) const {
    const timespec wait{static_cast<time_t>(timeout.count() / 1000),
                        static_cast<long>(timeout.count() % 1000) * 1000000};
    const int signal = sigtimedwait(&waited, nullptr, &wait);
    return signal == SIGINT || signal == SIGTERM;
  }
};

// A service started by `kvpool up`: in its own process group (a terminal's Ctrl-C reaches
// only us, and we stop the children in order), with our original signal mask, and
// SIGTERMed if we die.
SubprocessOptions ServiceOptions(std::string name, const Signals& signals) {
  SubprocessOptions options;
  options.name = std::move(name);
  options.own_process_group = true;
  options.die_with_parent = true;
  options.signal_mask = signals.original;
  return options;
}

// Reads `child`'s stdout until a line starting with `prefix`; returns the rest of it.
// Other lines are copied to stderr.
StatusOr<std::string> WaitForLine(Subprocess& child, const std::string& prefix,
                                  Clock::time_point deadline, const Signals& signals) {
  while (Clock::now() < deadline) {
    if (signals.StopRequested(std::chrono::milliseconds(0))) return Cancelled("interrupted");
    bool eof = false;
    const std::optional<std::string> line = child.ReadLine(std::chrono::milliseconds(200), &eof);
    if (eof) {
      return Unavailable(child.name() + " (pid " + std::to_string(child.pid()) +
                         ") exited before printing \"" + prefix + "\"");
    }
    if (!line) continue;
    if (line->rfind(prefix, 0) == 0) return line->substr(prefix.size());
    std::cerr << *line << "\n";
  }
  return Status(StatusCode::kDeadlineExceeded,
                child.name() + " did not print \"" + prefix + "\" in time");
}

// Stops `children` in reverse start order (workers before their manager): SIGTERM, then
// SIGKILL for any still running after kStopGrace.
void StopAll(std::vector<std::unique_ptr<Subprocess>>& children) {
  for (auto it = children.rbegin(); it != children.rend(); ++it) {
    Subprocess& child = **it;
    child.Signal(SIGTERM);
    const auto deadline = Clock::now() + kStopGrace;
    while (!child.Exited() && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!child.Exited()) {
      std::cerr << "kvpool up: " << child.name() << " ignored SIGTERM; killing it\n";
    }
  }
  children.clear();  // SIGKILLs what is left, reaps, joins the drain threads
}

std::vector<std::string> ManagerArgv(const std::string& dir, const UpFlags& flags) {
  std::vector<std::string> argv = {dir + "/kvpool-manager", "--listen", "127.0.0.1:0", "--http",
                                   "127.0.0.1:0",           "--model",  flags.model};
  if (flags.num_blocks > 0)
    argv.insert(argv.end(), {"--num-blocks", std::to_string(flags.num_blocks)});
  if (flags.block_size > 0)
    argv.insert(argv.end(), {"--block-size", std::to_string(flags.block_size)});
  if (!flags.auth_token_file.empty())
    argv.insert(argv.end(), {"--auth-token-file", flags.auth_token_file});
  if (flags.lease_ttl_ms > 0)
    argv.insert(argv.end(), {"--lease-ttl-ms", std::to_string(flags.lease_ttl_ms)});
  AddIfSet(argv, "--kv-cache-dtype", flags.kv_cache_dtype);
  AddIfSet(argv, "--backend", flags.backend);
  if (flags.cuda_device >= 0)
    argv.insert(argv.end(), {"--cuda-device", std::to_string(flags.cuda_device)});
  AddServerTls(argv, flags);
  return argv;
}

std::vector<std::string> WorkerArgv(const std::string& dir, const UpFlags& flags,
                                    const std::string& manager, int index) {
  std::vector<std::string> argv = {dir + "/kvpool-worker",
                                   "--manager",
                                   manager,
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--model",
                                   flags.model,
                                   "--name",
                                   "worker-" + std::to_string(index),
                                   "--http",
                                   "127.0.0.1:0"};
  if (flags.threads > 0) argv.insert(argv.end(), {"--threads", std::to_string(flags.threads)});
  if (!flags.worker_token_file.empty())
    argv.insert(argv.end(), {"--token-file", flags.worker_token_file});
  AddIfSet(argv, "--weight-dtype", flags.weight_dtype);
  AddServerTls(argv, flags);
  AddIfSet(argv, "--manager-tls-ca", flags.tls_ca);
  AddIfSet(argv, "--manager-tls-cert", flags.tls_client_cert);
  AddIfSet(argv, "--manager-tls-key", flags.tls_client_key);
  return argv;
}

// Starts the manager and the workers and prints their addresses; the children are
// appended to `children` as they start, so the caller can stop them on any error.
Status StartNode(const UpFlags& flags, const Signals& signals,
                 std::vector<std::unique_ptr<Subprocess>>& children) {
  const std::string dir = BinaryDirectory();
  for (const char* binary : {"kvpool-manager", "kvpool-worker"}) {
    if (flags.workers == 0 && std::string(binary) == "kvpool-worker") continue;
    if (access((dir + "/" + binary).c_str(), X_OK) != 0) {
      return NotFound(std::string(binary) + " not found next to kvpool in " + dir);
    }
  }
  KVPOOL_ASSIGN_OR_RETURN(
      auto manager,
      Subprocess::Start(ManagerArgv(dir, flags), ServiceOptions("kvpool-manager", signals)));
  Subprocess& manager_process = *manager;
  children.push_back(std::move(manager));
  const auto manager_deadline = Clock::now() + std::chrono::seconds(30);
  KVPOOL_ASSIGN_OR_RETURN(
      const std::string manager_address,
      WaitForLine(manager_process, "kvpool-manager listening on ", manager_deadline, signals));
  KVPOOL_ASSIGN_OR_RETURN(const std::string http_address,
                          WaitForLine(manager_process, "http on ", manager_deadline, signals));
  manager_process.DrainToStderr();
  std::printf("manager %s\n", manager_address.c_str());
  std::fflush(stdout);
  std::cerr << "kvpool up: dashboard on http://" << http_address << "/ (metrics: /metrics)\n";

  for (int i = 0; i < flags.workers; ++i) {
    KVPOOL_ASSIGN_OR_RETURN(
        auto worker, Subprocess::Start(WorkerArgv(dir, flags, manager_address, i),
                                       ServiceOptions("worker-" + std::to_string(i), signals)));
    children.push_back(std::move(worker));
  }
  const auto worker_deadline = Clock::now() + std::chrono::seconds(120);
  for (size_t i = 1; i < children.size(); ++i) {
    KVPOOL_ASSIGN_OR_RETURN(
        const std::string address,
        WaitForLine(*children[i], "kvpool-worker listening on ", worker_deadline, signals));
    std::printf("worker %s\n", address.c_str());
    std::fflush(stdout);
    KVPOOL_ASSIGN_OR_RETURN(
        const std::string worker_http,
        WaitForLine(*children[i], "kvpool-worker http on ", worker_deadline, signals));
    std::cerr << "kvpool up: worker-" << i - 1 << " metrics on http://" << worker_http
              << "/metrics, the OpenAI API on http://" << worker_http << "/v1\n";
    std::printf("openai http://%s\n", worker_http.c_str());
    std::fflush(stdout);
  }
  for (size_t i = 1; i < children.size(); ++i) {
    KVPOOL_RETURN_IF_ERROR(
        WaitForLine(*children[i], "kvpool-worker attached to ", worker_deadline, signals).status());
    children[i]->DrainToStderr();
  }
  std::printf("ready\n");
  std::fflush(stdout);
  return Status::Ok();
}

int RunUp(const UpFlags& flags) {
  Signals signals;
  sigemptyset(&signals.waited);
  sigaddset(&signals.waited, SIGINT);
  sigaddset(&signals.waited, SIGTERM);
  sigaddset(&signals.waited, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &signals.waited, &signals.original);

  std::vector<std::unique_ptr<Subprocess>> children;
  const Status started = StartNode(flags, signals, children);
  if (!started.ok()) {
    StopAll(children);
    if (started.code() == StatusCode::kCancelled) return 0;  // SIGINT/SIGTERM while starting
    return ReportError("up", started);
  }
  while (true) {
    if (signals.StopRequested(std::chrono::milliseconds(500))) {
      StopAll(children);
      return 0;
    }
    for (const std::unique_ptr<Subprocess>& child : children) {
      if (!child->Exited()) continue;
      const Status died = Unavailable(child->name() + " (pid " + std::to_string(child->pid()) +
                                      ") " + child->ExitDescription());
      StopAll(children);
      return ReportError("up", died);
    }
  }
}

}  // namespace

void AddUpCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<UpFlags>();
  CLI::App* command = app.add_subcommand("up", "run a local manager and workers");
  command->add_option("--workers", flags->workers, "kvpool-worker processes")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  command->add_option("--model", flags->model, "model name (manager geometry and worker model)")
      ->capture_default_str();
  command->add_option("--num-blocks", flags->num_blocks, "blocks in the pool")
      ->check(CLI::PositiveNumber);
  command->add_option("--block-size", flags->block_size, "tokens per block")
      ->check(CLI::PositiveNumber);
  command->add_option("--threads", flags->threads, "CPU threads per worker")
      ->check(CLI::PositiveNumber);
  command->add_option("--auth-token-file", flags->auth_token_file,
                      "the manager's token file (lines \"TOKEN TENANT [ROLES] [max_blocks=]\")");
  command->add_option("--worker-token-file", flags->worker_token_file,
                      "the workers' bearer token for the manager (first line)");
  command->add_option("--lease-ttl-ms", flags->lease_ttl_ms, "worker lease TTL")
      ->check(CLI::PositiveNumber);
  command->add_option("--kv-cache-dtype", flags->kv_cache_dtype,
                      "the pool's K/V dtype: fp32, fp16, bf16, int8 or fp8 (the manager's "
                      "default: fp32)");
  command
      ->add_option("--backend", flags->backend,
                   "the pool's memory: shm (CPU workers) or cuda (the manager hosts it on a "
                   "GPU; workers built with CUDA LibTorch attach through CUDA IPC)")
      ->check(CLI::IsMember({"shm", "cuda"}));
  command->add_option("--cuda-device", flags->cuda_device, "--backend cuda: the GPU ordinal")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--weight-dtype", flags->weight_dtype,
                      "the workers' CPU weights: fp32, bf16, fp16 or auto (default: fp32)");
  command->add_option("--tls-cert", flags->tls_cert,
                      "PEM certificate the manager and the workers serve TLS with");
  command->add_option("--tls-key", flags->tls_key, "PEM private key of --tls-cert");
  command->add_option("--tls-ca", flags->tls_ca,
                      "PEM CA the workers trust for the manager's certificate");
  command->add_option("--tls-client-ca", flags->tls_client_ca,
                      "PEM CA: the manager and the workers require client certificates "
                      "signed by it (mTLS)");
  command->add_option("--tls-client-cert", flags->tls_client_cert,
                      "PEM client certificate the workers present to an mTLS manager");
  command->add_option("--tls-client-key", flags->tls_client_key,
                      "PEM private key of --tls-client-cert");
  command->callback([flags, exit_code] { *exit_code = RunUp(*flags); });
}

}  // namespace kvpool::cli
