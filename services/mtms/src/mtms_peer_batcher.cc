#include "mtms_peer_batcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "mtms_ports.h"
#include "mtms_repository.h"
#include "spdlog/spdlog.h"

namespace rkl::mtms {

template <typename Request, typename Value>
PeerBatcher<Request, Value>::PeerBatcher(Peer peer, PeerBatcherOptions options)
    : peer_(std::move(peer)),
      options_{.max_batch = std::clamp(options.max_batch, 1, 64),
               .max_calls = std::max(options.max_calls, 1)} {}

template <typename Request, typename Value>
bool PeerBatcher<Request, Value>::ItsTurn(Turn* turn) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  return turn->waiter->result.has_value() ||
         (!turn->waiter->taken && turn->batcher->in_flight_ < turn->batcher->options_.max_calls);
}

template <typename Request, typename Value>
absl::StatusOr<Value> PeerBatcher<Request, Value>::Call(const Request& request) {
  if (options_.max_batch == 1) return peer_.one(request);
  Waiter me{.request = &request};
  Turn turn{this, &me};
  absl::MutexLock lock(&mu_);
  if (batch_unsupported_) {
    // One call per request, in parallel as the callers make them.
    mu_.Unlock();
    absl::StatusOr<Value> answer = peer_.one(request);
    mu_.Lock();
    return answer;
  }
  queue_.push_back(&me);
  while (true) {
    mu_.Await(absl::Condition(&ItsTurn, &turn));
    if (me.result.has_value()) return *std::move(me.result);
    // This thread sends the oldest queued requests: its own among them, unless max_batch
    // older ones are waiting (then it comes back for its own).
    std::vector<Waiter*> taken;
    std::vector<Request> batch;
    while (!queue_.empty() && static_cast<int>(taken.size()) < options_.max_batch) {
      Waiter* w = queue_.front();
      queue_.pop_front();
      w->taken = true;
      taken.push_back(w);
      batch.push_back(*w->request);
    }
    ++in_flight_;
    ++batches_sent_;
    mu_.Unlock();
    Answers answers = Send(batch);
    mu_.Lock();
    --in_flight_;
    for (size_t i = 0; i < taken.size(); ++i) taken[i]->result = std::move(answers[i]);
  }
}

template <typename Request, typename Value>
typename PeerBatcher<Request, Value>::Answers PeerBatcher<Request, Value>::Send(
    const std::vector<Request>& batch) {
  bool unsupported;
  {
    absl::MutexLock lock(&mu_);
    unsupported = batch_unsupported_;
  }
  if (!unsupported) {
    absl::StatusOr<Answers> answers = peer_.batch(batch);
    if (answers.ok() && answers->size() == batch.size()) return *std::move(answers);
    if (answers.ok()) {
      // A peer that breaks the one-outcome-per-item rule: nothing it said is used.
      answers = absl::InternalError(absl::StrCat(peer_.name, ": ", answers->size(),
                                                 " outcomes for ", batch.size(), " requests"));
    }
    if (answers.status().code() != absl::StatusCode::kUnimplemented) {
      return Answers(batch.size(), answers.status());
    }
    absl::MutexLock lock(&mu_);
    if (!batch_unsupported_) {
      spdlog::warn("{}: {} is not implemented by {}; sending one request per call from now on",
                   peer_.name, peer_.batch_rpc, peer_.who);
    }
    batch_unsupported_ = true;
  }
  Answers answers;
  answers.reserve(batch.size());
  for (const Request& request : batch) answers.push_back(peer_.one(request));
  return answers;
}

template <typename Request, typename Value>
uint64_t PeerBatcher<Request, Value>::batches_sent() {
  absl::MutexLock lock(&mu_);
  return batches_sent_;
}

template <typename Request, typename Value>
size_t PeerBatcher<Request, Value>::queued_for_test() {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

template <typename Request, typename Value>
bool PeerBatcher<Request, Value>::batch_unsupported() {
  absl::MutexLock lock(&mu_);
  return batch_unsupported_;
}

// The two peers with a batch RPC, and the forwarder's finishes (its database).
template class PeerBatcher<HsmPort::TranslateRequest, Bytes>;
template class PeerBatcher<KmsPort::Submission, KmsPort::Receipt>;
template class PeerBatcher<MtmsRepository::ForwardedFinish, bool>;

}  // namespace rkl::mtms
