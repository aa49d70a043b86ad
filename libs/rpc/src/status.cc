#include "rkl/rpc/status.h"

#include "absl/strings/str_cat.h"
#include "google/protobuf/duration.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "rkl/common/retry_delay.h"

namespace rkl::rpc {
namespace {

// Both enums are google.rpc.Code; the switch (rather than a cast) keeps an unexpected
// value from a newer peer from turning into an out-of-range enum.
grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return grpc::StatusCode::OK;
    case absl::StatusCode::kCancelled:
      return grpc::StatusCode::CANCELLED;
    case absl::StatusCode::kUnknown:
      return grpc::StatusCode::UNKNOWN;
    case absl::StatusCode::kInvalidArgument:
      return grpc::StatusCode::INVALID_ARGUMENT;
    case absl::StatusCode::kDeadlineExceeded:
      return grpc::StatusCode::DEADLINE_EXCEEDED;
    case absl::StatusCode::kNotFound:
      return grpc::StatusCode::NOT_FOUND;
    case absl::StatusCode::kAlreadyExists:
      return grpc::StatusCode::ALREADY_EXISTS;
    case absl::StatusCode::kPermissionDenied:
      return grpc::StatusCode::PERMISSION_DENIED;
    case absl::StatusCode::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case absl::StatusCode::kFailedPrecondition:
      return grpc::StatusCode::FAILED_PRECONDITION;
    case absl::StatusCode::kAborted:
      return grpc::StatusCode::ABORTED;
    case absl::StatusCode::kOutOfRange:
      return grpc::StatusCode::OUT_OF_RANGE;
    case absl::StatusCode::kUnimplemented:
      return grpc::StatusCode::UNIMPLEMENTED;
    case absl::StatusCode::kInternal:
      return grpc::StatusCode::INTERNAL;
    case absl::StatusCode::kUnavailable:
      return grpc::StatusCode::UNAVAILABLE;
    case absl::StatusCode::kDataLoss:
      return grpc::StatusCode::DATA_LOSS;
    case absl::StatusCode::kUnauthenticated:
      return grpc::StatusCode::UNAUTHENTICATED;
    default:
      return grpc::StatusCode::UNKNOWN;
  }
}

absl::StatusCode FromGrpcCode(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return absl::StatusCode::kOk;
    case grpc::StatusCode::CANCELLED:
      return absl::StatusCode::kCancelled;
    case grpc::StatusCode::UNKNOWN:
      return absl::StatusCode::kUnknown;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return absl::StatusCode::kInvalidArgument;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::StatusCode::kDeadlineExceeded;
    case grpc::StatusCode::NOT_FOUND:
      return absl::StatusCode::kNotFound;
    case grpc::StatusCode::ALREADY_EXISTS:
      return absl::StatusCode::kAlreadyExists;
    case grpc::StatusCode::PERMISSION_DENIED:
      return absl::StatusCode::kPermissionDenied;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return absl::StatusCode::kResourceExhausted;
    case grpc::StatusCode::FAILED_PRECONDITION:
      return absl::StatusCode::kFailedPrecondition;
    case grpc::StatusCode::ABORTED:
      return absl::StatusCode::kAborted;
    case grpc::StatusCode::OUT_OF_RANGE:
      return absl::StatusCode::kOutOfRange;
    case grpc::StatusCode::UNIMPLEMENTED:
      return absl::StatusCode::kUnimplemented;
    case grpc::StatusCode::INTERNAL:
      return absl::StatusCode::kInternal;
    case grpc::StatusCode::UNAVAILABLE:
      return absl::StatusCode::kUnavailable;
    case grpc::StatusCode::DATA_LOSS:
      return absl::StatusCode::kDataLoss;
    case grpc::StatusCode::UNAUTHENTICATED:
      return absl::StatusCode::kUnauthenticated;
    default:
      return absl::StatusCode::kUnknown;
  }
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
