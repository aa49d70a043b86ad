#pragma once
// TranslateBatcher: an HsmPort in front of another that turns concurrent
// TranslateTransportKey calls into TranslateTransportKeys calls (docs/mtms.md, "Forwarding").
//
// The forwarder's workers each translate one package. Sent one RPC each, every package
// pays HSM #1 a gRPC round trip, a key read and an audit commit of its own; sent together,
// those are paid once per call. The batcher needs no timer and adds no wait: a call that
// finds fewer than `max_calls` batch calls in flight sends at once, taking every request
// queued before it (up to `max_batch`, oldest first); calls that arrive while `max_calls`
// are in flight queue and go in the next batch. So one caller alone is sent alone, at once,
// and under load batches grow by themselves.
//
// Each caller gets exactly the answer the single call would have given (the HSM answers
// every item as TranslateTransportKey, hsm.proto); an error of the batch call itself
// (unreachable, deadline, ...) is every item's answer. An HSM without TranslateTransportKeys
// (UNIMPLEMENTED, an older rkl-hsm during a rolling upgrade) is remembered: the requests
// of that batch are sent one by one, and every later request goes straight to
// TranslateTransportKey, as if unbatched. `max_batch` 1 turns batching off.
//
// Thread-safe. `inner` is not owned and must outlive the batcher.

#include <cstddef>
#include <deque>
#include <optional>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "mtms_ports.h"

namespace rkl::mtms {

struct TranslateBatcherOptions {
  int max_batch = 16;  // items per TranslateTransportKeys call, 1–64
  int max_calls = 4;   // batch calls in flight at once, >= 1
};

class TranslateBatcher final : public HsmPort {
 public:
  TranslateBatcher(HsmPort& inner, TranslateBatcherOptions options);

  absl::StatusOr<RsaKeyPair> GenerateRsaKeyPair(uint32_t bits, const std::string& label) override;
  absl::StatusOr<Bytes> TranslateTransportKey(const TranslateRequest& request) override;
  absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> TranslateTransportKeys(
      std::span<const TranslateRequest> requests) override;

  // For tests and metrics: batch calls sent, and whether the HSM lacks the batch RPC.
  uint64_t batches_sent();
  bool batch_unsupported();
  // Tests only: callers waiting for a batch call to take their request.
  size_t queued_for_test();

 private:
  struct Waiter {
    const TranslateRequest* request = nullptr;
    bool taken = false;  // in a batch that is being sent
    std::optional<absl::StatusOr<Bytes>> result;
  };
  struct Turn {
    TranslateBatcher* batcher;
    Waiter* waiter;
  };
  // Answered, or still queued while a batch call may start.
  static bool ItsTurn(Turn* turn);
  // Sends `batch` (not empty) and returns one answer per request.
  std::vector<absl::StatusOr<Bytes>> Send(const std::vector<TranslateRequest>& batch);

  HsmPort& inner_;
  const TranslateBatcherOptions options_;
  absl::Mutex mu_;
  std::deque<Waiter*> queue_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t batches_sent_ ABSL_GUARDED_BY(mu_) = 0;
  bool batch_unsupported_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace rkl::mtms
