// kvpool-manager: the node's cache manager process. Parses flags, creates the pool
// (POSIX shm), wires CacheManager into the gRPC service (plus grpc.health.v1 and
// reflection) and the HTTP port (/metrics, /healthz), and runs an Asio loop for the
// lease-expiry timer and SIGTERM/SIGINT. Prints "kvpool-manager listening on HOST:PORT"
// and "http on HOST:PORT" once serving, so scripts and tests can use port 0. Never
// links LibTorch.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>

#include "cache_service/auth.h"
#include "cache_service/cache_manager.h"
#include "cache_service/dashboard.h"
#include "cache_service/grpc_service.h"
#include "cache_service/kv_event_publisher.h"
#include "cache_service/metrics.h"
#include "cache_service/pool_host.h"
#include "common/model_config.h"
#include "common/observability/http_server.h"
#include "common/observability/http_tls_flags.h"
#include "common/service_loop.h"
#include "common/tls.h"

namespace kvpool::manager {
namespace {

struct Flags {
  std::string listen = "127.0.0.1:50051";
  std::string http = "127.0.0.1:0";
  HttpServerOptions http_options;  // the HTTP port's TLS files
  std::string model;
  int32_t num_layers = 0, num_kv_heads = 0, head_dim = 0;
  int32_t block_size = 16;
  int64_t num_blocks = 0;
  bool num_blocks_given = false;
  int64_t pool_bytes = 256ll << 20;
  std::string dtype = "fp32";
  int64_t lease_ttl_ms = 10000;
  int64_t hit_rate_window_s = 300;
  int64_t max_tokens_per_call = 1 << 20;
  int64_t max_sequences_per_worker = 4096;
  int64_t max_context_tokens = 1 << 20;
  std::string auth_token_file;
  std::string tenant_max_blocks = "100%";
  std::string tenant_max_pinned_blocks = "25%";
  int64_t max_pin_ttl_s = 86400;
  std::string backend = "shm";
  int cuda_device = 0;
  std::string chart_js = kDefaultChartJsPath;
  TlsFiles tls;  // the server's certificate; with a client CA (--tls-client-ca), mTLS
  std::string kv_events_endpoint, kv_events_replay_endpoint;  // empty: no events
  std::string kv_events_topic = "kv@{tenant}@";
};

// Workers heartbeat every TTL/4 (at least 20 ms apart) and the manager sweeps leases
// every TTL/4, over gRPC calls that take milliseconds on a busy node: below this TTL a
// scheduling hiccup of a loaded machine would expire a live worker, which then loses
// every sequence in flight and never serves a request.
constexpr int64_t kMinLeaseTtlMs = 500;

int Fail(const std::string& message) {
  std::cerr << "kvpool-manager: " << message << "\n";
  return 1;
}

// A flag that can never work (a TLS file missing, a certificate without its key): exit 2.
int FailUsage(const Status& status) {
  std::cerr << "kvpool-manager: " << status.message() << "\n";
  return 2;
}

StatusOr<PoolGeometry> GeometryFromFlags(Flags& flags) {
  if (!flags.model.empty()) {
    if (const StatusOr<ModelConfig> shape = BuiltinModelConfig(flags.model); shape.ok()) {
      if (flags.num_layers == 0) flags.num_layers = static_cast<int32_t>(shape->num_layers);
      if (flags.num_kv_heads == 0) flags.num_kv_heads = static_cast<int32_t>(shape->num_kv_heads);
      if (flags.head_dim == 0) flags.head_dim = static_cast<int32_t>(shape->head_dim);
    }
  }
  if (flags.num_layers <= 0 || flags.num_kv_heads <= 0 || flags.head_dim <= 0) {
    std::string known;
    for (const std::string& name : BuiltinModelNames()) known += " " + name;
    return InvalidArgument("give --model (one of:" + known +
                           ") or all of --num-layers --num-kv-heads --head-dim (> 0)");
  }
  if (flags.model.empty()) flags.model = "custom";
  PoolGeometry g;
  g.num_layers = flags.num_layers;
  g.num_kv_heads = flags.num_kv_heads;
  g.head_dim = flags.head_dim;
  g.block_size = flags.block_size;
  if (g.block_size <= 0) return InvalidArgument("--block-size must be > 0");
  if (!ParseKvDtype(flags.dtype, &g.dtype)) {
    return InvalidArgument("--kv-cache-dtype must be " + std::string(kKvDtypeNames) + ", got '" +
                           flags.dtype + "'");
  }
  if (g.num_layers > 4096 || g.num_kv_heads > 4096 || g.head_dim > 4096 || g.block_size > 4096) {
    return InvalidArgument(
        "--num-layers, --num-kv-heads, --head-dim and --block-size must be <= 4096");
  }
  g.num_blocks = 1;
  const int64_t block_bytes = static_cast<int64_t>(g.block_bytes());  // < 2^51: no overflow
  if (flags.num_blocks_given && flags.num_blocks <= 0) {
    return InvalidArgument("--num-blocks must be > 0, got " + std::to_string(flags.num_blocks));
  }
  g.num_blocks = flags.num_blocks_given ? flags.num_blocks : flags.pool_bytes / block_bytes;
  if (g.num_blocks > std::numeric_limits<int32_t>::max()) {
    return InvalidArgument("the pool would hold " + std::to_string(g.num_blocks) +
                           " blocks; block ids are int32: use fewer or larger blocks");
  }
  if (int64_t bytes = 0; __builtin_mul_overflow(g.num_blocks, block_bytes, &bytes)) {
    return InvalidArgument("the pool size overflows: fewer blocks");
  }
  if (g.num_blocks <= 0) {
    return InvalidArgument("the pool holds no block: --pool-bytes " +
                           std::to_string(flags.pool_bytes) + " < one block of " +
                           std::to_string(block_bytes) + " bytes");
  }
  return g;
}

int Run(int argc, char** argv) {
  Flags flags;
  CLI::App app{"kvpool-manager: the node's KV cache manager (block pool, prefix cache, leases)"};
  app.add_option("--listen", flags.listen, "gRPC address HOST:PORT (port 0: pick a free one)")
      ->capture_default_str();
  app.add_option("--http", flags.http,
                 "HTTP address for the dashboard (/), /metrics, /healthz and /api/stats")
      ->capture_default_str();
  app.add_option("--chart-js", flags.chart_js,
                 "Chart.js for the dashboard (Debian: libjs-chart.js)")
      ->capture_default_str();
  app.add_option("--model", flags.model,
                 "built-in geometry: gpt2, gpt2-medium, "
                 "gpt2-chinese-cluecorpussmall, llama-gqa-small, "
                 "tiny-gpt2, tiny-llama (or a name for explicit shapes)");
  app.add_option("--num-layers", flags.num_layers, "layers (overrides --model)");
  app.add_option("--num-kv-heads", flags.num_kv_heads, "K/V heads per layer (overrides --model)");
  app.add_option("--head-dim", flags.head_dim, "elements per head (overrides --model)");
  app.add_option("--block-size", flags.block_size, "tokens per block")->capture_default_str();
  auto* num_blocks = app.add_option("--num-blocks", flags.num_blocks, "blocks in the pool");
  app.add_option("--pool-bytes", flags.pool_bytes, "pool size in bytes (when no --num-blocks)")
      ->capture_default_str()
      ->excludes(num_blocks);
  app.add_option("--kv-cache-dtype,--dtype", flags.dtype,
                 "K/V element type: fp32 | fp16 | bf16 | int8 | fp8 (e4m3); int8 and fp8 keep "
                 "an fp32 scale per (token, KV head). --dtype is the older name")
      ->capture_default_str();
  app.add_option("--max-tokens-per-call", flags.max_tokens_per_call,
                 "limit on prompt + committed tokens in one call")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-sequences-per-worker", flags.max_sequences_per_worker,
                 "limit on open sequences of one worker")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-context-tokens", flags.max_context_tokens,
                 "limit on prompt + max_tokens of one sequence")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  app.add_option(
         "--lease-ttl-ms", flags.lease_ttl_ms,
         "worker lease TTL in milliseconds (" + std::to_string(kMinLeaseTtlMs) + " .. 86400000)")
      ->capture_default_str();
  app.add_option("--hit-rate-window-s", flags.hit_rate_window_s,
                 "seconds of lookups behind the windowed predicted hit-rate curves (1 .. 86400)")
      ->check(CLI::Range(int64_t{1}, int64_t{86400}))
      ->capture_default_str();
  app.add_option("--auth-token-file", flags.auth_token_file,
                 "lines \"TOKEN TENANT [worker|client|worker,client] [max_blocks=N|P%]\"; every "
                 "call then needs authorization: Bearer TOKEN");
  app.add_option("--tenant-max-blocks", flags.tenant_max_blocks,
                 "each tenant's cap on blocks its sequences hold in use: a count (128) or a "
                 "share of the pool (25%); the token file's max_blocks= overrides it per tenant")
      ->capture_default_str();
  app.add_option("--tenant-max-pinned-blocks", flags.tenant_max_pinned_blocks,
                 "each tenant's cap on blocks its prefix pins hold (within its quota): a count "
                 "or a share of the pool")
      ->capture_default_str();
  app.add_option("--max-pin-ttl-s", flags.max_pin_ttl_s, "the longest a prefix pin may last")
      ->check(CLI::Range(int64_t{1}, int64_t{30} * 86400))
      ->capture_default_str();
  app.add_option("--cuda-device", flags.cuda_device, "--backend cuda: the device ordinal")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--backend", flags.backend, "pool memory: shm, or cuda (device memory + IPC)")
      ->capture_default_str();
  flags.tls.ca_flag = "--tls-client-ca";
  app.add_option("--tls-cert", flags.tls.cert, "PEM certificate chain: serve gRPC over TLS");
  app.add_option("--tls-key", flags.tls.key, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", flags.tls.ca,
                 "PEM CA bundle: require client certificates signed by it (mTLS)");
  app.add_option("--kv-events-endpoint", flags.kv_events_endpoint,
                 "publish KV-cache events in vLLM's format on a ZMQ PUB socket bound here, "
                 "e.g. tcp://127.0.0.1:5557 (they carry token ids: keep it on loopback or a "
                 "trusted network; default: off)");
  app.add_option("--kv-events-replay-endpoint", flags.kv_events_replay_endpoint,
                 "ZMQ ROUTER address where subscribers replay missed event batches");
  app.add_option("--kv-events-topic", flags.kv_events_topic,
                 "topic of each event batch; {tenant} becomes the batch's tenant")
      ->capture_default_str();
  AddHttpTlsFlags(app, &flags.http_options);
  CLI11_PARSE(app, argc, argv);
  flags.num_blocks_given = num_blocks->count() > 0;
  if (flags.lease_ttl_ms < kMinLeaseTtlMs || flags.lease_ttl_ms > 86400000) {
    return FailUsage(InvalidArgument("--lease-ttl-ms " + std::to_string(flags.lease_ttl_ms) +
                                     " is outside [" + std::to_string(kMinLeaseTtlMs) +
                                     ", 86400000]: workers heartbeat every TTL/4, and a "
                                     "TTL under " +
                                     std::to_string(kMinLeaseTtlMs) +
                                     " ms expires live workers whenever the node is busy"));
  }
  StatusOr<BlockQuota> default_quota =
      ParseBlockQuota(flags.tenant_max_blocks, "--tenant-max-blocks");
  if (!default_quota.ok()) return FailUsage(default_quota.status());
  StatusOr<BlockQuota> pinned_quota =
      ParseBlockQuota(flags.tenant_max_pinned_blocks, "--tenant-max-pinned-blocks");
  if (!pinned_quota.ok()) return FailUsage(pinned_quota.status());

  StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = TlsServerCredentials(flags.tls);
  if (!credentials.ok()) return FailUsage(credentials.status());

  StatusOr<PoolGeometry> geometry = GeometryFromFlags(flags);
  if (!geometry.ok()) return Fail(geometry.status().message());
  Authenticator auth;
  if (!flags.auth_token_file.empty()) {
    StatusOr<Authenticator> loaded = Authenticator::FromTokenFile(flags.auth_token_file);
    if (!loaded.ok()) return Fail(loaded.status().message());
    auth = std::move(loaded).value();
    if (auth.legacy_lines() > 0) {
      std::cerr << "kvpool-manager: " << auth.legacy_lines() << " line(s) of "
                << flags.auth_token_file
                << " name no role (\"TOKEN TENANT\"): those tokens may act as workers and as "
                   "clients; add \"worker\" or \"client\" to each line\n";
    }
  }
  PoolBackend backend;
  if (flags.backend == "shm") {
    backend = PoolBackend::kShm;
  } else if (flags.backend == "cuda") {
    backend = PoolBackend::kCuda;
    if (KvDtypeScaled(geometry->dtype)) {
      return Fail(std::string("--backend cuda: the CUDA engine reads fp32, fp16 and bf16 pools, "
                              "not ") +
                  KvDtypeName(geometry->dtype) + " (int8 and fp8 pools are the CPU engine's)");
    }
  } else {
    return Fail("--backend must be shm or cuda");
  }

  if (const int removed = PoolHost::RemoveStaleSegments(); removed > 0) {
    std::cerr << "kvpool-manager: removed " << removed << " stale /dev/shm/kvpool-* segments\n";
  }
  StatusOr<PoolHost> pool = PoolHost::Create(backend, *geometry, flags.cuda_device);
  if (!pool.ok()) return Fail(pool.status().ToString());

  CacheManagerOptions options;
  options.geometry = *geometry;
  options.lease_ttl = std::chrono::milliseconds(flags.lease_ttl_ms);
  options.hit_rate_window = std::chrono::seconds(flags.hit_rate_window_s);
  options.max_tokens_per_call = flags.max_tokens_per_call;
  options.max_sequences_per_worker = flags.max_sequences_per_worker;
  options.max_context_tokens = flags.max_context_tokens;
  options.tenant_max_blocks = default_quota->Resolve(geometry->num_blocks);
  options.tenant_max_pinned_blocks = pinned_quota->Resolve(geometry->num_blocks);
  options.max_pin_ttl = std::chrono::seconds(flags.max_pin_ttl_s);
  for (const auto& [tenant, quota] : auth.quotas()) {
    options.tenant_max_blocks_override[tenant] = quota.Resolve(geometry->num_blocks);
  }
  std::unique_ptr<KvEventPublisher> events;
  if (!flags.kv_events_endpoint.empty()) {
    KvEventPublisherOptions e;
    e.endpoint = flags.kv_events_endpoint;
    e.replay_endpoint = flags.kv_events_replay_endpoint;
    e.topic = flags.kv_events_topic;
    e.medium = backend == PoolBackend::kCuda ? "GPU" : "CPU";
    e.block_size = geometry->block_size;
    StatusOr<std::unique_ptr<KvEventPublisher>> started = KvEventPublisher::Start(std::move(e));
    if (!started.ok()) return FailUsage(started.status());
    events = std::move(started).value();
    options.event_sink = events.get();
  } else if (!flags.kv_events_replay_endpoint.empty()) {
    return FailUsage(InvalidArgument("--kv-events-replay-endpoint needs --kv-events-endpoint"));
  }
  CacheManager core(options);
  ServiceMetrics metrics(ManagerService::MethodNames());
  ManagerService service(&core, DescribePool(*pool, *geometry, flags.model), &auth, &metrics);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(flags.listen, *credentials, &grpc_port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    return Fail("cannot listen on " + flags.listen +
                (flags.tls.empty() ? "" : " (or --tls-cert and --tls-key do not match)"));
  }

  std::string chart_js;
  if (std::ifstream in(flags.chart_js, std::ios::binary); in) {
    chart_js.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } else {
    std::cerr << "kvpool-manager: no Chart.js at " << flags.chart_js
              << ": the dashboard shows numbers without charts (install libjs-chart.js)\n";
  }
  const Dashboard dashboard(&core, &service, &auth, DescribePool(*pool, *geometry, flags.model),
                            std::move(chart_js));

  // /metrics and /healthz are operator-facing and unauthenticated (Prometheus and
  // Kubernetes probes): keep --http on loopback or a cluster-internal address.
  ServiceLoop loop("kvpool-manager");
  HttpServer http(
      loop.io(), "kvpool-manager",
      [&](const HttpRequest& request) -> HttpResponse {
        const std::string& target = request.target;
        if (std::optional<HttpResponse> page = dashboard.Serve(request)) return *std::move(page);
        if (target == "/metrics") {
          return {200, "text/plain; version=0.0.4; charset=utf-8",
                  metrics.Render(core.Stats(), core.PredictedHitRates(Clock::now()))};
        }
        if (target == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n"};
        return {404, "text/plain; charset=utf-8",
                "not found: try /, /metrics, /healthz or /api/stats\n"};
      },
      flags.http_options);
  StatusOr<boost::asio::ip::tcp::endpoint> http_endpoint = http.Listen(flags.http);
  if (!http_endpoint.ok()) {
    server->Shutdown();
    return http_endpoint.status().code() == StatusCode::kInvalidArgument
               ? FailUsage(http_endpoint.status())
               : Fail(http_endpoint.status().message());
  }

  std::string host;
  unsigned short unused_port = 0;
  if (!SplitHostPort(flags.listen, &host, &unused_port)) host = flags.listen;
  std::printf("kvpool-manager listening on %s:%d\nhttp on %s:%d\n", host.c_str(), grpc_port,
              http_endpoint->address().to_string().c_str(), http_endpoint->port());
  std::fflush(stdout);
  std::cerr << "kvpool-manager: model " << flags.model << ", " << geometry->num_blocks
            << " blocks of " << geometry->block_size << " tokens (" << pool->pool_bytes()
            << " bytes, " << KvDtypeName(geometry->dtype) << ") in " << pool->shm_name()
            << ", lease ttl " << flags.lease_ttl_ms << " ms, gRPC " << TlsServerMode(flags.tls)
            << ", HTTP port " << http.Scheme() << ", instance " << core.instance_id() << "\n";

  // Leases are checked four times per TTL, so a dead worker's blocks come back
  // within 1.25 TTL of its last heartbeat.
  const auto lease_period = std::chrono::milliseconds(std::max<int64_t>(1, flags.lease_ttl_ms / 4));
  loop.Every(lease_period, [&] {
    service.ExpireLeases(Clock::now());
    core.ExpirePins(Clock::now());
  });
  loop.OnShutdown([&] {
    http.Close();
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  });
  loop.Run();
  server->Wait();
  return 0;  // `pool` unmaps and unlinks the shm segment on the way out
}

}  // namespace
}  // namespace kvpool::manager

int main(int argc, char** argv) { return kvpool::manager::Run(argc, argv); }
