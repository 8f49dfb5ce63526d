// Authenticator: token file parsing and bearer-token checks. See auth.h.
#include "cache_service/auth.h"

#include <fstream>
#include <sstream>

namespace kvpool::manager {

StatusOr<Authenticator> Authenticator::FromTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return InvalidArgument("cannot read token file " + path);
  Authenticator auth;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    std::istringstream fields(line);
    std::string token, tenant, extra;
    if (!(fields >> token) || token[0] == '#') continue;
    if (!(fields >> tenant) || (fields >> extra)) {
      return InvalidArgument(path + ":" + std::to_string(line_no) + ": expected \"TOKEN TENANT\"");
    }
    if (!auth.tenant_by_token_.emplace(token, tenant).second) {
      return InvalidArgument(path + ":" + std::to_string(line_no) + ": duplicate token");
    }
  }
  if (auth.tenant_by_token_.empty())
    return InvalidArgument("token file " + path + " has no tokens");
  return auth;
}

std::optional<std::string> Authenticator::Authenticate(
    const std::optional<std::string>& authorization, std::string* error) const {
  if (!enabled()) return std::string(kDefaultTenant);
  if (!authorization.has_value()) {
    *error = "missing \"authorization: Bearer <token>\" metadata";
    return std::nullopt;
  }
  static constexpr char kBearer[] = "Bearer ";
  if (authorization->compare(0, sizeof(kBearer) - 1, kBearer) != 0) {
    *error = "authorization metadata must be \"Bearer <token>\"";
    return std::nullopt;
  }
  const auto it = tenant_by_token_.find(authorization->substr(sizeof(kBearer) - 1));
  if (it == tenant_by_token_.end()) {
    *error = "unknown bearer token";
    return std::nullopt;
  }
  return it->second;
}

}  // namespace kvpool::manager
