#pragma once
// Client side of the standard grpc.health.v1.Health/Check, for readiness probes, e2e tests
// and compose health checks. Thread-safe.

#include <grpcpp/channel.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace rkl::rpc {

// True if `service` ("" = the whole server) reports SERVING, false for NOT_SERVING. RPC
// failures come back as the call's status (NOT_FOUND: the server never named `service`).
absl::StatusOr<bool> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& service, absl::Duration timeout);

}  // namespace rkl::rpc
