// TLS for kvpool's gRPC connections: server and channel credentials from PEM files, the
// one place where the manager, the worker and the SDK turn --tls-* flags (or
// ClientOptions fields) into grpc credentials. A server with a certificate serves TLS;
// with a client CA as well it requires and verifies a client certificate signed by that
// CA (mTLS). A channel with any file set speaks TLS, trusting the given CA (the system
// roots when none) and presenting a client certificate when one is given. No file set
// at all means plaintext, as before. Errors name the flag and the path; nothing here
// reads a file after the credentials are made, so certificates are not reloaded.
#pragma once

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "common/status.h"

namespace kvpool {

// Paths of PEM files for one end of a connection, plus the names of the flags (or
// options) they came from, so that an error says what to fix.
struct TlsFiles {
  std::string cert;  // certificate chain this end presents
  std::string key;   // its private key
  std::string ca;    // CA bundle the peer's certificate must chain to
  std::string cert_flag = "--tls-cert";
  std::string key_flag = "--tls-key";
  std::string ca_flag = "--tls-ca";

  bool empty() const { return cert.empty() && key.empty() && ca.empty(); }
};

// Insecure when no file is set; TLS with cert + key; mTLS (client certificates required
// and verified against `ca`) when `ca` is set too. INVALID_ARGUMENT for a cert without
// its key (or the reverse), a CA without cert and key, or a file that cannot be read or
// holds no PEM block.
StatusOr<std::shared_ptr<grpc::ServerCredentials>> TlsServerCredentials(const TlsFiles& files);

// Insecure when no file is set; else TLS trusting `ca` (the system roots when empty),
// presenting cert + key when set (for an mTLS server). INVALID_ARGUMENT for a cert
// without its key (or the reverse) or a file that cannot be read or holds no PEM block.
StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsChannelCredentials(const TlsFiles& files);

// "plaintext", "TLS" or "mTLS" for a server's files; for logs.
const char* TlsServerMode(const TlsFiles& files);

}  // namespace kvpool
