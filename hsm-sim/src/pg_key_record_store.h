#pragma once
// PgKeyRecordStore: the HSM's key rows in PostgreSQL (tables hsm_key, hsm_ceremony,
// hsm_ceremony_component; migrations/), SQL only. It sees sealed bytes and metadata, never
// a clear key: KeyBarrier (key_barrier.h) seals and opens above it.
//
// Guarantees beyond KeyRecordStore's: every query is parameterised; a unit's audit record
// goes through PgAuditLog in the same transaction (or the same one statement) as its rows;
// key indexes come from hsm_key_index_seq. Thread-safe.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "key_record_store.h"
#include "pg_audit_log.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/sequence_block.h"

namespace rkl::hsm {

// The statement behind KeyRecordTransaction::FindLiveKeys for PgKeyRecordStore ($1 SN; the key
// type, one of TEK/AUK/TMK, is a literal); exposed so a test can check its plan uses the
// one-live-key-per-SN index.
// lock: FOR UPDATE, as inside a transaction (a read-only unit runs in autocommit and does not
// lock).
std::string FindLiveKeysSql(KeyType type, bool lock = true);
// The same for several types at once (PrefetchLive).
std::string FindLiveKeysSql(std::span<const KeyType> types, bool lock = true);
// The shape of the one statement a TransactOneWrite unit (or a read-only unit that used
// cached records) writes.
struct OneWriteShape {
  size_t locked = 0;  // live keys the unit found: still live, locked FOR UPDATE
  size_t held = 0;    // cached records the unit used: still ACTIVE, locked FOR SHARE
  // Cached "no live key of this type for the SN": still none (one SN parameter each).
  std::vector<KeyType> absent{};
  size_t superseded = 0;    // of `locked`
  size_t keys = 0;          // new key records
  bool audit_json = false;  // the audit records as one JSON array (read-only units)
};
// The statement behind TransactOneWrite (and the checked audit write of a read-only unit
// that used cached records); parameters (all text): the locked indexes, the held indexes,
// the SN of each absent check, the time of superseding and the superseded indexes (only
// when there are some), then either the pending audit record's id, at_ms, actor, action,
// sn, detail, result, mac, request_id, or (audit_json) the records as
// PgAuditLog::PreparePendingJson makes them; then kInsertKey's columns for each key.
// Returns one row: whether it wrote (every check held); if not, it wrote nothing.
std::string OneWriteSql(const OneWriteShape& shape);
std::string OneWriteSql(size_t locked, size_t superseded, size_t keys);
// The statement behind PrefetchWithLive: $1 the SN, $2..$(n+1) the key indexes; each row
// is a key record followed by one boolean column, true for the live keys of `types`.
std::string PrefetchWithLiveSql(size_t n, std::span<const KeyType> types, bool lock = true);
// The statement behind PgKeyRecordStore's Prefetch of n keys ($1..$n), exposed for the same reason.
inline constexpr size_t kMaxPrefetch = 8;
std::string PrefetchKeysSql(size_t n);

// Sealed key records a PgKeyRecordStore has read or written, kept so that a one-write or
// read-only unit that finds every record it needs here sends no read (docs/hsm.md, "Round
// trips"). Only what a row holds is kept: sealed bytes and metadata, never a clear key. A
// record is kept only while it was ACTIVE when last seen; its material and metadata never
// change, only its state, so a unit that used a kept record has its write check that the
// record is still ACTIVE (and a kept "live keys of a type for an SN" that they still are
// the live ones), atomically with its audit record. Bounded: the oldest entries go first.
// Thread-safe.
class SealedRecordCache {
 public:
  explicit SealedRecordCache(size_t capacity) : capacity_(capacity) {}

  std::optional<KeyRecord> Get(uint64_t index);
  // The live keys of (type, sn) as last seen (empty: none), only if every one is kept.
  std::optional<std::vector<KeyRecord>> GetLive(KeyType type, const std::string& sn);
  // Keeps an ACTIVE record; forgets any other.
  void Put(const KeyRecord& record);
  // The live keys of (type, sn) as just read or written (each ACTIVE).
  void PutLive(KeyType type, const std::string& sn, const std::vector<KeyRecord>& live);
  void Forget(uint64_t index);
  void ForgetLive(KeyType type, const std::string& sn);
  size_t size() const;

 private:
  void EvictLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::unordered_map<uint64_t, KeyRecord> records_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> order_ ABSL_GUARDED_BY(mu_);  // insertion order, for eviction
  std::map<std::pair<KeyType, std::string>, std::vector<uint64_t>> live_ ABSL_GUARDED_BY(mu_);
};

class PgKeyRecordStore : public KeyRecordStore {
 public:
  // Records kept by default (SealedRecordCache); 0 keeps none.
  static constexpr size_t kDefaultRecordCacheCapacity = 8192;
  // TransactOneWrite runs a unit at most this often, then answers ABORTED. A run fails only
  // because another unit's write superseded a live key it read, so with at most this many
  // units on one SN at once none of them is ever ABORTED.
  static constexpr int kMaxOneWriteRuns = 5;

  // `pool` and `audit` must outlive it.
  PgKeyRecordStore(db::ConnectionPool& pool, PgAuditLog& audit,
                   size_t record_cache_capacity = kDefaultRecordCacheCapacity);

  absl::Status Transact(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) override;
  absl::Status TransactReadOnly(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) override;
  absl::Status TransactOneWrite(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) override;

  // Statements the units of this store have sent for key records (not the audit log's
  // group writes, not sequence blocks), for tests and metrics.
  uint64_t statements_sent() const { return statements_.load(std::memory_order_relaxed); }
  SealedRecordCache& record_cache() { return records_; }
  // Tests only: runs in TransactOneWrite between fn's reads and the write statement.
  void SetBeforeOneWriteHookForTest(std::function<void()> hook) { before_one_write_ = hook; }

 private:
  friend class PgKeyRecordTransaction;
  db::ConnectionPool& pool_;
  PgAuditLog& audit_;
  // Key indexes are bound into each record's AAD before it is written: taken from
  // hsm_key_index_seq a block at a time instead of a nextval() round trip per key.
  static constexpr int kKeyIndexBlock = 128;
  db::SequenceBlock key_indexes_;
  std::function<void()> before_one_write_;
  SealedRecordCache records_;
  std::atomic<uint64_t> statements_{0};
};

}  // namespace rkl::hsm
