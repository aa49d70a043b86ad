#pragma once
// A retry hint on an absl::Status: "wait at least this long before trying again". Cores
// attach it to refusals that time will lift (a rate limit, a back-off after failed
// proofs); rkl::rpc::ToGrpcStatus turns it into google.rpc.RetryInfo in the gRPC status
// details and states it in the message, and FromGrpcStatus reads it back. Stateless.

#include <optional>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace rkl {

// `status` (not OK) with the hint attached; the delay is rounded up to whole milliseconds.
absl::Status WithRetryDelay(absl::Status status, absl::Duration delay);
// The hint, if the status carries one.
std::optional<absl::Duration> RetryDelay(const absl::Status& status);
// RESOURCE_EXHAUSTED "<what>; retry in <delay>" with the hint.
absl::Status RateLimitedError(std::string_view what, absl::Duration delay);

}  // namespace rkl
