#include "call_logging.h"

#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "rkl/common/request_id.h"
#include "rkl/metrics/metrics.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/identity.h"
#include "rkl/rpc/status.h"
#include "spdlog/spdlog.h"

namespace rkl::rpc::internal {
namespace {

using grpc::experimental::InterceptionHookPoints;

// Error messages follow PROTOCOL.md §10 (field and rule, never secrets); still, cap them so
// a runaway message cannot flood the log.
constexpr size_t kMaxLoggedMessage = 200;

bool IsInfrastructure(std::string_view method) {
  return method.starts_with("/grpc.health.") || method.starts_with("/grpc.reflection.");
}

// Latency buckets, in seconds: rkl's RPCs take from a fraction of a millisecond (a cached
// answer) to seconds (an RSA key generation on a loaded machine).
const prometheus::Histogram::BucketBoundaries kLatencyBuckets = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

class CallLoggingInterceptor final : public grpc::experimental::Interceptor {
 public:
  CallLoggingInterceptor(grpc::experimental::ServerRpcInfo* info, RpcMetrics* metrics)
      : metrics_(metrics),
        method_(info->method() != nullptr ? info->method() : "?"),
        context_(info->server_context()),
        start_(std::chrono::steady_clock::now()) {}

  ~CallLoggingInterceptor() override {
    // A call cancelled before a status was sent (client gone, deadline) still gets a line.
    if (!logged_) Log(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled before completion"));
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      FixRequestId(methods->GetRecvInitialMetadata());
      RecordMethod(methods->GetRecvInitialMetadata());
      caller_ = GetCallerIdentity(*context_).name;
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      if (auto* md = methods->GetSendInitialMetadata(); md != nullptr && !request_id_.empty()) {
        md->emplace(kRequestIdMetadataKey, request_id_);
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      Log(methods->GetSendStatus());
    }
    methods->Proceed();
  }

 private:
  // Keeps a well-formed incoming id; otherwise replaces it, in the received metadata itself
  // so the handler's RequestId() sees the same id as the log. The map holds string_refs:
  // request_id_ is never modified after insertion and outlives every reader (the context
  // destroys its interceptors last).
  void FixRequestId(std::multimap<grpc::string_ref, grpc::string_ref>* md) {
    if (md == nullptr) return;
    auto it = md->find(kRequestIdMetadataKey);
    if (it != md->end() &&
        IsWellFormedRequestId(std::string_view(it->second.data(), it->second.size()))) {
      request_id_.assign(it->second.data(), it->second.size());
      return;
    }
    md->erase(kRequestIdMetadataKey);
    request_id_ = NewRequestId();
    md->emplace(grpc::string_ref(kRequestIdMetadataKey), grpc::string_ref(request_id_));
  }

  // Puts the method gRPC dispatched the call to where RpcMethod() finds it, after dropping
  // anything a client sent under that key: ServiceAdapter authorizes by it.
  void RecordMethod(std::multimap<grpc::string_ref, grpc::string_ref>* md) {
    if (md == nullptr) return;
    md->erase(kMethodMetadataKey);
    md->emplace(grpc::string_ref(kMethodMetadataKey), grpc::string_ref(method_));
  }

  void Log(const grpc::Status& status) {
    logged_ = true;
    // The line belongs to the call: in JSON it gets the "request_id" field too (the text
    // format does not repeat an id the message already names).
    const ScopedRequestId scope(request_id_);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_)
                    .count();
    absl::Status s = FromGrpcStatus(status);
    std::string code = absl::StatusCodeToString(s.code());
    if (metrics_ != nullptr) {
      // The method is one gRPC dispatched to (a registered one), the code one of 17: bounded.
      metrics_->requests.Add({{"method", method_}, {"code", code}}).Increment();
      metrics_->duration.Add({{"method", method_}}, kLatencyBuckets).Observe(ms / 1000.0);
    }
    const std::string& caller = caller_.empty() ? kNoCaller : caller_;
    // NOT_FOUND is an expected answer (a terminal polling until MTMS has forwarded its
    // TK asks many times); a warning per poll would bury the real ones.
    auto level = status.ok()
                     ? (IsInfrastructure(method_) ? spdlog::level::debug : spdlog::level::info)
                 : status.error_code() == grpc::StatusCode::NOT_FOUND ? spdlog::level::info
                                                                      : spdlog::level::warn;
    if (status.ok()) {
      spdlog::log(level, "rpc {} request_id={} caller={} code={} latency_ms={:.3f}", method_,
                  request_id_, caller, code, ms);
    } else {
      std::string message = status.error_message().substr(0, kMaxLoggedMessage);
      spdlog::log(level, "rpc {} request_id={} caller={} code={} latency_ms={:.3f} error=\"{}\"",
                  method_, request_id_, caller, code, ms, message);
    }
  }

  static inline const std::string kNoCaller = "-";
  RpcMetrics* const metrics_;
  const std::string method_;
  grpc::ServerContextBase* const context_;
  const std::chrono::steady_clock::time_point start_;
  std::string request_id_;
  std::string caller_;
  bool logged_ = false;
};

}  // namespace

RpcMetrics::RpcMetrics(metrics::Metrics& metrics)
    : requests(prometheus::BuildCounter()
                   .Name("rkl_rpc_requests_total")
                   .Help("RPCs served, by full method name and status code")
                   .Register(metrics.registry())),
      duration(prometheus::BuildHistogram()
                   .Name("rkl_rpc_duration_seconds")
                   .Help("Time from a call's arrival to its status being sent, by method")
                   .Register(metrics.registry())) {}

grpc::experimental::Interceptor* CallLoggingInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  return new CallLoggingInterceptor(info, metrics_);  // gRPC owns it for the call's lifetime
}

}  // namespace rkl::rpc::internal
