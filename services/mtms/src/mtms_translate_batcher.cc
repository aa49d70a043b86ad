#include "mtms_translate_batcher.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace rkl::mtms {

// The default for ports without a batch RPC (fakes, older peers): one call per request.
absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> HsmPort::TranslateTransportKeys(
    std::span<const TranslateRequest> requests) {
  std::vector<absl::StatusOr<Bytes>> out;
  out.reserve(requests.size());
  for (const TranslateRequest& request : requests) out.push_back(TranslateTransportKey(request));
  return out;
}

TranslateBatcher::TranslateBatcher(HsmPort& inner, TranslateBatcherOptions options)
    : inner_(inner),
      options_{.max_batch = std::clamp(options.max_batch, 1, 64),
               .max_calls = std::max(options.max_calls, 1)} {}

absl::StatusOr<HsmPort::RsaKeyPair> TranslateBatcher::GenerateRsaKeyPair(uint32_t bits,
                                                                         const std::string& label) {
  return inner_.GenerateRsaKeyPair(bits, label);
}

absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> TranslateBatcher::TranslateTransportKeys(
    std::span<const TranslateRequest> requests) {
  return inner_.TranslateTransportKeys(requests);
}

bool TranslateBatcher::ItsTurn(Turn* turn) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  return turn->waiter->result.has_value() ||
         (!turn->waiter->taken && turn->batcher->in_flight_ < turn->batcher->options_.max_calls);
}

absl::StatusOr<Bytes> TranslateBatcher::TranslateTransportKey(const TranslateRequest& request) {
  if (options_.max_batch == 1) return inner_.TranslateTransportKey(request);
  Waiter me{.request = &request};
  Turn turn{this, &me};
  absl::MutexLock lock(&mu_);
  if (batch_unsupported_) {
    // One call per package, in parallel as the workers make them.
    mu_.Unlock();
    absl::StatusOr<Bytes> answer = inner_.TranslateTransportKey(request);
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
    std::vector<TranslateRequest> batch;
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
    std::vector<absl::StatusOr<Bytes>> answers = Send(batch);
    mu_.Lock();
    --in_flight_;
    for (size_t i = 0; i < taken.size(); ++i) taken[i]->result = std::move(answers[i]);
  }
}

std::vector<absl::StatusOr<Bytes>> TranslateBatcher::Send(
    const std::vector<TranslateRequest>& batch) {
  bool unsupported;
  {
    absl::MutexLock lock(&mu_);
    unsupported = batch_unsupported_;
  }
  if (!unsupported) {
    absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> answers =
        inner_.TranslateTransportKeys(batch);
    if (answers.ok() && answers->size() == batch.size()) return *std::move(answers);
    if (answers.ok()) {
      // A peer that breaks the one-outcome-per-item rule: nothing it said is used.
      answers = absl::InternalError(absl::StrCat("hsm: ", answers->size(), " outcomes for ",
                                                 batch.size(), " translate requests"));
    }
    if (answers.status().code() != absl::StatusCode::kUnimplemented) {
      return std::vector<absl::StatusOr<Bytes>>(batch.size(), answers.status());
    }
    absl::MutexLock lock(&mu_);
    if (!batch_unsupported_) {
      spdlog::warn(
          "hsm: TranslateTransportKeys is not implemented by HSM #1 (an older rkl-hsm?); "
          "translating one package per call from now on");
    }
    batch_unsupported_ = true;
  }
  std::vector<absl::StatusOr<Bytes>> answers;
  answers.reserve(batch.size());
  for (const TranslateRequest& request : batch) {
    answers.push_back(inner_.TranslateTransportKey(request));
  }
  return answers;
}

uint64_t TranslateBatcher::batches_sent() {
  absl::MutexLock lock(&mu_);
  return batches_sent_;
}

size_t TranslateBatcher::queued_for_test() {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

bool TranslateBatcher::batch_unsupported() {
  absl::MutexLock lock(&mu_);
  return batch_unsupported_;
}

}  // namespace rkl::mtms
