#pragma once
// Forwarder: the outbox worker that takes RECEIVED rows of SN-Key_MTMS to KMS
// (claim 4, S106–S108).
//
// For each claimed row (claimed by ClaimDue, or by intake and handed off) it:
//   1. re-reads the signed package B and re-verifies, from the stored bytes only, that the
//      operator certificate chains to operator-ca (at the time the row was received) and
//      that the signature verifies over B (claim 4); the SN, Ctk_Pu, algorithm, created_at
//      and work certificate serial used afterwards come from B, never from other columns;
//   2. asks HSM #1 to translate Ctk_Pu (under the Pr of the work key B names) into Ctk_pk
//      under PK/MAK;
//   3. sends SN + Ctk_pk to KMS, and marks the row FORWARDED only after KMS accepted it.
// The work key's state and HSM #1 index, and whether the row has a newer sibling, come
// with the row from the statement that claimed it (SubmissionRecord::ClaimFacts); only a row
// with a newer sibling costs a statement before the finish (FinishSupersededIfNewer), so
// a package is one statement here: its finish, which concurrent workers' FORWARDED rows
// share (finish_batch; MtmsRepository::FinishForwardedMany).
// Outcomes: package-specific refusals (stored package no longer verifies, work key
// retired, HSM UNAUTHENTICATED/INVALID_ARGUMENT, KMS INVALID_ARGUMENT/FAILED_PRECONDITION/
// UNAUTHENTICATED/ALREADY_EXISTS/NOT_FOUND) → REJECTED with the reason, never retried; every
// other failure (unreachable peer, PK/MAK not configured yet, ...) → retried with capped
// exponential backoff, attempts counted.
//
// Concurrency: a pass (RunPass, ForceForward) runs up to `workers` threads (the calling
// thread is one of them; the others live for the pass). They share a queue of claimed rows,
// and the one that finds it empty claims the next `batch_size` rows, so no row waits for the
// slowest row of an earlier batch. Rows are independent: each is finished on its own, under
// the token of its claim, exactly as a sequential pass would.
// The background forwarder (Start) is `workers` threads that run the same claim loop (Work)
// over one shared queue, but stay up: when nothing is due they wait, and claim after Wake()
// (a package was stored unclaimed), after a claim that came back full, and every `interval`
// (retries coming due, rows of a replica whose lease expired). A package intake stored
// already claimed (ClaimForIntake, HandOff) goes straight into that queue: no claim
// statement and no wake-up claim for it. So a package that arrives while other
// rows are at HSM #1 or KMS is taken by an idle worker at once instead of waiting for those
// rows (a pass ends only when all of its rows are done).
// At most `workers` rows are in process at once in one Forwarder, even when passes run
// next to the background workers (ForceForward from RPC threads). A worker
// holds at most one database connection at a time, and none while it calls HSM #1 or KMS,
// so a pool of `workers` + a few connections leaves room for intake (rkl-mtms refuses to
// start with fewer: CheckMtmsConfig). Rows of one batch finish in no particular order.
//
// Exactly once: rows are leased (mtms_repository.h), so replicas — and the workers of one
// replica — do not work on one row at the same time; and Ctk_pk is deterministic for one
// package (KWP and CMAC are), so if a replica dies after KMS accepted but before the row was
// marked, the retry sends identical bytes and KMS recognises the duplicate.
//
// Thread-safe: RunPass may be called from RPC threads while the background workers run.
// Start() and Stop() must not race each other. Stop() lets the background workers finish
// the rows they already claimed, ends them, and waits for every pass in progress (on any
// thread) to finish the rows it already claimed; nothing more is claimed once Stop() was
// called, until the next Start(). Dependencies are not
// owned and must outlive the forwarder, and they must be thread-safe (the ports are:
// mtms_ports.h); Stop() before destroying them.

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "mtms_hand_off.h"
#include "mtms_operator_trust.h"
#include "mtms_peer_batcher.h"
#include "mtms_ports.h"
#include "mtms_repository.h"
#include "rkl/common/clock.h"
#include "rkl/crypto/random.h"

namespace rkl::mtms {

class ForwarderMetrics;  // mtms_metrics.h

struct ForwarderOptions {
  std::string replica_id = "mtms";  // goes into claim tokens, for diagnosis
  uint64_t pk_index = 0;            // HSM #1 PK; 0 = not configured yet (rows wait)
  uint64_t mak_index = 0;           // HSM #1 MAK; 0 = not configured yet (rows wait)
  int batch_size = 32;
  // Rows of a batch processed at once (1 = one after the other). Values below 1 count as 1.
  int workers = 16;
  // The FORWARDED finishes of concurrent workers are written together, at most this many
  // per statement (1 = one statement per package) and `finish_calls` such writes at once
  // (mtms_peer_batcher.h: no timer, a lone finish is written at once).
  int finish_batch = 16;
  int finish_calls = 1;
  absl::Duration interval = absl::Seconds(5);
  absl::Duration initial_backoff = absl::Seconds(1);
  absl::Duration max_backoff = absl::Minutes(5);
  // How long a claim holds a row; longer than one HSM + KMS round trip with deadlines.
  absl::Duration lease = absl::Minutes(2);
  // Claim tokens (tests may inject a deterministic source).
  crypto::RandomSource random = crypto::FillRandom;
  // Counts KMS forward attempts and HSM #1 translations (not owned; null: not counted).
  ForwarderMetrics* metrics = nullptr;
};

struct PassResult {
  uint32_t forwarded = 0;
  uint32_t rejected = 0;
  uint32_t retry_later = 0;
};

class Forwarder final : public IntakeHandOff {
 public:
  Forwarder(MtmsRepository& repository, HsmPort& hsm, KmsPort& kms, OperatorTrust& trust,
            const Clock& clock, ForwarderOptions options);
  ~Forwarder() override;  // Stop()s

  // One pass: claims and processes due rows, batch after batch, until a claim comes back
  // short (fewer than batch_size rows: nothing more is due) or Stop() was called; the rows
  // claimed by then are all processed. An error
  // when the database itself failed, or UNAVAILABLE when the forwarder is stopped.
  absl::StatusOr<PassResult> RunPass();
  // An administrator's "forward now": every RECEIVED row becomes due, then one pass.
  absl::StatusOr<PassResult> ForceForward();

  // Background workers (above): claim at once, then after Wake(), after a full claim, and
  // every `interval`.
  void Start();
  void Stop();
  void Wake();
  // True from Stop() until the next Start(): passes claim no further batch.
  bool stopping() const;

  // Intake's hand-off (mtms_hand_off.h): a claim (a fresh token, leased for `lease` from the
  // injected clock's now) while the background workers run and fewer than `batch_size`
  // rows wait in their queue; nullopt otherwise.
  std::optional<IntakeClaim> ClaimForIntake() override;
  // Queues the row for the background workers, and marks the queued rows of its SN with an
  // earlier created_at as having a newer sibling (Process checks them against the
  // database before sending). After Stop() the row is left to its lease.
  void HandOff(SubmissionRecord row, const IntakeClaim& claim) override;

  // Backoff after the n-th failed attempt (n >= 1): initial · 2^(n-1), capped.
  absl::Duration BackoffAfter(uint32_t attempts) const;

 private:
  enum class Outcome { kForwarded, kRejected, kRetryLater, kLost };
  // Rows in Process() are at most `workers`, over every pass of this forwarder.
  bool WorkerSlotFree() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool NoPassRunning() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Outcome Process(const SubmissionRecord& row, const std::string& claim_token);
  Outcome Reject(const SubmissionRecord& row, const std::string& claim_token,
                 const std::string& reason);
  Outcome RetryLater(const SubmissionRecord& row, const std::string& claim_token,
                     const absl::Status& why);
  // `peer` ("hsm" or "kms") failed the row's call: rejects the row if the failure's code is
  // one of `permanent`, else retries it later.
  Outcome PeerFailed(const SubmissionRecord& row, const std::string& claim_token,
                     absl::string_view peer, const absl::Status& failure,
                     absl::Span<const absl::StatusCode> permanent);
  struct ClaimedRow {
    SubmissionRecord row;
    std::string claim_token;
  };
  // The rows a set of threads shares: RunPass's threads, or the background workers (Start).
  // Guarded by mu_.
  struct Pass {
    // The background workers wait for a Wake() or the interval when nothing is due, and end
    // at Stop(); a pass ends when nothing more is due.
    bool background = false;
    std::deque<ClaimedRow> queue{};  // claimed, not yet taken by a thread
    bool claiming = false;           // one thread claims at a time
    bool more_due = true;            // no claim yet, or the last one came back full
    absl::Status failed{};           // a pass's failed claim (the pass ends with it)
    PassResult result{};

    bool MayProceed() const;  // the claim in progress ended, or left rows
    bool BackgroundMayClaim(const Forwarder& forwarder) const;
    void Count(Outcome outcome);
  };
  // Claims the next batch into the pass's queue (mu_ released meanwhile).
  void Claim(Pass& pass) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The one claim loop, run by every thread of a pass and by every background worker:
  // processes queued rows; when the queue is empty, claims the next batch if more may be
  // due, else ends (a pass) or waits for a Wake() or the interval (the background).
  void Work(Pass& pass);

  MtmsRepository& repository_;
  HsmPort& hsm_;
  KmsPort& kms_;
  OperatorTrust& trust_;
  const Clock clock_;
  const ForwarderOptions options_;

  PeerBatcher<MtmsRepository::ForwardedFinish, bool> finishes_;

  mutable absl::Mutex mu_;
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  int passes_ ABSL_GUARDED_BY(mu_) = 0;        // RunPass calls in progress, on any thread
  int busy_workers_ ABSL_GUARDED_BY(mu_) = 0;  // rows in Process() now, at most workers
  // The background workers' state.
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Pass> background_ ABSL_GUARDED_BY(mu_);  // their shared rows, while started
  absl::Time next_claim_at_ ABSL_GUARDED_BY(mu_);          // the periodic claim (real time)
};

}  // namespace rkl::mtms
