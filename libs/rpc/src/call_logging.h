#pragma once
// Private to rkl::rpc: the server interceptor that fixes each call's request id, records its
// method for ServiceAdapter (rkl/rpc/adapter.h) and logs one line per RPC. See rkl/rpc/server.h and
// rkl/rpc/call_context.h for the guarantees.

#include <grpcpp/support/server_interceptor.h>

namespace rkl::rpc::internal {

class CallLoggingInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;
};

}  // namespace rkl::rpc::internal
