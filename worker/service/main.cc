// kvpool-worker: one stateless worker process. Loads the model (a built-in name with
// seeded random weights, or a Hugging Face folder), serves gRPC at once (the Worker
// API, grpc.health.v1 NOT_SERVING until attached, reflection), registers with the
// node's kvpool-manager, maps its pool and runs the scheduler on it; the health status
// follows the scheduler. An Asio loop handles SIGTERM/SIGINT.
// Prints "kvpool-worker listening on HOST:PORT" once serving gRPC, "kvpool-worker http
// on HOST:PORT" when --http serves /metrics and /healthz, and "kvpool-worker attached
// to ..." on every (re-)attachment, so scripts and tests can use port 0.
// Exits 1 with the reason when the manager's pool cannot hold this model's K/V, 2 when
// a TLS flag cannot work (a file missing, a certificate without its key).
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>

#include "common/observability/http_server.h"
#include "common/observability/http_tls_flags.h"
#include "common/service_loop.h"
#include "common/tls.h"
#include "engine/cpu_linear.h"
#include "engine/engine.h"
#include "engine/model_loader.h"
#include "service/manager_link.h"
#include "service/openai_gateway.h"
#include "service/scheduler.h"
#include "service/worker_metrics.h"
#include "service/worker_service.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kvpool::worker {
namespace {

int Fail(const std::string& message) {
  std::cerr << "kvpool-worker: " << message << "\n";
  return 1;
}

// A flag that can never work (a TLS file missing, a certificate without its key): exit 2.
int FailUsage(const Status& status) {
  std::cerr << "kvpool-worker: " << status.message() << "\n";
  return 2;
}

StatusOr<std::string> ReadToken(const std::string& path) {
  std::ifstream in(path);
  if (!in) return InvalidArgument("cannot read the token file '" + path + "'");
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty()) return InvalidArgument("the token file '" + path + "' is empty");
  return token;
}

int Run(int argc, char** argv) {
  CLI::App app{"kvpool worker: serves Generate on the node's shared KV pool"};
  std::string manager = "127.0.0.1:50051", listen = "127.0.0.1:0", model = "gpt2";
  std::string token_file, name, http_address, served_model_name;
  SchedulerOptions scheduler_options;
  uint64_t weights_seed = 42;
  app.add_option("--manager", manager, "the node's kvpool-manager (host:port)");
  app.add_option("--listen", listen, "gRPC address to serve (port 0: any free port)");
  app.add_option("--model", model, "built-in model name or Hugging Face folder");
  app.add_option("--weights-seed", weights_seed, "seed of a built-in model's random weights");
  app.add_option("--threads", scheduler_options.threads, "LibTorch threads (0: its default)")
      ->check(CLI::NonNegativeNumber);
  std::string weight_dtype_name = "fp32";
  app.add_option(
         "--weight-dtype", weight_dtype_name,
         "CPU linear weights: fp32, bf16, fp16 or auto (bf16 where the CPU has AVX512-BF16)")
      ->capture_default_str();
  std::string kv_dtype_name = "auto";
  app.add_option("--kv-cache-dtype", kv_dtype_name,
                 "K/V dtype this worker expects of the manager's pool: auto (whatever the "
                 "pool holds), fp32, fp16, bf16, int8 or fp8")
      ->capture_default_str();
  app.add_option("--max-running", scheduler_options.max_running,
                 "sequences decoded together at most")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-prefill-tokens", scheduler_options.max_prefill_tokens,
                 "prompt tokens admitted per scheduler step (a longer prompt still comes alone)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-num-batched-tokens", scheduler_options.max_num_batched_tokens,
                 "tokens one forward computes at most: one per decoding sequence, prompt "
                 "chunks in the rest (chunked prefill); 0: prompts whole")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--admission-headroom-blocks", scheduler_options.headroom_blocks,
                 "free pool blocks per running sequence below which admission waits")
      ->check(CLI::NonNegativeNumber);
  double swap_space_gib = static_cast<double>(scheduler_options.swap_space_bytes) / (1 << 30);
  app.add_option("--swap-space-gib", swap_space_gib,
                 "host memory for preempted sequences' K/V, written back when they resume "
                 "(0: recompute them instead)")
      ->check(CLI::Range(0.0, 1024.0));
  app.add_option("--token-file", token_file,
                 "this worker's bearer token for the manager (first line of the file)");
  app.add_option("--name", name, "worker name for the manager's logs");
  app.add_option("--served-model-name", served_model_name,
                 "the model id of the OpenAI API on --http (default: the model's name)");
  app.add_option("--http", http_address,
                 "HTTP address HOST:PORT for /metrics and /healthz (port 0: any free port)");
  TlsFiles tls;  // this worker's server; with a client CA, mTLS
  tls.ca_flag = "--tls-client-ca";
  app.add_option("--tls-cert", tls.cert, "PEM certificate chain: serve gRPC over TLS");
  app.add_option("--tls-key", tls.key, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", tls.ca,
                 "PEM CA bundle: require client certificates signed by it (mTLS)");
  HttpServerOptions http_options;
  http_options.allow_post = true;  // the OpenAI API
  AddHttpTlsFlags(app, &http_options);
  TlsFiles manager_tls;  // the channel to the manager
  manager_tls.ca_flag = "--manager-tls-ca";
  manager_tls.cert_flag = "--manager-tls-cert";
  manager_tls.key_flag = "--manager-tls-key";
  app.add_option("--manager-tls-ca", manager_tls.ca,
                 "PEM CA bundle the manager's certificate must chain to: TLS to the manager");
  app.add_option("--manager-tls-cert", manager_tls.cert,
                 "PEM client certificate for a manager that requires one (mTLS)");
  app.add_option("--manager-tls-key", manager_tls.key, "PEM private key of --manager-tls-cert");
  CLI11_PARSE(app, argc, argv);
  scheduler_options.swap_space_bytes = static_cast<int64_t>(swap_space_gib * (1 << 30));
  std::string weight_dtype_why;
  StatusOr<at::ScalarType> weight_dtype = CpuWeightDtype(weight_dtype_name, &weight_dtype_why);
  if (!weight_dtype.ok()) return FailUsage(weight_dtype.status());
  scheduler_options.cpu_weight_dtype = *weight_dtype;
  if (kv_dtype_name != "auto") {
    KvDtype kv_dtype;
    if (!ParseKvDtype(kv_dtype_name, &kv_dtype)) {
      return FailUsage(InvalidArgument("--kv-cache-dtype must be auto, " +
                                       std::string(kKvDtypeNames) + ", got '" + kv_dtype_name +
                                       "'"));
    }
    scheduler_options.kv_cache_dtype = kv_dtype;
  }

  StatusOr<std::shared_ptr<grpc::ServerCredentials>> server_credentials = TlsServerCredentials(tls);
  if (!server_credentials.ok()) return FailUsage(server_credentials.status());
  StatusOr<std::shared_ptr<grpc::ChannelCredentials>> manager_credentials =
      TlsChannelCredentials(manager_tls);
  if (!manager_credentials.ok()) return FailUsage(manager_credentials.status());

  std::string token;
  if (!token_file.empty()) {
    StatusOr<std::string> read = ReadToken(token_file);
    if (!read.ok()) return Fail(read.status().message());
    token = *read;
  }
  StatusOr<LoadedModel> loaded = LoadModel(model, weights_seed);
  if (!loaded.ok()) return Fail(loaded.status().ToString());
  if (weight_dtype_name == "auto") {
    scheduler_options.cpu_weight_dtype =
        FitAutoWeightDtype(loaded->weights, scheduler_options.cpu_weight_dtype, &weight_dtype_why);
  }
  if (!loaded->config.runnable) {
    return Fail("model '" + model + "' is a shape for memory calculations only; it cannot run");
  }
  if (!loaded->tokenizer) {
    std::cerr << "kvpool-worker: no tokenizer (" << loaded->tokenizer_note
              << "): requests must send token_ids\n";
  }
  if (name.empty()) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    name = "worker-" + std::to_string(getpid()) + "@" + host;
  }

  Scheduler* scheduler_ptr = nullptr;
  ManagerLinkOptions link_options;
  link_options.address = manager;
  link_options.token = token;
  link_options.worker_name = name;
  link_options.report_load = [&scheduler_ptr](v1::WorkerLoad* load) {
    if (scheduler_ptr != nullptr) FillWorkerLoad(scheduler_ptr->counters(), load);
  };
  link_options.credentials = *manager_credentials;
  ManagerLink link(link_options, loaded->config, [&scheduler_ptr] {
    if (scheduler_ptr != nullptr) scheduler_ptr->Wake();
  });
  // Health follows the scheduler: SERVING once an engine runs on an attached pool.
  std::atomic<grpc::HealthCheckServiceInterface*> health{nullptr};
  Scheduler scheduler(scheduler_options, loaded->config, std::move(loaded->weights),
                      loaded->tokenizer, &link, [&health](bool serving) {
                        if (auto* h = health.load()) h->SetServingStatus(serving);
                      });
  scheduler_ptr = &scheduler;
  WorkerService service(&scheduler, &link, loaded->tokenizer, {loaded->source, "cpu"});

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, *server_credentials, &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail("cannot listen on " + listen +
                (tls.empty() ? "" : " (or --tls-cert and --tls-key do not match)"));
  }
  server->GetHealthCheckService()->SetServingStatus(false);
  health.store(server->GetHealthCheckService());
  const std::string host = listen.substr(0, listen.rfind(':'));
  std::cout << "kvpool-worker listening on " << host << ":" << port << std::endl;
  std::cerr << "kvpool-worker: " << loaded->source << " (on the CPU: " << weight_dtype_why
            << "), gRPC " << TlsServerMode(tls) << ", manager " << manager
            << (manager_tls.empty() ? "" : " over TLS") << "\n";

  OpenAiGatewayOptions gateway_options;
  gateway_options.served_model_name =
      served_model_name.empty() ? loaded->config.name : served_model_name;
  if (std::filesystem::is_directory(model)) {
    gateway_options.chat = LoadChatSetup(model);
  } else {
    gateway_options.chat.chat = ChatTemplate::ChatMl();  // documented in docs/design.md
  }
  std::cerr << "kvpool-worker: chat template "
            << (gateway_options.chat.chat ? gateway_options.chat.chat->FamilyName()
                                          : "none (" + gateway_options.chat.note + ")")
            << "\n";
  OpenAiGateway gateway(gateway_options, &scheduler, &link, loaded->tokenizer);
  ServiceLoop loop("kvpool-worker");
  HttpServer http(
      loop.io(), "kvpool-worker",
      [&](const HttpRequest& request) -> HttpResponse {
        const std::string& target = request.target;
        if (std::optional<HttpResponse> api = gateway.Route(request)) return *std::move(api);
        if (request.method != "GET" && request.method != "HEAD") {
          return {405, "text/plain; charset=utf-8", "only GET here\n"};
        }
        if (target == "/metrics") {
          return {200, "text/plain; version=0.0.4; charset=utf-8",
                  RenderWorkerMetrics(scheduler, link)};
        }
        if (target == "/healthz") {
          return scheduler.serving() ? HttpResponse{200, "text/plain; charset=utf-8", "ok\n"}
                                     : HttpResponse{503, "text/plain; charset=utf-8",
                                                    "not attached to a manager's pool\n"};
        }
        return {404, "text/plain; charset=utf-8",
                "not found: try /metrics, /healthz, /v1/models or /v1/completions\n"};
      },
      http_options);
  if (!http_address.empty()) {
    StatusOr<boost::asio::ip::tcp::endpoint> endpoint = http.Listen(http_address);
    if (!endpoint.ok()) {
      server->Shutdown();
      return endpoint.status().code() == StatusCode::kInvalidArgument
                 ? FailUsage(endpoint.status())
                 : Fail(endpoint.status().message());
    }
    std::cout << "kvpool-worker http on " << endpoint->address().to_string() << ":"
              << endpoint->port() << std::endl;
    std::cerr << "kvpool-worker: HTTP port " << http.Scheme()
              << (http_options.tls_client_ca.empty() ? "" : " (client certificates required)")
              << "\n";
  }

  scheduler.Start();
  link.Start();

  int exit_code = 0;
  loop.OnShutdown([&] {
    http.Close();
    server->GetHealthCheckService()->SetServingStatus(false);
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  });
  // A pool that cannot hold the model (or a name the manager refuses) ends the process.
  loop.Every(std::chrono::milliseconds(50), [&] {
    if (const std::string fatal = link.fatal_error(); !fatal.empty()) {
      std::cerr << "kvpool-worker: " << fatal << "\n";
      exit_code = 1;
      loop.Stop();
    }
  });
  loop.Run();
  gateway.Stop();  // its completions end before the scheduler goes
  server->Wait();
  // In this order, so that no thread calls into an object already gone: the health
  // callback is cut, the link stops (no more wake-ups), the scheduler closes what is
  // in flight at the manager; the server goes last.
  health.store(nullptr);
  link.Stop();
  scheduler.Stop();
  return exit_code;
}

}  // namespace
}  // namespace kvpool::worker

int main(int argc, char** argv) {
  kvpool::KeepLargeAllocations();
  return kvpool::worker::Run(argc, argv);
}
