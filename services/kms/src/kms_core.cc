#include "kms_core.h"

#include <algorithm>
#include <memory>
#include <set>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "rkl/common/request_id.h"
#include "rkl/common/retry_delay.h"
#include "rkl/common/status_macros.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/sn.h"
#include "rkl/protocol/transport_key.h"
#include "rkl/tr34/profile.h"
#include "rkl/tr34/tokens.h"
#include "spdlog/spdlog.h"

namespace rkl::kms {
namespace {

// True when `stored` (a Ctk_pk KMS kept) wraps the same payload as `incoming` under the
// same PK: KWP has no randomness, so equal W under one PK means equal TEK and AUK.
bool SameTransportKey(const Bytes& stored, const protocol::ParsedCtkPk& incoming) {
  absl::StatusOr<protocol::ParsedCtkPk> kept = protocol::ParseCtkPk(stored);
  return kept.ok() && kept->header.algorithm == incoming.header.algorithm &&
         kept->header.pk_kcv == incoming.header.pk_kcv && kept->wrapped == incoming.wrapped;
}

// A new Ctk_pk for an SN replaces the stored one only with a later created_at (header H,
// PROTOCOL §5). Equal bytes and the same TK were answered as duplicates before this.
absl::Status CheckNewerThanStored(const Bytes& stored, int64_t incoming_created_at_ms) {
  absl::StatusOr<protocol::ParsedCtkPk> kept = protocol::ParseCtkPk(stored);
  if (!kept.ok()) return absl::OkStatus();  // nothing comparable is stored: the new one wins
  const int64_t kept_at = kept->header.created_at_unix_ms;
  if (incoming_created_at_ms < kept_at) {
    return absl::FailedPreconditionError(
        absl::StrCat("ctk_pk: created_at ", incoming_created_at_ms,
                     " is older than the stored transport key's (", kept_at,
                     "); a newer package for this SN was accepted already"));
  }
  if (incoming_created_at_ms == kept_at) {
    return absl::FailedPreconditionError(
        absl::StrCat("ctk_pk: created_at ", incoming_created_at_ms,
                     " equals the stored transport key's, with another transport key; only a later "
                     "package replaces it"));
  }
  return absl::OkStatus();
}

// Optimistic writes that lose a race are decided again on fresh state, a bounded number
// of times: more than a handful of losses in a row means something is wrong.
constexpr int kMaxMutateAttempts = 8;
constexpr size_t kSessionIdBytes = 16;

std::string CodeName(const absl::Status& status) {
  return status.ok() ? "OK" : absl::StatusCodeToString(status.code());
}

std::string AlgorithmName(crypto::KeyAlgorithm a) {
  return std::string(crypto::KeyAlgorithmName(a));
}

bool IsSessionId(const std::string& id) {
  if (id.size() != 2 * kSessionIdBytes) return false;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

absl::Status CheckSessionId(const std::string& id) {
  if (IsSessionId(id)) return absl::OkStatus();
  return absl::InvalidArgumentError("session_id: must be 32 lower-case hex characters");
}

absl::Status CheckSubmissionId(const std::string& id) {
  if (id.size() > kMaxSubmissionIdLength) {
    return absl::InvalidArgumentError("mtms_submission_id: at most 128 characters");
  }
  for (char c : id) {
    if (c < 0x21 || c > 0x7E) {
      return absl::InvalidArgumentError("mtms_submission_id: printable ASCII without spaces");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSnPrefix(const std::string& prefix) {
  if (prefix.empty()) return absl::OkStatus();
  absl::Status s = protocol::ValidateSn(prefix);
  if (s.ok()) return s;
  return absl::InvalidArgumentError("sn_prefix: at most 32 characters of A-Z, 0-9 and '-'");
}

absl::StatusOr<int> PageSize(uint32_t requested) {
  if (requested == 0) return kDefaultPageSize;
  if (requested > static_cast<uint32_t>(kMaxPageSize)) {
    return absl::InvalidArgumentError("page.page_size: at most 1000");
  }
  return static_cast<int>(requested);
}

// A read BeginAuthentication may wait on: an SN KMS does not know yet, or one marked for
// re-key that has no new TK yet. Anything else (found, blocked, an error) answers now.
bool AwaitsTk(const absl::StatusOr<TerminalRecord>& read) {
  if (!read.ok()) return read.status().code() == absl::StatusCode::kNotFound;
  return read->state == TerminalState::kRekeyPending;
}

bool IsBlocked(TerminalState s) {
  return s == TerminalState::kLocked || s == TerminalState::kRevoked;
}

absl::Status BlockedError(TerminalState s) {
  return s == TerminalState::kLocked
             ? absl::FailedPreconditionError(
                   "sn: terminal is locked after repeated authentication failures; an "
                   "administrator must unlock it")
             : absl::FailedPreconditionError("sn: terminal is revoked");
}

// What refuses a terminal's proof in a session before any attempt, the first of: the
// terminal blocked; `stale` (the session no longer fits the terminal: `stale_error`); its
// token `token` not `blocks` cipher blocks of the terminal's algorithm (malformed input is
// not an attempt either).
absl::Status SessionRefusal(const TerminalRecord& terminal, bool stale, const char* stale_error,
                            const char* token, size_t size, size_t blocks) {
  if (IsBlocked(terminal.state)) return BlockedError(terminal.state);
  if (stale) return absl::FailedPreconditionError(stale_error);
  const size_t want = blocks * crypto::BlockSize(terminal.algorithm);
  if (size == want) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(token, ": must be ", want, " bytes for a ",
                                                 AlgorithmName(terminal.algorithm), " terminal"));
}

// The algorithms for whose cipher `blocks` blocks are `size` bytes.
std::vector<crypto::KeyAlgorithm> AlgorithmsForBlocks(size_t size, size_t blocks) {
  std::vector<crypto::KeyAlgorithm> out;
  for (crypto::KeyAlgorithm a : {crypto::KeyAlgorithm::kTdes2, crypto::KeyAlgorithm::kAes128,
                                 crypto::KeyAlgorithm::kAes256}) {
    if (blocks * crypto::BlockSize(a) == size) out.push_back(a);
  }
  return out;
}

// A terminal asked for by the other protocol's RPCs.
absl::Status WrongProtocolError(TerminalProtocol protocol) {
  return protocol == TerminalProtocol::kTr34
             ? absl::FailedPreconditionError(
                   "sn: terminal uses the TR-34 protocol (RequestKeyToken), not the patent "
                   "protocol")
             : absl::FailedPreconditionError(
                   "sn: terminal uses the patent protocol (BeginAuthentication), not TR-34");
}

std::string Describe(const TerminalRecord& t) {
  std::string d = absl::StrCat("state ", TerminalStateName(t.state), ", algorithm ",
                               AlgorithmName(t.algorithm));
  if (t.tek_index) {
    absl::StrAppend(&d, ", tek_index ", *t.tek_index, " tek_kcv ", t.tek_kcv, ", auk_index ",
                    *t.auk_index, " auk_kcv ", t.auk_kcv);
  }
  if (t.tmk_index) {
    absl::StrAppend(&d, ", tmk_index ", *t.tmk_index, " tmk_kcv ", t.tmk_kcv, " generation ",
                    t.tmk_generation);
  }
  return d;
}

}  // namespace

std::string TerminalActor(const std::string& sn) { return absl::StrCat("terminal:", sn); }

KmsCore::KmsCore(KmsRepository& repository, HsmPort& hsm, Clock clock, crypto::RandomSource random,
                 KmsCoreOptions options, CaPort* ca)
    : repository_(repository),
      hsm_(hsm),
      ca_(ca),
      clock_(std::move(clock)),
      random_(std::move(random)),
      options_(options) {}

int64_t KmsCore::NowMs() const { return absl::ToUnixMillis(clock_()); }

std::string KmsCore::NewSessionId() const {
  Bytes id(kSessionIdBytes);
  random_(id);
  return absl::AsciiStrToLower(ToHex(id));
}

AuditEntry KmsCore::Audit(std::string actor, std::string action, std::string sn, std::string detail,
                          const absl::Status& result) const {
  AuditEntry e;
  e.at_ms = NowMs();
  e.actor = std::move(actor);
  e.action = std::move(action);
  e.sn = std::move(sn);
  e.detail = std::move(detail);
  e.result = CodeName(result);
  // The flow's request id (docs/operations.md, "Request ids"); stored and MACed as it is.
  e.request_id = std::string(CurrentRequestId());
  return e;
}

void KmsCore::AuditFailure(const std::string& actor, const char* action, const std::string& sn,
                           const std::string& detail, const absl::Status& result) {
  std::string text =
      detail.empty() ? std::string(result.message()) : absl::StrCat(detail, ": ", result.message());
  absl::Status s = repository_.AppendAudit({Audit(actor, action, sn, text, result)});
  if (!s.ok()) spdlog::error("kms: audit write failed for {} on {}: {}", action, sn, s.ToString());
}

void KmsCore::CountRefusal(const RefusalScope& scope, const std::string& sn,
                           const absl::Status& refusal) {
  refusals_.Count(NowMs(), sn, scope.source, scope.action, refusal);
}

absl::StatusOr<int64_t> KmsCore::FlushRefusalCounts() {
  return refusals_.Flush([&](const std::vector<RefusalCount>& counts) {
    return repository_.AddRefusalCounts(counts);
  });
}

absl::StatusOr<int64_t> KmsCore::PurgeRefusalCounts() {
  return repository_.PurgeRefusalCounts(absl::ToUnixMillis(clock_() - options_.refusal_retention));
}

absl::StatusOr<TerminalRecord> KmsCore::Mutate(const std::string& sn, const Decision& decide,
                                               const TerminalRecord* known, bool* session_moved) {
  absl::Status last;
  for (int attempt = 0; attempt < kMaxMutateAttempts; ++attempt) {
    // A record the caller just read saves a round of reads; if it is stale, the versioned
    // UPDATE refuses it (ABORTED) and the next attempt reads afresh.
    TerminalRecord current;
    if (attempt == 0 && known != nullptr) {
      current = *known;
    } else {
      RKL_ASSIGN_OR_RETURN(current, repository_.GetTerminal(sn));
    }
    RKL_ASSIGN_OR_RETURN(std::optional<Change> change, decide(current));
    if (!change) return current;
    change->record.updated_at_ms = NowMs();
    if (change->session_insert) {
      last = repository_.UpdateTerminalAndInsertSession(change->record, change->audit,
                                                        *change->session_insert);
    } else if (change->session_move) {
      absl::StatusOr<bool> moved = repository_.UpdateTerminalAndMoveSession(
          change->record, change->audit, *change->session_move);
      last = moved.status();
      if (moved.ok() && session_moved != nullptr) *session_moved = *moved;
    } else {
      last = repository_.UpdateTerminal(change->record, change->cancel_sessions, change->audit);
    }
    if (last.ok()) {
      change->record.version = current.version + 1;
      return change->record;
    }
    if (last.code() != absl::StatusCode::kAborted) return last;
  }
  return absl::AbortedError(
      absl::StrCat("sn: terminal changed concurrently too often; retry (", last.message(), ")"));
}

// ---------------------------------------------------------------------------------------
// Intake

absl::StatusOr<KmsCore::CheckedTk> KmsCore::CheckSubmission(const std::string& actor,
                                                            const std::string& sn,
                                                            std::span<const uint8_t> ctk_pk,
                                                            const std::string& submission_id) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  RKL_RETURN_IF_ERROR(CheckSubmissionId(submission_id));
  if (ctk_pk.size() > protocol::kMaxCtkPkSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("ctk_pk: at most ", protocol::kMaxCtkPkSize, " bytes"));
  }
  // Layout only: the MAC is HSM #2's to check, at import (PROTOCOL §6).
  absl::StatusOr<protocol::ParsedCtkPk> parsed = protocol::ParseCtkPk(ctk_pk);
  if (!parsed.ok()) {
    AuditFailure(actor, rkl::audit::action::kTkSubmit, sn, "", parsed.status());
    return parsed.status();
  }
  if (parsed->header.sn != sn) {
    absl::Status s = absl::InvalidArgumentError("ctk_pk: header SN differs from sn");
    AuditFailure(actor, rkl::audit::action::kTkSubmit, sn, "", s);
    return s;
  }
  return CheckedTk{.sn = sn,
                   .ctk = Bytes(ctk_pk.begin(), ctk_pk.end()),
                   .parsed = *std::move(parsed),
                   .submission_id = submission_id};
}

std::pair<TerminalRecord, AuditEntry> KmsCore::FirstTk(const std::string& actor,
                                                       const CheckedTk& tk) {
  const crypto::KeyAlgorithm algorithm = tk.parsed.header.algorithm;
  TerminalRecord t;
  t.sn = tk.sn;
  t.state = TerminalState::kTkReceived;
  t.algorithm = algorithm;
  t.ctk_pk = tk.ctk;
  t.mtms_submission_id = tk.submission_id;
  t.tk_received_at_ms = t.created_at_ms = t.updated_at_ms = NowMs();
  return {std::move(t), Audit(actor, rkl::audit::action::kTkReceive, tk.sn,
                              absl::StrCat("algorithm ", AlgorithmName(algorithm), ", submission ",
                                           tk.submission_id))};
}

absl::StatusOr<SubmitResult> KmsCore::SubmitTransportKey(const std::string& actor,
                                                         const std::string& sn,
                                                         std::span<const uint8_t> ctk_pk,
                                                         const std::string& submission_id) {
  RKL_ASSIGN_OR_RETURN(const CheckedTk tk, CheckSubmission(actor, sn, ctk_pk, submission_id));
  // The common case first, without reading: most SNs arrive once.
  auto [first, audit] = FirstTk(actor, tk);
  absl::Status inserted = repository_.InsertTerminal(first, {audit});
  if (inserted.ok()) return SubmitResult{TerminalState::kTkReceived, false};
  if (inserted.code() != absl::StatusCode::kAlreadyExists) return inserted;
  return SubmitForKnownSn(actor, tk);
}

namespace {

// An item of a SubmitTransportKeys batch is served under its own flow's request id.
ScopedRequestId ItemScope(const TkSubmission& item) {
  return ScopedRequestId(item.request_id.empty() ? std::string(CurrentRequestId())
                                                 : item.request_id);
}

// One line per item of a batch, under its request id: the batch call's RPC line names only
// the id of the package whose MTMS worker sent it.
void LogItem(const TkSubmission& item, const absl::StatusOr<SubmitResult>& result) {
  if (result.ok()) {
    spdlog::info("intake: sn={} submission {} {}", item.sn, item.mtms_submission_id,
                 result->duplicate ? "duplicate" : "stored");
  } else {
    spdlog::info("intake: sn={} submission {} refused: {}", item.sn, item.mtms_submission_id,
                 result.status().ToString());
  }
}

}  // namespace

absl::StatusOr<std::vector<absl::StatusOr<SubmitResult>>> KmsCore::SubmitTransportKeys(
    const std::string& actor, std::span<const TkSubmission> items) {
  if (items.empty() || items.size() > kMaxSubmitBatch) {
    return absl::InvalidArgumentError(
        absl::StrCat("items: between 1 and ", kMaxSubmitBatch, " transport keys"));
  }
  std::vector<absl::StatusOr<SubmitResult>> out(items.size(),
                                                absl::InternalError("kms: item not answered"));
  if (items.size() == 1) {
    const ScopedRequestId scope = ItemScope(items[0]);
    out[0] = SubmitTransportKey(actor, items[0].sn, items[0].ctk_pk, items[0].mtms_submission_id);
    LogItem(items[0], out[0]);
    return out;
  }
  // Each item's own checks, then one write for the first TK of every SN named once so far.
  std::vector<std::optional<CheckedTk>> checked(items.size());
  std::vector<size_t> firsts;  // items whose SN no earlier item of the batch named
  std::vector<KmsRepository::FirstTransportKey> rows;
  std::set<std::string_view> named;
  for (size_t i = 0; i < items.size(); ++i) {
    const ScopedRequestId scope = ItemScope(items[i]);
    absl::StatusOr<CheckedTk> tk =
        CheckSubmission(actor, items[i].sn, items[i].ctk_pk, items[i].mtms_submission_id);
    if (!tk.ok()) {
      out[i] = tk.status();
      continue;
    }
    checked[i] = *std::move(tk);
    if (!named.insert(items[i].sn).second) continue;
    firsts.push_back(i);
    auto [terminal, audit] = FirstTk(actor, *checked[i]);  // audit under the item's id
    rows.push_back({.terminal = std::move(terminal), .audit = {std::move(audit)}});
  }
  std::vector<bool> stored(items.size(), false);
  if (!rows.empty()) {
    absl::StatusOr<std::vector<bool>> inserted = repository_.InsertFirstTransportKeys(rows);
    if (!inserted.ok()) {
      // Nothing was written, and the single call's way would meet the same database.
      for (size_t i = 0; i < items.size(); ++i) {
        if (checked[i]) out[i] = inserted.status();
      }
    } else {
      for (size_t n = 0; n < firsts.size(); ++n) {
        if (!(*inserted)[n]) continue;
        stored[firsts[n]] = true;
        out[firsts[n]] = SubmitResult{TerminalState::kTkReceived, false};
      }
      // Known SNs, and SNs named again: the single call's way, in batch order.
      for (size_t i = 0; i < items.size(); ++i) {
        if (!checked[i] || stored[i]) continue;
        const ScopedRequestId scope = ItemScope(items[i]);
        out[i] = SubmitForKnownSn(actor, *checked[i]);
      }
    }
  }
  for (size_t i = 0; i < items.size(); ++i) {
    const ScopedRequestId scope = ItemScope(items[i]);
    LogItem(items[i], out[i]);
  }
  return out;
}

absl::StatusOr<SubmitResult> KmsCore::SubmitForKnownSn(const std::string& actor,
                                                       const CheckedTk& tk) {
  const std::string& sn = tk.sn;
  const std::string& submission_id = tk.submission_id;
  const crypto::KeyAlgorithm algorithm = tk.parsed.header.algorithm;
  const Bytes& ctk = tk.ctk;
  auto insert_first = [&]() -> absl::Status {
    auto [first, audit] = FirstTk(actor, tk);
    return repository_.InsertTerminal(first, {audit});
  };

  for (int attempt = 0; attempt < kMaxMutateAttempts; ++attempt) {
    absl::StatusOr<TerminalRecord> existing = repository_.GetTerminal(sn);
    if (existing.status().code() == absl::StatusCode::kNotFound) {
      absl::Status s = insert_first();  // gone meanwhile (never, today: rows are not deleted)
      if (s.code() == absl::StatusCode::kAlreadyExists) continue;  // a concurrent first TK
      RKL_RETURN_IF_ERROR(s);
      return SubmitResult{TerminalState::kTkReceived, false};
    }
    RKL_RETURN_IF_ERROR(existing.status());
    TerminalRecord t = *std::move(existing);
    if (t.protocol != TerminalProtocol::kPatent) {
      absl::Status s = WrongProtocolError(t.protocol);
      AuditFailure(actor, rkl::audit::action::kTkSubmit, sn,
                   absl::StrCat("submission ", submission_id), s);
      return s;
    }
    // An exact repeat (an MTMS outbox retry) changes nothing, whatever the state.
    if (t.ctk_pk == ctk) return SubmitResult{t.state, true};
    // Nor does the same transport key in another package (the operator terminal sent it
    // again after a lost receipt, so MTMS made a second Ctk_pk): W = AES-KWP(PK, P) is
    // deterministic, so the same W under the same PK is the same TEK and AUK. Superseding
    // would only cancel the session the terminal may already have opened on it.
    if (SameTransportKey(t.ctk_pk, tk.parsed)) return SubmitResult{t.state, true};

    // Packages for one SN arrive in any order (MTMS retries with backoff, replicas race):
    // only a strictly newer one may replace the stored TK, so a package that waited in a
    // retry queue can never overwrite the TK the terminal holds now.
    absl::Status refusal = CheckNewerThanStored(t.ctk_pk, tk.parsed.header.created_at_unix_ms);
    if (!refusal.ok()) {
      AuditFailure(actor, rkl::audit::action::kTkSubmit, sn,
                   absl::StrCat("submission ", submission_id), refusal);
      return refusal;
    }
    switch (t.state) {
      case TerminalState::kRevoked:
      case TerminalState::kLocked:
        // Superseding would also reset a lock: an administrator decides first.
        refusal = BlockedError(t.state);
        break;
      case TerminalState::kInstalled:
        refusal = absl::FailedPreconditionError(
            "sn: terminal has an installed TMK; an administrator must mark it for re-key "
            "before a new transport key is accepted");
        break;
      default:
        break;
    }
    if (!refusal.ok()) {
      AuditFailure(actor, rkl::audit::action::kTkSubmit, sn,
                   absl::StrCat("submission ", submission_id), refusal);
      return refusal;
    }

    const std::string before = Describe(t);
    const int64_t expected_version = t.version;
    // A TMK exists only once it was exported, under the TEK being superseded now (or it
    // is the installed TMK of a re-key): the next delivery must carry a new one.
    if (t.tmk_index) t.replace_tmk = true;
    t.state = TerminalState::kTkReceived;
    t.algorithm = algorithm;
    t.ctk_pk = ctk;
    t.mtms_submission_id = submission_id;
    t.tk_received_at_ms = NowMs();
    t.tek_index.reset();
    t.auk_index.reset();
    t.tek_kcv.clear();
    t.auk_kcv.clear();
    t.updated_at_ms = NowMs();
    t.version = expected_version;
    absl::Status s = repository_.UpdateTerminal(
        t, /*cancel_sessions=*/true,
        {Audit(actor, rkl::audit::action::kTkSupersede, sn,
               absl::StrCat("superseded (", before, ") by a new TK, algorithm ",
                            AlgorithmName(algorithm), ", submission ", submission_id,
                            t.rekey_requested ? ", re-key" : ""))});
    if (s.code() == absl::StatusCode::kAborted) continue;
    RKL_RETURN_IF_ERROR(s);
    return SubmitResult{TerminalState::kTkReceived, false};
  }
  return absl::AbortedError("sn: terminal changed concurrently too often; retry");
}

// ---------------------------------------------------------------------------------------
// Authentication and delivery

AuditEntry KmsCore::BeginAudit(const AuthSession& session, const std::string& auk_kcv) {
  return Audit(TerminalActor(session.sn), rkl::audit::action::kAuthBegin, session.sn,
               absl::StrCat("session ", session.id.substr(0, 8), "…, auk_index ", session.auk_index,
                            " auk_kcv ", auk_kcv));
}

absl::StatusOr<TerminalRecord> KmsCore::EnsureImported(
    TerminalRecord terminal, std::span<const uint8_t> rnd1,
    std::optional<AuthChallengeResult>& challenge, AuthSession* session, bool* opened) {
  *opened = false;
  if (terminal.auk_index) return terminal;
  const std::string& sn = terminal.sn;
  // One HSM command: import TEK/AUK and answer the terminal's challenge with the new AUK.
  absl::StatusOr<ImportedAndChallenged> both =
      hsm_.ImportAndChallenge(options_.pk_index, options_.mak_index, sn, terminal.ctk_pk, rnd1);
  absl::StatusOr<ImportedTransportKey> imported =
      both.ok() ? absl::StatusOr<ImportedTransportKey>(both->imported)
                : absl::StatusOr<ImportedTransportKey>(both.status());
  if (both.ok()) challenge = both->challenge;
  if (!imported.ok()) {
    absl::Status s = imported.status();
    if (s.code() == absl::StatusCode::kUnauthenticated) {
      // One fixed text: which check failed inside HSM #2 is nobody's business.
      s = absl::UnauthenticatedError("sn: the terminal's transport key failed verification");
    }
    AuditFailure(TerminalActor(sn), rkl::audit::action::kTkImport, sn,
                 absl::StrCat("pk_index ", options_.pk_index, " mak_index ", options_.mak_index),
                 s);
    return s;
  }
  if (imported->algorithm != terminal.algorithm) {
    absl::Status s = absl::InternalError("HSM #2 reported another algorithm than Ctk_pk holds");
    AuditFailure(TerminalActor(sn), rkl::audit::action::kTkImport, sn, "", s);
    return s;
  }
  const Bytes ctk = terminal.ctk_pk;
  bool with_session = false;
  auto decide = [&](const TerminalRecord& cur) -> absl::StatusOr<std::optional<Change>> {
    with_session = false;
    if (cur.ctk_pk != ctk) {
      return absl::AbortedError("sn: transport key superseded during import; start again");
    }
    // Another replica imported concurrently: keep the first result (the spare keys in
    // HSM #2 are bound to this SN and never used); the caller opens the session on it.
    if (cur.auk_index) return std::nullopt;
    Change c{cur};
    c.record.tek_index = imported->tek_index;
    c.record.tek_kcv = imported->tek_kcv;
    c.record.auk_index = imported->auk_index;
    c.record.auk_kcv = imported->auk_kcv;
    c.audit.push_back(
        Audit(TerminalActor(sn), rkl::audit::action::kTkImport, sn,
              absl::StrCat("tek_index ", imported->tek_index, " tek_kcv ", imported->tek_kcv,
                           ", auk_index ", imported->auk_index, " auk_kcv ", imported->auk_kcv)));
    // The session answered by this import's challenge, in the same write.
    if (session != nullptr && challenge) {
      session->id = NewSessionId();
      session->auk_index = imported->auk_index;
      session->rnd2 = challenge->rnd2;
      c.audit.push_back(BeginAudit(*session, imported->auk_kcv));
      c.session_insert = *session;
      with_session = true;
    }
    return c;
  };
  absl::StatusOr<TerminalRecord> after = Mutate(sn, decide, &terminal);
  // 128 random bits collide only with a broken RNG: a new id, twice at most.
  for (int retry = 0;
       retry < 2 && with_session && after.status().code() == absl::StatusCode::kAlreadyExists;
       ++retry) {
    after = Mutate(sn, decide, &terminal);
  }
  if (after.ok()) *opened = with_session;
  return after;
}

absl::StatusOr<TerminalRecord> KmsCore::ReadForBegin(const std::string& sn, absl::Duration wait,
                                                     absl::Time call_deadline) {
  const absl::Time now = clock_();
  const absl::Time deadline =
      std::min(now + std::min(wait, options_.tk_wait_max), call_deadline - kTkWaitAnswerMargin);
  if (options_.tk_waits == nullptr || deadline <= now) return repository_.GetTerminal(sn);
  // Registered before the read: a TK committed after it signals the ticket. A found
  // terminal (the common case) costs the read alone.
  std::unique_ptr<TkWaitPort::Ticket> ticket = options_.tk_waits->Register(sn);
  absl::StatusOr<TerminalRecord> read = repository_.GetTerminal(sn);
  if (!AwaitsTk(read)) return read;
  if (ticket == nullptr) {
    Count(options_.metrics.tk_waits_over_capacity);
    return read;
  }
  if (options_.metrics.tk_waiters != nullptr) options_.metrics.tk_waiters->Increment();
  for (;;) {
    const TkWaitPort::WaitResult woken = ticket->Wait(deadline);
    // After a deadline or a close too: a TK that came with it is still taken.
    read = repository_.GetTerminal(sn);
    if (!AwaitsTk(read) || woken != TkWaitPort::WaitResult::kSignalled || clock_() >= deadline) {
      break;
    }
  }
  if (options_.metrics.tk_waiters != nullptr) options_.metrics.tk_waiters->Decrement();
  Count(AwaitsTk(read) ? options_.metrics.tk_waits_deadline : options_.metrics.tk_waits_arrived);
  return read;
}

absl::StatusOr<BeginResult> KmsCore::BeginAuthentication(const std::string& sn,
                                                         std::span<const uint8_t> rnd1,
                                                         std::string_view source,
                                                         absl::Duration wait,
                                                         absl::Time call_deadline) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  const std::string actor = TerminalActor(sn);
  absl::StatusOr<TerminalRecord> terminal = ReadForBegin(sn, wait, call_deadline);
  if (!terminal.ok()) {
    if (terminal.status().code() == absl::StatusCode::kNotFound) {
      const uint64_t n = ++unknown_sn_begins_;
      if ((n & (n - 1)) == 0) {  // 1, 2, 4, 8, ...: visible without a line per probe
        spdlog::info("kms: BeginAuthentication for an unknown SN ({} so far; latest {})", n, sn);
      }
      CountRefusal({rkl::audit::action::kAuthBegin, source}, kAnySn, terminal.status());
    }
    return terminal.status();
  }
  absl::Status refusal;
  // An INSTALLED terminal may authenticate again: one that lost ConfirmInstallation's reply
  // proves AUK in a fresh session and confirms the same TMK (CompleteAuthentication).
  if (terminal->protocol != TerminalProtocol::kPatent) {
    refusal = WrongProtocolError(terminal->protocol);
  } else if (IsBlocked(terminal->state)) {
    refusal = BlockedError(terminal->state);
  } else if (terminal->state == TerminalState::kRekeyPending) {
    refusal = absl::FailedPreconditionError(
        "sn: terminal is marked for re-key and awaits a new transport key");
  } else {
    refusal = protocol::CheckNonce(terminal->algorithm, rnd1, "rnd1");
  }
  if (!refusal.ok()) {
    CountRefusal({rkl::audit::action::kAuthBegin, source}, sn, refusal);
    return refusal;
  }

  AuthSession session;
  session.sn = sn;
  session.rnd1.assign(rnd1.begin(), rnd1.end());
  session.state = SessionState::kOpen;
  session.created_at_ms = NowMs();
  session.expires_at_ms = absl::ToUnixMillis(clock_() + options_.session_ttl);

  // A first Begin imports the TK and opens the session in one write (`opened`).
  std::optional<AuthChallengeResult> fresh_challenge;
  bool opened = false;
  RKL_ASSIGN_OR_RETURN(TerminalRecord t, EnsureImported(*std::move(terminal), rnd1, fresh_challenge,
                                                        &session, &opened));
  if (opened) {
    return BeginResult{session.id, fresh_challenge->crnd1, fresh_challenge->rnd2,
                       session.expires_at_ms};
  }
  absl::StatusOr<AuthChallengeResult> challenge =
      fresh_challenge ? absl::StatusOr<AuthChallengeResult>(*std::move(fresh_challenge))
                      : hsm_.AuthChallenge(*t.auk_index, sn, rnd1);
  if (!challenge.ok()) {
    AuditFailure(actor, rkl::audit::action::kAuthBegin, sn,
                 absl::StrCat("auk_index ", *t.auk_index), challenge.status());
    return challenge.status();
  }

  session.auk_index = *t.auk_index;
  session.rnd2 = challenge->rnd2;
  for (int attempt = 0;; ++attempt) {
    session.id = NewSessionId();
    absl::Status s = repository_.InsertSession(session, {BeginAudit(session, t.auk_kcv)});
    if (s.ok()) break;
    if (s.code() == absl::StatusCode::kFailedPrecondition) {
      // Locked, revoked, installed or given a new TK while HSM #2 made the challenge: no
      // session was opened. Say why, as a Begin that came later would.
      absl::StatusOr<TerminalRecord> now = repository_.GetTerminal(sn);
      if (now.ok() && IsBlocked(now->state)) s = BlockedError(now->state);
      return s;
    }
    // 128 random bits collide only with a broken RNG; do not loop forever on one.
    if (s.code() != absl::StatusCode::kAlreadyExists || attempt >= 2) return s;
  }
  return BeginResult{session.id, challenge->crnd1, challenge->rnd2, session.expires_at_ms};
}

absl::StatusOr<AuthSession> KmsCore::LoadSession(absl::StatusOr<AuthSession> session,
                                                 const std::string& sn, SessionState want,
                                                 const RefusalScope& scope) {
  absl::Status refusal;
  if (!session.ok()) {
    if (session.status().code() != absl::StatusCode::kNotFound) return session.status();
    refusal = session.status();
  } else if (session->sn != sn) {
    // Indistinguishable from an unknown session: the caller learns nothing about other
    // terminals' sessions, and the session stays usable by its own terminal.
    refusal = absl::NotFoundError("session_id: no such session");
  } else if (session->state == SessionState::kCancelled) {
    refusal = absl::FailedPreconditionError(
        "session_id: session was cancelled (new transport key, lock or revocation)");
  } else if (session->state != want) {
    refusal = absl::FailedPreconditionError(
        want == SessionState::kOpen ? "session_id: session already used"
                                    : "session_id: session is not awaiting an install proof");
  } else if (NowMs() >= session->expires_at_ms) {
    refusal = absl::FailedPreconditionError("session_id: session expired");
  }
  if (!refusal.ok()) {
    // The SN is one KMS knows only when it is the session's.
    CountRefusal(scope, session.ok() && session->sn == sn ? sn : std::string(kAnySn), refusal);
    return refusal;
  }
  return session;
}

absl::StatusOr<KmsCore::ClaimedSession> KmsCore::ClaimAttempt(
    const std::string& id, const std::string& sn, SessionState from, SessionState to,
    const RefusalScope& scope, std::optional<SessionState> done, const ProofCheck& check) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  RKL_RETURN_IF_ERROR(CheckSessionId(id));
  const ProofAttemptPolicy policy = AttemptPolicy();
  // A session not claimable at first may have moved back to `from` by the time it is read
  // (a claim handed back after an HSM error): then it is claimed as anew, once.
  for (int round = 0; round < 2; ++round) {
    // The common case in one statement: the claim, the charge (counted before HSM #2 sees
    // the proof, docs/kms.md "Lockout") and both reads.
    RKL_ASSIGN_OR_RETURN(
        std::optional<KmsRepository::ClaimedAttempt> claimed,
        repository_.ClaimSessionAndChargeAttempt(id, sn, from, to, check.pre, policy));
    if (claimed) {
      const absl::Status refusal = check.refusal(claimed->session, claimed->terminal);
      if (claimed->attempt.allowed && refusal.ok()) {
        claimed->terminal.consecutive_failures = claimed->attempt.failures;
        claimed->terminal.version = claimed->attempt.version;
        return ClaimedSession{std::move(claimed->session), std::move(claimed->terminal),
                              claimed->attempt};
      }
      if (claimed->attempt.allowed) {
        // `check.pre` let through what `check.refusal` refuses: no attempt after all.
        UnclaimSession(id, to, from);
        RefundAttempt(sn);
      }
      // Refused before any attempt: the session stays as it was.
      if (!refusal.ok()) {
        CountRefusal(scope, sn, refusal);
        return refusal;
      }
      // While the SN backs off the session is left unused. Not counted, not audited: a
      // refusal that costs a write would let anyone make KMS write.
      RKL_RETURN_IF_ERROR(ChargeRefusal(claimed->attempt, policy));
      break;  // the session and its attempt were free: another claim took the session
    }
    // Not claimed: read both to tell the terminal why (counted by LoadSession).
    RKL_ASSIGN_OR_RETURN(KmsRepository::SessionAndTerminal read,
                         repository_.GetSessionAndTerminal(id, sn));
    if (done && read.session.ok() && read.session->sn == sn && read.session->state == *done &&
        read.terminal.ok()) {
      return ClaimedSession{*std::move(read.session), *std::move(read.terminal), {}, true};
    }
    RKL_ASSIGN_OR_RETURN(AuthSession session,
                         LoadSession(std::move(read.session), sn, from, scope));
    RKL_ASSIGN_OR_RETURN(TerminalRecord terminal, std::move(read.terminal));
    const absl::Status refusal = check.refusal(session, terminal);
    if (!refusal.ok()) {
      CountRefusal(scope, sn, refusal);
      return refusal;
    }
  }
  absl::Status s = absl::FailedPreconditionError(absl::StrCat("session_id: ", check.not_claimable));
  CountRefusal(scope, sn, s);
  return s;
}

void KmsCore::UnclaimSession(const std::string& id, SessionState claimed, SessionState from) {
  absl::StatusOr<bool> moved = repository_.TransitionSession(id, claimed, from, std::nullopt);
  if (!moved.ok() || !*moved) {
    spdlog::warn("kms: could not hand session {}… back after a refusal: {}", id.substr(0, 8),
                 moved.ok() ? "it moved on" : moved.status().ToString());
  }
}

void KmsCore::ReleaseSession(const std::string& id, SessionState claimed, SessionState reopen,
                             const absl::Status& error) {
  SessionState next = IsRetryableHsmError(error) ? reopen : SessionState::kFailed;
  absl::StatusOr<bool> moved = repository_.TransitionSession(id, claimed, next, std::nullopt);
  if (!moved.ok()) {
    spdlog::warn("kms: could not release session {}…: {}", id.substr(0, 8),
                 moved.status().ToString());
  }
}

ProofAttemptPolicy KmsCore::AttemptPolicy() const {
  return ProofAttemptPolicy{.now_ms = NowMs(),
                            .backoff_base_ms = absl::ToInt64Milliseconds(options_.backoff_base),
                            .backoff_max_ms = absl::ToInt64Milliseconds(options_.backoff_max),
                            .lock_after = static_cast<uint32_t>(options_.lockout_threshold)};
}

absl::Status KmsCore::ChargeRefusal(const ProofAttempt& a, const ProofAttemptPolicy& policy) {
  const int64_t now = policy.now_ms;
  if (a.failures >= policy.lock_after) {
    // The attempt that reached the threshold locks the SN when HSM #2 has judged it.
    return absl::FailedPreconditionError(
        absl::StrCat("sn: no authentication attempts left after ", a.failures,
                     " consecutive failures; an administrator must unlock the terminal"));
  }
  if (a.retry_after_ms <= now) return absl::OkStatus();
  // Backing off. Not audited:
  // a refusal that costs a write would let anyone make KMS write.
  const absl::Duration wait =
      std::max(absl::Milliseconds(a.retry_after_ms - now), absl::Milliseconds(1));
  return RateLimitedError(
      absl::StrCat("sn: ", a.failures,
                   " consecutive failed proofs; the next attempt is allowed later"),
      wait);
}

absl::StatusOr<ProofAttempt> KmsCore::ChargeAttempt(const std::string& sn,
                                                    TerminalRecord& terminal) {
  const ProofAttemptPolicy policy = AttemptPolicy();
  RKL_ASSIGN_OR_RETURN(ProofAttempt a, repository_.ChargeProofAttempt(sn, policy));
  if (a.allowed) {
    terminal.consecutive_failures = a.failures;
    terminal.version = a.version;
    return a;
  }
  RKL_RETURN_IF_ERROR(ChargeRefusal(a, policy));
  // Neither backing off nor out of attempts: locked or revoked since it was read.
  return absl::FailedPreconditionError("sn: terminal is locked or revoked");
}

void KmsCore::RefundAttempt(const std::string& sn) {
  absl::Status s = repository_.RefundProofAttempt(sn, NowMs());
  if (!s.ok()) spdlog::warn("kms: could not refund a proof attempt of {}: {}", sn, s.ToString());
}

absl::Status KmsCore::RecordFailure(const std::string& sn, const char* action,
                                    const std::string& detail, const ProofAttempt& attempt,
                                    const std::string& message) {
  // The counter went up when the attempt was charged; this records what it was.
  Count(options_.metrics.auth_failures);
  const uint32_t threshold = static_cast<uint32_t>(options_.lockout_threshold);
  const int64_t now = NowMs();
  bool locks = false;  // the change written locks the terminal
  absl::StatusOr<TerminalRecord> after =
      Mutate(sn, [&](const TerminalRecord& cur) -> absl::StatusOr<std::optional<Change>> {
        Change c{cur};
        locks = false;
        c.audit.push_back(
            Audit(TerminalActor(sn), action, sn,
                  absl::StrCat(
                      detail, ", consecutive failures ", cur.consecutive_failures,
                      cur.consecutive_failures < threshold
                          ? absl::StrCat(", next attempt in ",
                                         std::max<int64_t>(0, attempt.retry_after_ms - now), " ms")
                          : ""),
                  absl::UnauthenticatedError("")));
        if (cur.consecutive_failures >= threshold && !IsBlocked(cur.state)) {
          locks = true;
          c.record.state_before_lock = cur.state;
          c.record.state = TerminalState::kLocked;
          c.cancel_sessions = true;
          c.audit.push_back(Audit("kms", rkl::audit::action::kTerminalLock, sn,
                                  absl::StrCat(c.record.consecutive_failures,
                                               " consecutive authentication failures (was ",
                                               TerminalStateName(cur.state), ")")));
        }
        return c;
      });
  if (!after.ok()) return after.status();
  if (locks) Count(options_.metrics.lockouts);
  if (after->state == TerminalState::kLocked) {
    spdlog::warn("kms: terminal {} locked after {} consecutive failures", sn,
                 after->consecutive_failures);
    return absl::UnauthenticatedError(
        absl::StrCat(message, message.empty() ? "" : "; ", "the terminal is now locked"));
  }
  const absl::Duration wait =
      absl::Milliseconds(std::max<int64_t>(0, attempt.retry_after_ms - now));
  return WithRetryDelay(
      absl::UnauthenticatedError(absl::StrCat(message, "; next attempt allowed in ",
                                              absl::ToInt64Milliseconds(wait), " ms")),
      wait);
}

absl::StatusOr<DeliveryResult> KmsCore::CompleteAuthentication(const std::string& session_id,
                                                               const std::string& sn,
                                                               std::span<const uint8_t> crnd2,
                                                               std::string_view source) {
  const std::string actor = TerminalActor(sn);
  // Refused before any attempt (the session stays open): the terminal blocked, its
  // transport key changed since the session began, or Crnd2 not two blocks of its
  // algorithm.
  const ProofCheck check{.pre = {.states = {},
                                 .session_auk = true,
                                 .tek = true,
                                 .algorithms = AlgorithmsForBlocks(crnd2.size(), 2)},
                         .refusal =
                             [&](const AuthSession& session, const TerminalRecord& terminal) {
                               return SessionRefusal(
                                   terminal,
                                   terminal.auk_index != session.auk_index || !terminal.tek_index,
                                   "session_id: the terminal's transport key changed; start again",
                                   "crnd2", crnd2.size(), 2);
                             },
                         .not_claimable = "session already used"};
  RKL_ASSIGN_OR_RETURN(
      ClaimedSession claim,
      ClaimAttempt(session_id, sn, SessionState::kOpen, SessionState::kVerifying,
                   RefusalScope{rkl::audit::action::kAuthComplete, source}, std::nullopt, check));
  const AuthSession& session = claim.session;
  const TerminalRecord& terminal = claim.terminal;
  const ProofAttempt& attempt = claim.attempt;

  // S403–S405 and S112–S113 in one HSM #2 command: Crnd2 verified, then the TMK (the
  // existing one unless this is a re-key) made and exported under TEK — nothing is made or
  // exported unless Crnd2 verified.
  absl::StatusOr<AuthenticatedDelivery> out =
      hsm_.AuthenticateAndDeliver(session.auk_index, sn, session.rnd1, session.rnd2, crnd2,
                                  terminal.algorithm, terminal.replace_tmk, *terminal.tek_index);
  if (!out.ok()) {
    ReleaseSession(session_id, SessionState::kVerifying, SessionState::kOpen, out.status());
    if (out.status().code() == absl::StatusCode::kUnauthenticated) {
      return RecordFailure(
          sn, rkl::audit::action::kAuthFail,
          absl::StrCat("crnd2 did not verify, session ", session_id.substr(0, 8), "…"), attempt,
          "crnd2: authentication token does not verify");
    }
    RefundAttempt(sn);
    AuditFailure(actor, rkl::audit::action::kTmkDeliver, sn, "HSM #2 AuthenticateAndDeliver",
                 out.status());
    return out.status();
  }
  const GeneratedTmk* tmk = &out->tmk;
  const ExportedKeyBlock* block = &out->block;

  // Authenticated (the failure streak ends here) and the TMK delivered: one update.
  bool moved = false;
  bool revoked_meanwhile = false;
  absl::StatusOr<TerminalRecord> delivered = Mutate(
      sn,
      [&](const TerminalRecord& cur) -> absl::StatusOr<std::optional<Change>> {
        revoked_meanwhile = cur.state == TerminalState::kRevoked;
        if (IsBlocked(cur.state)) return BlockedError(cur.state);
        if (cur.auk_index != session.auk_index) {
          return absl::FailedPreconditionError(
              "session_id: the terminal's transport key changed; start again");
        }
        Change c{cur};
        c.record.consecutive_failures = 0;
        c.audit.push_back(Audit(
            actor, rkl::audit::action::kAuthOk, sn,
            absl::StrCat("session ", session_id.substr(0, 8), "…, auk_index ", session.auk_index)));
        const bool new_tmk = tmk->created || cur.tmk_index != tmk->tmk_index;
        // An installed terminal that authenticates again gets its installed TMK again, under
        // its own TEK (what it got before), and stays INSTALLED: it only needs a session in
        // which to confirm it. Any other TMK means it is not installed any more.
        const bool still_installed = cur.state == TerminalState::kInstalled && !new_tmk;
        if (new_tmk) c.record.tmk_generation = cur.tmk_generation + 1;
        c.record.tmk_index = tmk->tmk_index;
        c.record.tmk_kcv = tmk->kcv;
        c.record.replace_tmk = false;
        if (!still_installed) c.record.state = TerminalState::kTmkDelivered;
        c.audit.push_back(Audit(
            actor, rkl::audit::action::kTmkDeliver, sn,
            absl::StrCat(new_tmk ? "new" : "existing", " TMK tmk_index ", tmk->tmk_index,
                         " tmk_kcv ", tmk->kcv, " generation ", c.record.tmk_generation,
                         ", under TEK tek_index ", *cur.tek_index, " tek_kcv ", block->kek_kcv,
                         still_installed ? ", terminal already INSTALLED" : "")));
        // The session awaits the install proof of this TMK: same transaction.
        c.session_move = SessionMove{session_id, SessionState::kVerifying,
                                     SessionState::kAuthenticated, tmk->kcv};
        return c;
      },
      &terminal, &moved);
  if (!delivered.ok()) {
    ReleaseSession(session_id, SessionState::kVerifying, SessionState::kOpen, delivered.status());
    if (revoked_meanwhile) {
      // Revoked while HSM #2 made the TMK: the revocation may have destroyed the terminal's
      // keys before that TMK existed, so destroy again (it is discarded here, never sent).
      (void)DestroyKeys("kms", sn, "revoked during delivery");
    }
    return delivered.status();
  }
  if (!moved) return absl::AbortedError("session_id: session changed concurrently");
  Count(options_.metrics.patent_deliveries);
  return DeliveryResult{block->key_block, tmk->kcv};
}

absl::StatusOr<TerminalState> KmsCore::ConfirmInstallation(const std::string& session_id,
                                                           const std::string& sn,
                                                           std::span<const uint8_t> proof,
                                                           std::string_view source) {
  const std::string actor = TerminalActor(sn);
  // TMK_DELIVERED, or INSTALLED with this session's TMK: a terminal that lost the reply to
  // its confirmation authenticated again and proves the same TMK in a fresh session.
  // Anything else, the terminal blocked or a proof not one block of its algorithm is
  // refused before any attempt (the session stays as it was).
  const ProofCheck check{
      .pre = {.states = {TerminalState::kTmkDelivered, TerminalState::kInstalled},
              .session_auk = true,
              .session_tmk = true,
              .algorithms = AlgorithmsForBlocks(proof.size(), 1)},
      .refusal =
          [&](const AuthSession& session, const TerminalRecord& terminal) {
            const bool pending = terminal.state == TerminalState::kTmkDelivered ||
                                 terminal.state == TerminalState::kInstalled;
            return SessionRefusal(
                terminal,
                !pending || terminal.tmk_kcv != session.tmk_kcv ||
                    terminal.auk_index != session.auk_index,
                "session_id: the TMK delivered in this session is no longer pending installation",
                "proof", proof.size(), 1);
          },
      .not_claimable = "session is not awaiting an install proof"};
  RKL_ASSIGN_OR_RETURN(
      ClaimedSession claim,
      ClaimAttempt(session_id, sn, SessionState::kAuthenticated, SessionState::kConfirming,
                   RefusalScope{rkl::audit::action::kInstallConfirm, source},
                   SessionState::kConfirmed, check));
  const AuthSession& session = claim.session;
  const TerminalRecord& terminal = claim.terminal;
  if (claim.repeat) return RepeatConfirmation(session, terminal, proof, source);
  const ProofAttempt& attempt = claim.attempt;
  absl::Status verified = hsm_.VerifyInstallProof(session.auk_index, sn, session.tmk_kcv,
                                                  session.rnd1, session.rnd2, proof);
  if (!verified.ok()) {
    ReleaseSession(session_id, SessionState::kConfirming, SessionState::kAuthenticated, verified);
    if (verified.code() == absl::StatusCode::kUnauthenticated) {
      return RecordFailure(sn, rkl::audit::action::kInstallFail,
                           absl::StrCat("install proof did not verify, tmk_kcv ", session.tmk_kcv),
                           attempt, "proof: install proof does not verify");
    }
    RefundAttempt(sn);
    AuditFailure(actor, rkl::audit::action::kInstallConfirm, sn, "HSM #2 VerifyInstallProof",
                 verified);
    return verified;
  }
  absl::StatusOr<TerminalRecord> installed = Mutate(
      sn,
      [&](const TerminalRecord& cur) -> absl::StatusOr<std::optional<Change>> {
        const bool again = cur.state == TerminalState::kInstalled;
        if ((!again && cur.state != TerminalState::kTmkDelivered) ||
            cur.tmk_kcv != session.tmk_kcv) {
          return absl::FailedPreconditionError(
              "session_id: the TMK delivered in this session is no longer pending "
              "installation");
        }
        Change c{cur};
        c.record.state = TerminalState::kInstalled;
        if (!again) c.record.installed_at_ms = NowMs();
        c.record.rekey_requested = false;
        c.record.consecutive_failures = 0;
        c.audit.push_back(Audit(
            actor,
            again ? rkl::audit::action::kInstallReconfirm : rkl::audit::action::kTerminalInstalled,
            sn,
            absl::StrCat("tmk_index ", *cur.tmk_index, " tmk_kcv ", cur.tmk_kcv, " generation ",
                         cur.tmk_generation, again ? ", already INSTALLED, session " : "",
                         again ? session_id.substr(0, 8) : "")));
        // The session is spent with the installation, in the same transaction.
        c.session_move = SessionMove{session_id, SessionState::kConfirming,
                                     SessionState::kConfirmed, std::nullopt};
        return c;
      },
      &terminal);
  if (!installed.ok()) {
    // A write whose outcome is UNKNOWN may have committed (then the session is CONFIRMED and
    // stays so) or not (then the same proof may simply be sent again): hand it back.
    const bool maybe_written = installed.status().code() == absl::StatusCode::kUnknown;
    ReleaseSession(session_id, SessionState::kConfirming, SessionState::kAuthenticated,
                   maybe_written ? absl::UnavailableError("") : installed.status());
    return installed.status();
  }
  // Whether the session moved does not matter: the terminal row is what counts.
  spdlog::info("kms: terminal {} installed TMK kcv {} (generation {})", sn, installed->tmk_kcv,
               installed->tmk_generation);
  return installed->state;
}

absl::StatusOr<TerminalState> KmsCore::RepeatConfirmation(const AuthSession& session,
                                                          const TerminalRecord& terminal,
                                                          std::span<const uint8_t> proof,
                                                          std::string_view source) {
  const std::string& sn = terminal.sn;
  const std::string actor = TerminalActor(sn);
  const absl::Status refusal = SessionRefusal(
      terminal,
      terminal.state != TerminalState::kInstalled || terminal.tmk_kcv != session.tmk_kcv ||
          terminal.auk_index != session.auk_index,
      "session_id: session was confirmed, but the TMK it installed is no longer "
      "the terminal's",
      "proof", proof.size(), 1);
  if (!refusal.ok()) {
    CountRefusal({rkl::audit::action::kInstallConfirm, source}, sn, refusal);
    return refusal;
  }
  // The same proof again (the reply to the first was lost): HSM #2 checks it as it did the
  // first time, charged to the SN's attempts like any proof (so the repeat is no way around
  // the back-off); a proof that verifies gets its attempt back, and nothing else is written.
  TerminalRecord charged = terminal;
  absl::StatusOr<ProofAttempt> attempt = ChargeAttempt(sn, charged);
  if (!attempt.ok()) return attempt.status();
  absl::Status verified = hsm_.VerifyInstallProof(session.auk_index, sn, session.tmk_kcv,
                                                  session.rnd1, session.rnd2, proof);
  if (verified.code() == absl::StatusCode::kUnauthenticated) {
    return RecordFailure(
        sn, rkl::audit::action::kInstallFail,
        absl::StrCat("repeated install proof did not verify, tmk_kcv ", session.tmk_kcv), *attempt,
        "proof: install proof does not verify");
  }
  RefundAttempt(sn);
  if (!verified.ok()) {
    AuditFailure(actor, rkl::audit::action::kInstallConfirm, sn, "HSM #2 VerifyInstallProof",
                 verified);
    return verified;
  }
  return TerminalState::kInstalled;
}

// ---------------------------------------------------------------------------------------
// Administration

absl::StatusOr<TerminalRecord> KmsCore::GetTerminal(const std::string& sn) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  return repository_.GetTerminal(sn);
}

absl::StatusOr<TerminalPage> KmsCore::ListTerminals(std::optional<TerminalState> state,
                                                    const std::string& sn_prefix,
                                                    uint32_t page_size,
                                                    const std::string& page_token) {
  RKL_RETURN_IF_ERROR(CheckSnPrefix(sn_prefix));
  RKL_ASSIGN_OR_RETURN(int limit, PageSize(page_size));
  TerminalFilter filter;
  filter.state = state;
  filter.sn_prefix = sn_prefix;
  if (!page_token.empty()) {
    // The token is the hex of the last SN served: opaque to callers, checked here.
    absl::StatusOr<Bytes> raw = FromHex(page_token, "page.page_token");
    std::string after = raw.ok() ? std::string(AsString(*raw)) : "";
    if (!raw.ok() || !protocol::ValidateSn(after).ok()) {
      return absl::InvalidArgumentError("page.page_token: not a token this server issued");
    }
    filter.after_sn = after;
  }
  filter.limit = limit + 1;
  RKL_ASSIGN_OR_RETURN(std::vector<TerminalRecord> rows, repository_.ListTerminals(filter));
  TerminalPage page;
  if (static_cast<int>(rows.size()) > limit) {
    rows.resize(limit);
    page.next_page_token = ToHex(AsBytes(rows.back().sn));
  }
  page.terminals = std::move(rows);
  return page;
}

absl::StatusOr<TerminalRecord> KmsCore::AdminChange(
    const std::string& actor, const std::string& sn, const std::string& reason, const char* action,
    const std::function<absl::Status(TerminalRecord&)>& change) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  RKL_RETURN_IF_ERROR(audit::CheckAuditReason(reason));
  bool cancel = false;
  absl::StatusOr<TerminalRecord> after =
      Mutate(sn, [&](const TerminalRecord& cur) -> absl::StatusOr<std::optional<Change>> {
        Change c{cur};
        RKL_RETURN_IF_ERROR(change(c.record));
        cancel = IsBlocked(c.record.state);
        c.cancel_sessions = cancel;
        c.audit.push_back(Audit(
            actor, action, sn,
            absl::StrCat(TerminalStateName(cur.state), " -> ", TerminalStateName(c.record.state),
                         reason.empty() ? "" : ", reason: ", reason)));
        return c;
      });
  if (!after.ok() && after.status().code() != absl::StatusCode::kNotFound) {
    AuditFailure(actor, action, sn, reason.empty() ? "" : absl::StrCat("reason: ", reason),
                 after.status());
  }
  return after;
}

absl::StatusOr<TerminalRecord> KmsCore::UnlockTerminal(const std::string& actor,
                                                       const std::string& sn,
                                                       const std::string& reason) {
  return AdminChange(actor, sn, reason, rkl::audit::action::kTerminalUnlock, [](TerminalRecord& t) {
    if (t.state != TerminalState::kLocked || !t.state_before_lock) {
      return absl::FailedPreconditionError("sn: terminal is not locked");
    }
    t.state = *t.state_before_lock;
    t.state_before_lock.reset();
    t.consecutive_failures = 0;
    return absl::OkStatus();
  });
}

absl::StatusOr<bool> KmsCore::DestroyKeys(const std::string& actor, const std::string& sn,
                                          const std::string& reason) {
  absl::StatusOr<std::vector<uint64_t>> destroyed = hsm_.DestroyTerminalKeys(sn, reason);
  if (!destroyed.ok()) {
    AuditFailure(actor, rkl::audit::action::kTerminalKeysDestroy, sn, "HSM #2 DestroyTerminalKeys",
                 destroyed.status());
    return absl::Status(
        destroyed.status().code(),
        absl::StrCat("sn: terminal is revoked, but HSM #2 has not destroyed its keys yet; repeat "
                     "the revocation (",
                     destroyed.status().message(), ")"));
  }
  std::string detail =
      destroyed->empty()
          ? std::string("HSM #2 holds no key of the terminal any more")
          : absl::StrCat("HSM #2 destroyed key indexes ", absl::StrJoin(*destroyed, ", "));
  if (!reason.empty()) absl::StrAppend(&detail, ", reason: ", reason);
  absl::Status s =
      repository_.AppendAudit({Audit(actor, rkl::audit::action::kTerminalKeysDestroy, sn, detail)});
  if (!s.ok())
    spdlog::error("kms: audit write failed for {} on {}: {}",
                  rkl::audit::action::kTerminalKeysDestroy, sn, s.ToString());
  return !destroyed->empty();
}

absl::StatusOr<TerminalRecord> KmsCore::RevokeTerminal(const std::string& actor,
                                                       const std::string& sn,
                                                       const std::string& reason) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  RKL_RETURN_IF_ERROR(audit::CheckAuditReason(reason));
  // A revocation whose HSM step failed is completed by repeating it.
  absl::StatusOr<TerminalRecord> current = repository_.GetTerminal(sn);
  if (current.ok() && current->state == TerminalState::kRevoked) {
    RKL_ASSIGN_OR_RETURN(bool destroyed, DestroyKeys(actor, sn, reason));
    if (destroyed) return *current;
  }
  // REVOKED first, so no delivery can start any more; then the keys.
  RKL_ASSIGN_OR_RETURN(
      TerminalRecord revoked,
      AdminChange(actor, sn, reason, rkl::audit::action::kTerminalRevoke, [](TerminalRecord& t) {
        if (t.state == TerminalState::kRevoked) {
          return absl::FailedPreconditionError("sn: terminal is already revoked");
        }
        t.state = TerminalState::kRevoked;
        t.state_before_lock.reset();
        return absl::OkStatus();
      }));
  RKL_RETURN_IF_ERROR(DestroyKeys(actor, sn, reason).status());
  return revoked;
}

absl::StatusOr<TerminalRecord> KmsCore::MarkForRekey(const std::string& actor,
                                                     const std::string& sn,
                                                     const std::string& reason) {
  return AdminChange(actor, sn, reason, rkl::audit::action::kTerminalRekey, [](TerminalRecord& t) {
    if (t.state != TerminalState::kInstalled) {
      return absl::FailedPreconditionError(
          absl::StrCat("sn: only an INSTALLED terminal can be marked for re-key (it is ",
                       TerminalStateName(t.state), ")"));
    }
    t.state = TerminalState::kRekeyPending;
    t.rekey_requested = true;
    return absl::OkStatus();
  });
}

absl::StatusOr<Statistics> KmsCore::GetStatistics() {
  return repository_.GetStatistics(
      {rkl::audit::action::kAuthFail, rkl::audit::action::kInstallFail});
}

absl::StatusOr<int64_t> KmsCore::PurgeExpiredSessions() {
  return repository_.PurgeSessions(absl::ToUnixMillis(clock_() - options_.session_retention));
}

absl::StatusOr<AuditPage> KmsCore::ListAudit(const std::string& sn, uint32_t page_size,
                                             const std::string& page_token) {
  if (!sn.empty()) RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  RKL_ASSIGN_OR_RETURN(int limit, PageSize(page_size));
  uint64_t after = 0;
  if (!page_token.empty() && !absl::SimpleAtoi(page_token, &after)) {
    return absl::InvalidArgumentError("page.page_token: not a token this server issued");
  }
  RKL_ASSIGN_OR_RETURN(std::vector<AuditEntry> rows, repository_.ListAudit(sn, after, limit + 1));
  AuditPage page;
  if (static_cast<int>(rows.size()) > limit) {
    rows.resize(limit);
    page.next_page_token = absl::StrCat(rows.back().seq);
  }
  page.records = std::move(rows);
  return page;
}

// ---------------------------------------------------------------------------------------
// TR-34 terminals (docs/kms.md "TR-34 terminals")

namespace {

constexpr char kDefaultKdhLabel[] = "kdh";

bool IsTr34Algorithm(crypto::KeyAlgorithm a) {
  return a == crypto::KeyAlgorithm::kAes128 || a == crypto::KeyAlgorithm::kAes256 ||
         a == crypto::KeyAlgorithm::kTdes2;
}

absl::Status CheckKdhLabel(const std::string& label) {
  if (label.empty() || label.size() > 64) {
    return absl::InvalidArgumentError("label: 1–64 printable ASCII characters");
  }
  for (char c : label) {
    if (c < 0x20 || c > 0x7E) {
      return absl::InvalidArgumentError("label: 1–64 printable ASCII characters");
    }
  }
  return absl::OkStatus();
}

std::string ShortKrd(const std::string& krd_id) { return krd_id.substr(0, 16); }

}  // namespace

absl::Status KmsCore::CheckTr34Configured() const {
  if (ca_ == nullptr || options_.krd_cas.empty()) {
    return absl::FailedPreconditionError("tr34: not configured");
  }
  return absl::OkStatus();
}

absl::StatusOr<KmsCore::CheckedKrd> KmsCore::CheckKrdCredential(
    std::span<const uint8_t> ct_krd) const {
  if (ct_krd.size() > kMaxCtKrdSize) {
    return absl::InvalidArgumentError(absl::StrCat("ct_krd: at most ", kMaxCtKrdSize, " bytes"));
  }
  absl::StatusOr<tr34::CredentialToken> token = tr34::ParseCredentialToken(ct_krd);
  if (!token.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ct_krd: not a TR-34 credential token (", token.status().message(), ")"));
  }
  if (token->certificates.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ct_krd: must carry exactly one certificate, the KRD's (it carries ",
                     token->certificates.size(), ")"));
  }
  const crypto::Certificate& cert = token->certificates[0];
  bool trusted = false;
  for (const crypto::Certificate& ca : options_.krd_cas) {
    if (tr34::CheckRole(cert, tr34::Role::kKrd, ca).ok()) {
      trusted = true;
      break;
    }
  }
  if (!trusted) {
    return absl::UnauthenticatedError(
        "ct_krd: the certificate is not a KRD certificate (role KRD: keyEncipherment, not a CA) "
        "issued by a KRD CA this KMS trusts");
  }
  CheckedKrd krd;
  RKL_ASSIGN_OR_RETURN(krd.sn, tr34::SnOfKrdCertificate(cert));
  RKL_ASSIGN_OR_RETURN(tr34::CertId id, tr34::CertIdOf(cert));
  krd.krd_id = tr34::KrdIdOf(id);
  krd.certificate_der = cert.ToDer();
  return krd;
}

absl::StatusOr<TerminalRecord> KmsCore::BindKrd(const std::string& actor, const CheckedKrd& krd,
                                                bool* created) {
  *created = false;
  for (int attempt = 0; attempt < kMaxMutateAttempts; ++attempt) {
    absl::StatusOr<TerminalRecord> existing = repository_.GetTerminal(krd.sn);
    if (existing.ok()) {
      if (existing->protocol != TerminalProtocol::kTr34) {
        return WrongProtocolError(existing->protocol);
      }
      if (existing->krd_id != krd.krd_id) {
        return absl::PermissionDeniedError(
            absl::StrCat("ct_krd: sn is bound to another KRD (", ShortKrd(existing->krd_id),
                         "…); a KRD certificate of another device is refused"));
      }
      return existing;
    }
    if (existing.status().code() != absl::StatusCode::kNotFound) return existing.status();
    TerminalRecord t;
    t.sn = krd.sn;
    t.protocol = TerminalProtocol::kTr34;
    t.state = TerminalState::kTkReceived;
    t.krd_id = krd.krd_id;
    t.krd_certificate_der = krd.certificate_der;
    t.tk_received_at_ms = t.created_at_ms = t.updated_at_ms = NowMs();
    absl::Status s = repository_.InsertTerminal(
        t, {Audit(actor, audit::action::kKrdBind, krd.sn, absl::StrCat("krd_id ", krd.krd_id))});
    if (s.code() == absl::StatusCode::kAlreadyExists) continue;  // bound concurrently
    RKL_RETURN_IF_ERROR(s);
    *created = true;
    t.version = 1;
    return t;
  }
  return absl::AbortedError("sn: terminal changed concurrently too often; retry");
}

absl::StatusOr<Bytes> KmsCore::CurrentKdhCrl() {
  const int64_t now_s = absl::ToUnixSeconds(clock_());
  const int64_t margin_s = absl::ToInt64Seconds(options_.crl_refresh_margin);
  {
    absl::MutexLock lock(&crl_mu_);
    if (crl_cache_ && now_s < crl_cache_->next_update_s - margin_s &&
        now_s < crl_fetched_s_ + absl::ToInt64Seconds(options_.crl_max_age)) {
      return crl_cache_->crl_der;
    }
  }
  absl::StatusOr<KdhCrl> fetched = ca_->GetKdhCrl();
  absl::MutexLock lock(&crl_mu_);
  if (fetched.ok()) {
    crl_cache_ = *fetched;
    crl_fetched_s_ = now_s;
    return fetched->crl_der;
  }
  // A CA outage: a CRL that is still current keeps serving (terminals accept it until
  // nextUpdate); without one the terminal could not accept the KDH anyway.
  if (crl_cache_ && now_s < crl_cache_->next_update_s) {
    spdlog::warn("kms: kdh-ca CRL not refreshed ({}); serving the cached one until {}",
                 fetched.status().ToString(), crl_cache_->next_update_s);
    return crl_cache_->crl_der;
  }
  return absl::UnavailableError(
      absl::StrCat("crl: the kdh-ca CRL cannot be fetched from the CA and none is cached (",
                   fetched.status().message(), ")"));
}

absl::StatusOr<Bytes> KmsCore::GetKdhCredential(const std::string& sn, std::string_view source) {
  // Malformed input first: INVALID_ARGUMENT whether TR-34 is configured or not.
  if (!sn.empty()) RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  RKL_RETURN_IF_ERROR(CheckTr34Configured());
  absl::StatusOr<KdhKeyRecord> kdh = repository_.GetActiveKdhKey();
  if (kdh.status().code() == absl::StatusCode::kNotFound) {
    absl::Status s =
        absl::FailedPreconditionError("kdh: no KDH key is provisioned (rklctl kms kdh provision)");
    CountRefusal({audit::action::kKeyTokenRefuse, source}, kAnySn, s);
    return s;
  }
  RKL_RETURN_IF_ERROR(kdh.status());
  RKL_ASSIGN_OR_RETURN(Bytes crl, CurrentKdhCrl());
  RKL_ASSIGN_OR_RETURN(crypto::Certificate cert,
                       crypto::Certificate::FromDer(kdh->certificate_der));
  const crypto::Certificate certs[] = {cert};
  const Bytes crls[] = {crl};
  // Not audited: anyone may fetch the public credential, and a write per call would let
  // anyone make KMS write.
  return tr34::BuildCredentialToken(certs, crls);
}

absl::StatusOr<KeyTokenResult> KmsCore::RequestKeyToken(const std::string& sn,
                                                        std::span<const uint8_t> ct_krd,
                                                        std::span<const uint8_t> rt_krd,
                                                        crypto::KeyAlgorithm algorithm,
                                                        std::string_view source) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  RKL_RETURN_IF_ERROR(CheckTr34Configured());
  const RefusalScope scope{audit::action::kKeyTokenRefuse, source};
  const std::string actor = TerminalActor(sn);
  // Malformed or untrusted input: counted, not audited (no write per refusal).
  auto refuse = [&](absl::Status s) {
    CountRefusal(scope, kAnySn, s);
    return s;
  };
  if (rt_krd.size() > kMaxRtKrdSize) {
    return refuse(
        absl::InvalidArgumentError(absl::StrCat("rt_krd: at most ", kMaxRtKrdSize, " bytes")));
  }
  if (!IsTr34Algorithm(algorithm)) {
    return refuse(absl::InvalidArgumentError("algorithm: AES128, AES256 or TDES2"));
  }
  absl::StatusOr<CheckedKrd> krd = CheckKrdCredential(ct_krd);
  if (!krd.ok()) return refuse(krd.status());
  if (krd->sn != sn) {
    return refuse(absl::InvalidArgumentError(
        "ct_krd: the KRD certificate's subject CN names another SN than sn"));
  }
  absl::StatusOr<Bytes> nonce = tr34::ParseRandomNumberToken(rt_krd);
  if (!nonce.ok()) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("rt_krd: not a TR-34 random number token (", nonce.status().message(), ")")));
  }
  if (nonce->size() < tr34::kMinNonceSize || nonce->size() > kMaxKrdNonceSize) {
    return refuse(absl::InvalidArgumentError(
        absl::StrCat("rt_krd: the random number must be ", tr34::kMinNonceSize, "–",
                     kMaxKrdNonceSize, " bytes (it is ", nonce->size(), ")")));
  }
  bool created = false;
  absl::StatusOr<TerminalRecord> bound = BindKrd(actor, *krd, &created);
  if (!bound.ok()) {
    if (bound.status().code() == absl::StatusCode::kPermissionDenied) {
      AuditFailure(actor, audit::action::kKrdRefuse, sn, absl::StrCat("krd_id ", krd->krd_id),
                   bound.status());
    } else if (bound.status().code() == absl::StatusCode::kFailedPrecondition) {
      CountRefusal(scope, sn, bound.status());
    }
    return bound.status();
  }
  TerminalRecord t = *std::move(bound);
  absl::Status refusal;
  if (IsBlocked(t.state)) {
    refusal = BlockedError(t.state);
  } else if (t.state == TerminalState::kInstalled) {
    refusal = absl::FailedPreconditionError(
        "sn: terminal has an installed TMK; an administrator must mark it for re-key before "
        "it gets another key token");
  }
  if (!refusal.ok()) {
    CountRefusal(scope, sn, refusal);
    return refusal;
  }
  // A re-key makes a new TMK; so does another algorithm than the pending TMK's. A repeated
  // request while TMK_DELIVERED puts the same TMK in a token for the new random number.
  const bool replace = t.state == TerminalState::kRekeyPending ||
                       (t.tmk_index.has_value() && t.algorithm != algorithm);
  absl::StatusOr<KdhKeyRecord> kdh = repository_.GetActiveKdhKey();
  if (kdh.status().code() == absl::StatusCode::kNotFound) {
    return refuse(
        absl::FailedPreconditionError("kdh: no KDH key is provisioned (rklctl kms kdh provision)"));
  }
  RKL_RETURN_IF_ERROR(kdh.status());
  RKL_ASSIGN_OR_RETURN(Bytes crl, CurrentKdhCrl());
  KeyTokenOrder order{.sn = sn,
                      .algorithm = algorithm,
                      .krd_certificate_der = krd->certificate_der,
                      .krd_nonce = *nonce,
                      .kdh_key_index = kdh->key_index,
                      .kdh_certificate_der = kdh->certificate_der,
                      .crls = {crl},
                      .replace_existing = replace};
  absl::StatusOr<BuiltKeyToken> token = hsm_.BuildKeyToken(order);
  if (!token.ok()) {
    AuditFailure(actor, audit::action::kKeyTokenIssue, sn,
                 absl::StrCat("HSM #2 BuildKeyToken, krd_id ", krd->krd_id, ", kdh_key_index ",
                              kdh->key_index),
                 token.status());
    return token.status();
  }
  if (token->krd_id != krd->krd_id) {
    absl::Status s = absl::InternalError("HSM #2 bound the TMK to another KRD than requested");
    AuditFailure(actor, audit::action::kKeyTokenIssue, sn, absl::StrCat("krd_id ", krd->krd_id), s);
    return s;
  }
  absl::StatusOr<TerminalRecord> after = Mutate(
      sn,
      [&](const TerminalRecord& cur) -> absl::StatusOr<std::optional<Change>> {
        if (cur.krd_id != krd->krd_id) {
          return absl::PermissionDeniedError("ct_krd: sn is bound to another KRD");
        }
        if (IsBlocked(cur.state)) return BlockedError(cur.state);
        if (cur.state == TerminalState::kInstalled) {
          return absl::FailedPreconditionError("sn: terminal installed its TMK meanwhile");
        }
        Change c{cur};
        const bool new_tmk = token->created || cur.tmk_index != token->tmk_index;
        c.record.state = TerminalState::kTmkDelivered;
        c.record.algorithm = algorithm;
        c.record.tmk_index = token->tmk_index;
        c.record.tmk_kcv = token->tmk_kcv;
        if (new_tmk) c.record.tmk_generation = cur.tmk_generation + 1;
        c.record.krd_nonce = *nonce;
        c.audit.push_back(
            Audit(actor, audit::action::kKeyTokenIssue, sn,
                  absl::StrCat("krd_id ", krd->krd_id, ", kdh_key_index ", kdh->key_index,
                               ", tmk_index ", token->tmk_index, " tmk_kcv ", token->tmk_kcv,
                               " generation ", c.record.tmk_generation, new_tmk ? ", new TMK" : "",
                               replace ? ", re-key" : "")));
        return c;
      },
      &t);
  if (!after.ok()) {
    AuditFailure(actor, audit::action::kKeyTokenIssue, sn, absl::StrCat("krd_id ", krd->krd_id),
                 after.status());
    return after.status();
  }
  Count(options_.metrics.tr34_deliveries);
  return KeyTokenResult{std::move(token->key_token), token->tmk_kcv, after->state};
}

absl::StatusOr<TerminalState> KmsCore::ConfirmKeyToken(const std::string& sn,
                                                       std::span<const uint8_t> proof,
                                                       std::string_view source) {
  RKL_RETURN_IF_ERROR(protocol::ValidateSn(sn));
  RKL_RETURN_IF_ERROR(CheckTr34Configured());
  const RefusalScope scope{rkl::audit::action::kInstallConfirm, source};
  const std::string actor = TerminalActor(sn);
  absl::StatusOr<TerminalRecord> terminal = repository_.GetTerminal(sn);
  if (!terminal.ok()) {
    if (terminal.status().code() == absl::StatusCode::kNotFound) {
      CountRefusal(scope, kAnySn, terminal.status());
    }
    return terminal.status();
  }
  TerminalRecord t = *std::move(terminal);
  absl::Status refusal;
  const bool again = t.state == TerminalState::kInstalled;
  if (t.protocol != TerminalProtocol::kTr34) {
    refusal = WrongProtocolError(t.protocol);
  } else if (IsBlocked(t.state)) {
    refusal = BlockedError(t.state);
  } else if ((t.state != TerminalState::kTmkDelivered && !again) || !t.tmk_index ||
             t.krd_nonce.empty()) {
    refusal = absl::FailedPreconditionError(absl::StrCat(
        "sn: no key token awaits an install proof (terminal is ", TerminalStateName(t.state), ")"));
  } else if (proof.size() != crypto::BlockSize(t.algorithm)) {
    refusal = absl::InvalidArgumentError(
        absl::StrCat("proof: must be ", crypto::BlockSize(t.algorithm), " bytes for a ",
                     AlgorithmName(t.algorithm), " TMK"));
  }
  if (!refusal.ok()) {
    CountRefusal(scope, sn, refusal);
    return refusal;
  }
  // Charged before HSM #2 sees it, as every proof.
  RKL_ASSIGN_OR_RETURN(ProofAttempt attempt, ChargeAttempt(sn, t));
  const uint64_t tmk_index = *t.tmk_index;
  const std::string tmk_kcv = t.tmk_kcv;
  const Bytes nonce = t.krd_nonce;
  absl::Status verified = hsm_.VerifyKeyTokenInstallProof(tmk_index, sn, nonce, proof);
  if (verified.code() == absl::StatusCode::kUnauthenticated) {
    return RecordFailure(sn, rkl::audit::action::kInstallFail,
                         absl::StrCat("TR-34 install proof did not verify, tmk_kcv ", tmk_kcv),
                         attempt, "proof: install proof does not verify");
  }
  if (!verified.ok()) {
    RefundAttempt(sn);
    AuditFailure(actor, rkl::audit::action::kInstallConfirm, sn,
                 "HSM #2 VerifyKeyTokenInstallProof", verified);
    return verified;
  }
  absl::StatusOr<TerminalRecord> installed = Mutate(
      sn,
      [&](const TerminalRecord& cur) -> absl::StatusOr<std::optional<Change>> {
        if (cur.tmk_index != tmk_index || cur.krd_nonce != nonce ||
            (cur.state != TerminalState::kTmkDelivered && cur.state != TerminalState::kInstalled)) {
          return absl::FailedPreconditionError(
              "sn: the TMK of the confirmed token is no longer pending installation");
        }
        Change c{cur};
        const bool repeat = cur.state == TerminalState::kInstalled;
        c.record.consecutive_failures = 0;
        if (!repeat) {
          c.record.state = TerminalState::kInstalled;
          c.record.installed_at_ms = NowMs();
          c.record.rekey_requested = false;
        }
        c.audit.push_back(Audit(
            actor,
            repeat ? rkl::audit::action::kInstallReconfirm : rkl::audit::action::kTerminalInstalled,
            sn,
            absl::StrCat("krd_id ", cur.krd_id, ", tmk_index ", tmk_index, " tmk_kcv ", tmk_kcv,
                         " generation ", cur.tmk_generation)));
        return c;
      },
      &t);
  if (!installed.ok()) return installed.status();
  return installed->state;
}

absl::StatusOr<KdhKeyRecord> KmsCore::ProvisionKdhKey(const std::string& actor,
                                                      const std::string& label, uint32_t bits) {
  const std::string name = label.empty() ? std::string(kDefaultKdhLabel) : label;
  RKL_RETURN_IF_ERROR(CheckKdhLabel(name));
  if (bits == 0) bits = 2048;
  if (bits != 2048 && bits != 3072) {
    return absl::InvalidArgumentError("bits: 2048 or 3072");
  }
  if (ca_ == nullptr) return absl::FailedPreconditionError("tr34: not configured");
  absl::StatusOr<KdhKeyRecord> active = repository_.GetActiveKdhKey();
  if (active.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("kdh: a KDH key is already active (key_index ", active->key_index, ")"));
  }
  if (active.status().code() != absl::StatusCode::kNotFound) return active.status();
  absl::StatusOr<GeneratedKdhKey> key = hsm_.GenerateKdhKey(bits, name);
  if (!key.ok()) {
    AuditFailure(actor, audit::action::kKdhKeyProvision, "", "HSM #2 GenerateKdhKey", key.status());
    return key.status();
  }
  absl::StatusOr<IssuedKdhCertificate> cert =
      ca_->IssueKdhCertificate(key->public_key_der, options_.kdh_hsm_id, key->key_index);
  if (!cert.ok()) {
    AuditFailure(actor, audit::action::kKdhKeyProvision, "",
                 absl::StrCat("CA IssueKdhCertificate for key_index ", key->key_index,
                              " (the key stays unused in HSM #2)"),
                 cert.status());
    return cert.status();
  }
  KdhKeyRecord record{.key_index = key->key_index,
                      .label = name,
                      .certificate_der = cert->certificate_der,
                      .serial_hex = cert->serial_hex,
                      .not_after_s = cert->not_after_s,
                      .created_at_ms = NowMs(),
                      .active = true};
  absl::Status s = repository_.InsertKdhKey(
      record, {Audit(actor, audit::action::kKdhKeyProvision, "",
                     absl::StrCat("key_index ", record.key_index, ", label ", name, ", bits ", bits,
                                  ", hsm_id ", options_.kdh_hsm_id, ", certificate serial ",
                                  record.serial_hex, ", not_after ", record.not_after_s))});
  if (!s.ok()) {
    AuditFailure(actor, audit::action::kKdhKeyProvision, "",
                 absl::StrCat("key_index ", record.key_index), s);
    return s;
  }
  spdlog::info("kms: KDH key provisioned: key_index {}, certificate serial {}", record.key_index,
               record.serial_hex);
  return record;
}

absl::StatusOr<std::vector<KdhKeyRecord>> KmsCore::ListKdhKeys() {
  return repository_.ListKdhKeys();
}

absl::StatusOr<std::vector<KrdRegistrationResult>> KmsCore::RegisterKrdCredentials(
    const std::string& actor, const std::vector<Bytes>& ct_krds) {
  if (ct_krds.empty() || ct_krds.size() > kMaxKrdRegistrations) {
    return absl::InvalidArgumentError(
        absl::StrCat("ct_krd: 1–", kMaxKrdRegistrations, " credentials per call"));
  }
  // An oversize credential makes the whole request malformed (each other refusal is the
  // credential's own).
  for (size_t i = 0; i < ct_krds.size(); ++i) {
    if (ct_krds[i].size() > kMaxCtKrdSize) {
      return absl::InvalidArgumentError(
          absl::StrCat("ct_krd[", i, "]: at most ", kMaxCtKrdSize, " bytes"));
    }
  }
  RKL_RETURN_IF_ERROR(CheckTr34Configured());
  std::vector<KrdRegistrationResult> out;
  out.reserve(ct_krds.size());
  for (const Bytes& ct : ct_krds) {
    KrdRegistrationResult r;
    absl::StatusOr<CheckedKrd> krd = CheckKrdCredential(ct);
    if (!krd.ok()) {
      r.status = krd.status();
      out.push_back(std::move(r));
      continue;
    }
    r.sn = krd->sn;
    r.krd_id = krd->krd_id;
    bool created = false;
    absl::StatusOr<TerminalRecord> bound = BindKrd(actor, *krd, &created);
    r.status = bound.status();
    r.duplicate = bound.ok() && !created;
    if (!bound.ok()) {
      AuditFailure(actor, audit::action::kKrdRefuse, krd->sn, absl::StrCat("krd_id ", krd->krd_id),
                   bound.status());
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace rkl::kms
