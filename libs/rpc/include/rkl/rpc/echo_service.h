#pragma once
// rkl.v1.Echo: returns the payload and the caller identity the server derived from the
// client certificate. Used by the RPC bootstrap tests and as the benchmark's bare-gRPC
// ceiling. It carries no key material. Stateless apart from the optional Authorizer
// (not owned; must outlive the service); thread-safe.

#include <grpcpp/server_context.h>

#include "google/protobuf/descriptor.h"
#include "rkl/rpc/identity.h"
#include "rkl/v1/echo.grpc.pb.h"

namespace rkl::rpc {

class EchoService final : public rkl::v1::Echo::Service {
 public:
  static constexpr size_t kMaxPayloadBytes = 64 * 1024;  // echo.proto: at most 64 KiB

  EchoService() = default;
  // With an authorizer, each call must pass authorizer->Check(ctx, "Echo").
  explicit EchoService(const Authorizer* authorizer) : authorizer_(authorizer) {}

  grpc::Status Echo(grpc::ServerContext* context, const rkl::v1::EchoRequest* request,
                    rkl::v1::EchoResponse* response) override;

 private:
  const Authorizer* authorizer_ = nullptr;
};

// rkl.v1.Echo's descriptor with its one method declared public, from a descriptor pool of its
// own that lives as long as the process. echo.proto declares nobody for Echo, so a UnaryService
// built on the generated descriptor refuses every call; this one serves Echo through a
// UnaryService (request-id tests, the benchmark's dispatch comparison). Thread-safe.
const google::protobuf::ServiceDescriptor& PublicEchoDescriptor();

}  // namespace rkl::rpc
