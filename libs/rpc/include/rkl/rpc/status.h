#pragma once
// The one place rkl converts between absl::Status (used in every library and core) and
// grpc::Status (used only in gRPC adapters). Codes map 1:1 (both follow google.rpc.Code);
// the message is kept. absl payloads and gRPC binary error details are not carried: rkl
// puts everything a caller may see in the code and the message (PROTOCOL.md §10).
// Stateless; thread-safe.

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace rkl::rpc {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace rkl::rpc
