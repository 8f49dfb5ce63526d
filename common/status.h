// Errors as values: a code plus a message a person can act on. The codes mirror
// gRPC's, so each service maps them to a grpc::Status in one place. Header-only and
// free of any library: the manager, the workers and the CUDA kernels all use it.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace kvpool {

enum class StatusCode {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

// Machine-readable reasons some errors carry besides their code (sent as a
// google.rpc.ErrorInfo detail, see grpc_status.h): a caller branches on the code and
// the reason, never on the message text, which is for people.
namespace reason {
// The call named a manager instance that is not the one answering: the manager
// restarted. Register again and map the new pool (FAILED_PRECONDITION).
inline constexpr char kManagerRestarted[] = "MANAGER_RESTARTED";
// The worker id is unknown to this manager instance (never registered, or its lease
// expired). Register again (NOT_FOUND).
inline constexpr char kWorkerNotRegistered[] = "WORKER_NOT_REGISTERED";
// The tenant holds its whole block quota: preempt or queue that tenant's own
// sequences, never another tenant's (RESOURCE_EXHAUSTED).
inline constexpr char kTenantQuotaExceeded[] = "TENANT_QUOTA_EXCEEDED";
// The tenant's pins hold its whole pinned-block cap: unpin one or let one expire
// (RESOURCE_EXHAUSTED).
inline constexpr char kPinnedBlocksExceeded[] = "PINNED_BLOCKS_EXCEEDED";
}  // namespace reason

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // One of the reason:: constants, or "" for none. A pointer to a constant, not a
  // string, so that a Status costs no more than its message on the hot paths.
  std::string_view reason() const { return reason_; }
  Status&& WithReason(const char* reason) && {
    reason_ = reason;
    return std::move(*this);
  }
  std::string ToString() const;  // "CODE_NAME: message"

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
  const char* reason_ = "";
};

inline Status InvalidArgument(std::string m) {
  return {StatusCode::kInvalidArgument, std::move(m)};
}
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status ResourceExhausted(std::string m) {
  return {StatusCode::kResourceExhausted, std::move(m)};
}
inline Status FailedPrecondition(std::string m) {
  return {StatusCode::kFailedPrecondition, std::move(m)};
}
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
inline Status Unauthenticated(std::string m) {
  return {StatusCode::kUnauthenticated, std::move(m)};
}
inline Status PermissionDenied(std::string m) {
  return {StatusCode::kPermissionDenied, std::move(m)};
}

inline const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kCancelled:
      return "CANCELLED";
    case StatusCode::kUnknown:
      return "UNKNOWN";
    case StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound:
      return "NOT_FOUND";
    case StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case StatusCode::kAborted:
      return "ABORTED";
    case StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case StatusCode::kInternal:
      return "INTERNAL";
    case StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case StatusCode::kDataLoss:
      return "DATA_LOSS";
    case StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

inline std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(StatusCodeName(code_)) + ": " + message_;
}

// A value or the Status saying why there is none.
template <typename T>
class StatusOr {
 public:
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  StatusOr(Status status) : status_(std::move(status)) { assert(!status_.ok()); }  // NOLINT

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & {
    assert(ok());
    return *value_;
  }
  const T& value() const& {
    assert(ok());
    return *value_;
  }
  T&& value() && {
    assert(ok());
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace kvpool

#define KVPOOL_RETURN_IF_ERROR(expr)         \
  do {                                       \
    ::kvpool::Status _kv_status = (expr);    \
    if (!_kv_status.ok()) return _kv_status; \
  } while (0)

#define KVPOOL_CONCAT_INNER(a, b) a##b
#define KVPOOL_CONCAT(a, b) KVPOOL_CONCAT_INNER(a, b)
#define KVPOOL_ASSIGN_OR_RETURN(lhs, expr) \
  KVPOOL_ASSIGN_OR_RETURN_IMPL(KVPOOL_CONCAT(_kv_statusor_, __LINE__), lhs, expr)
#define KVPOOL_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
