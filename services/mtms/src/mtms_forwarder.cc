#include "mtms_forwarder.h"

#include <algorithm>
#include <deque>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "mtms_metrics.h"
#include "rkl/audit/actions.h"
#include "rkl/audit/audit_chain.h"
#include "rkl/common/parallel.h"
#include "rkl/common/request_id.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/x509.h"
#include "rkl/v1/mtms.pb.h"
#include "spdlog/spdlog.h"

namespace rkl::mtms {
namespace {

constexpr size_t kMaxReasonLength = 512;

// The background workers' next periodic claim is a real wait (absl::Mutex deadlines run on
// the wall clock), not a decision: what is due is decided by the injected clock.
absl::Time WallDeadline(absl::Duration interval) {
  return absl::Now() + interval;  // wall time: the wait's deadline
}
constexpr char kSupersededReason[] =
    "superseded: a package for this SN with a later created_at is forwarded or pending; not "
    "sent";

std::string Describe(const absl::Status& s) {
  std::string text = absl::StrCat(absl::StatusCodeToString(s.code()), ": ", s.message());
  if (text.size() > kMaxReasonLength) text.resize(kMaxReasonLength);
  return text;
}

// The codes by which a peer refuses this package for good: the row is rejected. Any other
// failure is about the peer or our configuration and may heal: the row is retried later.
// HSM #1 answers UNAUTHENTICATED as its one uniform "transport key rejected".
constexpr absl::StatusCode kHsmPermanentRefusals[] = {absl::StatusCode::kUnauthenticated,
                                                      absl::StatusCode::kInvalidArgument};
constexpr absl::StatusCode kKmsPermanentRefusals[] = {
    absl::StatusCode::kInvalidArgument, absl::StatusCode::kFailedPrecondition,
    absl::StatusCode::kUnauthenticated, absl::StatusCode::kAlreadyExists,
    absl::StatusCode::kNotFound,        absl::StatusCode::kOutOfRange};

ForwarderOptions Normalized(ForwarderOptions options) {
  options.batch_size = std::max(options.batch_size, 1);
  options.workers = std::max(options.workers, 1);
  return options;
}

}  // namespace

// The default for repositories without a batch write: one FinishForwarded per row.
absl::StatusOr<std::vector<absl::StatusOr<bool>>> MtmsRepository::FinishForwardedMany(
    std::span<const ForwardedFinish> rows) {
  std::vector<absl::StatusOr<bool>> out;
  out.reserve(rows.size());
  for (const ForwardedFinish& row : rows) {
    out.push_back(FinishForwarded(row.submission_id, row.claim_token, row.now_ms, row.audit));
  }
  return out;
}

Forwarder::Forwarder(MtmsRepository& repository, HsmPort& hsm, KmsPort& kms, OperatorTrust& trust,
                     const Clock& clock, ForwarderOptions options)
    : repository_(repository),
      hsm_(hsm),
      kms_(kms),
      trust_(trust),
      clock_(clock),
      options_(Normalized(std::move(options))),
      finishes_({.name = "mtms-db",
                 .batch_rpc = "FinishForwardedMany",
                 .who = "the repository",
                 .batch =
                     [this](std::span<const MtmsRepository::ForwardedFinish> rows) {
                       return repository_.FinishForwardedMany(rows);
                     },
                 .one =
                     [this](const MtmsRepository::ForwardedFinish& row) {
                       return repository_.FinishForwarded(row.submission_id, row.claim_token,
                                                          row.now_ms, row.audit);
                     }},
                {.max_batch = options_.finish_batch, .max_calls = options_.finish_calls}) {}

Forwarder::~Forwarder() { Stop(); }

std::optional<IntakeClaim> Forwarder::ClaimForIntake() {
  {
    absl::MutexLock lock(&mu_);
    if (!running_ || stop_ || background_ == nullptr ||
        static_cast<int>(background_->queue.size()) >= options_.batch_size) {
      return std::nullopt;
    }
  }
  return IntakeClaim{
      .claim_token =
          absl::StrCat(options_.replica_id, "/", ToHex(crypto::RandomBytes(options_.random, 8))),
      .lease_until_ms = NowUnixMs(clock_) + absl::ToInt64Milliseconds(options_.lease)};
}

void Forwarder::HandOff(SubmissionRecord row, const IntakeClaim& claim) {
  absl::MutexLock lock(&mu_);
  if (!running_ || stop_ || background_ == nullptr) return;  // left to its lease
  for (ClaimedRow& queued : background_->queue) {
    if (queued.row.sn == row.sn && queued.row.created_at_ms < row.created_at_ms &&
        queued.row.claim.has_value()) {
      queued.row.claim->newer_sibling = true;
    }
  }
  background_->queue.push_back({std::move(row), claim.claim_token});
}

absl::Duration Forwarder::BackoffAfter(uint32_t attempts) const {
  absl::Duration backoff = options_.initial_backoff;
  for (uint32_t i = 1; i < attempts && backoff < options_.max_backoff; ++i) backoff *= 2;
  return std::min(backoff, options_.max_backoff);
}

absl::StatusOr<PassResult> Forwarder::ForceForward() {
  RKL_RETURN_IF_ERROR(repository_.MakeAllDue(NowUnixMs(clock_)).status());
  return RunPass();
}

absl::StatusOr<PassResult> Forwarder::RunPass() {
  Pass pass{.background = false};
  size_t first_claim = 0;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return absl::UnavailableError("forwarder is stopped");
    ++passes_;
    // The first claim on the calling thread: the pass then starts as many threads as it can
    // use, so a pass over a few rows (packages arriving one by one) starts no idle ones.
    Claim(pass);
    first_claim = pass.queue.size();
  }
  absl::Cleanup pass_done = [this] {
    absl::MutexLock lock(&mu_);
    --passes_;
  };
  const int threads =
      static_cast<int>(std::min<size_t>(static_cast<size_t>(options_.workers), first_claim));
  ParallelFor(static_cast<size_t>(threads), threads, [&](size_t) { Work(pass); });
  absl::MutexLock lock(&mu_);
  RKL_RETURN_IF_ERROR(pass.failed);
  const PassResult& result = pass.result;
  if (result.forwarded + result.rejected + result.retry_later > 0) {
    spdlog::info("forwarder pass: {} forwarded, {} rejected, {} to retry", result.forwarded,
                 result.rejected, result.retry_later);
  }
  return result;
}

void Forwarder::Claim(Pass& pass) {
  pass.claiming = true;
  if (pass.background) wake_ = false;  // a Wake() from now on asks for the next claim
  // A fresh token per claim: a finish from an older, expired claim of ours is refused.
  const std::string claim_token =
      absl::StrCat(options_.replica_id, "/", ToHex(crypto::RandomBytes(options_.random, 8)));
  mu_.Unlock();
  const int64_t now_ms = NowUnixMs(clock_);
  absl::StatusOr<std::vector<SubmissionRecord>> rows = repository_.ClaimDue(
      claim_token, now_ms, now_ms + absl::ToInt64Milliseconds(options_.lease), options_.batch_size);
  mu_.Lock();
  pass.claiming = false;
  if (rows.ok() && rows->empty() && options_.metrics != nullptr) options_.metrics->EmptyClaim();
  if (pass.background) next_claim_at_ = WallDeadline(options_.interval);
  if (!rows.ok()) {
    // A pass ends with the error; the background claims again at the next Wake() or
    // interval.
    pass.more_due = false;
    if (pass.background) {
      spdlog::warn("forwarder: claiming due rows failed: {}", rows.status().ToString());
    } else {
      pass.failed = rows.status();
    }
    return;
  }
  // Rows that failed got a later next_attempt_at, so a pass does not claim them again.
  pass.more_due = static_cast<int>(rows->size()) == options_.batch_size;
  for (SubmissionRecord& r : *rows) pass.queue.push_back({std::move(r), claim_token});
}

bool Forwarder::Pass::MayProceed() const { return !queue.empty() || !claiming; }

bool Forwarder::Pass::BackgroundMayClaim(const Forwarder& f) const {
  // While a claim is in progress it fills the queue or finds nothing.
  if (!queue.empty() || f.stop_) return true;
  if (claiming) return false;
  return f.wake_ || more_due || absl::Now() >= f.next_claim_at_;  // wall time: the wait's deadline
}

void Forwarder::Work(Pass& pass) {
  absl::MutexLock lock(&mu_);
  for (;;) {
    if (!pass.queue.empty()) {  // claimed rows are finished even after Stop()
      ClaimedRow claimed = std::move(pass.queue.front());
      pass.queue.pop_front();
      mu_.Await(absl::Condition(this, &Forwarder::WorkerSlotFree));
      ++busy_workers_;
      mu_.Unlock();
      const Outcome outcome = Process(claimed.row, claimed.claim_token);
      mu_.Lock();
      --busy_workers_;
      pass.Count(outcome);
      continue;
    }
    if (pass.claiming) {  // another thread's claim fills the queue or finds nothing
      mu_.Await(absl::Condition(&pass, &Pass::MayProceed));
      continue;
    }
    if (stop_ || !pass.failed.ok()) return;
    if (!pass.more_due) {
      if (!pass.background) return;  // a pass ends when nothing more is due
      // The background waits for a Wake(), a claim that came back full or the interval. If
      // another thread starts a claim meanwhile, the loop waits for it above, without a
      // deadline: its claim ends with a new one (a deadline already passed would make this
      // a busy loop).
      auto may_claim = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return pass.BackgroundMayClaim(*this);
      };
      mu_.AwaitWithDeadline(absl::Condition(&may_claim), next_claim_at_);
      if (options_.metrics != nullptr) options_.metrics->Wakeup();
      // Rows, a claim in progress or Stop() are the loop's to handle; woken by the end of
      // another thread's claim, this one may have nothing to do.
      if (!pass.queue.empty() || pass.claiming || stop_ || !may_claim()) continue;
    }
    Claim(pass);
  }
}

void Forwarder::Pass::Count(Outcome outcome) {
  switch (outcome) {
    case Outcome::kForwarded:
      ++result.forwarded;
      break;
    case Outcome::kRejected:
      ++result.rejected;
      break;
    case Outcome::kRetryLater:
      ++result.retry_later;
      break;
    case Outcome::kLost:
      break;
  }
}

bool Forwarder::WorkerSlotFree() const { return busy_workers_ < options_.workers; }

bool Forwarder::NoPassRunning() const { return passes_ == 0; }

Forwarder::Outcome Forwarder::Reject(const SubmissionRecord& row, const std::string& claim_token,
                                     const std::string& reason) {
  AuditEntry audit{.at_ms = NowUnixMs(clock_),
                   .actor = options_.replica_id,
                   .action = rkl::audit::action::kPackageReject,
                   .sn = row.sn,
                   .detail = absl::StrCat("submission ", row.submission_id, ": ", reason),
                   .result = "REJECTED"};
  absl::StatusOr<bool> done =
      repository_.FinishRejected(row.submission_id, claim_token, reason, audit);
  if (!done.ok()) {
    spdlog::warn("forwarder: submission {} could not be marked rejected: {}", row.submission_id,
                 done.status().ToString());
    return Outcome::kLost;
  }
  if (!*done) return Outcome::kLost;
  spdlog::warn("forwarder: submission {} sn={} rejected: {}", row.submission_id, row.sn, reason);
  return Outcome::kRejected;
}

Forwarder::Outcome Forwarder::RetryLater(const SubmissionRecord& row,
                                         const std::string& claim_token, const absl::Status& why) {
  const uint32_t attempts = row.attempts + 1;
  const int64_t next = NowUnixMs(clock_) + absl::ToInt64Milliseconds(BackoffAfter(attempts));
  absl::StatusOr<bool> done =
      repository_.FinishRetryLater(row.submission_id, claim_token, Describe(why), next);
  if (!done.ok() || !*done) return Outcome::kLost;
  spdlog::info("forwarder: submission {} sn={} attempt {} failed, retry in {}: {}",
               row.submission_id, row.sn, attempts, absl::FormatDuration(BackoffAfter(attempts)),
               Describe(why));
  return Outcome::kRetryLater;
}

Forwarder::Outcome Forwarder::PeerFailed(const SubmissionRecord& row,
                                         const std::string& claim_token, absl::string_view peer,
                                         const absl::Status& failure,
                                         absl::Span<const absl::StatusCode> permanent) {
  if (std::find(permanent.begin(), permanent.end(), failure.code()) != permanent.end()) {
    return Reject(row, claim_token, absl::StrCat(peer, ": ", Describe(failure)));
  }
  return RetryLater(row, claim_token,
                    absl::Status(failure.code(), absl::StrCat(peer, ": ", failure.message())));
}

Forwarder::Outcome Forwarder::Process(const SubmissionRecord& row, const std::string& claim_token) {
  // Under the request id of the call that submitted the package: the HSM #1 and KMS calls,
  // log lines and audit records of its forwarding carry the terminal's id.
  const ScopedRequestId request_id(row.request_id);
  // 1. Claim 4: everything from the stored, signed bytes.
  v1::TransportKeyPackage package;
  const std::string b(AsString(row.package));
  if (!package.ParseFromString(b)) {
    return Reject(row, claim_token, "stored package no longer parses");
  }
  absl::StatusOr<std::shared_ptr<const OperatorTrust::ParsedCertificate>> cert =
      trust_.Parse(row.operator_certificate_pem);
  if (!cert.ok()) return Reject(row, claim_token, "stored operator certificate does not parse");
  absl::StatusOr<std::string> operator_id =
      trust_.VerifyChainAt((*cert)->certificate, row.received_at_ms / 1000);
  if (!operator_id.ok()) {
    if (operator_id.status().code() == absl::StatusCode::kUnavailable) {
      return RetryLater(row, claim_token, operator_id.status());
    }
    return Reject(row, claim_token,
                  absl::StrCat("stored operator certificate: ", operator_id.status().message()));
  }
  const absl::StatusOr<crypto::PublicKey>& key = (*cert)->key;
  if (!key.ok() || !crypto::EcdsaVerify(*key, row.package, row.signature).ok()) {
    return Reject(row, claim_token, "stored package signature does not verify (claim 4)");
  }
  if (package.operator_id() != *operator_id || package.sn() != row.sn ||
      package.work_certificate_serial() != row.work_certificate_serial ||
      package.created_at_unix_ms() != row.created_at_ms) {
    return Reject(row, claim_token, "stored row does not match its signed package");
  }

  // Order per SN: a package with a newer sibling already forwarded or waiting is never sent
  // (KMS would refuse it as older, or it would be sent before the newer one only to be
  // replaced). The claim reported whether it has one (ClaimFacts; a newer package handed
  // off to this forwarder meanwhile sets it too), and the database decides for a row that
  // has. A newer package that arrives after the claim and overtakes this one is caught by
  // KMS, which refuses the older one (FAILED_PRECONDITION: REJECTED below).
  if (!row.claim.has_value() || row.claim->newer_sibling) {
    AuditEntry audit{
        .at_ms = NowUnixMs(clock_),
        .actor = options_.replica_id,
        .action = rkl::audit::action::kPackageSupersede,
        .sn = row.sn,
        .detail = absl::StrCat("submission ", row.submission_id, ": ", kSupersededReason),
        .result = "REJECTED"};
    absl::StatusOr<bool> superseded = repository_.FinishSupersededIfNewer(
        row.submission_id, claim_token, kSupersededReason, audit);
    if (!superseded.ok()) return RetryLater(row, claim_token, superseded.status());
    if (*superseded) {
      spdlog::info("forwarder: submission {} sn={} superseded by a newer package, not sent",
                   row.submission_id, row.sn);
      return Outcome::kRejected;
    }
  }

  // 2. The work key the package was made for, as the claim read it (else read now).
  SubmissionRecord::ClaimFacts facts;
  if (row.claim.has_value()) {
    facts = *row.claim;
  } else {
    absl::StatusOr<std::optional<WorkKeyRecord>> work_key =
        repository_.FindWorkKey(package.work_certificate_serial());
    if (!work_key.ok()) return RetryLater(row, claim_token, work_key.status());
    if (work_key->has_value()) {
      facts.work_key_state = (*work_key)->state;
      facts.work_key_index = (*work_key)->hsm_key_index;
    }
  }
  if (!facts.work_key_state.has_value()) {
    return Reject(row, claim_token, "work certificate unknown");
  }
  if (*facts.work_key_state == WorkKeyState::kRetired) {
    return Reject(row, claim_token, "work certificate retired before the package was forwarded");
  }
  if (options_.pk_index == 0 || options_.mak_index == 0) {
    return RetryLater(row, claim_token,
                      absl::FailedPreconditionError(
                          "hsm.pk_index / hsm.mak_index not configured (key ceremony pending)"));
  }
  absl::StatusOr<crypto::KeyAlgorithm> algorithm =
      crypto::KeyAlgorithmFromCode(static_cast<uint8_t>(package.algorithm()));
  if (!algorithm.ok()) return Reject(row, claim_token, "stored package has an unknown algorithm");

  // 3. S106: translate inside HSM #1.
  HsmPort::TranslateRequest translate{
      .pr_index = facts.work_key_index,
      .ctk_pu = Bytes(package.ctk_pu().begin(), package.ctk_pu().end()),
      .sn = package.sn(),
      .created_at_unix_ms = package.created_at_unix_ms(),
      .pk_index = options_.pk_index,
      .mak_index = options_.mak_index,
      .algorithm = *algorithm,
      .package = row.package,
      .package_signature = row.signature,
      .operator_certificate_der = (*cert)->certificate.ToDer()};
  absl::StatusOr<Bytes> ctk_pk = hsm_.TranslateTransportKey(translate);
  if (options_.metrics != nullptr) options_.metrics->Translation(ctk_pk.status());
  if (!ctk_pk.ok()) {
    return PeerFailed(row, claim_token, "hsm", ctk_pk.status(), kHsmPermanentRefusals);
  }

  // 4. S107–S108.
  absl::StatusOr<KmsPort::Receipt> receipt =
      kms_.SubmitTransportKey(package.sn(), *ctk_pk, row.submission_id);
  if (options_.metrics != nullptr) options_.metrics->ForwardAttempt(receipt.status());
  if (!receipt.ok()) {
    return PeerFailed(row, claim_token, "kms", receipt.status(), kKmsPermanentRefusals);
  }
  AuditEntry audit{
      .at_ms = NowUnixMs(clock_),
      .actor = options_.replica_id,
      .action = rkl::audit::action::kPackageForward,
      .sn = row.sn,
      .detail = absl::StrCat("submission ", row.submission_id, " work key index ",
                             facts.work_key_index, receipt->duplicate ? " (kms: duplicate)" : ""),
      .result = "OK"};
  // With the finishes of the other workers' rows, in one write (finish_batch); the request
  // id is this row's, taken here on its own thread.
  absl::StatusOr<bool> done = finishes_.Call({.submission_id = row.submission_id,
                                              .claim_token = claim_token,
                                              .now_ms = NowUnixMs(clock_),
                                              .audit = audit::WithCurrentRequestId(audit)});
  if (!done.ok()) {
    // KMS has it; the row stays RECEIVED and the retry is a duplicate KMS recognises.
    spdlog::warn("forwarder: submission {} forwarded but not marked: {}", row.submission_id,
                 done.status().ToString());
    return Outcome::kLost;
  }
  if (!*done) return Outcome::kLost;
  spdlog::info("forwarder: submission {} sn={} forwarded{}", row.submission_id, row.sn,
               receipt->duplicate ? " (KMS already had it)" : "");
  return Outcome::kForwarded;
}

void Forwarder::Start() {
  absl::MutexLock lock(&mu_);
  if (running_) return;
  running_ = true;
  stop_ = false;
  wake_ = true;  // claim at once: rows may have waited for this start
  next_claim_at_ = WallDeadline(options_.interval);
  background_ = std::make_unique<Pass>(Pass{.background = true});
  for (int i = 0; i < options_.workers; ++i) {
    threads_.emplace_back([this, pass = background_.get()] { Work(*pass); });
  }
}

void Forwarder::Stop() {
  std::vector<std::thread> workers;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    running_ = false;
    workers = std::move(threads_);
    threads_.clear();
  }
  // The workers finish the rows already claimed into the queue, then end.
  for (std::thread& t : workers) t.join();
  // Passes on other threads (ForceForward from RPC threads) finish their claimed rows and
  // claim no more; their worker threads are joined before RunPass returns.
  absl::MutexLock lock(&mu_);
  background_.reset();
  mu_.Await(absl::Condition(this, &Forwarder::NoPassRunning));
}

bool Forwarder::stopping() const {
  absl::MutexLock lock(&mu_);
  return stop_;
}

void Forwarder::Wake() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

}  // namespace rkl::mtms
