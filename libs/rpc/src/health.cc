#include "rkl/rpc/health.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/completion_queue.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/status.h"

namespace rkl::rpc {
namespace {

// grpc.health.v1 messages, encoded by hand: Debian ships no generated C++ for health.proto
// and the two messages have one field each.
//   HealthCheckRequest  { string service = 1; }
//   HealthCheckResponse { ServingStatus status = 1; }  SERVING = 1, NOT_SERVING = 2
constexpr uint32_t kServiceTag = (1 << 3) | 2;  // field 1, length-delimited
constexpr uint32_t kStatusTag = (1 << 3) | 0;   // field 1, varint
constexpr uint64_t kServing = 1;

std::string EncodeRequest(const std::string& service) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    if (!service.empty()) {
      coded.WriteTag(kServiceTag);
      coded.WriteVarint32(static_cast<uint32_t>(service.size()));
      coded.WriteString(service);
    }
  }
  return out;
}

absl::StatusOr<uint64_t> DecodeStatus(const std::string& bytes) {
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  uint64_t status = 0;  // absent field = UNKNOWN (0)
  while (uint32_t tag = in.ReadTag()) {
    if (tag == kStatusTag) {
      if (!in.ReadVarint64(&status)) break;
    } else if (!google::protobuf::internal::WireFormatLite::SkipField(&in, tag)) {
      return absl::InternalError("malformed HealthCheckResponse");
    }
  }
  return status;
}

}  // namespace

absl::StatusOr<bool> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& service, absl::Duration timeout) {
  std::string request_bytes = EncodeRequest(service);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::Status status;

  std::unique_ptr<grpc::ClientContext> ctx = MakeClientContext(timeout);
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(ctx.get(), "/grpc.health.v1.Health/Check", request, &cq);
  call->StartCall();
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (!status.ok()) return FromGrpcStatus(status);

  grpc::Slice whole;
  if (!response.DumpToSingleSlice(&whole).ok()) {
    return absl::InternalError("unreadable HealthCheckResponse");
  }
  std::string bytes(reinterpret_cast<const char*>(whole.begin()), whole.size());
  absl::StatusOr<uint64_t> serving = DecodeStatus(bytes);
  if (!serving.ok()) return serving.status();
  return *serving == kServing;
}

}  // namespace rkl::rpc
