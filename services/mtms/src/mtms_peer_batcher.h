#pragma once
// PeerBatcher: turns concurrent one-item calls to a peer into that peer's batch RPC
// (docs/mtms.md, "Forwarding"). TranslateBatcher (HSM #1's TranslateTransportKeys) and
// KmsSubmitBatcher (KMS's SubmitTransportKeys) are its two uses.
//
// The forwarder's workers each carry one package. Sent one RPC each, every package pays the
// peer a gRPC round trip and a durable write of its own; sent together, those are paid once
// per call. The batcher needs no timer and adds no wait: a call that finds fewer than
// `max_calls` batch calls in flight sends at once, taking every request queued before it (up
// to `max_batch`, oldest first); calls that arrive while `max_calls` are in flight queue and
// go in the next batch. So one caller alone is sent alone, at once, and under load batches
// grow by themselves.
//
// Each caller gets exactly the answer the single call would have given (the peer answers
// every item as its single RPC would); an error of the batch call itself (unreachable,
// deadline, ...) is every item's answer, and so is an answer with the wrong number of
// outcomes (INTERNAL: nothing it said is used). A peer without the batch RPC (UNIMPLEMENTED,
// an older daemon during a rolling upgrade) is remembered: the requests of that batch are
// sent one by one, and every later request goes straight to the single call, as if
// unbatched. `max_batch` 1 turns batching off.
//
// Thread-safe. The send functions must be thread-safe and outlive the batcher.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace rkl::mtms {

struct PeerBatcherOptions {
  int max_batch = 16;  // items per batch call, 1–64
  int max_calls = 4;   // batch calls in flight at once, >= 1
};

template <typename Request, typename Value>
class PeerBatcher {
 public:
  using Answers = std::vector<absl::StatusOr<Value>>;
  struct Peer {
    std::string name;       // "hsm", "kms": prefixes the batcher's own errors
    std::string batch_rpc;  // for the log line when the peer lacks it
    std::string who;        // "HSM #1 (an older rkl-hsm?)", for that line
    // The batch RPC: one answer per request, in order, or the call's error.
    std::function<absl::StatusOr<Answers>(std::span<const Request>)> batch;
    std::function<absl::StatusOr<Value>(const Request&)> one;  // the single RPC
  };

  PeerBatcher(Peer peer, PeerBatcherOptions options);

  // The answer the single call gives for `request`, sent in a batch with whatever queued.
  absl::StatusOr<Value> Call(const Request& request);

  // For tests and metrics: batch calls sent, and whether the peer lacks the batch RPC.
  uint64_t batches_sent();
  bool batch_unsupported();
  // Tests only: callers waiting for a batch call to take their request.
  size_t queued_for_test();

 private:
  struct Waiter {
    const Request* request = nullptr;
    bool taken = false;  // in a batch that is being sent
    std::optional<absl::StatusOr<Value>> result;
  };
  struct Turn {
    PeerBatcher* batcher;
    Waiter* waiter;
  };
  // Answered, or still queued while a batch call may start.
  static bool ItsTurn(Turn* turn);
  // Sends `batch` (not empty) and returns one answer per request.
  Answers Send(const std::vector<Request>& batch);

  const Peer peer_;
  const PeerBatcherOptions options_;
  absl::Mutex mu_;
  std::deque<Waiter*> queue_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t batches_sent_ ABSL_GUARDED_BY(mu_) = 0;
  bool batch_unsupported_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace rkl::mtms
