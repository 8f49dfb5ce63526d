// Authenticator: who is calling. With a token file (one "TOKEN TENANT" pair per line,
// '#' comments and blank lines ignored), every call must carry the metadata
// "authorization: Bearer TOKEN" of a listed token, and the caller's tenant is the one
// that token names. Without a token file every caller is tenant "default". The tenant
// salts the prefix cache, so it must only ever come from here, never from a request
// body. Holds no per-call state; safe to use from any thread once loaded.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "kvpool/v1/status.h"

namespace kvpool::manager {

class Authenticator {
 public:
  static constexpr char kDefaultTenant[] = "default";

  // Accepts every caller as tenant "default".
  Authenticator() = default;
  // INVALID_ARGUMENT naming the file and line on a malformed or empty file.
  static StatusOr<Authenticator> FromTokenFile(const std::string& path);

  bool enabled() const { return !tenant_by_token_.empty(); }

  // The tenant of a call whose "authorization" metadata value is `authorization`
  // (nullopt when absent). On failure `error` says what to fix; nullopt is returned.
  std::optional<std::string> Authenticate(const std::optional<std::string>& authorization,
                                          std::string* error) const;

 private:
  std::map<std::string, std::string> tenant_by_token_;
};

}  // namespace kvpool::manager
