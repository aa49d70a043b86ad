#include "mtms_pg_repository.h"

#include <algorithm>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "rkl/common/json.h"
#include "rkl/common/status_macros.h"
#include "rkl/db/prepared.h"
#include "rkl/db/row.h"
#include "rkl/db/transaction.h"

namespace rkl::mtms {
namespace {

// Serialises work-key installs across replicas ("RKLMTMS" ‖ 0x01).
constexpr int64_t kWorkKeyInstallLock = 0x524B4C4D544D5301;

constexpr char kWorkKeyColumns[] =
    "serial_hex, hsm_id, hsm_key_index, public_key_der, certificate_pem, terminal_root_pem,"
    " state, created_at_ms, COALESCE(retired_at_ms, 0)";

const std::string kSelectCurrentWorkKey =
    std::string("SELECT ") + kWorkKeyColumns + " FROM work_keys WHERE state = 'CURRENT'";
const std::string kSelectWorkKey =
    std::string("SELECT ") + kWorkKeyColumns + " FROM work_keys WHERE serial_hex = $1";
const std::string kSelectWorkKeyForUpdate = kSelectWorkKey + " FOR UPDATE";
const std::string kListWorkKeys = std::string("SELECT ") + kWorkKeyColumns +
                                  " FROM work_keys ORDER BY created_at_ms DESC, serial_hex";
constexpr char kLockWorkKeyInstall[] = "SELECT pg_advisory_xact_lock($1)";
constexpr char kDemoteCurrentWorkKey[] =
    "UPDATE work_keys SET state = 'PREVIOUS' WHERE state = 'CURRENT'";
constexpr char kInsertWorkKey[] =
    "INSERT INTO work_keys (serial_hex, hsm_id, hsm_key_index, public_key_der, certificate_pem,"
    " terminal_root_pem, state, created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 'CURRENT', $7)";
constexpr char kCountInFlightForWorkKey[] =
    "SELECT count(*) FROM sn_key_mtms WHERE work_certificate_serial = $1 AND state = 'RECEIVED'";
constexpr char kRetireWorkKey[] =
    "UPDATE work_keys SET state = 'RETIRED', retired_at_ms = $2 WHERE serial_hex = $1";

// Operators seen, without a per-package write: the row is inserted at an operator
// certificate's first accepted package, and last_seen_at_ms moves only once it is
// kLastSeenResolutionMs old. Once the row exists, ON CONFLICT DO NOTHING and an UPDATE
// whose WHERE is false lock nothing, so concurrent submissions of one operator do not queue
// on its row until commit (ON CONFLICT DO UPDATE ... WHERE would: PostgreSQL locks the
// conflicting row even when the WHERE lets nothing be updated). The UPDATE does not see the
// row the CTE inserts (one snapshot), so a first sight is one insert. Package counts are
// counted from sn_key_mtms when wanted (docs/mtms.md).
constexpr int64_t kLastSeenResolutionMs = 60 * 1000;

// A newer sibling of row r: a row for the same SN with a later created_at that is waiting
// or was forwarded (a lookup in index sn_key_mtms_by_sn).
std::string NewerSibling(const std::string& r) {
  return absl::StrCat("EXISTS (SELECT 1 FROM sn_key_mtms n WHERE n.sn = ", r,
                      ".sn AND n.created_at_ms > ", r,
                      ".created_at_ms AND n.state IN ('RECEIVED', 'FORWARDED'))");
}

// The whole intake in ONE statement, run in autocommit (one round trip):
//  k: the work key's state and index, FOR SHARE: a concurrent retire (FOR UPDATE) waits for
//     this statement, and this statement sees a retire that committed first;
//  i: the package, unless the work key is retired or the (operator, nonce) was seen before
//     (ON CONFLICT DO NOTHING: a replay inserts nothing); claimed by $24 until $25 when they
//     are not NULL (the forwarder takes it from intake: ClaimFacts below);
//  o, u: operators seen (above), only for an inserted package;
//  a: the package's audit entry (a pending record of the chain, id $21 and MAC $22 from
//     rkl::audit), only for an inserted package.
// Returns the work key's state (NULL: unknown) and how many packages were inserted (0/1),
// then the row's ClaimFacts: the work key's index and whether a newer sibling exists (the
// inserted row is not in the statement's snapshot, so it is not its own sibling).
// Submission $1..$13; $14 resolution; audit $15..$22; $23 the request id (package and record);
// $24, $25 the claim or NULL.
// Parameters read in SELECT lists are typed: there an untyped parameter would be taken as text.
const std::string kIntake = absl::StrCat(
    "WITH k AS (SELECT state, hsm_key_index FROM work_keys WHERE serial_hex = $9::text"
    "  FOR SHARE),"
    " i AS (INSERT INTO sn_key_mtms (submission_id, sn, operator_id, nonce, package, signature,"
    "  operator_certificate_pem, operator_certificate_serial, work_certificate_serial, ctk_pu,"
    "  algorithm_code, created_at_ms, received_at_ms, state, next_attempt_at_ms, request_id,"
    "  claimed_by, claimed_until_ms)"
    "  SELECT $1::text, $2::text, $3::text, $4::bytea, $5::bytea, $6::bytea, $7::text,"
    "  $8::text, $9::text, $10::bytea, $11::smallint, $12::bigint, $13::bigint, 'RECEIVED',"
    "  $13::bigint, $23::text, $24::text, $25::bigint FROM k WHERE k.state <> 'RETIRED'"
    "  ON CONFLICT ON CONSTRAINT sn_key_mtms_operator_nonce_key DO NOTHING"
    "  RETURNING submission_id, sn, created_at_ms),"
    " o AS (INSERT INTO operators_seen (operator_id, certificate_serial, first_seen_at_ms,"
    "  last_seen_at_ms) SELECT $3::text, $8::text, $13::bigint, $13::bigint FROM i"
    "  ON CONFLICT (operator_id, certificate_serial) DO NOTHING),"
    " u AS (UPDATE operators_seen SET last_seen_at_ms = $13::bigint"
    "  WHERE operator_id = $3::text AND certificate_serial = $8::text"
    "  AND last_seen_at_ms < $13::bigint - $14::bigint AND EXISTS (SELECT 1 FROM i)),"
    " a AS (INSERT INTO audit_pending (id, at_ms, actor, action, sn, detail, result, mac,"
    "  request_id) SELECT $21::bigint, $15::bigint, $16::text, $17::text, $18::text, $19::text,"
    "  $20::text, $22::bytea, $23::text FROM i)"
    " SELECT (SELECT state FROM k), (SELECT count(*) FROM i),"
    "  COALESCE((SELECT hsm_key_index FROM k), 0),"
    "  COALESCE((SELECT ",
    NewerSibling("i"), " FROM i), false)");

constexpr char kSubmissionColumns[] =
    "submission_id, sn, operator_id, nonce, package, signature, operator_certificate_pem,"
    " operator_certificate_serial, work_certificate_serial, ctk_pu, algorithm_code,"
    " created_at_ms, received_at_ms, state, reason, attempts, next_attempt_at_ms, last_error,"
    " COALESCE(forwarded_at_ms, 0), request_id";
constexpr int kSubmissionColumnCount = 20;
const std::string kSelectSubmission =
    std::string("SELECT ") + kSubmissionColumns + " FROM sn_key_mtms WHERE submission_id = $1";
// $1 state or NULL; $2/$3 cursor or NULL; $4 limit.
const std::string kListSubmissions =
    std::string("SELECT ") + kSubmissionColumns +
    " FROM sn_key_mtms WHERE ($1::text IS NULL OR state = $1::text)"
    " AND ($2::bigint IS NULL OR (received_at_ms, submission_id) > ($2::bigint, $3::text))"
    " ORDER BY received_at_ms, submission_id LIMIT $4";
// The outbox by state: an index-only scan of sn_key_mtms_by_state (migration 007), since the
// metrics read it at every scrape.
constexpr char kCountByState[] =
    "SELECT state, count(*), min(received_at_ms) FROM sn_key_mtms GROUP BY state";

// After the columns of a claimed row (in RETURNING of sn_key_mtms): its ClaimFacts.
const std::string kClaimFactsColumns = absl::StrCat(
    ", (SELECT w.state FROM work_keys w WHERE w.serial_hex = sn_key_mtms.work_certificate_serial),"
    " COALESCE((SELECT w.hsm_key_index FROM work_keys w"
    "  WHERE w.serial_hex = sn_key_mtms.work_certificate_serial), 0), ",
    NewerSibling("sn_key_mtms"));

// The outbox claim: row locks are held only for this one statement's transaction; the
// lease columns keep the row ours while we call HSM #1 and KMS without a transaction.
const std::string kClaimDue = std::string(
                                  "UPDATE sn_key_mtms SET claimed_by = $1, claimed_until_ms = $3"
                                  " WHERE submission_id IN ("
                                  "  SELECT submission_id FROM sn_key_mtms"
                                  "  WHERE state = 'RECEIVED' AND next_attempt_at_ms <= $2"
                                  "    AND (claimed_until_ms IS NULL OR claimed_until_ms <= $2)"
                                  "  ORDER BY received_at_ms, submission_id LIMIT $4"
                                  "  FOR UPDATE SKIP LOCKED)"
                                  " RETURNING ") +
                              kSubmissionColumns + kClaimFactsColumns;
constexpr char kMakeAllDue[] =
    "UPDATE sn_key_mtms SET next_attempt_at_ms = $1"
    " WHERE state = 'RECEIVED' AND next_attempt_at_ms > $1";
// Each finish is one statement with its audit entry (nine typed parameters from the given
// number on: the record, then its pending id, MAC and request id), inserted into audit_pending only
// when the row was still ours to finish. Returns how
// many rows were finished (0/1).
std::string WithAudit(const std::string& update, int first) {
  auto p = [&](int i, const char* type) { return absl::StrCat("$", first + i, "::", type); };
  return absl::StrCat("WITH f AS (", update, " RETURNING 1),",
                      " a AS (INSERT INTO audit_pending (id, at_ms, actor, action, sn, detail,"
                      " result, mac, request_id) SELECT ",
                      p(6, "bigint"), ", ", p(0, "bigint"), ", ", p(1, "text"), ", ", p(2, "text"),
                      ", ", p(3, "text"), ", ", p(4, "text"), ", ", p(5, "text"), ", ",
                      p(7, "bytea"), ", ", p(8, "text"), " WHERE EXISTS (SELECT 1 FROM f))",
                      " SELECT count(*) FROM f");
}
const std::string kFinishForwarded = WithAudit(
    "UPDATE sn_key_mtms SET state = 'FORWARDED', forwarded_at_ms = $3, attempts = attempts + 1,"
    " last_error = '', claimed_by = NULL, claimed_until_ms = NULL"
    " WHERE submission_id = $1 AND claimed_by = $2 AND state = 'RECEIVED'",
    4);
// FinishForwardedMany: the rows as one JSON array $1 (ord, submission_id, claim, at_ms), each
// finished as kFinishForwarded finishes it; the audit entries ($2, one per row, "ord" its row's)
// only for the rows that changed. Returns the ord of each row that changed.
const std::string kFinishForwardedMany = absl::StrCat(
    "WITH r AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(ord int, submission_id text, "
    "claim text, at_ms bigint)), "
    "f AS (UPDATE sn_key_mtms s SET state = 'FORWARDED', forwarded_at_ms = r.at_ms, "
    "attempts = s.attempts + 1, last_error = '', claimed_by = NULL, claimed_until_ms = NULL "
    "FROM r WHERE s.submission_id = r.submission_id AND s.claimed_by = r.claim "
    "AND s.state = 'RECEIVED' RETURNING r.ord), "
    "a AS (INSERT INTO audit_pending (id, at_ms, actor, action, sn, detail, result, mac, "
    "request_id) SELECT x.id, x.at_ms, x.actor, x.action, x.sn, x.detail, x.result, "
    "decode(x.mac, 'hex'), x.request_id FROM jsonb_to_recordset($2::jsonb) AS x(ord int, "
    "id bigint, at_ms bigint, actor text, action text, sn text, detail text, result text, "
    "mac text, request_id text) WHERE x.ord IN (SELECT ord FROM f) ORDER BY x.ord) "
    "SELECT ord FROM f");
const std::string kFinishRejected = WithAudit(
    "UPDATE sn_key_mtms SET state = 'REJECTED', reason = $3, attempts = attempts + 1,"
    " claimed_by = NULL, claimed_until_ms = NULL"
    " WHERE submission_id = $1 AND claimed_by = $2 AND state = 'RECEIVED'",
    4);
// Superseded: the row and a newer sibling for its SN (a lookup in index sn_key_mtms_by_sn).
const std::string kFinishSuperseded = WithAudit(
    "UPDATE sn_key_mtms r SET state = 'REJECTED', reason = $3, attempts = r.attempts + 1,"
    " claimed_by = NULL, claimed_until_ms = NULL"
    " WHERE r.submission_id = $1 AND r.claimed_by = $2 AND r.state = 'RECEIVED'"
    " AND EXISTS (SELECT 1 FROM sn_key_mtms n WHERE n.sn = r.sn"
    "  AND n.created_at_ms > r.created_at_ms AND n.state IN ('RECEIVED', 'FORWARDED'))",
    4);
constexpr char kFinishRetryLater[] =
    "UPDATE sn_key_mtms SET attempts = attempts + 1, last_error = $3, next_attempt_at_ms = $4,"
    " claimed_by = NULL, claimed_until_ms = NULL"
    " WHERE submission_id = $1 AND claimed_by = $2 AND state = 'RECEIVED'";

constexpr char kListAudit[] =
    "SELECT seq, at_ms, actor, action, sn, detail, result, request_id FROM audit"
    " ORDER BY seq DESC LIMIT $1";

pqxx::binarystring Bin(const Bytes& b) { return pqxx::binarystring(b.data(), b.size()); }

WorkKeyState ParseWorkKeyState(const std::string& s) {
  if (s == "CURRENT") return WorkKeyState::kCurrent;
  if (s == "PREVIOUS") return WorkKeyState::kPrevious;
  return WorkKeyState::kRetired;
}

SubmissionState ParseSubmissionState(const std::string& s) {
  if (s == "FORWARDED") return SubmissionState::kForwarded;
  if (s == "REJECTED") return SubmissionState::kRejected;
  return SubmissionState::kReceived;
}

WorkKeyRecord ReadWorkKey(const pqxx::row& r) {
  WorkKeyRecord k;
  std::string state;
  db::ReadColumns(r, k.serial_hex, k.hsm_id, k.hsm_key_index, k.public_key_der, k.certificate_pem,
                  k.terminal_root_pem, state, k.created_at_ms, k.retired_at_ms);
  k.state = ParseWorkKeyState(state);
  return k;
}

SubmissionRecord ReadSubmission(const pqxx::row& r) {
  SubmissionRecord s;
  std::string state;
  db::ReadColumns(r, s.submission_id, s.sn, s.operator_id, s.nonce, s.package, s.signature,
                  s.operator_certificate_pem, s.operator_certificate_serial,
                  s.work_certificate_serial, s.ctk_pu, s.algorithm_code, s.created_at_ms,
                  s.received_at_ms, state, s.reason, s.attempts, s.next_attempt_at_ms, s.last_error,
                  s.forwarded_at_ms, s.request_id);
  s.state = ParseSubmissionState(state);
  return s;
}

// The ClaimFacts in columns `first`.. of `r`: the work key's state (NULL: unknown), its
// index, whether a newer sibling exists.
SubmissionRecord::ClaimFacts ReadClaimFacts(const pqxx::row& r, int first) {
  SubmissionRecord::ClaimFacts facts;
  if (!r[first].is_null()) facts.work_key_state = ParseWorkKeyState(r[first].as<std::string>());
  facts.work_key_index = r[first + 1].as<uint64_t>();
  facts.newer_sibling = r[first + 2].as<bool>();
  return facts;
}

// The row `statement` selects, read by `read`; nullopt when there is none. In autocommit.
template <typename Record, typename... Args>
absl::StatusOr<std::optional<Record>> ReadOptional(db::ConnectionPool& pool,
                                                   Record (*read)(const pqxx::row&),
                                                   const std::string& statement,
                                                   const Args&... args) {
  return db::RunAutocommitRead(
      pool, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::optional<Record>> {
        pqxx::result r = db::Exec(tx, statement, args...);
        if (r.empty()) return std::nullopt;
        return read(r[0]);
      });
}

}  // namespace

const char* WorkKeyStateName(WorkKeyState state) {
  switch (state) {
    case WorkKeyState::kCurrent:
      return "CURRENT";
    case WorkKeyState::kPrevious:
      return "PREVIOUS";
    case WorkKeyState::kRetired:
      return "RETIRED";
  }
  return "RETIRED";
}

const char* SubmissionStateName(SubmissionState state) {
  switch (state) {
    case SubmissionState::kReceived:
      return "RECEIVED";
    case SubmissionState::kForwarded:
      return "FORWARDED";
    case SubmissionState::kRejected:
      return "REJECTED";
  }
  return "RECEIVED";
}

absl::StatusOr<std::optional<WorkKeyRecord>> PgMtmsRepository::CurrentWorkKey() {
  return ReadOptional(pool_, ReadWorkKey, kSelectCurrentWorkKey);
}

absl::StatusOr<std::optional<WorkKeyRecord>> PgMtmsRepository::FindWorkKey(
    const std::string& serial) {
  return ReadOptional(pool_, ReadWorkKey, kSelectWorkKey, serial);
}

absl::StatusOr<std::vector<WorkKeyRecord>> PgMtmsRepository::ListWorkKeys() {
  return db::RunAutocommitRead(
      pool_, [](pqxx::nontransaction& tx) -> absl::StatusOr<std::vector<WorkKeyRecord>> {
        std::vector<WorkKeyRecord> keys;
        for (const pqxx::row& row : db::Exec(tx, kListWorkKeys)) keys.push_back(ReadWorkKey(row));
        return keys;
      });
}

absl::StatusOr<MtmsRepository::InstallResult> PgMtmsRepository::InstallWorkKey(
    const WorkKeyRecord& key, bool rotate, const AuditEntry& audit) {
  return db::RunInTransaction(pool_, [&](pqxx::work& tx) -> absl::StatusOr<InstallResult> {
    db::Exec(tx, kLockWorkKeyInstall, kWorkKeyInstallLock);
    pqxx::result current = db::Exec(tx, kSelectCurrentWorkKey);
    if (!current.empty() && !rotate) {
      return InstallResult{.current = ReadWorkKey(current[0]), .installed = false};
    }
    db::Exec(tx, kDemoteCurrentWorkKey);
    db::Exec(tx, kInsertWorkKey, key.serial_hex, key.hsm_id, key.hsm_key_index,
             Bin(key.public_key_der), key.certificate_pem, key.terminal_root_pem,
             key.created_at_ms);
    RKL_RETURN_IF_ERROR(audit_.AppendInTransaction(tx, audit));
    WorkKeyRecord installed = key;
    installed.state = WorkKeyState::kCurrent;
    installed.retired_at_ms = 0;
    return InstallResult{.current = std::move(installed), .installed = true};
  });
}

absl::StatusOr<MtmsRepository::RetireResult> PgMtmsRepository::RetireWorkKey(
    const std::string& serial, bool force, int64_t now_ms, const AuditEntry& audit) {
  return db::RunInTransaction(pool_, [&](pqxx::work& tx) -> absl::StatusOr<RetireResult> {
    RetireResult result;
    pqxx::result found = db::Exec(tx, kSelectWorkKeyForUpdate, serial);
    if (found.empty()) return result;  // kNotFound
    result.key = ReadWorkKey(found[0]);
    if (result.key.state == WorkKeyState::kCurrent) {
      result.outcome = RetireOutcome::kIsCurrent;
      return result;
    }
    if (result.key.state == WorkKeyState::kRetired) {
      result.outcome = RetireOutcome::kRetired;
      return result;
    }
    result.in_flight = db::Exec1(tx, kCountInFlightForWorkKey, serial)[0].as<uint64_t>();
    if (result.in_flight > 0 && !force) {
      result.outcome = RetireOutcome::kInFlight;
      return result;
    }
    db::Exec(tx, kRetireWorkKey, serial, now_ms);
    RKL_RETURN_IF_ERROR(audit_.AppendInTransaction(tx, audit));
    result.key.state = WorkKeyState::kRetired;
    result.key.retired_at_ms = now_ms;
    result.outcome = RetireOutcome::kRetired;
    return result;
  });
}

absl::StatusOr<IntakeResult> PgMtmsRepository::Intake(const SubmissionRecord& row,
                                                      const AuditEntry& entry,
                                                      const std::optional<IntakeClaim>& claim) {
  // The package keeps the submitting call's request id, for its forwarding.
  const AuditEntry audit = audit::WithCurrentRequestId(entry);
  RKL_ASSIGN_OR_RETURN(const audit::PgAuditLog::PreparedPending p, Prepare(audit));
  const char* claim_token = claim ? claim->claim_token.c_str() : nullptr;
  const std::string lease_until = claim ? std::to_string(claim->lease_until_ms) : "";
  const char* lease_until_param = claim ? lease_until.c_str() : nullptr;
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<IntakeResult> {
    pqxx::row r = stmt.Exec1(
        kIntake, row.submission_id, row.sn, row.operator_id, Bin(row.nonce), Bin(row.package),
        Bin(row.signature), row.operator_certificate_pem, row.operator_certificate_serial,
        row.work_certificate_serial, Bin(row.ctk_pu), static_cast<int>(row.algorithm_code),
        row.created_at_ms, row.received_at_ms, kLastSeenResolutionMs, audit.at_ms, audit.actor,
        audit.action, audit.sn, audit.detail, audit.result, p.id, Bin(p.mac), audit.request_id,
        claim_token, lease_until_param);
    IntakeResult result;
    if (r[0].is_null()) return result;  // kUnknownWorkKey
    if (r[0].as<std::string>() == "RETIRED") {
      result.outcome = InsertOutcome::kRetiredWorkKey;
      return result;
    }
    if (r[1].as<int64_t>() != 1) {
      result.outcome = InsertOutcome::kReplay;
      return result;
    }
    result.outcome = InsertOutcome::kInserted;
    result.facts.work_key_state = ParseWorkKeyState(r[0].as<std::string>());
    result.facts.work_key_index = r[2].as<uint64_t>();
    result.facts.newer_sibling = r[3].as<bool>();
    return result;
  });
}

absl::StatusOr<std::optional<SubmissionRecord>> PgMtmsRepository::GetSubmission(
    const std::string& submission_id) {
  return ReadOptional(pool_, ReadSubmission, kSelectSubmission, submission_id);
}

absl::StatusOr<std::vector<SubmissionRecord>> PgMtmsRepository::ListSubmissions(
    std::optional<SubmissionState> state, size_t limit, const std::optional<QueueCursor>& after) {
  return db::RunAutocommitRead(
      pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::vector<SubmissionRecord>> {
        const char* state_param = state ? SubmissionStateName(*state) : nullptr;
        std::string received = after ? std::to_string(after->received_at_ms) : "";
        const char* received_param = after ? received.c_str() : nullptr;
        const char* id_param = after ? after->submission_id.c_str() : nullptr;
        std::vector<SubmissionRecord> rows;
        for (const pqxx::row& row : db::Exec(tx, kListSubmissions, state_param, received_param,
                                             id_param, static_cast<int64_t>(limit))) {
          rows.push_back(ReadSubmission(row));
        }
        return rows;
      });
}

absl::StatusOr<QueueCounts> PgMtmsRepository::CountSubmissions() {
  return db::RunAutocommitRead(pool_, [](pqxx::nontransaction& tx) -> absl::StatusOr<QueueCounts> {
    QueueCounts counts;
    for (const pqxx::row& row : db::Exec(tx, kCountByState)) {
      const SubmissionState state = ParseSubmissionState(row[0].as<std::string>());
      counts.Of(state) = row[1].as<uint64_t>();
      if (state == SubmissionState::kReceived) counts.oldest_received_at_ms = row[2].as<int64_t>();
    }
    return counts;
  });
}

absl::StatusOr<std::vector<SubmissionRecord>> PgMtmsRepository::ClaimDue(
    const std::string& claim_token, int64_t now_ms, int64_t lease_until_ms, int limit) {
  return db::RunAutocommitWrite(
      pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<std::vector<SubmissionRecord>> {
        std::vector<SubmissionRecord> rows;
        for (const pqxx::row& row :
             stmt.Exec(kClaimDue, claim_token, now_ms, lease_until_ms, limit)) {
          rows.push_back(ReadSubmission(row));
          rows.back().claim = ReadClaimFacts(row, kSubmissionColumnCount);
        }
        // RETURNING has no order; forward oldest first.
        std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
          return std::tie(a.received_at_ms, a.submission_id) <
                 std::tie(b.received_at_ms, b.submission_id);
        });
        return rows;
      });
}

absl::StatusOr<uint64_t> PgMtmsRepository::MakeAllDue(int64_t now_ms) {
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<uint64_t> {
    return static_cast<uint64_t>(stmt.Exec(kMakeAllDue, now_ms).affected_rows());
  });
}

template <typename Value>
absl::StatusOr<bool> PgMtmsRepository::FinishWithAudit(const std::string& statement,
                                                       const std::string& submission_id,
                                                       const std::string& claim_token,
                                                       const Value& value,
                                                       const AuditEntry& entry) {
  const AuditEntry audit = audit::WithCurrentRequestId(entry);
  RKL_ASSIGN_OR_RETURN(const audit::PgAuditLog::PreparedPending p, Prepare(audit));
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<bool> {
    const pqxx::row finished = stmt.Exec1(statement, submission_id, claim_token, value, audit.at_ms,
                                          audit.actor, audit.action, audit.sn, audit.detail,
                                          audit.result, p.id, Bin(p.mac), audit.request_id);
    return finished[0].as<int64_t>() == 1;
  });
}

absl::StatusOr<bool> PgMtmsRepository::FinishForwarded(const std::string& submission_id,
                                                       const std::string& claim_token,
                                                       int64_t now_ms, const AuditEntry& audit) {
  return FinishWithAudit(kFinishForwarded, submission_id, claim_token, now_ms, audit);
}

absl::StatusOr<std::vector<absl::StatusOr<bool>>> PgMtmsRepository::FinishForwardedMany(
    std::span<const ForwardedFinish> rows) {
  JsonRows json;
  std::vector<AuditEntry> audit;
  audit.reserve(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    json.Row()
        .Field("ord", static_cast<int64_t>(i))
        .Field("submission_id", rows[i].submission_id)
        .Field("claim", rows[i].claim_token)
        .Field("at_ms", rows[i].now_ms);
    audit.push_back(rows[i].audit);
  }
  const std::string rows_json = json.Finish();
  RKL_ASSIGN_OR_RETURN(const std::string audit_json, audit_.PreparePendingJson(audit));
  return db::RunAutocommitWrite(
      pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<std::vector<absl::StatusOr<bool>>> {
        std::vector<absl::StatusOr<bool>> out(rows.size(), false);
        for (const pqxx::row& row : stmt.Exec(kFinishForwardedMany, rows_json, audit_json)) {
          const int64_t ord = row[0].as<int64_t>();
          if (ord >= 0 && static_cast<size_t>(ord) < out.size()) out[ord] = true;
        }
        return out;
      });
}

absl::StatusOr<bool> PgMtmsRepository::FinishRejected(const std::string& submission_id,
                                                      const std::string& claim_token,
                                                      const std::string& reason,
                                                      const AuditEntry& audit) {
  return FinishWithAudit(kFinishRejected, submission_id, claim_token, reason, audit);
}

absl::StatusOr<bool> PgMtmsRepository::FinishSupersededIfNewer(const std::string& submission_id,
                                                               const std::string& claim_token,
                                                               const std::string& reason,
                                                               const AuditEntry& audit) {
  return FinishWithAudit(kFinishSuperseded, submission_id, claim_token, reason, audit);
}

absl::StatusOr<bool> PgMtmsRepository::FinishRetryLater(const std::string& submission_id,
                                                        const std::string& claim_token,
                                                        const std::string& last_error,
                                                        int64_t next_attempt_at_ms) {
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<bool> {
    return stmt.Exec(kFinishRetryLater, submission_id, claim_token, last_error, next_attempt_at_ms)
               .affected_rows() == 1;
  });
}

absl::Status PgMtmsRepository::AppendAudit(const AuditEntry& audit) { return audit_.Append(audit); }

absl::StatusOr<audit::PgAuditLog::PreparedPending> PgMtmsRepository::Prepare(
    const AuditEntry& entry) {
  RKL_ASSIGN_OR_RETURN(std::vector<audit::PgAuditLog::PreparedPending> p,
                       audit_.PreparePending({&entry, 1}));
  return std::move(p.at(0));
}

absl::StatusOr<std::vector<AuditEntry>> PgMtmsRepository::ListAudit(size_t limit) {
  // The newest records by their place in the chain: those committed so far are chained first.
  RKL_RETURN_IF_ERROR(audit_.Seal().status());
  return db::RunAutocommitRead(
      pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::vector<AuditEntry>> {
        std::vector<AuditEntry> records;
        for (const pqxx::row& row : db::Exec(tx, kListAudit, static_cast<int64_t>(limit))) {
          records.push_back(audit::ChainedEventFromRow(row));
        }
        return records;
      });
}

}  // namespace rkl::mtms
