#pragma once
// The one place rkl converts between absl::Status (used in every library and core) and
// grpc::Status (used only in gRPC adapters). Codes map 1:1 (both follow google.rpc.Code);
// the message is kept. Of absl payloads and gRPC binary error details only the retry hint
// travels (rkl/common/retry_delay.h): as google.rpc.Status with one google.rpc.RetryInfo in
// grpc-status-details-bin, the standard gRPC error model; everything else a caller may see
// is in the code and the message (PROTOCOL.md §10). Stateless; thread-safe.

#include <grpcpp/support/status.h>

#include <optional>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace rkl::rpc {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);
// The RetryInfo delay in `status`'s details, if it carries one.
std::optional<absl::Duration> RetryDelayFromDetails(const grpc::Status& status);

}  // namespace rkl::rpc
