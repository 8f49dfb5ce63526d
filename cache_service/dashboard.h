// Dashboard: the manager's HTTP routes besides /metrics and /healthz. The page, its
// script and style are compiled into the binary (cache_service/dashboard/); Chart.js
// comes from Debian's libjs-chart.js, read once at start (no CDN). /api/stats is the
// pool, the prefix cache and the load each worker reported with its last heartbeat,
// as JSON the page polls; /api/models lists KV shapes for the memory calculator.
// With a token file, /api/stats answers only a request with "Authorization: Bearer
// TOKEN" of a listed token (401 otherwise; the page asks for one): a `worker` token
// (the operator's) sees everything, a `client`-only token the pool's occupancy and
// its own tenant's counters. /api/prefix-index lists every block of the prefix index
// (tenant, the 64-bit hash the KV events carry, in use or cached) for an operator's
// token only. Read-only: it never changes manager state.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "cache_service/auth.h"
#include "cache_service/cache_manager.h"
#include "cache_service/grpc_service.h"
#include "common/observability/http_server.h"
#include "kvpool/v1/manager.pb.h"

namespace kvpool::manager {

// Where Debian's libjs-chart.js puts the UMD build.
inline constexpr char kDefaultChartJsPath[] = "/usr/share/javascript/chart.js/chart.min.js";

// An embedded dashboard file by its path ("/index.html"); empty when there is none.
std::string_view DashboardAsset(std::string_view path);

class Dashboard {
 public:
  // `chart_js` is Chart.js's source (empty: the page says how to install it).
  // `auth` must outlive the dashboard.
  Dashboard(const CacheManager* core, const ManagerService* service, const Authenticator* auth,
            v1::PoolDescriptor pool, std::string chart_js);

  // The response for `request`, or nullopt when it is not a dashboard route.
  std::optional<HttpResponse> Serve(const HttpRequest& request) const;

  // The body of /api/stats as `caller` sees it (exposed for tests).
  std::string StatsJson(const Caller& caller) const;
  // The body of /api/models.
  std::string ModelsJson() const;

 private:
  const CacheManager* core_;
  const ManagerService* service_;
  const Authenticator* auth_;
  const v1::PoolDescriptor pool_;
  const std::string chart_js_;
  const Clock::time_point started_at_;
};

}  // namespace kvpool::manager
