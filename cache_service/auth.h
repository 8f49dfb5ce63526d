// Authenticator: who is calling, in which role, and each tenant's block quota. With a
// token file every call must carry the metadata "authorization: Bearer TOKEN" of a
// listed token; the caller's tenant and roles are the ones that token's line names.
// Without a token file every caller is tenant "default" with every role (local use).
// The tenant salts the prefix cache, so it must only ever come from here, never from
// a request body. Holds no per-call state; safe to use from any thread once loaded.
//
// Token file, one token per line ('#' comments and blank lines ignored):
//   TOKEN TENANT [ROLES] [max_blocks=N|P%]
//   ROLES      worker, client, or worker,client. `worker`: may register and hold blocks
//              (RegisterWorker, Heartbeat, OpenSequence, Step, Fork, CloseSequence,
//              AuthenticateClient); `client`: may only be forwarded by a worker as its
//              end client's credential (and read its own tenant's stats). A line
//              without ROLES (the first format, "TOKEN TENANT") has both.
//   max_blocks the tenant's cap on blocks its sequences hold in use (a count, or a
//              percentage of the pool), overriding the manager's --tenant-max-blocks;
//              lines of one tenant must not disagree.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "common/status.h"

namespace kvpool::manager {

// A block cap: an absolute count, or a share of the pool in percent.
struct BlockQuota {
  int64_t blocks = -1;   // >= 0: this many blocks; < 0: use `percent`
  double percent = 100;  // of the pool's blocks, when blocks < 0
  // The cap in blocks for a pool of `num_blocks`.
  int64_t Resolve(int64_t num_blocks) const;
  std::string ToString() const;
};
// "128" or "25%" (0 < P <= 100); INVALID_ARGUMENT naming `what` otherwise.
StatusOr<BlockQuota> ParseBlockQuota(const std::string& text, const std::string& what);

enum Role : uint8_t { kRoleClient = 1, kRoleWorker = 2 };

struct Caller {
  std::string tenant;
  uint8_t roles = kRoleClient | kRoleWorker;
  bool Has(Role role) const { return (roles & role) != 0; }
};

class Authenticator {
 public:
  static constexpr char kDefaultTenant[] = "default";

  // Accepts every caller as tenant "default" with every role.
  Authenticator() = default;
  // INVALID_ARGUMENT naming the file and line on a malformed or empty file.
  static StatusOr<Authenticator> FromTokenFile(const std::string& path);

  bool enabled() const { return !caller_by_token_.empty(); }
  // Lines in the first format (no roles: both): the manager warns about them.
  int legacy_lines() const { return legacy_lines_; }

  // The caller whose "authorization" metadata value is `authorization` (nullopt when
  // absent). On failure `error` says what to fix; nullopt is returned.
  std::optional<Caller> Authenticate(const std::optional<std::string>& authorization,
                                     std::string* error) const;
  // The tenants whose quota the token file sets.
  const std::map<std::string, BlockQuota>& quotas() const { return quota_by_tenant_; }

 private:
  std::map<std::string, Caller> caller_by_token_;
  std::map<std::string, BlockQuota> quota_by_tenant_;
  int legacy_lines_ = 0;
};

}  // namespace kvpool::manager
