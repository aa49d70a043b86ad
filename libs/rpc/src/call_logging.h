#pragma once
// Private to rkl::rpc: the server interceptor that fixes each call's request id, records its
// method for ServiceAdapter (rkl/rpc/adapter.h), logs one line per RPC and counts it in the
// process's metrics. See rkl/rpc/server.h and rkl/rpc/call_context.h for the guarantees.

#include <grpcpp/support/server_interceptor.h>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"

namespace rkl::metrics {
class Metrics;
}  // namespace rkl::metrics

namespace rkl::rpc::internal {

// rkl_rpc_requests_total{method,code} and rkl_rpc_duration_seconds{method}.
struct RpcMetrics {
  explicit RpcMetrics(metrics::Metrics& metrics);
  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Histogram>& duration;
};

class CallLoggingInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // `metrics` (not owned, may be null: no metrics) outlives the server.
  explicit CallLoggingInterceptorFactory(RpcMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  RpcMetrics* const metrics_;
};

}  // namespace rkl::rpc::internal
