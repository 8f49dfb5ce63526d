// TLS credentials from PEM files: see tls.h.
#include "common/tls.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace kvpool {
namespace {

// The contents of the PEM file `path` given as `flag`.
StatusOr<std::string> ReadPem(const std::string& flag, const std::string& path) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return InvalidArgument(flag + ": cannot read '" + path +
                           "': " + (errno != 0 ? std::strerror(errno) : "cannot open"));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  std::string pem = contents.str();
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return InvalidArgument(flag + ": '" + path + "' holds no PEM block (-----BEGIN ...)");
  }
  return pem;
}

// A certificate and its key come together or not at all.
Status CheckPair(const TlsFiles& files) {
  if (!files.cert.empty() && files.key.empty()) {
    return InvalidArgument(files.cert_flag + " needs " + files.key_flag + " (its private key)");
  }
  if (files.cert.empty() && !files.key.empty()) {
    return InvalidArgument(files.key_flag + " needs " + files.cert_flag + " (its certificate)");
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::shared_ptr<grpc::ServerCredentials>> TlsServerCredentials(const TlsFiles& files) {
  if (files.empty()) return grpc::InsecureServerCredentials();
  KVPOOL_RETURN_IF_ERROR(CheckPair(files));
  if (files.cert.empty()) {
    return InvalidArgument(files.ca_flag + " (client certificates) needs " + files.cert_flag +
                           " and " + files.key_flag + " (mTLS is TLS plus client certificates)");
  }
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  KVPOOL_ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(files.cert_flag, files.cert));
  KVPOOL_ASSIGN_OR_RETURN(pair.private_key, ReadPem(files.key_flag, files.key));
  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!files.ca.empty()) {
    KVPOOL_ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(files.ca_flag, files.ca));
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsChannelCredentials(const TlsFiles& files) {
  if (files.empty()) return grpc::InsecureChannelCredentials();
  KVPOOL_RETURN_IF_ERROR(CheckPair(files));
  grpc::SslCredentialsOptions options;
  if (!files.ca.empty()) {
    KVPOOL_ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(files.ca_flag, files.ca));
  }
  if (!files.cert.empty()) {
    KVPOOL_ASSIGN_OR_RETURN(options.pem_cert_chain, ReadPem(files.cert_flag, files.cert));
    KVPOOL_ASSIGN_OR_RETURN(options.pem_private_key, ReadPem(files.key_flag, files.key));
  }
  return grpc::SslCredentials(options);
}

const char* TlsServerMode(const TlsFiles& files) {
  if (files.cert.empty()) return "plaintext";
  return files.ca.empty() ? "TLS" : "mTLS";
}

}  // namespace kvpool
