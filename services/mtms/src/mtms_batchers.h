#pragma once
// The forwarder's two batchers (mtms_peer_batcher.h): ports in front of others that turn
// the workers' concurrent one-package calls into the peers' batch RPCs.
//   TranslateBatcher  TranslateTransportKey → HSM #1's TranslateTransportKeys
//   KmsSubmitBatcher  SubmitTransportKey    → KMS's SubmitTransportKeys
// Each caller gets exactly the answer the single call would have given; a peer without the
// batch RPC is sent single calls from then on; `max_batch` 1 turns batching off.
//
// Thread-safe. `inner` is not owned and must outlive the batcher.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "mtms_peer_batcher.h"
#include "mtms_ports.h"

namespace rkl::mtms {

using TranslateBatcherOptions = PeerBatcherOptions;
using KmsSubmitBatcherOptions = PeerBatcherOptions;

class TranslateBatcher final : public HsmPort {
 public:
  TranslateBatcher(HsmPort& inner, TranslateBatcherOptions options);

  absl::StatusOr<RsaKeyPair> GenerateRsaKeyPair(uint32_t bits, const std::string& label) override;
  absl::StatusOr<Bytes> TranslateTransportKey(const TranslateRequest& request) override;
  absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> TranslateTransportKeys(
      std::span<const TranslateRequest> requests) override;

  // For tests and metrics: batch calls sent, and whether the HSM lacks the batch RPC.
  uint64_t batches_sent() { return batcher_.batches_sent(); }
  bool batch_unsupported() { return batcher_.batch_unsupported(); }
  // Tests only: callers waiting for a batch call to take their request.
  size_t queued_for_test() { return batcher_.queued_for_test(); }

 private:
  HsmPort& inner_;
  PeerBatcher<TranslateRequest, Bytes> batcher_;
};

class KmsSubmitBatcher final : public KmsPort {
 public:
  KmsSubmitBatcher(KmsPort& inner, KmsSubmitBatcherOptions options);

  absl::StatusOr<Receipt> SubmitTransportKey(const std::string& sn, const Bytes& ctk_pk,
                                             const std::string& submission_id) override;
  absl::StatusOr<std::vector<absl::StatusOr<Receipt>>> SubmitTransportKeys(
      std::span<const Submission> submissions) override;

  uint64_t batches_sent() { return batcher_.batches_sent(); }
  bool batch_unsupported() { return batcher_.batch_unsupported(); }
  size_t queued_for_test() { return batcher_.queued_for_test(); }

 private:
  KmsPort& inner_;
  PeerBatcher<Submission, Receipt> batcher_;
};

}  // namespace rkl::mtms
