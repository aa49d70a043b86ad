#pragma once
// The HSM's key store: numbered key records (the patent's "key index") and key-ceremony
// state, behind an interface the core uses in units of work (KeyStore::Transact).
//
// Guarantees of PgKeyStore:
//  - key material and ceremony components are stored only sealed: AES-256-GCM under the LMK
//    with a fresh 96-bit nonce, AAD = KeyRecordAad(index, type, algorithm, usage, bound SN,
//    creation time, bound KEK) (PROTOCOL §9), or ComponentAad(ceremony id, custodian). A record
//    whose nonce, ciphertext or any AAD column was altered, or whose sealed bytes were moved from
//    another row, does not open: Unseal returns INTERNAL "key record N failed its integrity
//    check" and the key is never used;
//  - everything one Transact() does — key changes and the audit record — commits together
//    or not at all; fn may run more than once (serialization retries);
//  - unsealed keys may be kept in a bounded LRU cache (capacity 0 disables it). An entry is
//    used only when the record's AAD, nonce and ciphertext are byte-identical to the ones
//    that were opened, so the cache never hides tampering; evicted entries are zeroed
//    (SecretBytes). Thread-safe.

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "audit_log.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/db/connection_pool.h"
#include "rkl/db/sequence_block.h"

namespace rkl::hsm {

// Numbers as in proto/rkl/v1/hsm.proto.
enum class KeyType : int {
  kRsaPrivate = 1,
  kPk = 2,
  kMak = 3,
  kTek = 4,
  kAuk = 5,
  kTmk = 6,
};
enum class KeyUsage : int {
  kTransportDecrypt = 1,
  kTkWrap = 2,
  kTkMac = 3,
  kExportKek = 4,
  kTerminalAuth = 5,
  kTerminalMaster = 6,
  kCeremonyDecrypt = 7,
};
enum class KeyState : int { kActive = 1, kSuperseded = 2, kDeleted = 3 };
enum class CeremonyState : int { kOpen = 1, kCompleted = 2, kExpired = 3 };

std::string KeyTypeName(KeyType type);     // "TMK", "RSA_PRIVATE", ...
std::string KeyUsageName(KeyUsage usage);  // "EXPORT_KEK", ...
std::string KeyStateName(KeyState state);  // "ACTIVE", ...

// A key record without its clear material. nonce/sealed are the public sealed form (empty in
// stores that keep no sealed form, and after deletion).
struct KeyRecord {
  uint64_t index = 0;
  KeyType type = KeyType::kRsaPrivate;
  uint8_t algorithm = 0;  // terminal algorithm wire code; 0 for RSA, PK, MAK
  KeyUsage usage = KeyUsage::kTransportDecrypt;
  std::string bound_sn{};
  std::string label{};
  std::string kcv{};  // 6 hex digits; empty for RSA keys
  KeyState state = KeyState::kActive;
  int64_t created_at_ms = 0;
  uint32_t rsa_bits = 0;
  Bytes public_key_der{};  // RSA keys only
  // TMKs: the index of the TEK the TMK was made for, the only key it may be exported
  // under; 0 for every other key (and for TMKs made before the binding existed).
  uint64_t kek_index = 0;
  Bytes nonce{};
  Bytes sealed{};
};

struct NewKey {
  KeyType type = KeyType::kRsaPrivate;
  uint8_t algorithm = 0;
  KeyUsage usage = KeyUsage::kTransportDecrypt;
  std::string bound_sn{};
  std::string label{};
  std::string kcv{};
  uint32_t rsa_bits = 0;
  Bytes public_key_der{};
  uint64_t kek_index = 0;          // as KeyRecord::kek_index
  crypto::SecretBytes material{};  // AES/TDES key bytes, or PKCS#8 DER for RSA
};

struct Ceremony {
  std::string id{};
  std::string label{};
  KeyType key_type = KeyType::kPk;
  uint32_t component_count = 2;
  uint64_t ceremony_key_index = 0;
  CeremonyState state = CeremonyState::kOpen;
  std::string created_by{};
  int64_t created_at_ms = 0;
  int64_t expires_at_ms = 0;
  uint64_t result_key_index = 0;
  std::vector<std::string> custodians{};  // in the order their components were added
};

// Fixed-layout AAD of a key record (PROTOCOL §9): "RKL-HSM-KEY-1" ‖ [index]_8 ‖ [type]_1 ‖
// [algorithm]_1 ‖ [usage]_1 ‖ [len(sn)]_1 ‖ sn ‖ [created_at_ms]_8; a record bound to a KEK
// (kek_index ≠ 0: a TMK) has "RKL-HSM-KEY-2" instead of the tag and ‖ [kek_index]_8 at the
// end, so its binding cannot be changed or removed without the record failing to open.
Bytes KeyRecordAad(uint64_t index, KeyType type, uint8_t algorithm, KeyUsage usage,
                   std::string_view bound_sn, int64_t created_at_ms, uint64_t kek_index = 0);
// "RKL-HSM-COMPONENT-1" ‖ [len]_1 ‖ ceremony id ‖ [len]_1 ‖ custodian.
Bytes ComponentAad(std::string_view ceremony_id, std::string_view custodian);

// The statement behind KeyTransaction::FindLiveKeys for PgKeyStore ($1 SN; the key type,
// one of TEK/AUK/TMK, is a literal); exposed so a test can check its plan uses the
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
// The statement behind PgKeyStore's Prefetch of n keys ($1..$n), exposed for the same reason.
inline constexpr size_t kMaxPrefetch = 8;
std::string PrefetchKeysSql(size_t n);

// One unit of work. Not thread-safe: used by the thread that runs Transact().
class KeyTransaction {
 public:
  virtual ~KeyTransaction() = default;

  // Assigns the next index, seals key.material and inserts the record as ACTIVE.
  // ALREADY_EXISTS if it would be a second live TEK/AUK/TMK for the SN or a second live key
  // with the label.
  virtual absl::StatusOr<KeyRecord> InsertKey(const NewKey& key, int64_t now_ms) = 0;
  // InsertKey for each key, in order, with the same results; PgKeyStore writes them in one
  // statement.
  virtual absl::StatusOr<std::vector<KeyRecord>> InsertKeys(std::span<const NewKey> keys,
                                                            int64_t now_ms);
  virtual absl::StatusOr<std::optional<KeyRecord>> FindKey(uint64_t index) = 0;
  // Reads these key records in one go, so that the FindKey calls for them that follow cost
  // no further round trip (a record this unit changes afterwards is read afresh). Only an
  // optimisation: the default does nothing.
  virtual absl::Status Prefetch(std::span<const uint64_t> indexes) {
    (void)indexes;
    return absl::OkStatus();
  }
  // Live (ACTIVE) keys of a type bound to `sn`, locked for the rest of the transaction.
  virtual absl::StatusOr<std::vector<KeyRecord>> FindLiveKeys(KeyType type,
                                                              const std::string& sn) = 0;
  // Reads (and locks, as FindLiveKeys) the live keys of these types bound to `sn` in one
  // go, so that the FindLiveKeys calls for them that follow cost no further round trip,
  // until this unit changes or inserts a key (nor FindKey of one of them). Only an
  // optimisation: the default does nothing.
  virtual absl::Status PrefetchLive(std::span<const KeyType> types, const std::string& sn) {
    (void)types;
    (void)sn;
    return absl::OkStatus();
  }
  // Prefetch(indexes) and PrefetchLive(types, sn) together, in one statement in PgKeyStore.
  // The default does both.
  virtual absl::Status PrefetchWithLive(std::span<const uint64_t> indexes,
                                        std::span<const KeyType> types, const std::string& sn) {
    if (absl::Status s = Prefetch(indexes); !s.ok()) return s;
    return PrefetchLive(types, sn);
  }
  // Every key bound to `sn` that is not deleted (live or superseded), in key_index order,
  // locked for the rest of the transaction.
  virtual absl::StatusOr<std::vector<KeyRecord>> FindUndeletedKeysOf(const std::string& sn) = 0;
  virtual absl::StatusOr<bool> LiveLabelExists(const std::string& label) = 0;
  // Opens the record's sealed material. INTERNAL naming the index if it fails to open.
  virtual absl::StatusOr<crypto::SecretBytes> Unseal(const KeyRecord& record) = 0;
  // Opens an RSA private key record and parses it (INTERNAL naming the index if it fails to
  // open or is not an RSA key). The default parses on every call; PgKeyStore keeps the
  // parsed key with the cached bytes (parsing PKCS#8 costs more than the RSA operation).
  virtual absl::StatusOr<std::shared_ptr<const crypto::PrivateKey>> UnsealRsa(
      const KeyRecord& record);
  // DELETED also erases the sealed material.
  virtual absl::Status SetKeyState(uint64_t index, KeyState state, int64_t now_ms) = 0;

  virtual absl::Status InsertCeremony(const Ceremony& ceremony) = 0;
  // Locks the ceremony row for the rest of the transaction.
  virtual absl::StatusOr<std::optional<Ceremony>> FindCeremony(const std::string& id) = 0;
  virtual absl::StatusOr<std::vector<Ceremony>> FindExpiredCeremonies(int64_t now_ms) = 0;
  virtual absl::Status SetCeremonyState(const std::string& id, CeremonyState state,
                                        uint64_t result_key_index) = 0;
  // ALREADY_EXISTS if the custodian already added one.
  virtual absl::Status AddComponent(const std::string& ceremony_id, const std::string& custodian,
                                    const std::string& kcv, const crypto::SecretBytes& component,
                                    int64_t now_ms) = 0;
  virtual absl::StatusOr<std::vector<crypto::SecretBytes>> OpenComponents(
      const std::string& ceremony_id) = 0;
  virtual absl::Status DeleteComponents(const std::string& ceremony_id) = 0;

  // Appends the audit record in this transaction. Call it last (a command that carries
  // several items, like TranslateTransportKeys, calls it once per item).
  virtual absl::Status Audit(const AuditEvent& event) = 0;
};

class KeyStore {
 public:
  virtual ~KeyStore() = default;
  virtual absl::Status Transact(absl::FunctionRef<absl::Status(KeyTransaction&)> fn) = 0;
  // For commands that change no key: fn may only read (any write fails with INTERNAL and
  // nothing is written), and its audit record is durable before this returns OK. The
  // default is Transact(fn); PgKeyStore reads without a transaction and writes the record
  // in a group with those of concurrent commands (PgAuditLog::AppendGrouped).
  virtual absl::Status TransactReadOnly(absl::FunctionRef<absl::Status(KeyTransaction&)> fn) {
    return Transact(fn);
  }
  // For commands whose only writes are new keys (InsertKey/InsertKeys), superseding live
  // keys they found with FindLiveKeys, and one audit record: the same guarantees as
  // Transact. The default is Transact(fn). PgKeyStore runs fn's reads in autocommit without
  // locks, holds its writes back, and writes them in ONE autocommit statement that first
  // locks the live keys fn found and checks they are all still live; if one is not (a
  // concurrent command superseded it), the statement writes nothing and fn runs again on
  // fresh reads. So the outcome is what a transaction holding those locks from its read
  // on would give, in 1 write round trip instead of BEGIN, a write per key change and
  // audit record, and COMMIT. Inside fn, a read that would need the database after a
  // write, any other write (ceremonies, deletion), or a second audit record fails with
  // INTERNAL and nothing is written.
  virtual absl::Status TransactOneWrite(absl::FunctionRef<absl::Status(KeyTransaction&)> fn) {
    return Transact(fn);
  }
};

// Bounded LRU cache of unsealed keys; entries are zeroed when evicted or erased.
class UnsealedKeyCache {
 public:
  explicit UnsealedKeyCache(size_t capacity) : capacity_(capacity) {}

  // The cached key, only if it was opened from exactly this aad/nonce/sealed.
  std::optional<crypto::SecretBytes> Get(uint64_t index, std::span<const uint8_t> aad,
                                         std::span<const uint8_t> nonce,
                                         std::span<const uint8_t> sealed);
  void Put(uint64_t index, Bytes aad, Bytes nonce, Bytes sealed, const crypto::SecretBytes& key);
  // The parsed private key kept with an entry, under the same identity rule as Get().
  std::shared_ptr<const crypto::PrivateKey> GetParsed(uint64_t index, std::span<const uint8_t> aad,
                                                      std::span<const uint8_t> nonce,
                                                      std::span<const uint8_t> sealed);
  // Kept only while the entry opened from exactly this record is cached.
  void PutParsed(uint64_t index, std::span<const uint8_t> aad, std::span<const uint8_t> nonce,
                 std::span<const uint8_t> sealed, std::shared_ptr<const crypto::PrivateKey> key);
  void Erase(uint64_t index);

  size_t size() const;
  uint64_t hits() const;

 private:
  struct Entry {
    Bytes aad{}, nonce{}, sealed{};
    crypto::SecretBytes key{};
    std::list<uint64_t>::iterator lru;
    std::shared_ptr<const crypto::PrivateKey> parsed{};
  };
  const size_t capacity_;
  mutable absl::Mutex mu_;
  std::list<uint64_t> lru_ ABSL_GUARDED_BY(mu_);  // front = most recent
  std::unordered_map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  uint64_t hits_ ABSL_GUARDED_BY(mu_) = 0;

  // The entry opened from exactly this record, or null (a changed record's entry is erased).
  Entry* Find(uint64_t index, std::span<const uint8_t> aad, std::span<const uint8_t> nonce,
              std::span<const uint8_t> sealed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
};

class PgKeyStore : public KeyStore {
 public:
  // TransactOneWrite runs a unit at most this often, then answers ABORTED. A run fails only
  // because another unit's write superseded a live key it read, so with at most this many
  // units on one SN at once none of them is ever ABORTED.
  static constexpr int kMaxOneWriteRuns = 5;

  // `lmk` is copied into this object; `audit` must outlive it.
  PgKeyStore(db::ConnectionPool& pool, const crypto::SecretBytes& lmk, PgAuditLog& audit,
             size_t cache_capacity);

  absl::Status Transact(absl::FunctionRef<absl::Status(KeyTransaction&)> fn) override;
  absl::Status TransactReadOnly(absl::FunctionRef<absl::Status(KeyTransaction&)> fn) override;
  absl::Status TransactOneWrite(absl::FunctionRef<absl::Status(KeyTransaction&)> fn) override;

  UnsealedKeyCache& cache() { return cache_; }
  // Statements the units of this store have sent for key records (not the audit log's
  // group writes, not sequence blocks), for tests and metrics.
  uint64_t statements_sent() const { return statements_.load(std::memory_order_relaxed); }
  // Tests only: runs in TransactOneWrite between fn's reads and the write statement.
  void SetBeforeOneWriteHookForTest(std::function<void()> hook) { before_one_write_ = hook; }

 private:
  friend class PgKeyTransaction;
  db::ConnectionPool& pool_;
  const crypto::SecretBytes lmk_;
  PgAuditLog& audit_;
  UnsealedKeyCache cache_;
  // Key indexes are bound into each record's AAD before it is written: taken from
  // hsm_key_index_seq a block at a time instead of a nextval() round trip per key.
  static constexpr int kKeyIndexBlock = 16;
  db::SequenceBlock key_indexes_;
  std::function<void()> before_one_write_;
  std::atomic<uint64_t> statements_{0};
};

}  // namespace rkl::hsm
