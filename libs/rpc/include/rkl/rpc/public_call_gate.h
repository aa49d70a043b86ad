#pragma once
// PublicCallGate: the volume budgets of the RPCs that any TLS client may call — KMS's
// terminal RPCs and MTMS's operator-terminal RPCs — applied before the call reaches a core.
//
// Guarantees:
//  - a call spends one token of its source address's budget (the gRPC peer without the
//    port) and, when it names a subject (an SN), one of that subject's;
//  - over either budget the call is RESOURCE_EXHAUSTED with the time until the caller's
//    next token (rkl::RateLimitedError, google.rpc.RetryInfo on the wire), having cost no
//    database access and no HSM command; nothing durable records it: refusals are counted
//    in memory and logged at the 1st, 2nd, 4th, 8th, ... refusal;
//  - time comes only from PublicCallLimits::clock; memory is bounded by max_tracked keys
//    per budget (rkl::KeyedRateLimiter).
// Thread-safe.

#include <grpcpp/server_context.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "rkl/common/config.h"
#include "rkl/common/rate_limiter.h"

namespace rkl::rpc {

// A budget with per_second 0 is off (the default here; each daemon's defaults are in its
// config).
struct PublicCallLimits {
  RateLimit per_source;   // by the caller's IP address
  RateLimit per_subject;  // by the request's subject (an SN), when the call names a valid one
  Clock clock = SystemClock();
  size_t max_tracked = KeyedRateLimiter::kDefaultMaxKeys;  // per budget
};

class PublicCallGate {
 public:
  // `service` and `subject_name` ("sn") appear in log lines and refusal messages.
  PublicCallGate(std::string service, std::string subject_name, PublicCallLimits limits);

  // OK, or RESOURCE_EXHAUSTED with the retry hint. An empty `subject` spends only the
  // source budget (the caller named none, or none the core would accept).
  absl::Status Admit(std::string_view source, std::string_view subject);
  absl::Status Admit(const grpc::ServerContextBase& ctx, std::string_view subject) {
    return Admit(PeerAddress(ctx.peer()), subject);
  }

  // Calls refused for volume since start.
  uint64_t refused() const { return refused_.load(); }

  // The IP address of a gRPC peer string ("ipv4:10.0.0.1:5555" → "10.0.0.1",
  // "ipv6:[::1]:5555" → "::1"); other forms (unix sockets) as given.
  static std::string PeerAddress(const std::string& peer);

 private:
  const std::string service_;
  const std::string subject_name_;
  KeyedRateLimiter by_source_;
  KeyedRateLimiter by_subject_;
  std::atomic<uint64_t> refused_{0};
};

// The budgets as configuration: limits.per_source.{per_minute,burst} and
// limits.per_sn.{per_minute,burst}, with the same defaults in every daemon (6,000 per minute,
// burst 200 per address; 60 per minute, burst 20 per SN). `calls` names the RPCs in --help.
void DeclarePublicCallLimitsConfig(ConfigSchema& schema, std::string_view calls);
PublicCallLimits PublicCallLimitsFromConfig(const Config& config);

}  // namespace rkl::rpc
