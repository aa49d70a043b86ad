#include "rkl/rpc/echo_service.h"

#include "absl/strings/str_cat.h"
#include "rkl/rpc/status.h"

namespace rkl::rpc {

grpc::Status EchoService::Echo(grpc::ServerContext* context, const rkl::v1::EchoRequest* request,
                               rkl::v1::EchoResponse* response) {
  if (authorizer_ != nullptr) {
    if (absl::Status s = authorizer_->Check(*context, "Echo"); !s.ok()) return ToGrpcStatus(s);
  }
  if (request->payload().size() > kMaxPayloadBytes) {
    return ToGrpcStatus(
        absl::InvalidArgumentError(absl::StrCat("payload: at most ", kMaxPayloadBytes, " bytes")));
  }
  response->set_payload(request->payload());
  response->set_caller_identity(GetCallerIdentity(*context).name);
  return grpc::Status::OK;
}

}  // namespace rkl::rpc
