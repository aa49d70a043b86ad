#include "mtms_pg_repository.h"

#include <algorithm>
#include <pqxx/pqxx>

#include "rkl/db/prepared.h"
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

// FOR SHARE: a concurrent retire (FOR UPDATE) waits for this insert, and this insert sees
// a retire that committed first.
constexpr char kWorkKeyStateForShare[] =
    "SELECT state FROM work_keys WHERE serial_hex = $1 FOR SHARE";
constexpr char kInsertSubmission[] =
    "INSERT INTO sn_key_mtms (submission_id, sn, operator_id, nonce, package, signature,"
    " operator_certificate_pem, operator_certificate_serial, work_certificate_serial, ctk_pu,"
    " algorithm_code, created_at_ms, received_at_ms, state, next_attempt_at_ms)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'RECEIVED', $13)"
    " ON CONFLICT ON CONSTRAINT sn_key_mtms_operator_nonce_key DO NOTHING"
    " RETURNING submission_id";
// Operators seen, without a per-package write: the row is inserted at an operator
// certificate's first accepted package, and last_seen_at_ms moves only once it is
// kLastSeenResolutionMs old. Once the row exists, ON CONFLICT DO NOTHING and an UPDATE
// whose WHERE is false lock nothing, so concurrent submissions of one operator do not queue
// on its row until commit (ON CONFLICT DO UPDATE ... WHERE would: PostgreSQL locks the
// conflicting row even when the WHERE lets nothing be updated). The UPDATE does not see the
// row the CTE inserts (one snapshot), so a first sight is one insert. Package counts are
// counted from sn_key_mtms when wanted (docs/mtms.md).
constexpr int64_t kLastSeenResolutionMs = 60 * 1000;
constexpr char kRecordOperatorSeen[] =
    "WITH first_sight AS ("
    " INSERT INTO operators_seen (operator_id, certificate_serial, first_seen_at_ms,"
    " last_seen_at_ms) VALUES ($1, $2, $3::bigint, $3::bigint)"
    " ON CONFLICT (operator_id, certificate_serial) DO NOTHING)"
    " UPDATE operators_seen SET last_seen_at_ms = $3::bigint"
    " WHERE operator_id = $1 AND certificate_serial = $2"
    " AND last_seen_at_ms < $3::bigint - $4::bigint";

constexpr char kSubmissionColumns[] =
    "submission_id, sn, operator_id, nonce, package, signature, operator_certificate_pem,"
    " operator_certificate_serial, work_certificate_serial, ctk_pu, algorithm_code,"
    " created_at_ms, received_at_ms, state, reason, attempts, next_attempt_at_ms, last_error,"
    " COALESCE(forwarded_at_ms, 0)";
const std::string kSelectSubmission =
    std::string("SELECT ") + kSubmissionColumns + " FROM sn_key_mtms WHERE submission_id = $1";
// $1 state or NULL; $2/$3 cursor or NULL; $4 limit.
const std::string kListSubmissions =
    std::string("SELECT ") + kSubmissionColumns +
    " FROM sn_key_mtms WHERE ($1::text IS NULL OR state = $1::text)"
    " AND ($2::bigint IS NULL OR (received_at_ms, submission_id) > ($2::bigint, $3::text))"
    " ORDER BY received_at_ms, submission_id LIMIT $4";
constexpr char kCountByState[] = "SELECT state, count(*) FROM sn_key_mtms GROUP BY state";

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
                              kSubmissionColumns;
constexpr char kMakeAllDue[] =
    "UPDATE sn_key_mtms SET next_attempt_at_ms = $1"
    " WHERE state = 'RECEIVED' AND next_attempt_at_ms > $1";
constexpr char kFinishForwarded[] =
    "UPDATE sn_key_mtms SET state = 'FORWARDED', forwarded_at_ms = $3, attempts = attempts + 1,"
    " last_error = '', claimed_by = NULL, claimed_until_ms = NULL"
    " WHERE submission_id = $1 AND claimed_by = $2 AND state = 'RECEIVED'";
constexpr char kFinishRejected[] =
    "UPDATE sn_key_mtms SET state = 'REJECTED', reason = $3, attempts = attempts + 1,"
    " claimed_by = NULL, claimed_until_ms = NULL"
    " WHERE submission_id = $1 AND claimed_by = $2 AND state = 'RECEIVED'";
constexpr char kFinishRetryLater[] =
    "UPDATE sn_key_mtms SET attempts = attempts + 1, last_error = $3, next_attempt_at_ms = $4,"
    " claimed_by = NULL, claimed_until_ms = NULL"
    " WHERE submission_id = $1 AND claimed_by = $2 AND state = 'RECEIVED'";

constexpr char kInsertAudit[] =
    "INSERT INTO audit (at_ms, actor, action, sn, detail, result)"
    " VALUES ($1, $2, $3, $4, $5, $6)";
constexpr char kListAudit[] =
    "SELECT seq, at_ms, actor, action, sn, detail, result FROM audit ORDER BY seq DESC LIMIT $1";

pqxx::binarystring Bin(const Bytes& b) { return pqxx::binarystring(b.data(), b.size()); }

Bytes ReadBytes(const pqxx::field& f) {
  pqxx::binarystring bs(f);
  return Bytes(bs.data(), bs.data() + bs.size());
}

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
  k.serial_hex = r[0].as<std::string>();
  k.hsm_id = r[1].as<std::string>();
  k.hsm_key_index = r[2].as<uint64_t>();
  k.public_key_der = ReadBytes(r[3]);
  k.certificate_pem = r[4].as<std::string>();
  k.terminal_root_pem = r[5].as<std::string>();
  k.state = ParseWorkKeyState(r[6].as<std::string>());
  k.created_at_ms = r[7].as<int64_t>();
  k.retired_at_ms = r[8].as<int64_t>();
  return k;
}

SubmissionRecord ReadSubmission(const pqxx::row& r) {
  SubmissionRecord s;
  s.submission_id = r[0].as<std::string>();
  s.sn = r[1].as<std::string>();
  s.operator_id = r[2].as<std::string>();
  s.nonce = ReadBytes(r[3]);
  s.package = ReadBytes(r[4]);
  s.signature = ReadBytes(r[5]);
  s.operator_certificate_pem = r[6].as<std::string>();
  s.operator_certificate_serial = r[7].as<std::string>();
  s.work_certificate_serial = r[8].as<std::string>();
  s.ctk_pu = ReadBytes(r[9]);
  s.algorithm_code = static_cast<uint8_t>(r[10].as<int>());
  s.created_at_ms = r[11].as<int64_t>();
  s.received_at_ms = r[12].as<int64_t>();
  s.state = ParseSubmissionState(r[13].as<std::string>());
  s.reason = r[14].as<std::string>();
  s.attempts = r[15].as<uint32_t>();
  s.next_attempt_at_ms = r[16].as<int64_t>();
  s.last_error = r[17].as<std::string>();
  s.forwarded_at_ms = r[18].as<int64_t>();
  return s;
}

void InsertAudit(pqxx::work& tx, const AuditEntry& a) {
  db::Exec(tx, kInsertAudit, a.at_ms, a.actor, a.action, a.sn, a.detail, a.result);
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
  return db::RunAutocommitRead(
      pool_, [](pqxx::nontransaction& tx) -> absl::StatusOr<std::optional<WorkKeyRecord>> {
        pqxx::result r = db::Exec(tx, kSelectCurrentWorkKey);
        if (r.empty()) return std::nullopt;
        return ReadWorkKey(r[0]);
      });
}

absl::StatusOr<std::optional<WorkKeyRecord>> PgMtmsRepository::FindWorkKey(
    const std::string& serial) {
  return db::RunAutocommitRead(
      pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::optional<WorkKeyRecord>> {
        pqxx::result r = db::Exec(tx, kSelectWorkKey, serial);
        if (r.empty()) return std::nullopt;
        return ReadWorkKey(r[0]);
      });
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
    InsertAudit(tx, audit);
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
    InsertAudit(tx, audit);
    result.key.state = WorkKeyState::kRetired;
    result.key.retired_at_ms = now_ms;
    result.outcome = RetireOutcome::kRetired;
    return result;
  });
}

absl::StatusOr<InsertOutcome> PgMtmsRepository::InsertSubmission(const SubmissionRecord& row,
                                                                 const AuditEntry& audit) {
  return db::RunInTransaction(pool_, [&](pqxx::work& tx) -> absl::StatusOr<InsertOutcome> {
    pqxx::result key = db::Exec(tx, kWorkKeyStateForShare, row.work_certificate_serial);
    if (key.empty()) return InsertOutcome::kUnknownWorkKey;
    if (key[0][0].as<std::string>() == "RETIRED") return InsertOutcome::kRetiredWorkKey;
    pqxx::result inserted =
        db::Exec(tx, kInsertSubmission, row.submission_id, row.sn, row.operator_id, Bin(row.nonce),
                 Bin(row.package), Bin(row.signature), row.operator_certificate_pem,
                 row.operator_certificate_serial, row.work_certificate_serial, Bin(row.ctk_pu),
                 static_cast<int>(row.algorithm_code), row.created_at_ms, row.received_at_ms);
    if (inserted.empty()) return InsertOutcome::kReplay;
    db::Exec(tx, kRecordOperatorSeen, row.operator_id, row.operator_certificate_serial,
             row.received_at_ms, kLastSeenResolutionMs);
    InsertAudit(tx, audit);
    return InsertOutcome::kInserted;
  });
}

absl::StatusOr<std::optional<SubmissionRecord>> PgMtmsRepository::GetSubmission(
    const std::string& submission_id) {
  return db::RunAutocommitRead(
      pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::optional<SubmissionRecord>> {
        pqxx::result r = db::Exec(tx, kSelectSubmission, submission_id);
        if (r.empty()) return std::nullopt;
        return ReadSubmission(r[0]);
      });
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
      uint64_t n = row[1].as<uint64_t>();
      switch (ParseSubmissionState(row[0].as<std::string>())) {
        case SubmissionState::kReceived:
          counts.received = n;
          break;
        case SubmissionState::kForwarded:
          counts.forwarded = n;
          break;
        case SubmissionState::kRejected:
          counts.rejected = n;
          break;
      }
    }
    return counts;
  });
}

absl::StatusOr<std::vector<SubmissionRecord>> PgMtmsRepository::ClaimDue(
    const std::string& claim_token, int64_t now_ms, int64_t lease_until_ms, int limit) {
  return db::RunInTransaction(
      pool_, [&](pqxx::work& tx) -> absl::StatusOr<std::vector<SubmissionRecord>> {
        std::vector<SubmissionRecord> rows;
        for (const pqxx::row& row :
             db::Exec(tx, kClaimDue, claim_token, now_ms, lease_until_ms, limit)) {
          rows.push_back(ReadSubmission(row));
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
  return db::RunInTransaction(pool_, [&](pqxx::work& tx) -> absl::StatusOr<uint64_t> {
    return static_cast<uint64_t>(db::Exec(tx, kMakeAllDue, now_ms).affected_rows());
  });
}

absl::StatusOr<bool> PgMtmsRepository::FinishForwarded(const std::string& submission_id,
                                                       const std::string& claim_token,
                                                       int64_t now_ms, const AuditEntry& audit) {
  return db::RunInTransaction(pool_, [&](pqxx::work& tx) -> absl::StatusOr<bool> {
    if (db::Exec(tx, kFinishForwarded, submission_id, claim_token, now_ms).affected_rows() != 1) {
      return false;
    }
    InsertAudit(tx, audit);
    return true;
  });
}

absl::StatusOr<bool> PgMtmsRepository::FinishRejected(const std::string& submission_id,
                                                      const std::string& claim_token,
                                                      const std::string& reason,
                                                      const AuditEntry& audit) {
  return db::RunInTransaction(pool_, [&](pqxx::work& tx) -> absl::StatusOr<bool> {
    if (db::Exec(tx, kFinishRejected, submission_id, claim_token, reason).affected_rows() != 1) {
      return false;
    }
    InsertAudit(tx, audit);
    return true;
  });
}

absl::StatusOr<bool> PgMtmsRepository::FinishRetryLater(const std::string& submission_id,
                                                        const std::string& claim_token,
                                                        const std::string& last_error,
                                                        int64_t next_attempt_at_ms) {
  return db::RunInTransaction(pool_, [&](pqxx::work& tx) -> absl::StatusOr<bool> {
    return db::Exec(tx, kFinishRetryLater, submission_id, claim_token, last_error,
                    next_attempt_at_ms)
               .affected_rows() == 1;
  });
}

absl::Status PgMtmsRepository::AppendAudit(const AuditEntry& audit) {
  return db::RunInTransaction(pool_, [&](pqxx::work& tx) -> absl::Status {
    InsertAudit(tx, audit);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<AuditRecord>> PgMtmsRepository::ListAudit(size_t limit) {
  return db::RunAutocommitRead(
      pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::vector<AuditRecord>> {
        std::vector<AuditRecord> records;
        for (const pqxx::row& row : db::Exec(tx, kListAudit, static_cast<int64_t>(limit))) {
          AuditRecord a;
          a.seq = row[0].as<uint64_t>();
          a.at_ms = row[1].as<int64_t>();
          a.actor = row[2].as<std::string>();
          a.action = row[3].as<std::string>();
          a.sn = row[4].as<std::string>();
          a.detail = row[5].as<std::string>();
          a.result = row[6].as<std::string>();
          records.push_back(std::move(a));
        }
        return records;
      });
}

}  // namespace rkl::mtms
