// The one mapping between kvpool::Status and grpc::Status, for every process (the
// manager, the worker, the SDK). A Status with a reason() travels with a
// google.rpc.ErrorInfo detail (error_details.proto), and ReasonOf reads it back, so
// that callers recognise errors by code and reason, never by message text.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "common/status.h"

namespace kvpool::v1 {

// ErrorInfo.domain of kvpool's reasons.
inline constexpr char kErrorDomain[] = "kvpool.dev";

grpc::Status ToGrpcStatus(const Status& status);
// The Status a grpc::Status carries (its code, message and reason); `what` prefixes
// the message when not empty ("OpenSequence: ...").
Status FromGrpcStatus(const grpc::Status& status, const std::string& what = "");
// The ErrorInfo reason kvpool attached to `status`, or "" when it has none.
std::string ReasonOf(const grpc::Status& status);

}  // namespace kvpool::v1
