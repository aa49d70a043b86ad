#include "kms_pg_repository.h"

#include <pqxx/binarystring>
#include <pqxx/pqxx>
#include <set>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/json.h"
#include "rkl/common/status_macros.h"
#include "rkl/db/prepared.h"
#include "rkl/db/transaction.h"

namespace rkl::kms {
namespace {

// ---- Queries (all parameterised) -----------------------------------------------------

constexpr char kTerminalColumns[] =
    "t.sn, t.state, t.state_before_lock, t.algorithm, k.ctk_pk, "
    "coalesce(k.mtms_submission_id, ''), coalesce(k.received_at_ms, t.created_at_ms), k.tek_index, "
    "coalesce(k.tek_kcv, ''), k.auk_index, "
    "coalesce(k.auk_kcv, ''), t.tmk_index, coalesce(t.tmk_kcv, ''), t.tmk_generation, "
    "t.replace_tmk, t.rekey_requested, t.consecutive_failures, t.created_at_ms, "
    "t.installed_at_ms, t.updated_at_ms, t.version, t.protocol, coalesce(t.krd_id, ''), "
    "t.krd_certificate, t.krd_nonce";

// The number of columns in a list of them (commas inside parentheses do not separate).
constexpr int CountColumns(std::string_view columns) {
  int n = 1, depth = 0;
  for (char c : columns) {
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (c == ',' && depth == 0) ++n;
  }
  return n;
}
constexpr int kTerminalColumnCount = CountColumns(kTerminalColumns);

const std::string kSelectTerminal =
    absl::StrCat("SELECT ", kTerminalColumns,
                 " FROM terminals t LEFT JOIN sn_tk_kms k ON k.sn = t.sn "
                 "WHERE t.sn = $1");

const std::string kListTerminals =
    absl::StrCat("SELECT ", kTerminalColumns,
                 " FROM terminals t LEFT JOIN sn_tk_kms k ON k.sn = t.sn "
                 "WHERE ($1::text IS NULL OR t.state = $1) AND t.sn LIKE $2 || '%' AND t.sn > $3 "
                 "ORDER BY t.sn LIMIT $4");

// Every write is ONE statement (data-modifying CTEs), run in autocommit
// (db::RunAutocommitWrite): one round trip however many rows it touches, atomic and
// durable as a transaction. Audit entries travel as one JSON array parameter ($AUDIT
// below), inserted in array order and only when the main write happened, into
// audit_pending with the id and MAC rkl::audit prepared for each; the sealer chains them.
constexpr char kAuditFromJson[] =
    "INSERT INTO audit_pending (id, at_ms, actor, action, sn, detail, result, mac, request_id) "
    "SELECT x.id, x.at_ms, x.actor, x.action, x.sn, x.detail, x.result, decode(x.mac, 'hex'), "
    "x.request_id FROM jsonb_to_recordset($AUDIT::jsonb) AS x(ord int, id bigint, "
    "at_ms bigint, actor text, action text, sn text, detail text, result text, mac text, "
    "request_id text) ";

// The SN-TK_KMS upsert's conflict clause: an unchanged row is not rewritten.
constexpr char kTkValues[] =
    "ON CONFLICT (sn) DO UPDATE SET ctk_pk = EXCLUDED.ctk_pk, "
    "mtms_submission_id = EXCLUDED.mtms_submission_id, "
    "received_at_ms = EXCLUDED.received_at_ms, algorithm = EXCLUDED.algorithm, "
    "tek_index = EXCLUDED.tek_index, tek_kcv = EXCLUDED.tek_kcv, "
    "auk_index = EXCLUDED.auk_index, auk_kcv = EXCLUDED.auk_kcv, "
    "imported_at_ms = CASE WHEN EXCLUDED.auk_index IS NULL THEN 0 "
    "  WHEN sn_tk_kms.auk_index IS NOT DISTINCT FROM EXCLUDED.auk_index "
    "  THEN sn_tk_kms.imported_at_ms ELSE EXCLUDED.imported_at_ms END "
    "WHERE (sn_tk_kms.ctk_pk, sn_tk_kms.mtms_submission_id, sn_tk_kms.received_at_ms, "
    "sn_tk_kms.algorithm, sn_tk_kms.tek_index, sn_tk_kms.tek_kcv, sn_tk_kms.auk_index, "
    "sn_tk_kms.auk_kcv) IS DISTINCT FROM (EXCLUDED.ctk_pk, EXCLUDED.mtms_submission_id, "
    "EXCLUDED.received_at_ms, EXCLUDED.algorithm, EXCLUDED.tek_index, EXCLUDED.tek_kcv, "
    "EXCLUDED.auk_index, EXCLUDED.auk_kcv)";

// Typed: in INSERT ... SELECT an untyped parameter would be taken as text.
constexpr char kTkParams[] =
    "$14::bytea, $15::text, $16::bigint, $17::smallint, $18::bigint, $19::text, $20::bigint, "
    "$21::text, $22::bigint";

std::string WithAuditParam(std::string sql, int n) {
  const std::string placeholder = "$AUDIT";
  size_t at;
  while ((at = sql.find(placeholder)) != std::string::npos) {
    sql.replace(at, placeholder.size(), absl::StrCat("$", n));
  }
  return sql;
}

// The CTE n: notifies kTkArrivalChannel of the SN of each row of the CTE `from` (TK rows just
// stored). A CTE that only selects runs only when the statement reads it: every statement
// with n reads it in its final SELECT.
std::string TkArrival(const char* from) {
  return absl::StrCat("n AS (SELECT pg_notify('", kTkArrivalChannel, "', sn) FROM ", from);
}

// Terminal $1..$13 (the INSERT below), TK $14..$22 (ctk_pk, submission, received, algorithm,
// tek_index, tek_kcv, auk_index, auk_kcv, imported_at), audit $23, TR-34 $24..$27
// (protocol, krd_id, krd_certificate, krd_nonce). A TR-34 terminal (empty ctk_pk) gets no
// SN-TK_KMS row.
const std::string kInsertTerminal = WithAuditParam(
    absl::StrCat(
        "WITH t AS (INSERT INTO terminals (sn, state, state_before_lock, algorithm, tmk_index, "
        "tmk_kcv, tmk_generation, replace_tmk, rekey_requested, consecutive_failures, "
        "created_at_ms, installed_at_ms, updated_at_ms, version, protocol, krd_id, "
        "krd_certificate, krd_nonce) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, $24, $25, "
        "decode($26::text, 'hex'), decode($27::text, 'hex')) "
        "RETURNING sn), "
        "k AS (INSERT INTO sn_tk_kms (sn, ctk_pk, mtms_submission_id, received_at_ms, "
        "algorithm, tek_index, tek_kcv, auk_index, auk_kcv, imported_at_ms) "
        "SELECT sn, ",
        kTkParams, " FROM t WHERE octet_length($14::bytea) > 0 RETURNING sn), ", TkArrival("k"),
        "), "
        "a AS (",
        kAuditFromJson,
        "WHERE EXISTS (SELECT 1 FROM t) ORDER BY x.ord) "
        "SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM n)"),
    23);

// The first TKs of several SNs (InsertFirstTransportKeys): the rows as one JSON array $1
// (sn, algorithm, at_ms, ctk_pk in hex, submission), inserted in SN order so that two
// concurrent batches take their SNs' index entries in one order; an SN that exists is
// skipped, and so are the audit entries ($2) of its row. Returns the SNs inserted.
const std::string kInsertFirstTks = WithAuditParam(
    absl::StrCat(
        "WITH r AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(sn text, algorithm "
        "smallint, at_ms bigint, ctk_pk text, submission text)), "
        "t AS (INSERT INTO terminals (sn, state, algorithm, created_at_ms, updated_at_ms, "
        "version, protocol) "
        "SELECT sn, 'TK_RECEIVED', algorithm, at_ms, at_ms, 1, 'patent' FROM r ORDER BY sn "
        "ON CONFLICT (sn) DO NOTHING RETURNING sn), "
        "k AS (INSERT INTO sn_tk_kms (sn, ctk_pk, mtms_submission_id, received_at_ms, "
        "algorithm, imported_at_ms) "
        "SELECT r.sn, decode(r.ctk_pk, 'hex'), r.submission, r.at_ms, r.algorithm, 0 "
        "FROM r JOIN t ON t.sn = r.sn ORDER BY r.sn RETURNING sn), ",
        TkArrival("k"),
        "), "
        "a AS (",
        kAuditFromJson,
        "WHERE x.sn IN (SELECT sn FROM t) ORDER BY x.ord) "
        "SELECT t.sn, (SELECT count(*) FROM n) FROM t"),
    2);

// The versioned terminal update (u: $1..$13, version last; the TR-34 random number as
// the statement's last parameter, after the audit) and its SN-TK_KMS row (k: $14..$22; none
// for a TR-34 terminal), the start of both update statements below; the rest of each
// statement writes only if u did.
std::string TerminalUpdate(int krd_nonce_param) {
  return absl::StrCat(
      "WITH u AS (UPDATE terminals SET krd_nonce = decode($", krd_nonce_param,
      "::text, 'hex'), state = $2, state_before_lock = $3, algorithm = $4, "
      "tmk_index = $5, tmk_kcv = $6, tmk_generation = $7, replace_tmk = $8, "
      "rekey_requested = $9, consecutive_failures = $10, "
      // The back-off ends with the failure streak (success, unlock); else only
      // kChargeProofAttempt and kRefundProofAttempt move it.
      "retry_after_ms = CASE WHEN $10::integer = 0 THEN 0 ELSE retry_after_ms END, "
      "installed_at_ms = $11, "
      "updated_at_ms = $12, version = version + 1 "
      "WHERE sn = $1 AND version = $13 RETURNING sn), "
      "k AS (INSERT INTO sn_tk_kms (sn, ctk_pk, mtms_submission_id, received_at_ms, "
      "algorithm, tek_index, tek_kcv, auk_index, auk_kcv, imported_at_ms) "
      "SELECT sn, ",
      kTkParams, " FROM u WHERE octet_length($14::bytea) > 0 ", kTkValues, " RETURNING sn), ");
}

// Terminal $1..$13 (version last), TK $14..$22; cancel the SN's open sessions $23; the
// session step: id $24 (NULL for none), from $25, to $26, tmk_kcv $27 (NULL keeps it);
// audit $28. Returns the terminal rows updated (0 when the version moved on: then nothing
// is written) and the sessions moved. Callers never cancel and move in one call. A TK that
// arrives with the write (state TK_RECEIVED, a stored TK row changed, no AUK imported yet:
// a supersede, or the new TK of a re-key) is notified (n).
const std::string kUpdateTerminal = WithAuditParam(
    absl::StrCat(TerminalUpdate(29), TkArrival("k"),
                 " WHERE $2::text = 'TK_RECEIVED' AND $20::bigint IS NULL), ",
                 "c AS (UPDATE auth_sessions SET state = 'CANCELLED' "
                 "WHERE $23::boolean AND sn IN (SELECT sn FROM u) "
                 "AND state IN ('OPEN', 'AUTHENTICATED')), "
                 "m AS (UPDATE auth_sessions SET state = $26::text, "
                 "tmk_kcv = coalesce($27::text, tmk_kcv) "
                 "WHERE id = $24::text AND state = $25::text AND EXISTS (SELECT 1 FROM u) "
                 "RETURNING id), "
                 "a AS (",
                 kAuditFromJson,
                 "WHERE EXISTS (SELECT 1 FROM u) ORDER BY x.ord) "
                 "SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM m), "
                 "(SELECT count(*) FROM n)"),
    28);

// kUpdateTerminal's terminal and TK ($1..$22) with a new session ($23..$30: id, auk_index,
// rnd1, rnd2, state, tmk_kcv, created, expires; its SN is the terminal's) instead of the
// session step; audit $31. Nothing is written unless the terminal's version matched.
const std::string kUpdateTerminalInsertSession = WithAuditParam(
    absl::StrCat(TerminalUpdate(32),
                 "s AS (INSERT INTO auth_sessions (id, sn, auk_index, rnd1, rnd2, state, tmk_kcv, "
                 "created_at_ms, expires_at_ms) SELECT $23::text, sn, $24::bigint, $25::bytea, "
                 "$26::bytea, $27::text, $28::text, $29::bigint, $30::bigint FROM u), "
                 "a AS (",
                 kAuditFromJson,
                 "WHERE EXISTS (SELECT 1 FROM u) ORDER BY x.ord) "
                 "SELECT count(*) FROM u"),
    31);

// Session $1..$9, audit $10. Opened only while its terminal can be authenticated with that
// AUK: the terminal row is re-checked and share-locked in the same statement, so a lock,
// revocation or new TK committed while HSM #2 made the challenge leaves no session, and
// one that comes later waits for this statement and then cancels the session it sees.
const std::string kInsertSession = WithAuditParam(
    absl::StrCat(
        "WITH t AS (SELECT t.sn FROM terminals t JOIN sn_tk_kms k ON k.sn = t.sn "
        "WHERE t.sn = $2 "
        "AND t.state IN ('TK_RECEIVED', 'AUTHENTICATED', 'TMK_DELIVERED', 'INSTALLED') "
        "AND k.auk_index = $3::bigint FOR SHARE OF t), "
        "s AS (INSERT INTO auth_sessions (id, sn, auk_index, rnd1, rnd2, state, tmk_kcv, "
        "created_at_ms, expires_at_ms) SELECT $1::text, sn, $3::bigint, $4::bytea, $5::bytea, "
        "$6::text, $7::text, $8::bigint, $9::bigint FROM t "
        "RETURNING id), "
        "a AS (",
        kAuditFromJson,
        "WHERE EXISTS (SELECT 1 FROM s) ORDER BY x.ord) "
        "SELECT count(*) FROM s"),
    10);

const std::string kInsertAudit = WithAuditParam(absl::StrCat(kAuditFromJson, "ORDER BY x.ord"), 1);

constexpr char kSelectSession[] =
    "SELECT id, sn, auk_index, rnd1, rnd2, state, tmk_kcv, created_at_ms, expires_at_ms "
    "FROM auth_sessions WHERE id = $1";

// Both in one statement and one snapshot; a side that is absent comes back as NULLs.
const std::string kSelectSessionAndTerminal = absl::StrCat(
    "SELECT s.id, s.sn, s.auk_index, s.rnd1, s.rnd2, s.state, s.tmk_kcv, s.created_at_ms, "
    "s.expires_at_ms, ",
    kTerminalColumns,
    " FROM (SELECT 1) one LEFT JOIN auth_sessions s ON s.id = $1 "
    "LEFT JOIN (terminals t LEFT JOIN sn_tk_kms k ON k.sn = t.sn) ON t.sn = $2");
constexpr int kSessionColumnCount = 9;

// The claim and the read in one statement: the compare-and-set of kTransitionSession,
// narrowed to the SN's unexpired session, returning the session as it was (state $3) and
// its terminal. No row: nothing changed. $1 id, $2 sn, $3 from, $4 to, $5 now.
const std::string kClaimSessionAndSelectTerminal = absl::StrCat(
    "WITH s AS (UPDATE auth_sessions SET state = $4 "
    "WHERE id = $1 AND sn = $2 AND state = $3 AND expires_at_ms > $5::bigint "
    "RETURNING id, sn, auk_index, rnd1, rnd2, tmk_kcv, created_at_ms, expires_at_ms) "
    "SELECT s.id, s.sn, s.auk_index, s.rnd1, s.rnd2, $3::text, s.tmk_kcv, s.created_at_ms, "
    "s.expires_at_ms, ",
    kTerminalColumns, " FROM s JOIN terminals t ON t.sn = s.sn JOIN sn_tk_kms k ON k.sn = t.sn");

// kClaimSessionAndSelectTerminal and kChargeProofAttempt in one statement, both or neither
// (KmsRepository::ClaimSessionAndChargeAttempt). When the session is claimable, l locks the
// terminal row and then ls the session row, in the order of every statement that writes
// both; locked rows are their latest versions, so of two claims of one session the second
// finds it claimed (no row: nothing changed), and the rule and the precondition are checked
// on the row the charge changes. s claims the session only if they hold; c charges only
// what s claimed. The row: the session as locked (state $3), the terminal before the
// charge, whether it was charged and the counter, retry_after_ms and version after it (or
// as read). $1 id, $2 sn, $3 from, $4 to, $5 now, $6 base, $7 max, $8 lock_after; the
// precondition: $9 states (text[], NULL: any), $10 session's AUK, $11 TEK, $12 session's
// TMK, $13 algorithms (smallint[]).
const std::string kClaimSessionAndChargeAttempt = absl::StrCat(
    "WITH l AS (SELECT t AS tr, k AS kr FROM terminals t JOIN sn_tk_kms k ON k.sn = t.sn "
    "WHERE t.sn = $2 AND EXISTS (SELECT 1 FROM auth_sessions WHERE id = $1 AND sn = $2 "
    "AND state = $3 AND expires_at_ms > $5::bigint) FOR UPDATE OF t), "
    "ls AS (SELECT id, sn, auk_index, rnd1, rnd2, tmk_kcv, created_at_ms, expires_at_ms "
    "FROM auth_sessions WHERE id = $1 AND sn = $2 AND state = $3 "
    "AND expires_at_ms > $5::bigint AND EXISTS (SELECT 1 FROM l) FOR UPDATE), "
    "s AS (UPDATE auth_sessions a SET state = $4 FROM ls WHERE a.id = ls.id "
    "AND EXISTS (SELECT 1 FROM l WHERE (l.tr).state NOT IN ('LOCKED', 'REVOKED') "
    "AND (l.tr).retry_after_ms <= $5::bigint AND (l.tr).consecutive_failures < $8::integer "
    "AND ($9::text[] IS NULL OR (l.tr).state = ANY($9::text[])) "
    "AND (NOT $10::boolean OR (l.kr).auk_index = ls.auk_index) "
    "AND (NOT $11::boolean OR (l.kr).tek_index IS NOT NULL) "
    "AND (NOT $12::boolean OR coalesce((l.tr).tmk_kcv, '') = ls.tmk_kcv) "
    "AND (l.tr).algorithm = ANY($13::smallint[])) "
    "RETURNING a.sn), "
    "c AS (UPDATE terminals SET consecutive_failures = consecutive_failures + 1, "
    "retry_after_ms = $5::bigint + least($7::bigint, "
    "  $6::bigint * power(2::numeric, least(consecutive_failures, 62)))::bigint, "
    "version = version + 1 "
    "WHERE sn IN (SELECT sn FROM s) RETURNING consecutive_failures, retry_after_ms, version) "
    "SELECT ls.id, ls.sn, ls.auk_index, ls.rnd1, ls.rnd2, $3::text, ls.tmk_kcv, "
    "ls.created_at_ms, ls.expires_at_ms, ",
    kTerminalColumns,
    ", c.version IS NOT NULL, coalesce(c.consecutive_failures, t.consecutive_failures), "
    "coalesce(c.retry_after_ms, t.retry_after_ms), coalesce(c.version, t.version) "
    "FROM ls CROSS JOIN (SELECT (l.tr).* FROM l) t CROSS JOIN (SELECT (l.kr).* FROM l) k "
    "LEFT JOIN c ON true");

// The compare-and-set behind single use: only the caller that still finds `from` moves it.
constexpr char kTransitionSession[] =
    "UPDATE auth_sessions SET state = $3, tmk_kcv = coalesce($4, tmk_kcv) "
    "WHERE id = $1 AND state = $2";

constexpr char kPurgeSessions[] = "DELETE FROM auth_sessions WHERE expires_at_ms < $1";

// One proof attempt charged atomically (KmsRepository::ChargeProofAttempt): the row lock
// of the UPDATE serialises parallel sessions of one SN. $1 sn, $2 now, $3 base, $4 max,
// $5 lock_after. The second half answers a refusal with the row as read.
constexpr char kChargeProofAttempt[] =
    "WITH u AS (UPDATE terminals SET consecutive_failures = consecutive_failures + 1, "
    "retry_after_ms = $2::bigint + least($4::bigint, "
    "  $3::bigint * power(2::numeric, least(consecutive_failures, 62)))::bigint, "
    "version = version + 1 "
    "WHERE sn = $1 AND retry_after_ms <= $2::bigint AND consecutive_failures < $5::integer "
    "AND state NOT IN ('LOCKED', 'REVOKED') "
    "RETURNING consecutive_failures, retry_after_ms, version) "
    "SELECT true, consecutive_failures, retry_after_ms, version FROM u "
    "UNION ALL SELECT false, consecutive_failures, retry_after_ms, version FROM terminals "
    "WHERE sn = $1 AND NOT EXISTS (SELECT 1 FROM u)";

constexpr char kRefundProofAttempt[] =
    "UPDATE terminals SET consecutive_failures = greatest(consecutive_failures - 1, 0), "
    "retry_after_ms = least(retry_after_ms, $2::bigint), version = version + 1 WHERE sn = $1";

constexpr char kListAudit[] =
    "SELECT seq, at_ms, actor, action, sn, detail, result, request_id FROM audit "
    "WHERE ($1 = '' OR sn = $1) AND seq > $2 ORDER BY seq LIMIT $3";

constexpr char kCountByState[] = "SELECT state, count(*) FROM terminals GROUP BY state";
constexpr char kCountByProtocol[] =
    "SELECT upper(protocol), count(*) FROM terminals GROUP BY protocol";

constexpr char kKdhKeyColumns[] =
    "key_index, label, certificate, serial_hex, not_after_s, created_at_ms, active";
// The active key and its audit in one statement; the unique index kdh_keys_one_active
// refuses a second active key. $1..$7, audit $8.
const std::string kInsertKdhKey = WithAuditParam(
    absl::StrCat("WITH k AS (INSERT INTO kdh_keys (", kKdhKeyColumns,
                 ") VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING key_index), a AS (",
                 kAuditFromJson,
                 "WHERE EXISTS (SELECT 1 FROM k) ORDER BY x.ord) SELECT count(*) FROM k"),
    8);
const std::string kListKdhKeys =
    absl::StrCat("SELECT ", kKdhKeyColumns, " FROM kdh_keys ORDER BY key_index");
const std::string kSelectActiveKdhKey =
    absl::StrCat("SELECT ", kKdhKeyColumns, " FROM kdh_keys WHERE active");
constexpr char kCountDistinctKcvs[] = "SELECT count(*), count(DISTINCT tmk_kcv) FROM terminals";
// Chained, pending and from before the chain (audit_legacy), in one snapshot.
constexpr char kCountFailures[] =
    "SELECT (SELECT count(*) FROM audit WHERE action = ANY($1::text[])) + "
    "(SELECT count(*) FROM audit_pending WHERE action = ANY($1::text[])) + "
    "(SELECT count(*) FROM audit_legacy WHERE action = ANY($1::text[]))";

absl::Status TerminalMovedOn() {
  return absl::FailedPreconditionError(
      "sn: the terminal changed while the session was being opened (locked, revoked, "
      "installed or a new transport key); start again");
}

// ---- Conversions -----------------------------------------------------------------------

// libpqxx 6.4 has no std::optional parameters; a null C string is SQL NULL.
struct NullableText {
  explicit NullableText(const std::optional<uint64_t>& v) {
    if (v) text = std::to_string(*v);
  }
  explicit NullableText(const std::string& s, bool null_if_empty) {
    if (!(null_if_empty && s.empty())) text = s;
  }
  const char* get() const { return text ? text->c_str() : nullptr; }
  std::optional<std::string> text;
};

std::optional<uint64_t> OptionalIndex(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<uint64_t>();
}

Bytes ReadBytes(const pqxx::field& f) {
  pqxx::binarystring b(f);
  return Bytes(b.begin(), b.end());
}

pqxx::binarystring Binary(const Bytes& b) { return pqxx::binarystring(b.data(), b.size()); }

absl::StatusOr<TerminalRecord> ReadTerminal(const pqxx::row& r) {
  TerminalRecord t;
  t.sn = r[0].as<std::string>();
  RKL_ASSIGN_OR_RETURN(t.state, TerminalStateFromName(r[1].as<std::string>()));
  if (!r[2].is_null()) {
    RKL_ASSIGN_OR_RETURN(TerminalState before, TerminalStateFromName(r[2].as<std::string>()));
    t.state_before_lock = before;
  }
  RKL_ASSIGN_OR_RETURN(t.algorithm,
                       crypto::KeyAlgorithmFromCode(static_cast<uint8_t>(r[3].as<int>())));
  if (!r[4].is_null()) t.ctk_pk = ReadBytes(r[4]);
  t.mtms_submission_id = r[5].as<std::string>();
  t.tk_received_at_ms = r[6].as<int64_t>();
  t.tek_index = OptionalIndex(r[7]);
  t.tek_kcv = r[8].as<std::string>();
  t.auk_index = OptionalIndex(r[9]);
  t.auk_kcv = r[10].as<std::string>();
  t.tmk_index = OptionalIndex(r[11]);
  t.tmk_kcv = r[12].as<std::string>();
  t.tmk_generation = r[13].as<uint32_t>();
  t.replace_tmk = r[14].as<bool>();
  t.rekey_requested = r[15].as<bool>();
  t.consecutive_failures = r[16].as<uint32_t>();
  t.created_at_ms = r[17].as<int64_t>();
  t.installed_at_ms = r[18].as<int64_t>();
  t.updated_at_ms = r[19].as<int64_t>();
  t.version = r[20].as<int64_t>();
  t.protocol =
      r[21].as<std::string>() == "tr34" ? TerminalProtocol::kTr34 : TerminalProtocol::kPatent;
  t.krd_id = r[22].as<std::string>();
  if (!r[23].is_null()) t.krd_certificate_der = ReadBytes(r[23]);
  if (!r[24].is_null()) t.krd_nonce = ReadBytes(r[24]);
  return t;
}

absl::StatusOr<AuthSession> ReadSession(const pqxx::row& r) {
  AuthSession s;
  s.id = r[0].as<std::string>();
  s.sn = r[1].as<std::string>();
  s.auk_index = r[2].as<uint64_t>();
  s.rnd1 = ReadBytes(r[3]);
  s.rnd2 = ReadBytes(r[4]);
  RKL_ASSIGN_OR_RETURN(s.state, SessionStateFromName(r[5].as<std::string>()));
  s.tmk_kcv = r[6].as<std::string>();
  s.created_at_ms = r[7].as<int64_t>();
  s.expires_at_ms = r[8].as<int64_t>();
  return s;
}

}  // namespace

namespace {

// The sn_tk_kms half of a terminal, as parameters $14..$22 of kInsertTerminal/kUpdateTerminal.
struct TkParams {
  explicit TkParams(const TerminalRecord& t)
      : ctk_pk(Binary(t.ctk_pk)),
        tek_index(t.tek_index),
        auk_index(t.auk_index),
        tek_kcv(t.tek_kcv, true),
        auk_kcv(t.auk_kcv, true),
        algorithm(static_cast<int>(crypto::KeyAlgorithmCode(t.algorithm))) {}
  pqxx::binarystring ctk_pk;
  NullableText tek_index, auk_index, tek_kcv, auk_kcv;
  int algorithm;
};

// A bytea parameter as hex text (decode($n::text, 'hex') in SQL), NULL when `b` is empty.
struct NullableBytes {
  explicit NullableBytes(const Bytes& b) : hex(b.empty() ? "" : ToHex(b), true) {}
  const char* get() const { return hex.get(); }
  NullableText hex;
};

NullableBytes KrdNonce(const TerminalRecord& t) { return NullableBytes(t.krd_nonce); }

// One of the statements that start with TerminalUpdate: the terminal and its SN-TK_KMS row
// as $1..$22, then `rest` from $23 on, then the TR-34 random number.
template <typename... Rest>
pqxx::row ExecTerminalUpdate(db::OneStatement& stmt, const std::string& sql,
                             const TerminalRecord& t, Rest&&... rest) {
  NullableText before(t.state_before_lock ? TerminalStateName(*t.state_before_lock) : "", true);
  NullableText tmk_index(t.tmk_index), tmk_kcv(t.tmk_kcv, true);
  TkParams tk(t);
  return stmt.Exec1(sql, t.sn, TerminalStateName(t.state), before.get(),
                    static_cast<int>(crypto::KeyAlgorithmCode(t.algorithm)), tmk_index.get(),
                    tmk_kcv.get(), t.tmk_generation, t.replace_tmk, t.rekey_requested,
                    t.consecutive_failures, t.installed_at_ms, t.updated_at_ms, t.version,
                    tk.ctk_pk, t.mtms_submission_id, t.tk_received_at_ms, tk.algorithm,
                    tk.tek_index.get(), tk.tek_kcv.get(), tk.auk_index.get(), tk.auk_kcv.get(),
                    t.updated_at_ms, std::forward<Rest>(rest)..., KrdNonce(t).get());
}

}  // namespace

absl::StatusOr<TerminalRecord> PgKmsRepository::GetTerminal(const std::string& sn) {
  return db::RunAutocommitRead(pool_,
                               [&](pqxx::nontransaction& tx) -> absl::StatusOr<TerminalRecord> {
                                 pqxx::result r = db::Exec(tx, kSelectTerminal, sn);
                                 if (r.empty()) return absl::NotFoundError("sn: no such terminal");
                                 return ReadTerminal(r[0]);
                               });
}

absl::Status PgKmsRepository::InsertTerminal(const TerminalRecord& t,
                                             const std::vector<AuditEntry>& audit) {
  RKL_ASSIGN_OR_RETURN(const std::string audit_json, audit_.PreparePendingJson(audit));
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) {
    NullableText before(t.state_before_lock ? TerminalStateName(*t.state_before_lock) : "", true);
    NullableText tmk_index(t.tmk_index), tmk_kcv(t.tmk_kcv, true);
    TkParams tk(t);
    NullableText krd_id(t.krd_id, true);
    NullableBytes krd_cert(t.krd_certificate_der), krd_nonce(t.krd_nonce);
    stmt.Exec(
        kInsertTerminal, t.sn, TerminalStateName(t.state), before.get(),
        static_cast<int>(crypto::KeyAlgorithmCode(t.algorithm)), tmk_index.get(), tmk_kcv.get(),
        t.tmk_generation, t.replace_tmk, t.rekey_requested, t.consecutive_failures, t.created_at_ms,
        t.installed_at_ms, t.updated_at_ms, tk.ctk_pk, t.mtms_submission_id, t.tk_received_at_ms,
        tk.algorithm, tk.tek_index.get(), tk.tek_kcv.get(), tk.auk_index.get(), tk.auk_kcv.get(),
        t.updated_at_ms, audit_json, t.protocol == TerminalProtocol::kTr34 ? "tr34" : "patent",
        krd_id.get(), krd_cert.get(), krd_nonce.get());
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<bool>> PgKmsRepository::InsertFirstTransportKeys(
    std::span<const FirstTransportKey> rows) {
  JsonRows json;
  std::vector<AuditEntry> audit;
  for (const FirstTransportKey& row : rows) {
    const TerminalRecord& t = row.terminal;
    json.Row()
        .Field("sn", t.sn)
        .Field("algorithm", static_cast<int64_t>(crypto::KeyAlgorithmCode(t.algorithm)))
        .Field("at_ms", t.tk_received_at_ms)
        .Field("ctk_pk", ToHex(t.ctk_pk))
        .Field("submission", t.mtms_submission_id);
    audit.insert(audit.end(), row.audit.begin(), row.audit.end());
  }
  const std::string rows_json = json.Finish();
  RKL_ASSIGN_OR_RETURN(const std::string audit_json, audit_.PreparePendingJson(audit));
  return db::RunAutocommitWrite(
      pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<std::vector<bool>> {
        pqxx::result r = stmt.Exec(kInsertFirstTks, rows_json, audit_json);
        std::set<std::string> inserted;
        for (const pqxx::row& row : r) inserted.insert(row[0].as<std::string>());
        std::vector<bool> out;
        out.reserve(rows.size());
        for (const FirstTransportKey& row : rows) out.push_back(inserted.contains(row.terminal.sn));
        return out;
      });
}

absl::Status PgKmsRepository::UpdateTerminal(const TerminalRecord& t, bool cancel_sessions,
                                             const std::vector<AuditEntry>& audit) {
  return WriteTerminal(t, cancel_sessions, audit, nullptr).status();
}

absl::StatusOr<bool> PgKmsRepository::UpdateTerminalAndMoveSession(
    const TerminalRecord& t, const std::vector<AuditEntry>& audit, const SessionMove& move) {
  return WriteTerminal(t, false, audit, &move);
}

absl::StatusOr<bool> PgKmsRepository::WriteTerminal(const TerminalRecord& t, bool cancel_sessions,
                                                    const std::vector<AuditEntry>& audit,
                                                    const SessionMove* move) {
  RKL_ASSIGN_OR_RETURN(const std::string audit_json, audit_.PreparePendingJson(audit));
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<bool> {
    NullableText move_id(move ? move->id : "", move == nullptr);
    NullableText move_from(move ? SessionStateName(move->from) : "", move == nullptr);
    NullableText move_to(move ? SessionStateName(move->to) : "", move == nullptr);
    NullableText move_kcv(move && move->tmk_kcv ? *move->tmk_kcv : "",
                          move == nullptr || !move->tmk_kcv);
    pqxx::row r = ExecTerminalUpdate(stmt, kUpdateTerminal, t, cancel_sessions, move_id.get(),
                                     move_from.get(), move_to.get(), move_kcv.get(), audit_json);
    if (r[0].as<int64_t>() != 1) {
      return absl::AbortedError("terminal changed concurrently");
    }
    return r[1].as<int64_t>() == 1;
  });
}

absl::Status PgKmsRepository::UpdateTerminalAndInsertSession(const TerminalRecord& t,
                                                             const std::vector<AuditEntry>& audit,
                                                             const AuthSession& session) {
  RKL_ASSIGN_OR_RETURN(const std::string audit_json, audit_.PreparePendingJson(audit));
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) -> absl::Status {
    pqxx::row r = ExecTerminalUpdate(stmt, kUpdateTerminalInsertSession, t, session.id,
                                     session.auk_index, Binary(session.rnd1), Binary(session.rnd2),
                                     SessionStateName(session.state), session.tmk_kcv,
                                     session.created_at_ms, session.expires_at_ms, audit_json);
    if (r[0].as<int64_t>() != 1) return absl::AbortedError("terminal changed concurrently");
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<TerminalRecord>> PgKmsRepository::ListTerminals(
    const TerminalFilter& filter) {
  return db::RunInReadOnlyTransaction(
      pool_, [&](pqxx::work& tx) -> absl::StatusOr<std::vector<TerminalRecord>> {
        NullableText state(filter.state ? TerminalStateName(*filter.state) : "", true);
        pqxx::result r = db::Exec(tx, kListTerminals, state.get(), filter.sn_prefix,
                                  filter.after_sn, filter.limit);
        std::vector<TerminalRecord> out;
        out.reserve(r.size());
        for (const auto& row : r) {
          RKL_ASSIGN_OR_RETURN(TerminalRecord t, ReadTerminal(row));
          out.push_back(std::move(t));
        }
        return out;
      });
}

absl::Status PgKmsRepository::InsertSession(const AuthSession& s,
                                            const std::vector<AuditEntry>& audit) {
  RKL_ASSIGN_OR_RETURN(const std::string audit_json, audit_.PreparePendingJson(audit));
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) {
    pqxx::result r = stmt.Exec(kInsertSession, s.id, s.sn, s.auk_index, Binary(s.rnd1),
                               Binary(s.rnd2), SessionStateName(s.state), s.tmk_kcv,
                               s.created_at_ms, s.expires_at_ms, audit_json);
    if (r[0][0].as<int64_t>() == 0) return TerminalMovedOn();
    return absl::OkStatus();
  });
}

absl::StatusOr<AuthSession> PgKmsRepository::GetSession(const std::string& id) {
  return db::RunAutocommitRead(pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<AuthSession> {
    pqxx::result r = db::Exec(tx, kSelectSession, id);
    if (r.empty()) {
      return absl::NotFoundError("session_id: no such session");
    }
    return ReadSession(r[0]);
  });
}

absl::StatusOr<KmsRepository::SessionAndTerminal> PgKmsRepository::GetSessionAndTerminal(
    const std::string& id, const std::string& sn) {
  return db::RunAutocommitRead(
      pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<SessionAndTerminal> {
        pqxx::row r = db::Exec1(tx, kSelectSessionAndTerminal, id, sn);
        SessionAndTerminal out{absl::NotFoundError("session_id: no such session"),
                               absl::NotFoundError("sn: no such terminal")};
        if (!r[0].is_null()) out.session = ReadSession(r);
        if (!r[kSessionColumnCount].is_null()) {
          out.terminal = ReadTerminal(r.slice(kSessionColumnCount, r.size()));
        }
        if (!out.session.ok() && out.session.status().code() != absl::StatusCode::kNotFound) {
          return out.session.status();
        }
        if (!out.terminal.ok() && out.terminal.status().code() != absl::StatusCode::kNotFound) {
          return out.terminal.status();
        }
        return out;
      });
}

absl::StatusOr<std::optional<KmsRepository::SessionAndTerminal>>
PgKmsRepository::ClaimSessionAndGetTerminal(const std::string& id, const std::string& sn,
                                            SessionState from, SessionState to, int64_t now_ms) {
  // A terminal row always exists for a session (foreign key) and an SN-TK_KMS row for a
  // terminal, so a claim always comes back with its row.
  return db::RunAutocommitWrite(
      pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<std::optional<SessionAndTerminal>> {
        pqxx::result r = stmt.Exec(kClaimSessionAndSelectTerminal, id, sn, SessionStateName(from),
                                   SessionStateName(to), now_ms);
        if (r.empty()) return std::nullopt;
        RKL_ASSIGN_OR_RETURN(AuthSession session, ReadSession(r[0]));
        RKL_ASSIGN_OR_RETURN(TerminalRecord terminal,
                             ReadTerminal(r[0].slice(kSessionColumnCount, r[0].size())));
        return SessionAndTerminal{std::move(session), std::move(terminal)};
      });
}

absl::StatusOr<std::optional<KmsRepository::ClaimedAttempt>>
PgKmsRepository::ClaimSessionAndChargeAttempt(const std::string& id, const std::string& sn,
                                              SessionState from, SessionState to,
                                              const ProofPrecondition& pre,
                                              const ProofAttemptPolicy& policy) {
  // Arrays in array syntax, as one parameter each: state names and algorithm codes, our
  // constants.
  std::string states = "{";
  for (size_t i = 0; i < pre.states.size(); ++i) {
    absl::StrAppend(&states, i ? "," : "", TerminalStateName(pre.states[i]));
  }
  states += "}";
  NullableText states_param(pre.states.empty() ? "" : states, true);
  std::string algorithms = "{";
  for (size_t i = 0; i < pre.algorithms.size(); ++i) {
    absl::StrAppend(&algorithms, i ? "," : "",
                    static_cast<int>(crypto::KeyAlgorithmCode(pre.algorithms[i])));
  }
  algorithms += "}";
  return db::RunAutocommitWrite(
      pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<std::optional<ClaimedAttempt>> {
        pqxx::result r =
            stmt.Exec(kClaimSessionAndChargeAttempt, id, sn, SessionStateName(from),
                      SessionStateName(to), policy.now_ms, policy.backoff_base_ms,
                      policy.backoff_max_ms, static_cast<int64_t>(policy.lock_after),
                      states_param.get(), pre.session_auk, pre.tek, pre.session_tmk, algorithms);
        if (r.empty()) return std::nullopt;
        const pqxx::row row = r[0];
        RKL_ASSIGN_OR_RETURN(AuthSession session, ReadSession(row));
        constexpr int kAttempt = kSessionColumnCount + kTerminalColumnCount;
        RKL_ASSIGN_OR_RETURN(TerminalRecord terminal,
                             ReadTerminal(row.slice(kSessionColumnCount, kAttempt)));
        ProofAttempt attempt{.allowed = row[kAttempt].as<bool>(),
                             .failures = row[kAttempt + 1].as<uint32_t>(),
                             .retry_after_ms = row[kAttempt + 2].as<int64_t>(),
                             .version = row[kAttempt + 3].as<int64_t>()};
        return ClaimedAttempt{std::move(session), std::move(terminal), attempt};
      });
}

absl::StatusOr<bool> PgKmsRepository::TransitionSession(const std::string& id, SessionState from,
                                                        SessionState to,
                                                        const std::optional<std::string>& tmk_kcv) {
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<bool> {
    NullableText kcv(tmk_kcv.value_or(""), !tmk_kcv.has_value());
    pqxx::result r =
        stmt.Exec(kTransitionSession, id, SessionStateName(from), SessionStateName(to), kcv.get());
    return r.affected_rows() == 1;
  });
}

absl::StatusOr<int64_t> PgKmsRepository::PurgeSessions(int64_t expired_before_ms) {
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<int64_t> {
    return static_cast<int64_t>(stmt.Exec(kPurgeSessions, expired_before_ms).affected_rows());
  });
}

absl::StatusOr<ProofAttempt> PgKmsRepository::ChargeProofAttempt(const std::string& sn,
                                                                 const ProofAttemptPolicy& policy) {
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) -> absl::StatusOr<ProofAttempt> {
    pqxx::result r = stmt.Exec(kChargeProofAttempt, sn, policy.now_ms, policy.backoff_base_ms,
                               policy.backoff_max_ms, static_cast<int64_t>(policy.lock_after));
    if (r.empty()) return absl::NotFoundError("sn: no such terminal");
    return ProofAttempt{.allowed = r[0][0].as<bool>(),
                        .failures = r[0][1].as<uint32_t>(),
                        .retry_after_ms = r[0][2].as<int64_t>(),
                        .version = r[0][3].as<int64_t>()};
  });
}

absl::Status PgKmsRepository::RefundProofAttempt(const std::string& sn, int64_t now_ms) {
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) {
    stmt.Exec(kRefundProofAttempt, sn, now_ms);
    return absl::OkStatus();
  });
}

absl::Status PgKmsRepository::AppendAudit(const std::vector<AuditEntry>& audit) {
  if (audit.empty()) return absl::OkStatus();
  RKL_ASSIGN_OR_RETURN(const std::string audit_json, audit_.PreparePendingJson(audit));
  return db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) {
    stmt.Exec(kInsertAudit, audit_json);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<AuditEntry>> PgKmsRepository::ListAudit(const std::string& sn,
                                                                   uint64_t after_seq, int limit) {
  // Records are listed by their place in the chain: those committed so far are chained first.
  RKL_RETURN_IF_ERROR(audit_.Seal().status());
  return db::RunInReadOnlyTransaction(
      pool_, [&](pqxx::work& tx) -> absl::StatusOr<std::vector<AuditEntry>> {
        pqxx::result r = db::Exec(tx, kListAudit, sn, after_seq, limit);
        std::vector<AuditEntry> out;
        out.reserve(r.size());
        for (const auto& row : r) out.push_back(audit::ChainedEventFromRow(row));
        return out;
      });
}

absl::StatusOr<Statistics> PgKmsRepository::GetStatistics(
    const std::vector<std::string>& failure_actions) {
  return db::RunInReadOnlyTransaction(pool_, [&](pqxx::work& tx) -> absl::StatusOr<Statistics> {
    Statistics st;
    for (const auto& row : db::Exec(tx, kCountByState)) {
      st.terminals_by_state.emplace_back(row[0].as<std::string>(), row[1].as<uint64_t>());
    }
    for (const auto& row : db::Exec(tx, kCountByProtocol)) {
      st.terminals_by_protocol.emplace_back(row[0].as<std::string>(), row[1].as<uint64_t>());
    }
    pqxx::row totals = db::Exec1(tx, kCountDistinctKcvs);
    st.terminals_total = totals[0].as<uint64_t>();
    st.distinct_tmk_kcvs = totals[1].as<uint64_t>();
    // A text[] literal built by libpqxx's own array quoting would need 7.x; the
    // actions are our constants, passed as one parameter in array syntax.
    std::string array = "{";
    for (size_t i = 0; i < failure_actions.size(); ++i) {
      absl::StrAppend(&array, i ? "," : "", "\"", failure_actions[i], "\"");
    }
    array += "}";
    st.auth_failures_total = tx.exec_params1(kCountFailures, array)[0].as<uint64_t>();
    return st;
  });
}

namespace {

KdhKeyRecord ReadKdhKey(const pqxx::row& r) {
  return KdhKeyRecord{.key_index = r[0].as<uint64_t>(),
                      .label = r[1].as<std::string>(),
                      .certificate_der = ReadBytes(r[2]),
                      .serial_hex = r[3].as<std::string>(),
                      .not_after_s = r[4].as<int64_t>(),
                      .created_at_ms = r[5].as<int64_t>(),
                      .active = r[6].as<bool>()};
}

}  // namespace

absl::Status PgKmsRepository::InsertKdhKey(const KdhKeyRecord& key,
                                           const std::vector<AuditEntry>& audit) {
  RKL_ASSIGN_OR_RETURN(const std::string audit_json, audit_.PreparePendingJson(audit));
  absl::Status s = db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) {
    stmt.Exec(kInsertKdhKey, key.key_index, key.label, Binary(key.certificate_der), key.serial_hex,
              key.not_after_s, key.created_at_ms, key.active, audit_json);
    return absl::OkStatus();
  });
  if (s.code() == absl::StatusCode::kAlreadyExists &&
      s.message().find("kdh_keys_one_active") != std::string_view::npos) {
    return absl::FailedPreconditionError("kdh: a KDH key is already active");
  }
  return s;
}

absl::StatusOr<std::vector<KdhKeyRecord>> PgKmsRepository::ListKdhKeys() {
  return db::RunAutocommitRead(
      pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<std::vector<KdhKeyRecord>> {
        std::vector<KdhKeyRecord> out;
        for (const auto& row : db::Exec(tx, kListKdhKeys)) out.push_back(ReadKdhKey(row));
        return out;
      });
}

absl::StatusOr<KdhKeyRecord> PgKmsRepository::GetActiveKdhKey() {
  return db::RunAutocommitRead(pool_,
                               [&](pqxx::nontransaction& tx) -> absl::StatusOr<KdhKeyRecord> {
                                 pqxx::result r = db::Exec(tx, kSelectActiveKdhKey);
                                 if (r.empty()) {
                                   return absl::NotFoundError("kdh: no KDH key is provisioned");
                                 }
                                 return ReadKdhKey(r[0]);
                               });
}

}  // namespace rkl::kms
