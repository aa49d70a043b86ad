#pragma once
// UnaryService: a gRPC service whose unary RPCs are bound at construction, one Bind per RPC,
// each to a body that runs behind the service's ServiceAdapter (rkl/rpc/adapter.h). It takes
// the place of a generated `Service` class and its one override per RPC:
//
//   KmsGrpcService::KmsGrpcService(KmsCore& core)
//       : UnaryService(rpc::ServiceAdapter::DescriptorOf<v1::Kms>()) {
//     Bind("GetTerminal", [&core](const rpc::UnaryCall&, const v1::GetTerminalRequest* req,
//                                 v1::Terminal* resp) -> absl::Status {
//       RKL_ASSIGN_OR_RETURN(TerminalRecord t, core.GetTerminal(req->sn()));
//       ToProto(t, resp);
//       return absl::OkStatus();
//     });
//   }
//
// Guarantees:
//  - every call is authorized by the adapter (default-deny, from the .proto's declarations)
//    before its body runs, and the body's absl::Status becomes the call's grpc::Status once;
//  - Bind checks the binding against the service's descriptor: a method the service does not
//    have, a streaming method, or messages other than the method's throw std::logic_error at
//    start-up, so a body is never bound where gRPC would not call it or would misparse it;
//  - an RPC of the service that nothing binds answers UNIMPLEMENTED, as a generated service does;
//  - the body runs on the thread the service's Dispatch names (below), with the call's request
//    id as that thread's current one, and the call is answered once the body has returned.
// Bind only in the constructor of the derived service, before the server starts; then only read:
// thread-safe. A service with Dispatch::kCallbackPool must outlive the server (as every service
// must: rkl/rpc/server.h); its destructor waits for bodies still running.

#include <grpcpp/impl/codegen/server_callback_handlers.h>
#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/method_handler.h>
#include <grpcpp/support/server_callback.h>

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message_lite.h"
#include "rkl/rpc/adapter.h"

namespace rkl::rpc {

// What a body learns of its call besides the messages.
struct UnaryCall {
  const grpc::ServerContextBase& ctx;
  // The authorized caller's identity ("" for a public RPC called without a client certificate).
  const std::string& caller;
};

// The body of an RPC that answers with one result: `fill(*result, response)` when `result` is
// OK, else its error.
//   return rpc::Answer(core_.GetTerminal(req->sn()), resp, ToProto);
template <typename Result, typename Response>
absl::Status Answer(absl::StatusOr<Result> result, Response* response,
                    void (*fill)(const Result&, Response*)) {
  if (!result.ok()) return result.status();
  fill(*result, response);
  return absl::OkStatus();
}

// Which thread runs a call's body.
enum class Dispatch {
  // gRPC's synchronous server: a thread of its pool (ServerOptions::max_idle_threads) waits
  // for the call and runs the body itself.
  kSync,
  // gRPC's callback API, the body run on the gRPC thread that read the request. gRPC has few
  // such threads, so a body that blocks — on a database, another service, a wait — stalls the
  // calls behind it: only for bodies that never block.
  kCallbackInline,
  // gRPC's callback API, the body handed to one of the service's own `pool_threads` threads;
  // calls beyond that wait in a queue.
  kCallbackPool,
};

// "sync", "callback-inline", "callback-pool"; DispatchFromName is its inverse (nullopt for
// anything else).
const char* DispatchName(Dispatch dispatch);
std::optional<Dispatch> DispatchFromName(std::string_view name);

struct DispatchOptions {
  Dispatch dispatch = Dispatch::kSync;
  int pool_threads = 64;  // kCallbackPool only; at least 1
};

class UnaryService : public grpc::Service {
 public:
  explicit UnaryService(const google::protobuf::ServiceDescriptor& service,
                        ServiceAdapter::Options options = {}, DispatchOptions dispatch = {});
  ~UnaryService() override;

  const ServiceAdapter& adapter() const { return adapter_; }

 protected:
  // Binds the RPC `method` (short name, "GetTerminal") to `body`, a function or lambda
  // absl::Status(const UnaryCall&, const Request*, Response*).
  template <typename Body>
  void Bind(std::string_view method, Body body) {
    BindFunction(method, std::function(std::move(body)));
  }

 private:
  template <typename Request, typename Response>
  using BodyFunction = std::function<absl::Status(const UnaryCall&, const Request*, Response*)>;

  template <typename Request, typename Response>
  void BindFunction(std::string_view method, BodyFunction<Request, Response> body) {
    using Handler = grpc::internal::RpcMethodHandler<UnaryService, Request, Response,
                                                     google::protobuf::MessageLite,
                                                     google::protobuf::MessageLite>;
    const char* path =
        MethodPath(method, Request::descriptor()->full_name(), Response::descriptor()->full_name());
    if (dispatch_.dispatch == Dispatch::kSync) {
      AddMethod(new grpc::internal::RpcServiceMethod(
          path, grpc::internal::RpcMethod::NORMAL_RPC,
          new Handler(
              [body = std::move(body)](UnaryService* service, grpc::ServerContext* ctx,
                                       const Request* req, Response* resp) {
                return service->adapter_.Serve(*ctx, [&](const std::string& caller) {
                  return body(UnaryCall{*ctx, caller}, req, resp);
                });
              },
              this)));
      return;
    }
    auto* callback_method =
        new grpc::internal::RpcServiceMethod(path, grpc::internal::RpcMethod::NORMAL_RPC, nullptr);
    callback_method->SetHandler(new grpc::internal::CallbackUnaryHandler<Request, Response>(
        [this, body = std::move(body)](grpc::CallbackServerContext* ctx, const Request* req,
                                       Response* resp) -> grpc::ServerUnaryReactor* {
          grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
          // `body` lives in this handler, which lives as long as the service.
          auto run = [this, &body, ctx, req, resp, reactor] {
            reactor->Finish(adapter_.Serve(*ctx, [&](const std::string& caller) {
              return body(UnaryCall{*ctx, caller}, req, resp);
            }));
          };
          if (dispatch_.dispatch == Dispatch::kCallbackInline) {
            run();
          } else {
            RunOnPool(std::move(run));
          }
          return reactor;
        }));
    callback_method->SetServerApiType(grpc::internal::RpcServiceMethod::ApiType::CALL_BACK);
    AddMethod(callback_method);
  }

  class Pool;
  void RunOnPool(std::function<void()> work);

  // The full path ("/rkl.v1.Kms/GetTerminal") of `method` after checking it against the
  // descriptor; it lives as long as the service, as gRPC's method table needs.
  const char* MethodPath(std::string_view method, const std::string& request_type,
                         const std::string& response_type);

  const google::protobuf::ServiceDescriptor& service_;
  const ServiceAdapter adapter_;
  const DispatchOptions dispatch_;
  std::unique_ptr<Pool> pool_;     // kCallbackPool only
  std::deque<std::string> paths_;  // grows only, so the pointers handed to gRPC stay valid
};

}  // namespace rkl::rpc
