#pragma once
// The rows under the HSM's key barrier (key_barrier.h): numbered key records (the patent's
// "key index"), key-ceremony state and ceremony components, behind an interface the barrier
// uses in units of work (KeyRecordStore::Transact).
//
// A row store handles rows only: key material and components cross this interface sealed
// (nonce and ciphertext under the LMK, opaque here) with their public metadata, never in
// clear — no SecretBytes appears below. Sealing, the AAD format and the unsealed-key cache
// belong to KeyBarrier, so every store (PgKeyRecordStore, the unit tests' fake) sits under
// the same sealing code.
//
// Guarantees every KeyRecordStore gives:
//  - everything one Transact() does — row changes and the audit record — commits together
//    or not at all; fn may run more than once (serialization retries);
//  - at most one live (ACTIVE) TEK, AUK and TMK per SN and one live key per label: an insert
//    that would break either is ALREADY_EXISTS;
//  - a DELETED record keeps its metadata and loses its sealed bytes.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "audit_log.h"
#include "rkl/common/hex.h"

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
  kKdhSign = 8,
};
enum class KeyState : int { kActive = 1, kSuperseded = 2, kDeleted = 3 };
enum class CeremonyState : int { kOpen = 1, kCompleted = 2, kExpired = 3 };

std::string KeyTypeName(KeyType type);     // "TMK", "RSA_PRIVATE", ...
std::string KeyUsageName(KeyUsage usage);  // "EXPORT_KEK", ...
std::string KeyStateName(KeyState state);  // "ACTIVE", ...

// A key record as stored: public metadata and the sealed material (nonce and sealed are
// empty after deletion).
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
  // TR-34 TMKs: the KRD the TMK was made for (tr34::KrdIdOf, 64 upper-case hex digits), the
  // only KRD it is put in a key token for; empty for every other key. A TMK is bound to a
  // TEK or to a KRD, never both.
  std::string bound_krd{};
  Bytes nonce{};
  Bytes sealed{};
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

// One custodian's ceremony component as stored.
struct SealedComponent {
  std::string custodian{};
  Bytes nonce{};
  Bytes sealed{};
};

// One unit of work on rows. Not thread-safe: used by the thread that runs Transact().
class KeyRecordTransaction {
 public:
  virtual ~KeyRecordTransaction() = default;

  // The index the next inserted key gets (it is bound into the record's AAD before the
  // record is written). Fails where inserting would (a read-only unit).
  virtual absl::StatusOr<uint64_t> NextKeyIndex() = 0;
  // Inserts sealed records (indexes from NextKeyIndex) as ACTIVE, in order. ALREADY_EXISTS
  // if one would be a second live TEK/AUK/TMK for its SN or a second live key with its label.
  virtual absl::Status InsertKeys(std::span<const KeyRecord> records) = 0;
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
  // Prefetch(indexes) and PrefetchLive(types, sn) together, in one statement in
  // PgKeyRecordStore. The default does both.
  virtual absl::Status PrefetchWithLive(std::span<const uint64_t> indexes,
                                        std::span<const KeyType> types, const std::string& sn) {
    if (absl::Status s = Prefetch(indexes); !s.ok()) return s;
    return PrefetchLive(types, sn);
  }
  // Every key bound to `sn` that is not deleted (live or superseded), in key_index order,
  // locked for the rest of the transaction.
  virtual absl::StatusOr<std::vector<KeyRecord>> FindUndeletedKeysOf(const std::string& sn) = 0;
  virtual absl::StatusOr<bool> LiveLabelExists(const std::string& label) = 0;
  // DELETED also erases the sealed bytes.
  virtual absl::Status SetKeyState(uint64_t index, KeyState state, int64_t now_ms) = 0;

  virtual absl::Status InsertCeremony(const Ceremony& ceremony) = 0;
  // Locks the ceremony row for the rest of the transaction.
  virtual absl::StatusOr<std::optional<Ceremony>> FindCeremony(const std::string& id) = 0;
  virtual absl::StatusOr<std::vector<Ceremony>> FindExpiredCeremonies(int64_t now_ms) = 0;
  virtual absl::Status SetCeremonyState(const std::string& id, CeremonyState state,
                                        uint64_t result_key_index) = 0;
  // ALREADY_EXISTS if the custodian already added one.
  virtual absl::Status InsertComponent(const std::string& ceremony_id, const std::string& kcv,
                                       const SealedComponent& component, int64_t now_ms) = 0;
  // In the order they were added.
  virtual absl::StatusOr<std::vector<SealedComponent>> FindComponents(
      const std::string& ceremony_id) = 0;
  virtual absl::Status DeleteComponents(const std::string& ceremony_id) = 0;

  // Appends the audit record in this transaction. Call it last (a command that carries
  // several items, like TranslateTransportKeys, calls it once per item).
  virtual absl::Status Audit(const AuditEvent& event) = 0;
};

class KeyRecordStore {
 public:
  virtual ~KeyRecordStore() = default;
  virtual absl::Status Transact(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) = 0;
  // For commands that change no key: fn may only read (any write fails with INTERNAL and
  // nothing is written), and its audit record is durable before this returns OK. The
  // default is Transact(fn); PgKeyRecordStore reads without a transaction and writes the
  // record in a group with those of concurrent commands (PgAuditLog::AppendGrouped) — or,
  // when fn used records the store keeps (SealedRecordCache), in one statement that checks
  // they are still ACTIVE.
  virtual absl::Status TransactReadOnly(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) {
    return Transact(fn);
  }
  // For commands whose only writes are new keys (InsertKeys), superseding live keys they
  // found with FindLiveKeys, and one audit record: the same guarantees as Transact. The
  // default is Transact(fn). PgKeyRecordStore runs fn's reads in autocommit without locks,
  // holds its writes back, and writes them in ONE autocommit statement that first locks the
  // live keys fn found and checks they are all still live; if one is not (a concurrent
  // command superseded it), the statement writes nothing and fn runs again on fresh reads.
  // So the outcome is what a transaction holding those locks from its read on would give,
  // in 1 write round trip instead of BEGIN, a write per key change and audit record, and
  // COMMIT; records PgKeyRecordStore keeps (SealedRecordCache) cost no read, and the
  // statement checks them too. Inside fn, a read that would need the database after a write, any
  // other write (ceremonies, deletion), or a second audit record fails with INTERNAL and nothing is
  // written.
  virtual absl::Status TransactOneWrite(absl::FunctionRef<absl::Status(KeyRecordTransaction&)> fn) {
    return Transact(fn);
  }
};

}  // namespace rkl::hsm
