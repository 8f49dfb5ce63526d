// The HTTP port's TLS flags, spelled the same on the manager and the worker:
// --http-tls-cert and --http-tls-key serve the port as HTTPS only; --http-tls-client-ca
// requires client certificates signed by that CA (mTLS). They are separate from the
// gRPC port's --tls-* because the HTTP port's clients differ (Prometheus, kubelet
// probes, OpenAI clients, browsers); pass the same files to both to get one policy.
#pragma once

#include <CLI/CLI.hpp>

#include "common/observability/http_server.h"

namespace kvpool {

inline void AddHttpTlsFlags(CLI::App& app, HttpServerOptions* options) {
  app.add_option("--http-tls-cert", options->tls_cert,
                 "PEM certificate chain: serve the HTTP port as HTTPS only");
  app.add_option("--http-tls-key", options->tls_key, "PEM private key of --http-tls-cert");
  app.add_option("--http-tls-client-ca", options->tls_client_ca,
                 "PEM CA bundle: HTTPS clients must present a certificate it signed (mTLS)");
}

}  // namespace kvpool
