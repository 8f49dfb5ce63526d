// kvpool::Status <-> grpc::Status with ErrorInfo details. See grpc_status.h.
#include "common/grpc_status.h"

#include "kvpool/v1/error_details.pb.h"

namespace kvpool::v1 {
namespace {

constexpr char kErrorInfoTypeUrl[] = "type.googleapis.com/google.rpc.ErrorInfo";

}  // namespace

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  if (status.reason().empty()) return grpc::Status(code, status.message());
  RpcStatus details;
  details.set_code(static_cast<int32_t>(status.code()));
  details.set_message(status.message());
  ErrorInfo info;
  info.set_reason(std::string(status.reason()));
  info.set_domain(kErrorDomain);
  google::protobuf::Any* any = details.add_details();
  any->set_type_url(kErrorInfoTypeUrl);
  any->set_value(info.SerializeAsString());
  return grpc::Status(code, status.message(), details.SerializeAsString());
}

std::string ReasonOf(const grpc::Status& status) {
  if (status.ok() || status.error_details().empty()) return "";
  RpcStatus details;
  if (!details.ParseFromString(status.error_details())) return "";
  for (const google::protobuf::Any& any : details.details()) {
    if (any.type_url() != kErrorInfoTypeUrl) continue;
    ErrorInfo info;
    if (info.ParseFromString(any.value()) && info.domain() == kErrorDomain) return info.reason();
  }
  return "";
}

Status FromGrpcStatus(const grpc::Status& status, const std::string& what) {
  if (status.ok()) return Status::Ok();
  std::string message =
      what.empty() ? status.error_message() : what + ": " + status.error_message();
  const int code = static_cast<int>(status.error_code());
  const bool known = code > 0 && code <= static_cast<int>(StatusCode::kUnauthenticated);
  Status out(known ? static_cast<StatusCode>(code) : StatusCode::kUnknown, std::move(message));
  // Reasons this version knows; others are dropped (the code still says what happened).
  const std::string got = ReasonOf(status);
  for (const char* known :
       {reason::kManagerRestarted, reason::kWorkerNotRegistered, reason::kTenantQuotaExceeded}) {
    if (got == known) return std::move(out).WithReason(known);
  }
  return out;
}

}  // namespace kvpool::v1
