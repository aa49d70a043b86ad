#include "mtms_batchers.h"

#include "rkl/common/request_id.h"

namespace rkl::mtms {
namespace {

// A request sent on its own goes under its package's request id (whichever thread sends).
ScopedRequestId FlowScope(const std::string& request_id) {
  return ScopedRequestId(request_id.empty() ? std::string(CurrentRequestId()) : request_id);
}

}  // namespace

// The defaults for ports without a batch RPC (fakes, older peers): one call per request.
absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> HsmPort::TranslateTransportKeys(
    std::span<const TranslateRequest> requests) {
  std::vector<absl::StatusOr<Bytes>> out;
  out.reserve(requests.size());
  for (const TranslateRequest& request : requests) {
    const ScopedRequestId scope = FlowScope(request.request_id);
    out.push_back(TranslateTransportKey(request));
  }
  return out;
}

absl::StatusOr<std::vector<absl::StatusOr<KmsPort::Receipt>>> KmsPort::SubmitTransportKeys(
    std::span<const Submission> submissions) {
  std::vector<absl::StatusOr<Receipt>> out;
  out.reserve(submissions.size());
  for (const Submission& s : submissions) {
    const ScopedRequestId scope = FlowScope(s.request_id);
    out.push_back(SubmitTransportKey(s.sn, s.ctk_pk, s.submission_id));
  }
  return out;
}

TranslateBatcher::TranslateBatcher(HsmPort& inner, TranslateBatcherOptions options)
    : inner_(inner),
      batcher_({.name = "hsm",
                .batch_rpc = "TranslateTransportKeys",
                .who = "HSM #1 (an older rkl-hsm?)",
                .batch =
                    [&inner](std::span<const TranslateRequest> requests) {
                      return inner.TranslateTransportKeys(requests);
                    },
                .one =
                    [&inner](const TranslateRequest& request) {
                      const ScopedRequestId scope = FlowScope(request.request_id);
                      return inner.TranslateTransportKey(request);
                    }},
               options) {}

absl::StatusOr<HsmPort::RsaKeyPair> TranslateBatcher::GenerateRsaKeyPair(uint32_t bits,
                                                                         const std::string& label) {
  return inner_.GenerateRsaKeyPair(bits, label);
}

absl::StatusOr<Bytes> TranslateBatcher::TranslateTransportKey(const TranslateRequest& request) {
  if (!request.request_id.empty()) return batcher_.Call(request);
  // The request id of this package's flow, taken here on its worker's thread.
  TranslateRequest stamped = request;
  stamped.request_id = std::string(CurrentRequestId());
  return batcher_.Call(stamped);
}

absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> TranslateBatcher::TranslateTransportKeys(
    std::span<const TranslateRequest> requests) {
  return inner_.TranslateTransportKeys(requests);
}

KmsSubmitBatcher::KmsSubmitBatcher(KmsPort& inner, KmsSubmitBatcherOptions options)
    : inner_(inner),
      batcher_({.name = "kms",
                .batch_rpc = "SubmitTransportKeys",
                .who = "KMS (an older rkl-kms?)",
                .batch =
                    [&inner](std::span<const Submission> submissions) {
                      return inner.SubmitTransportKeys(submissions);
                    },
                .one =
                    [&inner](const Submission& s) {
                      const ScopedRequestId scope = FlowScope(s.request_id);
                      return inner.SubmitTransportKey(s.sn, s.ctk_pk, s.submission_id);
                    }},
               options) {}

absl::StatusOr<KmsPort::Receipt> KmsSubmitBatcher::SubmitTransportKey(
    const std::string& sn, const Bytes& ctk_pk, const std::string& submission_id) {
  // The request id of this package's flow, taken here on its worker's thread: another
  // worker's thread may send the batch.
  return batcher_.Call({.sn = sn,
                        .ctk_pk = ctk_pk,
                        .submission_id = submission_id,
                        .request_id = std::string(CurrentRequestId())});
}

absl::StatusOr<std::vector<absl::StatusOr<KmsPort::Receipt>>> KmsSubmitBatcher::SubmitTransportKeys(
    std::span<const Submission> submissions) {
  return inner_.SubmitTransportKeys(submissions);
}

}  // namespace rkl::mtms
