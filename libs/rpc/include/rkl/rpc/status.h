#pragma once
// The one place rkl converts between absl::Status (used in every library and core) and
// grpc::Status (used only in gRPC adapters). Codes map 1:1 (both follow google.rpc.Code);
// the message is kept. Of absl payloads and gRPC binary error details only the retry hint
// travels (rkl/common/retry_delay.h): as google.rpc.Status with one google.rpc.RetryInfo in
// grpc-status-details-bin, the standard gRPC error model; everything else a caller may see
// is in the code and the message (PROTOCOL.md §10). FromPeerStatus is the one policy for
// what a service makes of a peer service's answer. Stateless; thread-safe.

#include <grpcpp/support/status.h>

#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace rkl::rpc {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// What an rkl service makes of the status its gRPC call to a peer service (KMS → HSM #2;
// MTMS → HSM #1, rkl-ca, KMS) ended with. `peer` names the peer in messages ("hsm", "kms").
// The one policy for peer errors:
//  - UNAVAILABLE and DEADLINE_EXCEEDED become UNAVAILABLE: the peer could not be reached or
//    did not answer before the call's deadline, and the same call may be repeated (the
//    Abseil rule for UNAVAILABLE). The message names the peer: "<peer> unavailable: <its
//    message>" or "<peer> did not answer in time";
//  - every other code is the peer's own answer and passes through unchanged: code, message
//    and retry hint, so the caller's decisions can depend on it;
//  - a code outside google.rpc.Code becomes UNKNOWN, with the peer's message.
absl::Status FromPeerStatus(const grpc::Status& status, std::string_view peer);
// The same for a status a peer returned as a number and a message (one outcome of a batch
// answer, e.g. rkl.v1.TranslateTransportKeyOutcome); never casts an unknown number to an enum.
absl::Status FromPeerStatus(int32_t code, std::string_view message, std::string_view peer);

// The RetryInfo delay in `status`'s details, if it carries one.
std::optional<absl::Duration> RetryDelayFromDetails(const grpc::Status& status);

}  // namespace rkl::rpc
