// gRPC metadata keys that are part of the contract between kvpool's processes.
#pragma once

namespace kvpool::v1 {

// Every call: "Bearer TOKEN"; the manager and the worker map the token to a tenant.
inline constexpr char kAuthorizationHeader[] = "authorization";
// Added by a worker to OpenSequence: its end client's own "authorization" value. The
// manager authenticates it like any token and salts the sequence's prefix cache with
// that client's tenant, so two tenants served by one worker never share blocks; the
// worker id stays the worker's own.
inline constexpr char kClientAuthorizationHeader[] = "x-kvpool-client-authorization";

}  // namespace kvpool::v1
