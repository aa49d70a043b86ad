#include "rkl/rpc/adapter.h"

#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "rkl/rpc/call_context.h"
#include "rkl/v1/options.pb.h"

namespace rkl::rpc {

ServiceAdapter::ServiceAdapter(const google::protobuf::ServiceDescriptor& service, Options options)
    : service_name_(service.full_name()), on_refused_(std::move(options.on_refused)) {
  for (int i = 0; i < service.method_count(); ++i) {
    const google::protobuf::MethodDescriptor& method = *service.method(i);
    const google::protobuf::MethodOptions& declared = method.options();
    const int roles = declared.ExtensionSize(v1::allowed_roles);
    if (declared.GetExtension(v1::public_rpc)) {
      if (roles > 0) {
        throw std::invalid_argument(
            absl::StrCat(method.full_name(), ": declares both public_rpc and allowed_roles"));
      }
      public_.insert(method.name());
      continue;
    }
    if (roles == 0) continue;  // undeclared: no entry, so refused to everyone
    std::vector<std::string> identities;
    for (int r = 0; r < roles; ++r) {
      const std::string& role = declared.GetExtension(v1::allowed_roles, r);
      if (auto it = options.role_bindings.find(role); it != options.role_bindings.end()) {
        identities.insert(identities.end(), it->second.begin(), it->second.end());
      } else {
        identities.push_back(role);
      }
    }
    authorizer_.Allow(method.name(), std::move(identities));
  }
}

const google::protobuf::ServiceDescriptor& ServiceAdapter::FindService(const char* full_name) {
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(full_name);
  if (service == nullptr) {
    throw std::logic_error(absl::StrCat("no generated descriptor for service ", full_name));
  }
  return *service;
}

std::string_view ServiceAdapter::MethodOf(std::string_view path) const {
  // "/<package>.<Service>/<Method>"
  if (!path.starts_with('/')) return {};
  path.remove_prefix(1);
  if (!path.starts_with(service_name_) || path.size() <= service_name_.size() + 1 ||
      path[service_name_.size()] != '/') {
    return {};
  }
  return path.substr(service_name_.size() + 1);
}

absl::Status ServiceAdapter::Check(std::string_view method, std::string_view identity) const {
  if (IsPublic(method)) return absl::OkStatus();
  return authorizer_.Check(method, identity);
}

absl::StatusOr<std::string> ServiceAdapter::Authorize(const grpc::ServerContextBase& ctx) const {
  const std::string path = RpcMethod(ctx);
  std::string_view method = MethodOf(path);
  std::string caller = GetCallerIdentity(ctx).name;
  absl::Status verdict;
  if (method.empty()) {
    // Not a method of this service, or no method recorded: nobody may call it.
    verdict = authorizer_.Check(path.empty() ? "(unknown)" : path, caller);
    method = path.empty() ? "(unknown)" : path;
  } else {
    verdict = Check(method, caller);
  }
  if (!verdict.ok()) {
    if (on_refused_) on_refused_(caller, method, verdict);
    return verdict;
  }
  return caller;
}

}  // namespace rkl::rpc
