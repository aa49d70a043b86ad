#pragma once
// PeerClient: the one way rkl's clients make unary calls to another rkl service. Every call
// gets a deadline and an x-request-id (MakeClientContext: the thread's current request id, so
// a call made while serving another carries its id; else a fresh one), and a failed call comes back
// under the peer-error policy (FromPeerStatus, rkl/rpc/status.h): an unreachable or late peer
// is UNAVAILABLE naming it, every other status is the peer's own answer, code and message
// kept. Thread-safe (gRPC stubs are).
//
//   rpc::PeerClient<v1::Hsm> hsm(channel, absl::Seconds(5), "hsm");
//   absl::StatusOr<v1::GetPublicKeyResponse> key = hsm.Call(&v1::Hsm::Stub::GetPublicKey, req);

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/status.h"

namespace rkl::rpc {

// `GrpcService`: a generated service (rkl::v1::Hsm and the like).
template <typename GrpcService>
class PeerClient {
 public:
  using Stub = typename GrpcService::Stub;

  // `peer` names the service in the errors ("hsm", "HSM #2").
  PeerClient(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout, std::string peer)
      : stub_(GrpcService::NewStub(std::shared_ptr<grpc::ChannelInterface>(std::move(channel)))),
        timeout_(timeout),
        peer_(std::move(peer)) {}

  // Calls `rpc` (a method of the stub: &v1::Hsm::Stub::GetPublicKey) with `request`.
  template <typename Request, typename Response>
  absl::StatusOr<Response> Call(grpc::Status (Stub::*rpc)(grpc::ClientContext*, const Request&,
                                                          Response*),
                                const Request& request) const {
    Response response;
    std::unique_ptr<grpc::ClientContext> ctx = MakeClientContext(timeout_);
    grpc::Status status = ((*stub_).*rpc)(ctx.get(), request, &response);
    if (!status.ok()) return FromPeerStatus(status, peer_);
    return response;
  }

 private:
  const std::unique_ptr<Stub> stub_;
  const absl::Duration timeout_;
  const std::string peer_;
};

}  // namespace rkl::rpc
