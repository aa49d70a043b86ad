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
#include <functional>
#include <span>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
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
// The statement behind TransactOneWrite, for `locked` live keys (which must all still be
// live), `superseded` of them and `keys` new key records; parameters (all text): the
// locked indexes, the time of superseding and the superseded indexes (only when there
// are some), the pending audit record's id, at_ms, actor, action, sn, detail, result, mac,
// then kInsertKey's columns for each key. Returns one row: whether it wrote.
std::string OneWriteSql(size_t locked, size_t superseded, size_t keys);
// The statement behind PrefetchWithLive: $1 the SN, $2..$(n+1) the key indexes; each row
// is a key record followed by one boolean column, true for the live keys of `types`.
std::string PrefetchWithLiveSql(size_t n, std::span<const KeyType> types, bool lock = true);
// The statement behind PgKeyRecordStore's Prefetch of n keys ($1..$n), exposed for the same reason.
inline constexpr size_t kMaxPrefetch = 8;
std::string PrefetchKeysSql(size_t n);

class PgKeyRecordStore : public KeyRecordStore {
 public:
  // TransactOneWrite runs a unit at most this often, then answers ABORTED. A run fails only
  // because another unit's write superseded a live key it read, so with at most this many
  // units on one SN at once none of them is ever ABORTED.
  static constexpr int kMaxOneWriteRuns = 5;

  // `pool` and `audit` must outlive it.
  PgKeyRecordStore(db::ConnectionPool& pool, PgAuditLog& audit);

  absl::Status Transact(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) override;
  absl::Status TransactReadOnly(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) override;
  absl::Status TransactOneWrite(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) override;

  // Statements the units of this store have sent for key records (not the audit log's
  // group writes, not sequence blocks), for tests and metrics.
  uint64_t statements_sent() const { return statements_.load(std::memory_order_relaxed); }
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
  std::atomic<uint64_t> statements_{0};
};

}  // namespace rkl::hsm
