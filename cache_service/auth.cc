// Authenticator: token file parsing and bearer-token checks. See auth.h.
#include "cache_service/auth.h"

#include <cmath>
#include <fstream>
#include <sstream>

namespace kvpool::manager {
namespace {

// Token, tenant and role fields are short words; a longer one is a broken file.
constexpr size_t kMaxFieldBytes = 256;

StatusOr<uint8_t> ParseRoles(const std::string& text) {
  uint8_t roles = 0;
  std::istringstream in(text);
  std::string role;
  while (std::getline(in, role, ',')) {
    if (role == "worker") {
      roles |= kRoleWorker;
    } else if (role == "client") {
      roles |= kRoleClient;
    } else {
      return InvalidArgument("unknown role \"" + role + "\" (worker, client, or worker,client)");
    }
  }
  if (roles == 0) return InvalidArgument("empty role list");
  return roles;
}

}  // namespace

int64_t BlockQuota::Resolve(int64_t num_blocks) const {
  if (blocks >= 0) return blocks;
  return static_cast<int64_t>(std::floor(static_cast<double>(num_blocks) * percent / 100.0));
}

std::string BlockQuota::ToString() const {
  if (blocks >= 0) return std::to_string(blocks) + " blocks";
  std::ostringstream out;
  out << percent << "% of the pool";
  return out.str();
}

StatusOr<BlockQuota> ParseBlockQuota(const std::string& text, const std::string& what) {
  BlockQuota quota;
  const auto bad = [&] {
    return InvalidArgument(what + " \"" + text +
                           "\" is not a block count (e.g. 128) or a share of the pool "
                           "(e.g. 25%, in (0, 100])");
  };
  if (text.empty() || text.size() > 32) return bad();
  try {
    size_t used = 0;
    if (text.back() == '%') {
      quota.percent = std::stod(text.substr(0, text.size() - 1), &used);
      if (used != text.size() - 1 || !(quota.percent > 0 && quota.percent <= 100)) return bad();
    } else {
      quota.blocks = std::stoll(text, &used);
      if (used != text.size() || quota.blocks < 0) return bad();
    }
  } catch (const std::exception&) {
    return bad();
  }
  return quota;
}

StatusOr<Authenticator> Authenticator::FromTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return InvalidArgument("cannot read token file " + path);
  Authenticator auth;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    const std::string where = path + ":" + std::to_string(line_no) + ": ";
    std::istringstream fields(line);
    std::string token, tenant;
    if (!(fields >> token) || token[0] == '#') continue;
    if (!(fields >> tenant)) {
      return InvalidArgument(where + "expected \"TOKEN TENANT [ROLES] [max_blocks=N|P%]\"");
    }
    if (token.size() > kMaxFieldBytes || tenant.size() > kMaxFieldBytes) {
      return InvalidArgument(where + "token and tenant are at most " +
                             std::to_string(kMaxFieldBytes) + " bytes");
    }
    Caller caller{tenant, kRoleClient | kRoleWorker};
    bool has_roles = false;
    std::string field;
    while (fields >> field) {
      if (field.rfind("max_blocks=", 0) == 0) {
        StatusOr<BlockQuota> quota = ParseBlockQuota(field.substr(11), "max_blocks");
        if (!quota.ok()) return InvalidArgument(where + quota.status().message());
        const auto [it, inserted] = auth.quota_by_tenant_.emplace(tenant, *quota);
        if (!inserted && it->second.ToString() != quota->ToString()) {
          return InvalidArgument(where + "tenant " + tenant + " already has max_blocks " +
                                 it->second.ToString());
        }
      } else if (!has_roles) {
        StatusOr<uint8_t> roles = ParseRoles(field);
        if (!roles.ok()) return InvalidArgument(where + roles.status().message());
        caller.roles = *roles;
        has_roles = true;
      } else {
        return InvalidArgument(where + "unexpected field \"" + field +
                               "\" (expected \"TOKEN TENANT [ROLES] [max_blocks=N|P%]\")");
      }
    }
    if (!has_roles) ++auth.legacy_lines_;
    if (!auth.caller_by_token_.emplace(token, caller).second) {
      return InvalidArgument(where + "duplicate token");
    }
  }
  if (auth.caller_by_token_.empty())
    return InvalidArgument("token file " + path + " has no tokens");
  return auth;
}

std::optional<Caller> Authenticator::Authenticate(const std::optional<std::string>& authorization,
                                                  std::string* error) const {
  if (!enabled()) return Caller{kDefaultTenant, kRoleClient | kRoleWorker};
  if (!authorization.has_value()) {
    *error = "missing \"authorization: Bearer <token>\" metadata";
    return std::nullopt;
  }
  static constexpr char kBearer[] = "Bearer ";
  if (authorization->compare(0, sizeof(kBearer) - 1, kBearer) != 0) {
    *error = "authorization metadata must be \"Bearer <token>\"";
    return std::nullopt;
  }
  const auto it = caller_by_token_.find(authorization->substr(sizeof(kBearer) - 1));
  if (it == caller_by_token_.end()) {
    *error = "unknown bearer token";
    return std::nullopt;
  }
  return it->second;
}

}  // namespace kvpool::manager
