#include "rkl/rpc/echo_service.h"

#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.pb.h"
#include "rkl/rpc/status.h"
#include "rkl/v1/options.pb.h"

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

const google::protobuf::ServiceDescriptor& PublicEchoDescriptor() {
  static const google::protobuf::ServiceDescriptor* const service = [] {
    auto* pool = new google::protobuf::DescriptorPool();  // lives as long as the process
    for (const google::protobuf::FileDescriptor* file :
         {google::protobuf::MethodOptions::descriptor()->file(),
          google::protobuf::DescriptorPool::generated_pool()->FindFileByName(
              "rkl/v1/options.proto")}) {
      google::protobuf::FileDescriptorProto proto;
      file->CopyTo(&proto);
      pool->BuildFile(proto);
    }
    google::protobuf::FileDescriptorProto echo;
    rkl::v1::EchoRequest::descriptor()->file()->CopyTo(&echo);
    echo.add_dependency("rkl/v1/options.proto");
    echo.mutable_service(0)->mutable_method(0)->mutable_options()->SetExtension(rkl::v1::public_rpc,
                                                                                true);
    pool->BuildFile(echo);
    const google::protobuf::ServiceDescriptor* built = pool->FindServiceByName("rkl.v1.Echo");
    if (built == nullptr) throw std::logic_error("cannot rebuild rkl.v1.Echo as public");
    return built;
  }();
  return *service;
}

}  // namespace rkl::rpc
