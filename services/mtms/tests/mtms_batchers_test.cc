// The batchers: concurrent TranslateTransportKey (SubmitTransportKey) calls become
// TranslateTransportKeys (SubmitTransportKeys) calls, each caller gets its own answer, and
// nothing waits on a timer. The inner ports are scripted and can hold batch calls at a gate,
// so what is batched is deterministic. PeerBatcher's rules are shown through
// TranslateBatcher; KmsSubmitBatcher's cases show the same rules hold for KMS.
#include "mtms_batchers.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "rkl/common/request_id.h"
#include "rkl/common/status_macros.h"
#include "rkl/testing/wait.h"

namespace rkl::mtms {
namespace {

using ::testing::ElementsAre;

Bytes AnswerFor(const std::string& sn) { return Bytes(sn.begin(), sn.end()); }

// What both scripted peers share: their batch calls recorded (each item's SN and request
// id) and held at a gate until Release(), a failure scripted for every batch call, and their
// single calls counted. Thread-safe.
class BatchGate {
 public:
  void Hold() {
    absl::MutexLock lock(&mu_);
    open_ = false;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    open_ = true;
  }
  void FailBatches(absl::Status s) {
    absl::MutexLock lock(&mu_);
    batch_status_ = std::move(s);
  }
  // True once `n` batch calls are inside at the same time.
  bool WaitForInFlight(int n) {
    absl::MutexLock lock(&mu_);
    auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), rkl::testing::kEventDeadline);
  }
  std::vector<std::vector<std::string>> batches() {
    absl::MutexLock lock(&mu_);
    return batches_;
  }
  int single_calls() {
    absl::MutexLock lock(&mu_);
    return single_calls_;
  }
  // The request id each SN's item carried in a batch.
  std::map<std::string, std::string> request_ids() {
    absl::MutexLock lock(&mu_);
    return request_ids_;
  }

 protected:
  // A batch call of items (SN, request id): recorded, held while the gate is shut; the
  // scripted failure, or OK.
  absl::Status EnterBatch(const std::vector<std::pair<std::string, std::string>>& items)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++in_flight_;
    std::vector<std::string> sns;
    for (const auto& [sn, request_id] : items) {
      sns.push_back(sn);
      request_ids_[sn] = request_id;
    }
    batches_.push_back(sns);
    mu_.AwaitWithTimeout(absl::Condition(&open_), rkl::testing::kEventDeadline);
    --in_flight_;
    return batch_status_;
  }

  absl::Mutex mu_;
  int single_calls_ ABSL_GUARDED_BY(mu_) = 0;

 private:
  bool open_ ABSL_GUARDED_BY(mu_) = true;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status batch_status_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<std::string>> batches_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> request_ids_ ABSL_GUARDED_BY(mu_);
};

// Answers each item by its SN ("BAD-…" is the HSM's uniform refusal); can hold batch calls
// until Release(), hold single calls, and fail, lack or misanswer the batch call.
class ScriptedHsm final : public HsmPort, public BatchGate {
 public:
  absl::StatusOr<RsaKeyPair> GenerateRsaKeyPair(uint32_t, const std::string&) override {
    return RsaKeyPair{.key_index = 7};
  }
  absl::StatusOr<Bytes> TranslateTransportKey(const TranslateRequest& request) override {
    absl::MutexLock lock(&mu_);
    ++single_calls_;
    ++singles_in_flight_;
    mu_.AwaitWithTimeout(absl::Condition(&singles_open_), rkl::testing::kEventDeadline);
    --singles_in_flight_;
    return Answer(request);
  }
  absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> TranslateTransportKeys(
      std::span<const TranslateRequest> requests) override {
    absl::MutexLock lock(&mu_);
    std::vector<std::pair<std::string, std::string>> items;
    for (const auto& r : requests) items.emplace_back(r.sn, r.request_id);
    RKL_RETURN_IF_ERROR(EnterBatch(items));
    std::vector<absl::StatusOr<Bytes>> out;
    for (const auto& r : requests) out.push_back(Answer(r));
    if (drop_one_) out.pop_back();
    return out;
  }

  void HoldSingles(bool hold) {
    absl::MutexLock lock(&mu_);
    singles_open_ = !hold;
  }
  // True once `n` single calls are inside at the same time.
  bool WaitForSinglesInFlight(int n) {
    absl::MutexLock lock(&mu_);
    auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return singles_in_flight_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), rkl::testing::kEventDeadline);
  }
  void DropOneOutcome() {
    absl::MutexLock lock(&mu_);
    drop_one_ = true;
  }

 private:
  static absl::StatusOr<Bytes> Answer(const TranslateRequest& r) {
    if (absl::StartsWith(r.sn, "BAD-")) return absl::UnauthenticatedError("transport key rejected");
    return AnswerFor(r.sn);
  }

  bool singles_open_ ABSL_GUARDED_BY(mu_) = true;
  int singles_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool drop_one_ ABSL_GUARDED_BY(mu_) = false;
};

// Runs `call` for each SN on its own thread, under request id "rid-<sn>"; answers by SN.
template <typename Answer>
class ConcurrentCalls {
 public:
  ConcurrentCalls(std::vector<std::string> sns, std::function<Answer(const std::string&)> call) {
    for (const std::string& sn : sns) {
      threads_.emplace_back([this, call, sn] {
        const ScopedRequestId flow("rid-" + sn);
        Answer answer = call(sn);
        absl::MutexLock lock(&mu_);
        answers_.emplace(sn, std::move(answer));
      });
    }
  }
  std::map<std::string, Answer> Join() {
    for (auto& t : threads_) t.join();
    absl::MutexLock lock(&mu_);
    return answers_;
  }

 private:
  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  std::map<std::string, Answer> answers_ ABSL_GUARDED_BY(mu_);
};

// TranslateTransportKey for each SN, each on its own thread.
class Callers : public ConcurrentCalls<absl::StatusOr<Bytes>> {
 public:
  Callers(HsmPort& port, std::vector<std::string> sns)
      : ConcurrentCalls(std::move(sns), [&port](const std::string& sn) {
          return port.TranslateTransportKey({.sn = sn});
        }) {}
};

// Waits (bounded) until `n` callers are queued behind the calls in flight.
bool WaitForQueued(TranslateBatcher& batcher, size_t n) {
  return rkl::testing::WaitUntil([&] { return batcher.queued_for_test() >= n; });
}

// Holds a first call ("SN-FIRST") at the HSM, queues `rest` behind it, then lets everything
// through; returns every caller's answer by SN.
std::map<std::string, absl::StatusOr<Bytes>> QueueBehindAHeldCall(
    TranslateBatcher& batcher, ScriptedHsm& hsm, const std::vector<std::string>& rest) {
  hsm.Hold();
  Callers first(batcher, {"SN-FIRST"});
  EXPECT_TRUE(hsm.WaitForInFlight(1));
  Callers queued(batcher, rest);
  EXPECT_TRUE(WaitForQueued(batcher, rest.size()));
  hsm.Release();
  auto answers = first.Join();
  auto more = queued.Join();
  answers.insert(more.begin(), more.end());
  return answers;
}

TEST(TranslateBatcherTest, ALoneCallIsSentAtOnceAsABatchOfOne) {
  ScriptedHsm hsm;
  TranslateBatcher batcher(hsm, {.max_batch = 16, .max_calls = 2});
  auto answer = batcher.TranslateTransportKey({.sn = "SN-1"});
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(*answer, AnswerFor("SN-1"));
  EXPECT_THAT(hsm.batches(), ElementsAre(ElementsAre("SN-1")));
  EXPECT_EQ(hsm.single_calls(), 0);
}

TEST(TranslateBatcherTest, CallsArrivingWhileTheCallsInFlightAreFullGoInOneBatch) {
  ScriptedHsm hsm;
  TranslateBatcher batcher(hsm, {.max_batch = 16, .max_calls = 1});
  auto answers = QueueBehindAHeldCall(batcher, hsm, {"SN-1", "BAD-2", "SN-3", "SN-4", "BAD-5"});
  auto batches = hsm.batches();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_THAT(batches[0], ElementsAre("SN-FIRST"));
  EXPECT_EQ(batches[1].size(), 5u);  // every queued caller, in one call
  ASSERT_EQ(answers.size(), 6u);
  for (const auto& [sn, answer] : answers) {
    SCOPED_TRACE(sn);
    if (absl::StartsWith(sn, "BAD-")) {
      EXPECT_EQ(answer.status(), absl::UnauthenticatedError("transport key rejected"));
    } else {
      ASSERT_TRUE(answer.ok()) << answer.status();
      EXPECT_EQ(*answer, AnswerFor(sn));  // its own answer, not a neighbour's
    }
  }
  EXPECT_EQ(batcher.batches_sent(), 2u);
  // Each item carries its own caller's request id, whichever caller's thread sent the batch.
  EXPECT_EQ(hsm.request_ids().size(), 6u);
  for (const auto& [sn, request_id] : hsm.request_ids()) EXPECT_EQ(request_id, "rid-" + sn);
}

TEST(TranslateBatcherTest, BatchesNeverExceedMaxBatchAndEveryCallerIsAnswered) {
  ScriptedHsm hsm;
  TranslateBatcher batcher(hsm, {.max_batch = 4, .max_calls = 1});
  std::vector<std::string> sns;
  for (int i = 0; i < 10; ++i) sns.push_back(absl::StrCat("SN-", i));
  auto answers = QueueBehindAHeldCall(batcher, hsm, sns);
  EXPECT_EQ(answers.size(), 11u);
  size_t items = 0;
  for (const auto& b : hsm.batches()) {
    EXPECT_LE(b.size(), 4u);
    items += b.size();
  }
  EXPECT_EQ(items, 11u);
  EXPECT_EQ(hsm.batches().size(), 1u + 3u);  // 1, then 4 + 4 + 2
  for (const auto& [sn, answer] : answers) EXPECT_EQ(answer.value_or(Bytes{}), AnswerFor(sn));
}

TEST(TranslateBatcherTest, AFailedBatchCallIsEveryItemsAnswer) {
  ScriptedHsm hsm;
  TranslateBatcher batcher(hsm, {.max_batch = 16, .max_calls = 1});
  hsm.FailBatches(absl::UnavailableError("hsm unavailable: connection refused"));
  auto answers = Callers(batcher, {"SN-1", "SN-2", "SN-3"}).Join();
  for (const auto& [sn, answer] : answers) {
    EXPECT_EQ(answer.status(), absl::UnavailableError("hsm unavailable: connection refused"));
  }
  EXPECT_EQ(hsm.single_calls(), 0);
}

TEST(TranslateBatcherTest, AnAnswerWithTheWrongNumberOfOutcomesIsUsedForNothing) {
  ScriptedHsm hsm;
  TranslateBatcher batcher(hsm, {.max_batch = 16, .max_calls = 1});
  hsm.DropOneOutcome();
  auto answer = batcher.TranslateTransportKey({.sn = "SN-1"});
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(answer.status().message()), ::testing::HasSubstr("0 outcomes for 1"));
}

TEST(TranslateBatcherTest, AnHsmWithoutTheBatchCallIsSentOneByOneFromThenOn) {
  ScriptedHsm hsm;
  TranslateBatcher batcher(hsm, {.max_batch = 16, .max_calls = 1});
  hsm.FailBatches(absl::UnimplementedError("unknown method TranslateTransportKeys"));
  auto first = batcher.TranslateTransportKey({.sn = "SN-1"});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, AnswerFor("SN-1"));
  EXPECT_TRUE(batcher.batch_unsupported());
  auto refused = batcher.TranslateTransportKey({.sn = "BAD-2"});
  EXPECT_EQ(refused.status(), absl::UnauthenticatedError("transport key rejected"));
  EXPECT_EQ(hsm.batches().size(), 1u);  // tried once, then remembered
  EXPECT_EQ(hsm.single_calls(), 2);
  // From then on requests go out as they come, in parallel (max_calls does not apply).
  hsm.HoldSingles(true);
  Callers parallel(batcher, {"SN-P1", "SN-P2", "SN-P3"});
  const bool all_in = hsm.WaitForSinglesInFlight(3);
  hsm.HoldSingles(false);
  auto answers = parallel.Join();
  EXPECT_TRUE(all_in);
  for (const auto& [sn, answer] : answers) EXPECT_EQ(answer.value_or(Bytes{}), AnswerFor(sn));
  EXPECT_EQ(hsm.batches().size(), 1u);
}

TEST(TranslateBatcherTest, MaxBatchOneSendsSingleCallsOnly) {
  ScriptedHsm hsm;
  TranslateBatcher batcher(hsm, {.max_batch = 1, .max_calls = 4});
  auto answers = Callers(batcher, {"SN-1", "SN-2"}).Join();
  for (const auto& [sn, answer] : answers) EXPECT_EQ(answer.value_or(Bytes{}), AnswerFor(sn));
  EXPECT_TRUE(hsm.batches().empty());
  EXPECT_EQ(hsm.single_calls(), 2);
}

// ---- KmsSubmitBatcher ----------------------------------------------------------------

// Answers each submission by its SN ("OLD-…" is KMS's refusal of an older package, "DUP-…"
// a duplicate); can hold batch calls until Release(), and can fail or lack the batch call.
class GatedKms final : public KmsPort, public BatchGate {
 public:
  absl::StatusOr<Receipt> SubmitTransportKey(const std::string& sn, const Bytes&,
                                             const std::string&) override {
    absl::MutexLock lock(&mu_);
    ++single_calls_;
    return Answer(sn);
  }
  absl::StatusOr<std::vector<absl::StatusOr<Receipt>>> SubmitTransportKeys(
      std::span<const Submission> submissions) override {
    absl::MutexLock lock(&mu_);
    std::vector<std::pair<std::string, std::string>> items;
    for (const auto& s : submissions) items.emplace_back(s.sn, s.request_id);
    RKL_RETURN_IF_ERROR(EnterBatch(items));
    std::vector<absl::StatusOr<Receipt>> out;
    for (const auto& s : submissions) out.push_back(Answer(s.sn));
    return out;
  }

 private:
  static absl::StatusOr<Receipt> Answer(const std::string& sn) {
    if (absl::StartsWith(sn, "OLD-")) {
      return absl::FailedPreconditionError("ctk_pk: older than the stored transport key");
    }
    return Receipt{.duplicate = absl::StartsWith(sn, "DUP-")};
  }
};

// SubmitTransportKey for each SN, each on its own thread.
class Submitters : public ConcurrentCalls<absl::StatusOr<KmsPort::Receipt>> {
 public:
  Submitters(KmsPort& port, std::vector<std::string> sns)
      : ConcurrentCalls(std::move(sns), [&port](const std::string& sn) {
          return port.SubmitTransportKey(sn, Bytes{1, 2, 3}, "sub-" + sn);
        }) {}
};

TEST(KmsSubmitBatcherTest, SubmissionsQueuedBehindACallGoInOneBatchEachWithItsOwnAnswer) {
  GatedKms kms;
  KmsSubmitBatcher batcher(kms, {.max_batch = 16, .max_calls = 1});
  kms.Hold();
  Submitters first(batcher, {"SN-FIRST"});
  ASSERT_TRUE(kms.WaitForInFlight(1));
  const std::vector<std::string> rest = {"SN-1", "OLD-2", "DUP-3", "SN-4"};
  Submitters queued(batcher, rest);
  ASSERT_TRUE(rkl::testing::WaitUntil([&] { return batcher.queued_for_test() >= rest.size(); }));
  kms.Release();
  auto answers = first.Join();
  auto more = queued.Join();
  answers.insert(more.begin(), more.end());
  auto batches = kms.batches();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_THAT(batches[0], ElementsAre("SN-FIRST"));
  EXPECT_EQ(batches[1].size(), rest.size());
  ASSERT_EQ(answers.size(), 5u);
  for (const auto& [sn, answer] : answers) {
    SCOPED_TRACE(sn);
    if (absl::StartsWith(sn, "OLD-")) {
      EXPECT_EQ(answer.status().code(), absl::StatusCode::kFailedPrecondition);
    } else {
      ASSERT_TRUE(answer.ok()) << answer.status();
      EXPECT_EQ(answer->duplicate, absl::StartsWith(sn, "DUP-"));
    }
  }
  EXPECT_EQ(kms.single_calls(), 0);
  EXPECT_EQ(batcher.batches_sent(), 2u);
  // Each item carries its own caller's request id, whichever caller's thread sent the batch.
  for (const auto& [sn, request_id] : kms.request_ids()) EXPECT_EQ(request_id, "rid-" + sn);
  EXPECT_EQ(kms.request_ids().size(), 5u);
}

TEST(KmsSubmitBatcherTest, AFailedBatchCallIsEveryItemsAnswer) {
  GatedKms kms;
  KmsSubmitBatcher batcher(kms, {.max_batch = 16, .max_calls = 1});
  kms.FailBatches(absl::UnavailableError("kms unavailable: connection refused"));
  for (const auto& [sn, answer] : Submitters(batcher, {"SN-1", "SN-2"}).Join()) {
    EXPECT_EQ(answer.status(), absl::UnavailableError("kms unavailable: connection refused"));
  }
  EXPECT_EQ(kms.single_calls(), 0);
}

TEST(KmsSubmitBatcherTest, AKmsWithoutTheBatchCallIsSentOneByOneFromThenOn) {
  GatedKms kms;
  KmsSubmitBatcher batcher(kms, {.max_batch = 16, .max_calls = 1});
  kms.FailBatches(absl::UnimplementedError("unknown method SubmitTransportKeys"));
  auto first = batcher.SubmitTransportKey("DUP-1", Bytes{1}, "s");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_TRUE(first->duplicate);
  EXPECT_TRUE(batcher.batch_unsupported());
  EXPECT_EQ(batcher.SubmitTransportKey("OLD-2", Bytes{1}, "s").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(kms.batches().size(), 1u);  // tried once, then remembered
  EXPECT_EQ(kms.single_calls(), 2);
}

TEST(KmsSubmitBatcherTest, MaxBatchOneSendsSingleCallsOnly) {
  GatedKms kms;
  KmsSubmitBatcher batcher(kms, {.max_batch = 1, .max_calls = 4});
  for (const auto& [sn, answer] : Submitters(batcher, {"SN-1", "SN-2"}).Join()) {
    EXPECT_TRUE(answer.ok()) << sn;
  }
  EXPECT_TRUE(kms.batches().empty());
  EXPECT_EQ(kms.single_calls(), 2);
}

}  // namespace
}  // namespace rkl::mtms
