#include "pg_key_record_store.h"

#include <algorithm>
#include <map>
#include <optional>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "rkl/common/hex.h"
#include "rkl/common/status_macros.h"
#include "rkl/db/prepared.h"
#include "rkl/db/row.h"
#include "rkl/db/transaction.h"

namespace rkl::hsm {
namespace {

// ---- Queries (every one parameterised) ----------------------------------------------------
constexpr char kKeyColumns[] =
    "key_index, key_type, algorithm, usage, bound_sn, label, kcv, state, created_at_ms, "
    "rsa_bits, public_key_der, nonce, sealed, kek_index, bound_krd";
// The position of the first column after kKeyColumns in a row.
constexpr int kKeyColumnCount = 15;
constexpr char kInsertKey[] =
    "INSERT INTO hsm_key (key_index, key_type, algorithm, usage, bound_sn, label, kcv, state, "
    "created_at_ms, updated_at_ms, rsa_bits, public_key_der, nonce, sealed, kek_index, "
    "bound_krd) VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, $8, $9, $10, $11, $12, $13, $14)";
const std::string kFindKey =
    absl::StrCat("SELECT ", kKeyColumns, " FROM hsm_key WHERE key_index = $1");
// The SN's keys not yet erased; hsm_key_by_sn (003) makes it an index lookup.
const std::string kUndeletedKeysOf =
    absl::StrCat("SELECT ", kKeyColumns,
                 " FROM hsm_key WHERE bound_sn = $1 AND bound_sn <> '' AND state <> 3 "
                 "ORDER BY key_index FOR UPDATE");
constexpr char kLiveLabel[] = "SELECT 1 FROM hsm_key WHERE label = $1 AND state = 1";
constexpr char kSetKeyState[] =
    "UPDATE hsm_key SET state = $2, updated_at_ms = $3 WHERE key_index = $1";
constexpr char kEraseKey[] =
    "UPDATE hsm_key SET state = 3, updated_at_ms = $2, nonce = NULL, sealed = NULL "
    "WHERE key_index = $1";
constexpr char kCeremonyColumns[] =
    "ceremony_id, label, key_type, component_count, ceremony_key_index, state, created_by, "
    "created_at_ms, expires_at_ms, coalesce(result_key_index, 0)";
constexpr char kInsertCeremony[] =
    "INSERT INTO hsm_ceremony (ceremony_id, label, key_type, component_count, "
    "ceremony_key_index, state, created_by, created_at_ms, expires_at_ms) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
constexpr char kCustodians[] =
    "SELECT custodian FROM hsm_ceremony_component WHERE ceremony_id = $1 ORDER BY position";
constexpr char kSetCeremonyState[] =
    "UPDATE hsm_ceremony SET state = $2, result_key_index = nullif($3, 0) "
    "WHERE ceremony_id = $1";
constexpr char kInsertComponent[] =
    "INSERT INTO hsm_ceremony_component (ceremony_id, custodian, position, kcv, nonce, sealed, "
    "added_at_ms) VALUES ($1, $2, (SELECT count(*) + 1 FROM hsm_ceremony_component "
    "WHERE ceremony_id = $1), $3, $4, $5, $6)";
constexpr char kComponentExists[] =
    "SELECT 1 FROM hsm_ceremony_component WHERE ceremony_id = $1 AND custodian = $2";
constexpr char kComponents[] =
    "SELECT custodian, nonce, sealed FROM hsm_ceremony_component WHERE ceremony_id = $1 "
    "ORDER BY position";
constexpr char kDeleteComponents[] = "DELETE FROM hsm_ceremony_component WHERE ceremony_id = $1";

Bytes ToBytes(const pqxx::field& f) {
  if (f.is_null()) return {};
  pqxx::binarystring b(f);
  return Bytes(b.data(), b.data() + b.size());
}

pqxx::binarystring Blob(std::span<const uint8_t> b) {
  return pqxx::binarystring(b.data(), b.size());
}

KeyRecord RecordFromRow(const pqxx::row& r) {
  KeyRecord k;
  db::ReadColumns(r, k.index, k.type, k.algorithm, k.usage, k.bound_sn, k.label, k.kcv, k.state,
                  k.created_at_ms, k.rsa_bits, k.public_key_der, k.nonce, k.sealed, k.kek_index,
                  k.bound_krd);
  return k;
}

Ceremony CeremonyFromRow(const pqxx::row& r) {
  Ceremony c;
  db::ReadColumns(r, c.id, c.label, c.key_type, c.component_count, c.ceremony_key_index, c.state,
                  c.created_by, c.created_at_ms, c.expires_at_ms, c.result_key_index);
  return c;
}

}  // namespace

std::string PrefetchKeysSql(size_t n) {
  // One primary-key equality per key, joined with UNION ALL: each branch is planned like
  // FindKey, an index lookup whatever the table's statistics. (key_index = ANY($1) was
  // planned as a sequential scan while hsm_key had no statistics yet.)
  std::string sql;
  for (size_t i = 1; i <= n; ++i) {
    absl::StrAppend(&sql, i > 1 ? " UNION ALL " : "", "SELECT ", kKeyColumns,
                    " FROM hsm_key WHERE key_index = $", i);
  }
  return sql;
}

std::string FindLiveKeysSql(std::span<const KeyType> types, bool lock) {
  // Each type's own lookup (below) as a CTE, then together: one index probe per type.
  // (key_type IN (4, 5) was planned as a scan of every live key while hsm_key had no
  // statistics.)
  std::string with, all;
  for (size_t i = 0; i < types.size(); ++i) {
    absl::StrAppend(&with, i ? ", " : "WITH ", "t", i, " AS (", FindLiveKeysSql(types[i], lock),
                    ")");
    absl::StrAppend(&all, i ? " UNION ALL " : "", "SELECT * FROM t", i);
  }
  return absl::StrCat(with, " SELECT * FROM (", all, ") live ORDER BY key_index");
}

std::string PrefetchWithLiveSql(size_t n, std::span<const KeyType> types, bool lock) {
  // The live lookups as CTEs (FindLiveKeysSql, $1 the SN), the index lookups as
  // PrefetchKeysSql's branches: one index probe each.
  std::string with, all;
  for (size_t i = 0; i < types.size(); ++i) {
    absl::StrAppend(&with, i ? ", " : "WITH ", "t", i, " AS (", FindLiveKeysSql(types[i], lock),
                    ") ");
    absl::StrAppend(&all, i ? " UNION ALL " : "", "SELECT *, true FROM t", i);
  }
  for (size_t i = 0; i < n; ++i) {
    absl::StrAppend(&all, all.empty() ? "" : " UNION ALL ", "SELECT ", kKeyColumns,
                    ", false FROM hsm_key WHERE key_index = $", i + 2, "::bigint");
  }
  return absl::StrCat(with, all);
}

// n rows of kInsertKey's columns, parameters $1..$(14n).
std::string InsertKeysSql(size_t n) {
  std::string sql =
      "INSERT INTO hsm_key (key_index, key_type, algorithm, usage, bound_sn, label, kcv, state, "
      "created_at_ms, updated_at_ms, rsa_bits, public_key_der, nonce, sealed, kek_index, "
      "bound_krd) VALUES ";
  for (size_t i = 0; i < n; ++i) {
    auto p = [&](int k) { return absl::StrCat("$", i * 14 + k); };
    absl::StrAppend(&sql, i ? ", " : "", "(", p(1), ", ", p(2), ", ", p(3), ", ", p(4), ", ", p(5),
                    ", ", p(6), ", ", p(7), ", 1, ", p(8), ", ", p(8), ", ", p(9), ", ", p(10),
                    ", ", p(11), ", ", p(12), ", ", p(13), ", ", p(14), ")");
  }
  return sql;
}

std::string FindLiveKeysSql(KeyType type, bool lock) {
  // The key type is a literal (one statement per type), never a parameter. With
  // "key_type = $1" the generic plan of the prepared statement cannot match the partial
  // index hsm_key_one_live_per_sn exactly; with the table's statistics still empty the
  // planner then preferred a bitmap scan of every live key (hsm_key_live_label) and
  // filtered, reading ~450 index entries per lookup in a 200-terminal run.
  return absl::StrCat(
      "SELECT ", kKeyColumns, " FROM hsm_key WHERE key_type = ", static_cast<int>(type),
      " AND bound_sn = $1 AND state = 1 ORDER BY key_index", lock ? " FOR UPDATE" : "");
}

std::string OneWriteSql(size_t locked, size_t superseded, size_t keys) {
  return OneWriteSql(OneWriteShape{.locked = locked, .superseded = superseded, .keys = keys});
}

std::string OneWriteSql(const OneWriteShape& shape) {
  // Every parameter is text, cast in place. The key lists are spelled out
  // (key_index IN ($1, $2)): a generic plan of `key_index = ANY($1)` on a table
  // without statistics was a sequential scan. Sub-statements see one snapshot. `locked`
  // takes the row locks a transaction's FOR UPDATE read would have held, and `held` those
  // of a FOR SHARE read, waiting for a concurrent writer and looking at the row as it
  // committed (a record destroyed or superseded meanwhile is not counted); `ok` is
  // evaluated once, before any row is written, and every write depends on it: all or
  // nothing.
  const size_t locked = shape.locked, superseded = shape.superseded, keys = shape.keys;
  int n = 0;
  auto list = [&](size_t count) {
    std::string out;
    for (size_t i = 0; i < count; ++i) absl::StrAppend(&out, i ? ", " : "", "$", ++n, "::bigint");
    return out;
  };
  std::string sql = "WITH ";
  std::vector<std::string> checks;
  if (locked > 0) {
    absl::StrAppend(&sql, "locked AS (SELECT key_index FROM hsm_key WHERE key_index IN (",
                    list(locked), ") AND state = 1 FOR UPDATE), ");
    checks.push_back(absl::StrCat("(SELECT count(*) FROM locked) = ", locked));
  }
  if (shape.held > 0) {
    absl::StrAppend(&sql, "held AS (SELECT key_index FROM hsm_key WHERE key_index IN (",
                    list(shape.held), ") AND state = 1 FOR SHARE), ");
    checks.push_back(absl::StrCat("(SELECT count(*) FROM held) = ", shape.held));
  }
  for (KeyType type : shape.absent) {
    // The type is a literal, as in FindLiveKeysSql: the one-live-key-per-SN index.
    checks.push_back(
        absl::StrCat("NOT EXISTS (SELECT 1 FROM hsm_key WHERE key_type = ", static_cast<int>(type),
                     " AND bound_sn = $", ++n, "::text AND state = 1)"));
  }
  absl::StrAppend(&sql, "ok AS (SELECT ", checks.empty() ? "true" : absl::StrJoin(checks, " AND "),
                  " AS ok)");
  if (superseded > 0) {
    const int at = ++n;
    absl::StrAppend(&sql, ", sup AS (UPDATE hsm_key SET state = 2, updated_at_ms = $", at,
                    "::bigint WHERE key_index IN (");
    absl::StrAppend(&sql, list(superseded), ") AND (SELECT ok FROM ok) RETURNING 1)");
  }
  if (shape.audit_json) {
    absl::StrAppend(&sql,
                    ", aud AS (INSERT INTO hsm_audit_pending (id, at_ms, actor, action, sn, "
                    "detail, result, mac, request_id) SELECT x.id, x.at_ms, x.actor, x.action, "
                    "x.sn, x.detail, x.result, decode(x.mac, 'hex'), x.request_id FROM "
                    "jsonb_to_recordset($",
                    ++n,
                    "::jsonb) AS x(id bigint, at_ms bigint, actor text, action text, sn text, "
                    "detail text, result text, mac text, request_id text) WHERE (SELECT ok "
                    "FROM ok))");
  } else {
    // Parameters are numbered in the order they are appended, one per statement: the
    // arguments of one call are evaluated in no defined order.
    std::string audit_params;
    for (const char* type :
         {"bigint", "bigint", "text", "text", "text", "text", "text", "bytea", "text"}) {
      absl::StrAppend(&audit_params, audit_params.empty() ? "" : ", ", "$", ++n, "::", type);
    }
    absl::StrAppend(&sql,
                    ", aud AS (INSERT INTO hsm_audit_pending (id, at_ms, actor, action, sn, "
                    "detail, result, mac, request_id) SELECT ",
                    audit_params, " WHERE (SELECT ok FROM ok))");
  }
  if (keys > 0) {
    absl::StrAppend(&sql,
                    ", ins AS (INSERT INTO hsm_key (key_index, key_type, algorithm, usage, "
                    "bound_sn, label, kcv, state, created_at_ms, updated_at_ms, rsa_bits, "
                    "public_key_der, nonce, sealed, kek_index, bound_krd) SELECT v.* FROM "
                    "(VALUES ");
    for (size_t i = 0; i < keys; ++i) {
      std::string row;
      auto add = [&](const std::string& piece) {
        absl::StrAppend(&row, row.empty() ? "" : ", ", piece);
      };
      auto next = [&](const char* type) { return absl::StrCat("$", ++n, "::", type); };
      for (const char* type :
           {"bigint", "smallint", "smallint", "smallint", "text", "text", "text"}) {
        add(next(type));
      }
      add("1::smallint");
      const std::string created = next("bigint");
      add(created);
      add(created);
      for (const char* type : {"integer", "bytea", "bytea", "bytea", "bigint", "text"}) {
        add(next(type));
      }
      absl::StrAppend(&sql, i ? ", " : "", "(", row, ")");
    }
    // Reading `sup` makes the superseding run to completion before the first new row is
    // checked against the one-live-key-per-SN index (sub-statements otherwise run in no
    // defined order, and the old key would still count as live).
    absl::StrAppend(
        &sql, ") v WHERE (SELECT ok FROM ok)",
        superseded > 0 ? absl::StrCat(" AND (SELECT count(*) FROM sup) = ", superseded) : "", ")");
  }
  absl::StrAppend(&sql, " SELECT ok FROM ok");
  return sql;
}

// ---- PgKeyRecordTransaction
// ----------------------------------------------------------------------

namespace {

// Only TEK, AUK and TMK are bound to an SN; `what` names the caller in the error.
absl::Status CheckBoundTypes(std::span<const KeyType> types, const char* what) {
  for (KeyType type : types) {
    if (type != KeyType::kTek && type != KeyType::kAuk && type != KeyType::kTmk) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": only TEK, AUK and TMK are bound to an SN"));
    }
  }
  return absl::OkStatus();
}

// What a TransactOneWrite unit holds back for its one statement.
struct OneWritePlan {
  std::vector<uint64_t> locked;      // live keys FindLiveKeys returned: must still be live
  std::vector<uint64_t> superseded;  // a subset of `locked`
  int64_t superseded_at_ms = 0;
  std::vector<KeyRecord> inserts;
  // The (type, SN) whose live key `superseded` took away: for the record cache.
  std::vector<std::pair<KeyType, std::string>> superseded_live;
  std::optional<AuditEvent> audit;
  PgAuditLog::PreparedPending pending;
  bool writes() const { return !superseded.empty() || !inserts.empty() || audit.has_value(); }
};

// What a unit took from the record cache instead of reading it, for its write to check.
struct CacheChecks {
  std::vector<uint64_t> held;                           // kept records used: must still be ACTIVE
  std::vector<std::pair<KeyType, std::string>> absent;  // kept "no live key": still none
  bool used() const { return !held.empty() || !absent.empty(); }
};

std::vector<uint64_t> Distinct(std::vector<uint64_t> values) {
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  return values;
}

std::string ByteaText(std::span<const uint8_t> b) { return absl::StrCat("\\x", ToHex(b)); }

// The shape and the check parameters (locked, held, absent) of a write with these checks.
OneWriteShape CheckedShape(const std::vector<uint64_t>& locked, const CacheChecks& checks,
                           std::vector<std::string>& params) {
  OneWriteShape shape{.locked = locked.size()};
  std::vector<uint64_t> held;
  for (uint64_t index : Distinct(checks.held)) {
    if (!std::binary_search(locked.begin(), locked.end(), index)) held.push_back(index);
  }
  shape.held = held.size();
  for (uint64_t index : locked) params.push_back(absl::StrCat(index));
  for (uint64_t index : held) params.push_back(absl::StrCat(index));
  std::vector<std::pair<KeyType, std::string>> absent = checks.absent;
  std::sort(absent.begin(), absent.end());
  absent.erase(std::unique(absent.begin(), absent.end()), absent.end());
  for (const auto& [type, sn] : absent) {
    shape.absent.push_back(type);
    params.push_back(sn);
  }
  return shape;
}

// True when it wrote; false when a live key the unit read is no longer live (or a cached
// record it used is no longer ACTIVE).
absl::StatusOr<bool> WriteOnePlan(db::OneStatement& stmt, const OneWritePlan& plan,
                                  const CacheChecks& checks) {
  const std::vector<uint64_t> locked = Distinct(plan.locked);
  const std::vector<uint64_t> superseded = Distinct(plan.superseded);
  std::vector<std::string> params;
  OneWriteShape shape = CheckedShape(locked, checks, params);
  shape.superseded = superseded.size();
  shape.keys = plan.inserts.size();
  if (!superseded.empty()) params.push_back(absl::StrCat(plan.superseded_at_ms));
  for (uint64_t index : superseded) params.push_back(absl::StrCat(index));
  const AuditEvent& e = *plan.audit;
  for (std::string v : {absl::StrCat(plan.pending.id), absl::StrCat(e.at_ms), e.actor, e.action,
                        e.sn, e.detail, e.result, ByteaText(plan.pending.mac), e.request_id}) {
    params.push_back(std::move(v));
  }
  for (const KeyRecord& r : plan.inserts) {
    for (std::string v :
         {absl::StrCat(r.index), absl::StrCat(static_cast<int>(r.type)),
          absl::StrCat(static_cast<int>(r.algorithm)), absl::StrCat(static_cast<int>(r.usage)),
          r.bound_sn, r.label, r.kcv, absl::StrCat(r.created_at_ms), absl::StrCat(r.rsa_bits),
          ByteaText(r.public_key_der), ByteaText(r.nonce), ByteaText(r.sealed),
          absl::StrCat(r.kek_index), r.bound_krd}) {
      params.push_back(std::move(v));
    }
  }
  pqxx::row row = stmt.Exec1(OneWriteSql(shape), pqxx::prepare::make_dynamic_params(params));
  return row[0].as<bool>();
}

// A read-only unit's audit records (`json`, PgAuditLog::PreparePendingJson) in one
// statement that checks what it took from the record cache; true when it wrote.
absl::StatusOr<bool> WriteCheckedAudit(db::OneStatement& stmt, const CacheChecks& checks,
                                       const std::string& json) {
  std::vector<std::string> params;
  OneWriteShape shape = CheckedShape({}, checks, params);
  shape.audit_json = true;
  params.push_back(json);
  pqxx::row row = stmt.Exec1(OneWriteSql(shape), pqxx::prepare::make_dynamic_params(params));
  return row[0].as<bool>();
}

}  // namespace

class PgKeyRecordTransaction : public KeyRecordTransaction {
 public:
  // In a transaction (`deferred_audit` null), or read-only in autocommit: writes are refused
  // and the audit record is handed back through `deferred_audit` to be written afterwards.
  // With `one_write` (TransactOneWrite): reads in autocommit without locks, and the writes
  // collected in *one_write for one statement afterwards.
  // With `cache` (read-only and one-write units only): records the store keeps are taken
  // from there, and *cache lists what the unit's write must check.
  PgKeyRecordTransaction(pqxx::transaction_base& tx, PgKeyRecordStore& store,
                         std::vector<AuditEvent>* deferred_audit = nullptr,
                         OneWritePlan* one_write = nullptr, CacheChecks* cache = nullptr)
      : tx_(tx),
        store_(store),
        deferred_audit_(deferred_audit),
        one_write_(one_write),
        cache_(cache) {}

  absl::StatusOr<uint64_t> NextKeyIndex() override {
    RKL_RETURN_IF_ERROR(Writable());
    return store_.key_indexes_.Next(tx_);
  }

  absl::Status InsertKeys(std::span<const KeyRecord> records) override {
    RKL_RETURN_IF_ERROR(Writable());
    if (records.empty()) return absl::OkStatus();
    live_prefetched_.clear();
    if (one_write_ != nullptr) {
      for (const KeyRecord& r : records) {
        prefetched_[r.index] = r;
        one_write_->inserts.push_back(r);
      }
      return absl::OkStatus();
    }
    if (records.size() == 1) {
      const KeyRecord& r = records.front();
      Exec(kInsertKey, r.index, static_cast<int>(r.type), static_cast<int>(r.algorithm),
           static_cast<int>(r.usage), r.bound_sn, r.label, r.kcv, r.created_at_ms, r.rsa_bits,
           Blob(r.public_key_der), Blob(r.nonce), Blob(r.sealed), r.kek_index, r.bound_krd);
    } else if (records.size() == 2) {
      const KeyRecord& a = records[0];
      const KeyRecord& b = records[1];
      Exec(InsertKeysSql(2), a.index, static_cast<int>(a.type), static_cast<int>(a.algorithm),
           static_cast<int>(a.usage), a.bound_sn, a.label, a.kcv, a.created_at_ms, a.rsa_bits,
           Blob(a.public_key_der), Blob(a.nonce), Blob(a.sealed), a.kek_index, a.bound_krd, b.index,
           static_cast<int>(b.type), static_cast<int>(b.algorithm), static_cast<int>(b.usage),
           b.bound_sn, b.label, b.kcv, b.created_at_ms, b.rsa_bits, Blob(b.public_key_der),
           Blob(b.nonce), Blob(b.sealed), b.kek_index, b.bound_krd);
    } else {  // not used by any command today: one statement per key
      for (const KeyRecord& r : records) {
        Exec(kInsertKey, r.index, static_cast<int>(r.type), static_cast<int>(r.algorithm),
             static_cast<int>(r.usage), r.bound_sn, r.label, r.kcv, r.created_at_ms, r.rsa_bits,
             Blob(r.public_key_der), Blob(r.nonce), Blob(r.sealed), r.kek_index, r.bound_krd);
      }
    }
    // Exactly what was written: reading these back costs nothing.
    for (const KeyRecord& r : records) prefetched_[r.index] = r;
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<KeyRecord>> FindKey(uint64_t index) override {
    if (auto it = prefetched_.find(index); it != prefetched_.end()) return it->second;
    if (FromCache(index)) return prefetched_[index];
    RKL_RETURN_IF_ERROR(Readable());
    pqxx::result r = Exec(kFindKey, index);
    if (r.empty()) return std::nullopt;
    KeyRecord record = RecordFromRow(r[0]);
    Remember(record);
    return record;
  }

  absl::Status Prefetch(std::span<const uint64_t> indexes) override {
    if (indexes.empty() || indexes.size() > kMaxPrefetch) return absl::OkStatus();
    std::vector<uint64_t> params;
    for (uint64_t index : indexes) {
      if (!prefetched_.contains(index) && !FromCache(index)) params.push_back(index);
    }
    if (params.empty()) return absl::OkStatus();  // all read, written or kept already
    RKL_RETURN_IF_ERROR(Readable());
    for (uint64_t index : params) prefetched_[index] = std::nullopt;  // absent unless found
    for (const auto& row :
         Exec(PrefetchKeysSql(params.size()), pqxx::prepare::make_dynamic_params(params))) {
      KeyRecord record = RecordFromRow(row);
      Remember(record);
      prefetched_[record.index] = std::move(record);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<KeyRecord>> FindLiveKeys(KeyType type,
                                                      const std::string& sn) override {
    RKL_RETURN_IF_ERROR(CheckBoundTypes({&type, 1}, "FindLiveKeys"));
    if (LiveFromCache(type, sn)) {
      const std::vector<KeyRecord>& live = live_prefetched_[{type, sn}];
      ToLock(live);
      return live;
    }
    RKL_RETURN_IF_ERROR(Readable());
    pqxx::result r = Exec(FindLiveKeysSql(type, Locking()), sn);
    std::vector<KeyRecord> out;
    for (const auto& row : r) out.push_back(RecordFromRow(row));
    RememberLive(type, sn, out);
    ToLock(out);
    return out;
  }

  absl::Status PrefetchLive(std::span<const KeyType> types, const std::string& sn) override {
    RKL_RETURN_IF_ERROR(CheckBoundTypes(types, "PrefetchLive"));
    std::vector<KeyType> missing;
    for (KeyType type : types) {
      if (!LiveFromCache(type, sn)) missing.push_back(type);
    }
    if (missing.empty()) {
      return absl::OkStatus();  // read by this unit or kept already (none, too, if types is empty)
    }
    RKL_RETURN_IF_ERROR(Readable());
    std::map<std::pair<KeyType, std::string>, std::vector<KeyRecord>> found;
    for (KeyType type : missing) found[{type, sn}];  // none unless read
    for (const auto& row : Exec(FindLiveKeysSql(missing, Locking()), sn)) {
      KeyRecord record = RecordFromRow(row);
      prefetched_.try_emplace(record.index, record);          // FindKey of it costs nothing either
      found[{record.type, sn}].push_back(std::move(record));  // in key_index order
    }
    for (auto& [key, records] : found) {
      RememberLive(key.first, sn, records);
      live_prefetched_[key] = std::move(records);
    }
    return absl::OkStatus();
  }

  absl::Status PrefetchWithLive(std::span<const uint64_t> indexes, std::span<const KeyType> types,
                                const std::string& sn) override {
    RKL_RETURN_IF_ERROR(CheckBoundTypes(types, "PrefetchWithLive"));
    std::vector<KeyType> missing_types;
    for (KeyType type : types) {
      if (!LiveFromCache(type, sn)) missing_types.push_back(type);
    }
    std::vector<uint64_t> missing;
    for (uint64_t index : indexes) {
      if (!prefetched_.contains(index) && !FromCache(index)) missing.push_back(index);
    }
    if (missing_types.empty() || missing.size() > kMaxPrefetch) {
      RKL_RETURN_IF_ERROR(Prefetch(missing));
      return PrefetchLive(missing_types, sn);
    }
    if (missing.empty() && !indexes.empty() && Caching()) {
      // Every key by index came from the cache, and a read would be only for the SN's live
      // keys: the unit goes on as if the SN had none (a new terminal), and its write checks
      // that it has none. If it has, the write changes nothing and the unit runs again on
      // fresh reads.
      for (KeyType type : missing_types) {
        cache_->absent.emplace_back(type, sn);
        live_prefetched_[{type, sn}] = {};
      }
      return absl::OkStatus();
    }
    if (missing.empty()) return PrefetchLive(missing_types, sn);
    RKL_RETURN_IF_ERROR(Readable());
    std::vector<std::string> params = {sn};
    for (uint64_t index : missing) {
      params.push_back(absl::StrCat(index));
      prefetched_[index] = std::nullopt;  // absent unless found
    }
    std::map<std::pair<KeyType, std::string>, std::vector<KeyRecord>> found;
    for (KeyType type : missing_types) found[{type, sn}];  // none unless read
    for (const auto& row : Exec(PrefetchWithLiveSql(missing.size(), missing_types, Locking()),
                                pqxx::prepare::make_dynamic_params(params))) {
      KeyRecord record = RecordFromRow(row);
      Remember(record);
      if (row[kKeyColumnCount].as<bool>()) {
        prefetched_.try_emplace(record.index, record);  // FindKey of it costs nothing either
        found[{record.type, sn}].push_back(std::move(record));
      } else {
        prefetched_[record.index] = std::move(record);
      }
    }
    for (auto& [key, records] : found) {
      std::sort(records.begin(), records.end(),
                [](const KeyRecord& a, const KeyRecord& b) { return a.index < b.index; });
      RememberLive(key.first, sn, records);
      live_prefetched_[key] = std::move(records);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<KeyRecord>> FindUndeletedKeysOf(const std::string& sn) override {
    // Only for commands that erase what they find, which a one-write unit cannot hold back.
    RKL_RETURN_IF_ERROR(Writable(/*in_one_write=*/false));
    std::vector<KeyRecord> out;
    for (const auto& row : Exec(kUndeletedKeysOf, sn)) out.push_back(RecordFromRow(row));
    return out;
  }

  absl::StatusOr<bool> LiveLabelExists(const std::string& label) override {
    RKL_RETURN_IF_ERROR(Readable());
    return !Exec(kLiveLabel, label).empty();
  }

  absl::Status SetKeyState(uint64_t index, KeyState state, int64_t now_ms) override {
    RKL_RETURN_IF_ERROR(Writable());
    if (one_write_ != nullptr) {
      if (state != KeyState::kSuperseded ||
          std::find(one_write_->locked.begin(), one_write_->locked.end(), index) ==
              one_write_->locked.end()) {
        return absl::InternalError(
            "a one-statement HSM command may only supersede a live key it found");
      }
      if (auto it = prefetched_.find(index); it != prefetched_.end() && it->second) {
        one_write_->superseded_live.emplace_back(it->second->type, it->second->bound_sn);
      }
      prefetched_.erase(index);
      live_prefetched_.clear();
      one_write_->superseded.push_back(index);
      one_write_->superseded_at_ms = now_ms;
      return absl::OkStatus();
    }
    prefetched_.erase(index);
    live_prefetched_.clear();
    store_.records_.Forget(index);
    if (state == KeyState::kDeleted) {
      Exec(kEraseKey, index, now_ms);
    } else {
      Exec(kSetKeyState, index, static_cast<int>(state), now_ms);
    }
    return absl::OkStatus();
  }

  absl::Status InsertCeremony(const Ceremony& c) override {
    RKL_RETURN_IF_ERROR(Writable(/*in_one_write=*/false));
    Exec(kInsertCeremony, c.id, c.label, static_cast<int>(c.key_type), c.component_count,
         c.ceremony_key_index, static_cast<int>(c.state), c.created_by, c.created_at_ms,
         c.expires_at_ms);
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<Ceremony>> FindCeremony(const std::string& id) override {
    pqxx::result r = Exec(absl::StrCat("SELECT ", kCeremonyColumns,
                                       " FROM hsm_ceremony WHERE ceremony_id = $1 FOR UPDATE"),
                          id);
    if (r.empty()) return std::nullopt;
    Ceremony c = CeremonyFromRow(r[0]);
    for (const auto& row : Exec(kCustodians, id)) {
      c.custodians.push_back(row[0].as<std::string>());
    }
    return c;
  }

  absl::StatusOr<std::vector<Ceremony>> FindExpiredCeremonies(int64_t now_ms) override {
    pqxx::result r = Exec(absl::StrCat("SELECT ", kCeremonyColumns,
                                       " FROM hsm_ceremony WHERE state = 1 AND expires_at_ms <= $1 "
                                       "ORDER BY ceremony_id FOR UPDATE SKIP LOCKED"),
                          now_ms);
    std::vector<Ceremony> out;
    for (const auto& row : r) out.push_back(CeremonyFromRow(row));
    return out;
  }

  absl::Status SetCeremonyState(const std::string& id, CeremonyState state,
                                uint64_t result_key_index) override {
    RKL_RETURN_IF_ERROR(Writable(/*in_one_write=*/false));
    Exec(kSetCeremonyState, id, static_cast<int>(state), result_key_index);
    return absl::OkStatus();
  }

  absl::Status InsertComponent(const std::string& ceremony_id, const std::string& kcv,
                               const SealedComponent& c, int64_t now_ms) override {
    RKL_RETURN_IF_ERROR(Writable(/*in_one_write=*/false));
    if (!Exec(kComponentExists, ceremony_id, c.custodian).empty()) {
      return absl::AlreadyExistsError(absl::StrCat(
          "custodian '", c.custodian, "' already added a component to ceremony ", ceremony_id));
    }
    Exec(kInsertComponent, ceremony_id, c.custodian, kcv, Blob(c.nonce), Blob(c.sealed), now_ms);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<SealedComponent>> FindComponents(
      const std::string& ceremony_id) override {
    std::vector<SealedComponent> out;
    for (const auto& row : Exec(kComponents, ceremony_id)) {
      out.push_back(SealedComponent{.custodian = row[0].as<std::string>(),
                                    .nonce = ToBytes(row[1]),
                                    .sealed = ToBytes(row[2])});
    }
    return out;
  }

  absl::Status DeleteComponents(const std::string& ceremony_id) override {
    RKL_RETURN_IF_ERROR(Writable(/*in_one_write=*/false));
    Exec(kDeleteComponents, ceremony_id);
    return absl::OkStatus();
  }

  absl::Status Audit(const AuditEvent& event) override {
    if (deferred_audit_ != nullptr) {
      deferred_audit_->push_back(event);
      return absl::OkStatus();
    }
    if (one_write_ != nullptr) {
      if (one_write_->audit) {
        return absl::InternalError("a one-statement HSM command wrote a second audit record");
      }
      // The record is MACed and stored with the flow's request id.
      one_write_->audit = audit::WithCurrentRequestId(event);
      RKL_ASSIGN_OR_RETURN(one_write_->pending,
                           store_.audit_.PreparePending(tx_, *one_write_->audit));
      return absl::OkStatus();
    }
    return store_.audit_.AppendInTransaction(tx_, event);
  }

 private:
  // Every statement of a unit goes through here, counted (PgKeyRecordStore::statements_sent).
  template <typename... Args>
  pqxx::result Exec(std::string_view sql, Args&&... args) {
    store_.statements_.fetch_add(1, std::memory_order_relaxed);
    return db::Exec(tx_, sql, std::forward<Args>(args)...);
  }
  absl::Status Writable(bool in_one_write = true) const {
    if (one_write_ != nullptr && !in_one_write) {
      return absl::InternalError("a one-statement HSM command tried a write it cannot hold back");
    }
    if (deferred_audit_ == nullptr) return absl::OkStatus();
    return absl::InternalError("a read-only HSM command tried to change a key record");
  }
  // A one-write unit's reads run before its writes reach the database, so a read after a
  // write would not see them.
  absl::Status Readable() const {
    if (one_write_ == nullptr || !one_write_->writes()) return absl::OkStatus();
    return absl::InternalError("a one-statement HSM command read the database after writing");
  }
  // Only a transaction's reads lock: a read-only unit runs in autocommit (a lock would end
  // with the statement and only cost a WAL record), and a one-write unit locks in its
  // write statement.
  bool Locking() const { return deferred_audit_ == nullptr && one_write_ == nullptr; }
  void ToLock(const std::vector<KeyRecord>& live) {
    if (one_write_ == nullptr) return;
    for (const KeyRecord& r : live) one_write_->locked.push_back(r.index);
  }
  // The record cache is used only by units whose write can check what they took from it,
  // and only before the unit holds a write back (its own writes are not in the cache).
  bool Caching() const {
    return cache_ != nullptr && (one_write_ == nullptr || !one_write_->writes());
  }
  // Takes the kept record of `index` into this unit (to be checked by its write).
  bool FromCache(uint64_t index) {
    if (!Caching()) return false;
    std::optional<KeyRecord> record = store_.records_.Get(index);
    if (!record) return false;
    cache_->held.push_back(index);
    prefetched_[index] = *std::move(record);
    return true;
  }
  // Takes the kept live keys of (type, sn) into this unit, or finds them read already.
  bool LiveFromCache(KeyType type, const std::string& sn) {
    if (live_prefetched_.contains({type, sn})) return true;
    if (!Caching()) return false;
    std::optional<std::vector<KeyRecord>> live = store_.records_.GetLive(type, sn);
    if (!live) return false;
    if (live->empty()) cache_->absent.emplace_back(type, sn);
    for (const KeyRecord& r : *live) {
      cache_->held.push_back(r.index);
      prefetched_.try_emplace(r.index, r);
    }
    live_prefetched_[{type, sn}] = *std::move(live);
    return true;
  }
  // What an autocommit unit read (committed rows) goes to the cache; a transaction's reads
  // may see its own uncommitted changes and do not.
  void Remember(const KeyRecord& record) {
    if (deferred_audit_ != nullptr || one_write_ != nullptr) store_.records_.Put(record);
  }
  void RememberLive(KeyType type, const std::string& sn, const std::vector<KeyRecord>& live) {
    if (deferred_audit_ != nullptr || one_write_ != nullptr)
      store_.records_.PutLive(type, sn, live);
  }

  pqxx::transaction_base& tx_;
  PgKeyRecordStore& store_;
  std::vector<AuditEvent>* deferred_audit_;  // read-only units: the records to append
  OneWritePlan* one_write_;                  // one-write units: the writes held back
  CacheChecks* cache_;                       // units that may use the record cache
  std::map<uint64_t, std::optional<KeyRecord>> prefetched_;  // by Prefetch; nullopt: absent
  // By PrefetchLive, until this unit changes or inserts a key.
  std::map<std::pair<KeyType, std::string>, std::vector<KeyRecord>> live_prefetched_;
};

// ---- SealedRecordCache ---------------------------------------------------------------------

std::optional<KeyRecord> SealedRecordCache::Get(uint64_t index) {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(index);
  if (it == records_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::vector<KeyRecord>> SealedRecordCache::GetLive(KeyType type,
                                                                 const std::string& sn) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find({type, sn});
  if (it == live_.end()) return std::nullopt;
  std::vector<KeyRecord> out;
  for (uint64_t index : it->second) {
    auto r = records_.find(index);
    if (r == records_.end()) return std::nullopt;
    out.push_back(r->second);
  }
  return out;
}

void SealedRecordCache::EvictLocked() {
  while (records_.size() > capacity_ && !order_.empty()) {
    records_.erase(order_.front());
    order_.pop_front();
  }
  // Entries of evicted records answer nothing (GetLive); the map is bounded on its own.
  if (live_.size() > capacity_) live_.clear();
}

void SealedRecordCache::Put(const KeyRecord& record) {
  if (capacity_ == 0) return;
  absl::MutexLock lock(&mu_);
  if (record.state != KeyState::kActive) {
    records_.erase(record.index);
    return;
  }
  if (records_.insert_or_assign(record.index, record).second) order_.push_back(record.index);
  EvictLocked();
}

void SealedRecordCache::PutLive(KeyType type, const std::string& sn,
                                const std::vector<KeyRecord>& live) {
  if (capacity_ == 0) return;
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> indexes;
  for (const KeyRecord& r : live) {
    if (r.state != KeyState::kActive) return;
    if (records_.insert_or_assign(r.index, r).second) order_.push_back(r.index);
    indexes.push_back(r.index);
  }
  live_[{type, sn}] = std::move(indexes);
  EvictLocked();
}

void SealedRecordCache::Forget(uint64_t index) {
  absl::MutexLock lock(&mu_);
  records_.erase(index);  // its place in order_ goes when it comes up
}

void SealedRecordCache::ForgetLive(KeyType type, const std::string& sn) {
  absl::MutexLock lock(&mu_);
  live_.erase({type, sn});
}

size_t SealedRecordCache::size() const {
  absl::MutexLock lock(&mu_);
  return records_.size();
}

// ---- PgKeyRecordStore ------------------------------------------------------------------------

namespace {

void ForgetChecked(SealedRecordCache& cache, const CacheChecks& checks) {
  for (uint64_t index : checks.held) cache.Forget(index);
  for (const auto& [type, sn] : checks.absent) cache.ForgetLive(type, sn);
}

bool IsBoundType(KeyType type) {
  return type == KeyType::kTek || type == KeyType::kAuk || type == KeyType::kTmk;
}

}  // namespace

PgKeyRecordStore::PgKeyRecordStore(db::ConnectionPool& pool, PgAuditLog& audit,
                                   size_t record_cache_capacity)
    : pool_(pool),
      audit_(audit),
      key_indexes_("hsm_key_index_seq", kKeyIndexBlock),
      records_(record_cache_capacity) {}

absl::Status PgKeyRecordStore::Transact(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) {
  return db::RunInTransaction(pool_, [&](pqxx::work& tx) -> absl::Status {
    PgKeyRecordTransaction ktx(tx, *this);
    return fn(ktx);
  });
}

absl::Status PgKeyRecordStore::TransactOneWrite(
    absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) {
  // A conflict means a concurrent command superseded a live key this one read; the next
  // run reads afresh (and then typically finds the other command's keys). A run that took
  // records from the cache and failed — its checks, or the command itself — runs again on
  // fresh reads, which do not count against kMaxOneWriteRuns: the answer is always the one
  // the rows give.
  bool fresh = false;
  for (int run = 0; run < kMaxOneWriteRuns; ++run) {
    OneWritePlan plan;
    CacheChecks checks;
    absl::StatusOr<bool> read =
        db::RunAutocommitRead(pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<bool> {
          plan = OneWritePlan{};
          checks = CacheChecks{};
          PgKeyRecordTransaction ktx(tx, *this, nullptr, &plan, fresh ? nullptr : &checks);
          RKL_RETURN_IF_ERROR(fn(ktx));
          return true;
        });
    const bool cached = checks.used();
    if (!read.ok() && cached) {
      ForgetChecked(records_, checks);
      fresh = true;
      --run;
      continue;
    }
    RKL_RETURN_IF_ERROR(read.status());
    if (!plan.audit) return absl::InternalError("an HSM command finished without its audit record");
    if (before_one_write_) before_one_write_();
    absl::StatusOr<bool> wrote = db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) {
      statements_.fetch_add(1, std::memory_order_relaxed);
      return WriteOnePlan(stmt, plan, checks);
    });
    if (!wrote.ok() || !*wrote) {
      // What the unit found is not what the rows hold: the cache forgets it.
      ForgetChecked(records_, checks);
      for (uint64_t index : plan.locked) records_.Forget(index);
    }
    RKL_RETURN_IF_ERROR(wrote.status());
    if (*wrote) {
      for (uint64_t index : plan.superseded) records_.Forget(index);
      for (const auto& [type, sn] : plan.superseded_live) records_.PutLive(type, sn, {});
      for (const KeyRecord& r : plan.inserts) {
        records_.Put(r);
        if (IsBoundType(r.type) && !r.bound_sn.empty()) records_.PutLive(r.type, r.bound_sn, {r});
      }
      return absl::OkStatus();
    }
    if (cached) --run;  // at most once: the runs after this one read afresh
    fresh = true;
  }
  return absl::AbortedError(
      "hsm: the live keys of this SN kept changing under concurrent commands; try again");
}

absl::Status PgKeyRecordStore::TransactReadOnly(
    absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) {
  // Each read is its own autocommit statement — what READ COMMITTED gives the statements of
  // one transaction anyway — so the reads cost one round trip each and no BEGIN/COMMIT.
  // A unit that took records from the cache writes its records in one statement that checks
  // them (still ACTIVE, held FOR SHARE until it commits); if one is not, or the command
  // failed, it runs again on fresh reads.
  bool fresh = false;
  while (true) {
    std::vector<AuditEvent> audits;
    CacheChecks checks;
    absl::StatusOr<bool> done =
        db::RunAutocommitRead(pool_, [&](pqxx::nontransaction& tx) -> absl::StatusOr<bool> {
          audits.clear();
          checks = CacheChecks{};
          PgKeyRecordTransaction ktx(tx, *this, &audits, nullptr, fresh ? nullptr : &checks);
          RKL_RETURN_IF_ERROR(fn(ktx));
          return true;
        });
    const bool cached = checks.used();
    if (!done.ok() && cached) {
      ForgetChecked(records_, checks);
      fresh = true;
      continue;
    }
    RKL_RETURN_IF_ERROR(done.status());
    if (audits.empty()) {
      return absl::InternalError("an HSM command finished without its audit record");
    }
    if (!cached) return audit_.AppendGrouped(audits);
    // The records are MACed and stored with the flow's request id.
    for (AuditEvent& e : audits) e = audit::WithCurrentRequestId(e);
    RKL_ASSIGN_OR_RETURN(std::string json, audit_.PreparePendingJson(audits));
    absl::StatusOr<bool> wrote = db::RunAutocommitWrite(pool_, [&](db::OneStatement& stmt) {
      statements_.fetch_add(1, std::memory_order_relaxed);
      return WriteCheckedAudit(stmt, checks, json);
    });
    if (!wrote.ok() || !*wrote) ForgetChecked(records_, checks);
    RKL_RETURN_IF_ERROR(wrote.status());
    if (*wrote) return absl::OkStatus();
    fresh = true;
  }
}

}  // namespace rkl::hsm
