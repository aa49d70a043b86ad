#include "rkl/rpc/status.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/duration.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "rkl/common/retry_delay.h"
#include "rkl/rpc/enum_pairs.h"

namespace rkl::rpc {
namespace {

// Both enums are google.rpc.Code; the table (rather than a cast) keeps an unexpected value
// from a newer peer from turning into an out-of-range enum: it becomes UNKNOWN.
constexpr EnumPairs<absl::StatusCode, grpc::StatusCode, 17> kCodes{{{
    {absl::StatusCode::kOk, grpc::StatusCode::OK},
    {absl::StatusCode::kCancelled, grpc::StatusCode::CANCELLED},
    {absl::StatusCode::kUnknown, grpc::StatusCode::UNKNOWN},
    {absl::StatusCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT},
    {absl::StatusCode::kDeadlineExceeded, grpc::StatusCode::DEADLINE_EXCEEDED},
    {absl::StatusCode::kNotFound, grpc::StatusCode::NOT_FOUND},
    {absl::StatusCode::kAlreadyExists, grpc::StatusCode::ALREADY_EXISTS},
    {absl::StatusCode::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED},
    {absl::StatusCode::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED},
    {absl::StatusCode::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION},
    {absl::StatusCode::kAborted, grpc::StatusCode::ABORTED},
    {absl::StatusCode::kOutOfRange, grpc::StatusCode::OUT_OF_RANGE},
    {absl::StatusCode::kUnimplemented, grpc::StatusCode::UNIMPLEMENTED},
    {absl::StatusCode::kInternal, grpc::StatusCode::INTERNAL},
    {absl::StatusCode::kUnavailable, grpc::StatusCode::UNAVAILABLE},
    {absl::StatusCode::kDataLoss, grpc::StatusCode::DATA_LOSS},
    {absl::StatusCode::kUnauthenticated, grpc::StatusCode::UNAUTHENTICATED},
}}};

grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  return kCodes.Forward(code).value_or(grpc::StatusCode::UNKNOWN);
}

absl::StatusCode FromGrpcCode(grpc::StatusCode code) {
  return kCodes.Backward(code).value_or(absl::StatusCode::kUnknown);
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  std::optional<absl::Duration> delay = RetryDelay(status);
  if (!delay) return grpc::Status(ToGrpcCode(status.code()), std::string(status.message()));
  // google.rpc.Status with RetryInfo: sent as grpc-status-details-bin.
  google::rpc::RetryInfo retry;
  const int64_t ms = absl::ToInt64Milliseconds(*delay);
  retry.mutable_retry_delay()->set_seconds(ms / 1000);
  retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>(ms % 1000) * 1'000'000);
  google::rpc::Status details;
  details.set_code(static_cast<int32_t>(ToGrpcCode(status.code())));
  details.set_message(std::string(status.message()));
  details.add_details()->PackFrom(retry);
  return grpc::Status(ToGrpcCode(status.code()), std::string(status.message()),
                      details.SerializeAsString());
}

std::optional<absl::Duration> RetryDelayFromDetails(const grpc::Status& status) {
  if (status.error_details().empty()) return std::nullopt;
  google::rpc::Status details;
  if (!details.ParseFromString(status.error_details())) return std::nullopt;
  for (const google::protobuf::Any& any : details.details()) {
    google::rpc::RetryInfo retry;
    if (any.Is<google::rpc::RetryInfo>() && any.UnpackTo(&retry)) {
      return absl::Seconds(retry.retry_delay().seconds()) +
             absl::Nanoseconds(retry.retry_delay().nanos());
    }
  }
  return std::nullopt;
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  absl::Status s(FromGrpcCode(status.error_code()), status.error_message());
  if (std::optional<absl::Duration> delay = RetryDelayFromDetails(status)) {
    s = WithRetryDelay(std::move(s), *delay);
  }
  return s;
}

absl::Status FromPeerStatus(const grpc::Status& status, std::string_view peer) {
  absl::Status s = FromGrpcStatus(status);
  switch (s.code()) {
    case absl::StatusCode::kDeadlineExceeded:
      return absl::UnavailableError(absl::StrCat(std::string(peer), " did not answer in time"));
    case absl::StatusCode::kUnavailable: {
      absl::Status out =
          absl::UnavailableError(absl::StrCat(std::string(peer), " unavailable: ", s.message()));
      if (std::optional<absl::Duration> delay = RetryDelay(s)) {
        out = WithRetryDelay(std::move(out), *delay);
      }
      return out;
    }
    default:
      return s;
  }
}

absl::Status FromPeerStatus(int32_t code, std::string_view message, std::string_view peer) {
  if (code < 0 || code > static_cast<int32_t>(grpc::StatusCode::UNAUTHENTICATED)) {
    return absl::UnknownError(std::string(message));
  }
  return FromPeerStatus(grpc::Status(static_cast<grpc::StatusCode>(code), std::string(message)),
                        peer);
}

}  // namespace rkl::rpc
