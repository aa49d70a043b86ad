#pragma once
// ServiceAdapter: the one authorize-and-convert step of every rkl gRPC handler.
//
// Who may call an RPC is declared once, on the RPC in its .proto (rkl/v1/options.proto):
// `option (rkl.v1.allowed_roles) = "...";` (repeatable) or `option (rkl.v1.public_rpc) =
// true;`. The adapter reads those options from the service's descriptor when it is built,
// and for each call takes the method from the call itself (RpcMethod(), recorded by
// rkl::rpc::Server's interceptor), so a handler never names its own RPC. The services serve
// through rkl::rpc::UnaryService (rkl/rpc/unary_service.h), which runs every bound body in
// Serve; a hand-written handler would read:
//
//   return adapter_.Serve(*ctx, [&](const std::string& caller) -> absl::Status {
//     RKL_ASSIGN_OR_RETURN(TerminalRecord t, core_.GetTerminal(req->sn()));
//     ToProto(t, resp);
//     return absl::OkStatus();
//   });
//
// Guarantees:
//  - default-deny: a call is refused with PERMISSION_DENIED "caller '<id>' may not call
//    <Method>" unless the method declares the caller's role; an RPC with no declaration,
//    a method of another service, and a call served without rkl::rpc::Server (no recorded
//    method) are refused to everyone, before the body runs;
//  - a public RPC admits every caller, with or without a client certificate (the body still
//    applies its volume budgets, rkl/rpc/public_call_gate.h);
//  - the body's absl::Status becomes the call's grpc::Status once, with ToGrpcStatus;
//  - the authorization and the body run under the call's request id (RequestId(), as the
//    interceptor fixed it) as the thread's current request id;
//  - every refusal is passed to Options::on_refused (the services that audit refusals).
// Built once at start-up (a declaration that is both public and role-restricted, or a role
// pattern "*", throws std::invalid_argument); then only read: thread-safe.

#include <grpcpp/server_context.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/request_id.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/identity.h"
#include "rkl/rpc/status.h"

namespace google::protobuf {
class ServiceDescriptor;
}  // namespace google::protobuf

namespace rkl::rpc {

class ServiceAdapter {
 public:
  // Called for each refused call with the caller's identity (empty without one), the short
  // method name ("GetTerminal"; the recorded path or "(unknown)" for a method the service
  // does not have) and the refusal.
  using RefusalHook = std::function<void(std::string_view caller, std::string_view method,
                                         const absl::Status& refusal)>;

  struct Options {
    // Roles that name other identities than themselves in this process: role → identity
    // patterns (an empty list: nobody). Roles not listed name the identity they spell.
    std::map<std::string, std::vector<std::string>, std::less<>> role_bindings;
    RefusalHook on_refused;
  };

  explicit ServiceAdapter(const google::protobuf::ServiceDescriptor& service, Options options = {});
  ServiceAdapter(const ServiceAdapter&) = delete;
  ServiceAdapter& operator=(const ServiceAdapter&) = delete;

  // The adapter of a generated gRPC service (rkl::v1::Kms and the like).
  template <typename GrpcService>
  static const google::protobuf::ServiceDescriptor& DescriptorOf() {
    return FindService(GrpcService::service_full_name());
  }

  // The caller's identity ("" for a public RPC called without a client certificate) if it may
  // make this call, else the refusal (after on_refused).
  absl::StatusOr<std::string> Authorize(const grpc::ServerContextBase& ctx) const;

  // Authorizes, then runs `body(caller)` (absl::Status(const std::string&)) and converts what
  // it returns. The handler's one line of glue. Both run with the call's request id as the
  // thread's current one (rkl/common/request_id.h): their log lines and audit records carry
  // it, and the calls the body makes to other services send it on.
  template <typename Body>
  grpc::Status Serve(const grpc::ServerContextBase& ctx, Body&& body) const {
    const ScopedRequestId request_id(RequestId(ctx));
    absl::StatusOr<std::string> caller = Authorize(ctx);
    if (!caller.ok()) return ToGrpcStatus(caller.status());
    return ToGrpcStatus(std::forward<Body>(body)(*caller));
  }

  // The declarations as read, by short method name: for tests and tools. Check() is OK for
  // any identity (also none) on a public RPC.
  absl::Status Check(std::string_view method, std::string_view identity) const;
  bool IsPublic(std::string_view method) const { return public_.contains(method); }
  const std::string& service_name() const { return service_name_; }

 private:
  static const google::protobuf::ServiceDescriptor& FindService(const char* full_name);
  // The short name of `path` ("/rkl.v1.Kms/GetTerminal" → "GetTerminal") when it is a method
  // of this service; empty otherwise.
  std::string_view MethodOf(std::string_view path) const;

  std::string service_name_;  // "rkl.v1.Kms"
  Authorizer authorizer_;
  std::set<std::string, std::less<>> public_;
  RefusalHook on_refused_;
};

}  // namespace rkl::rpc
