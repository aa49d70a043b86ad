#include "rkl/rpc/unary_service.h"

#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"

namespace rkl::rpc {

UnaryService::UnaryService(const google::protobuf::ServiceDescriptor& service,
                           ServiceAdapter::Options options)
    : service_(service), adapter_(service, std::move(options)) {}

const char* UnaryService::MethodPath(std::string_view method, const std::string& request_type,
                                     const std::string& response_type) {
  const std::string name(method);
  const google::protobuf::MethodDescriptor* found = service_.FindMethodByName(name);
  if (found == nullptr) {
    throw std::logic_error(absl::StrCat(service_.full_name(), " has no method ", name));
  }
  if (found->client_streaming() || found->server_streaming()) {
    throw std::logic_error(absl::StrCat(found->full_name(), " is not unary"));
  }
  if (found->input_type()->full_name() != request_type ||
      found->output_type()->full_name() != response_type) {
    throw std::logic_error(absl::StrCat(
        found->full_name(), " takes ", found->input_type()->full_name(), " and returns ",
        found->output_type()->full_name(), ", not ", request_type, " and ", response_type));
  }
  return paths_.emplace_back(absl::StrCat("/", service_.full_name(), "/", name)).c_str();
}

}  // namespace rkl::rpc
