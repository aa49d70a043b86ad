#pragma once
// KeyBarrier: the one layer between the HSM's commands and its stored keys. It owns the LMK,
// the AAD formats, sealing and opening of key records and ceremony components, and the
// cache of unsealed keys; under it a KeyRecordStore (key_record_store.h) handles rows that
// only ever hold sealed bytes. PgKeyRecordStore and the unit tests' fake both sit under this
// same code, so tampering and AAD binding behave the same on both.
//
// Guarantees:
//  - key material and ceremony components reach a row only sealed: AES-256-GCM under the LMK
//    with a fresh 96-bit nonce, AAD = KeyRecordAad(index, type, algorithm, usage, bound SN,
//    creation time, bound KEK, bound KRD) (PROTOCOL §9), or ComponentAad(ceremony id, custodian). A
//    record whose nonce, ciphertext or any AAD column was altered, whose sealed bytes were
//    moved from another row, or that was sealed under another LMK does not open: Unseal
//    returns INTERNAL "key record N failed its integrity check" (no key bytes, no AAD in the
//    text) and the key is never used;
//  - unsealed keys may be kept in a bounded LRU cache (capacity 0 disables it). An entry is
//    used only when the record's AAD, nonce and ciphertext are byte-identical to the ones
//    that were opened, so the cache never hides tampering; evicted entries are zeroed
//    (SecretBytes);
//  - the unit-of-work guarantees are the KeyRecordStore's (Transact, TransactReadOnly,
//    TransactOneWrite), unchanged.
// Thread-safe; a KeyTransaction is used by the thread that runs the unit.

#include <cstdint>
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
#include "key_record_store.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::hsm {

// A key to be stored: the record's metadata and its clear material.
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
  std::string bound_krd{};         // as KeyRecord::bound_krd
  crypto::SecretBytes material{};  // AES/TDES key bytes, or PKCS#8 DER for RSA
};

// Fixed-layout AAD of a key record (PROTOCOL §9): "RKL-HSM-KEY-1" ‖ [index]_8 ‖ [type]_1 ‖
// [algorithm]_1 ‖ [usage]_1 ‖ [len(sn)]_1 ‖ sn ‖ [created_at_ms]_8; a record bound to a KEK
// (kek_index ≠ 0: a TMK) has "RKL-HSM-KEY-2" instead of the tag and ‖ [kek_index]_8 at the
// end, so its binding cannot be changed or removed without the record failing to open; a
// record bound to a KRD (a TR-34 TMK) has "RKL-HSM-KEY-3" and ‖ [kek_index]_8 ‖
// [len(krd)]_1 ‖ krd at the end, for the same reason.
Bytes KeyRecordAad(uint64_t index, KeyType type, uint8_t algorithm, KeyUsage usage,
                   std::string_view bound_sn, int64_t created_at_ms, uint64_t kek_index = 0,
                   std::string_view bound_krd = {});
// KeyRecordAad of the record's own columns.
Bytes KeyRecordAad(const KeyRecord& record);
// "RKL-HSM-COMPONENT-1" ‖ [len]_1 ‖ ceremony id ‖ [len]_1 ‖ custodian.
Bytes ComponentAad(std::string_view ceremony_id, std::string_view custodian);

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

class KeyBarrier;

// One unit of work as the commands see it: the row store's unit with sealing on the way in
// and opening on the way out. The reads, Prefetch* and ceremony calls are the
// KeyRecordTransaction's (key_record_store.h states their contracts).
class KeyTransaction {
 public:
  KeyTransaction(KeyBarrier& barrier, KeyRecordTransaction& rows)
      : barrier_(barrier), rows_(rows) {}
  KeyTransaction(const KeyTransaction&) = delete;
  KeyTransaction& operator=(const KeyTransaction&) = delete;

  // Assigns the next index, seals key.material and inserts the record as ACTIVE.
  // ALREADY_EXISTS if it would be a second live TEK/AUK/TMK for the SN or a second live key
  // with the label.
  absl::StatusOr<KeyRecord> InsertKey(const NewKey& key, int64_t now_ms);
  // InsertKey for each key, in order, with the same results (one statement in
  // PgKeyRecordStore).
  absl::StatusOr<std::vector<KeyRecord>> InsertKeys(std::span<const NewKey> keys, int64_t now_ms);
  // Opens the record's sealed material. INTERNAL naming the index if it fails to open.
  absl::StatusOr<crypto::SecretBytes> Unseal(const KeyRecord& record);
  // Opens an RSA private key record and parses it (INTERNAL naming the index if it fails to
  // open or is not an RSA key). The parsed key is cached with the bytes (parsing PKCS#8
  // costs more than the RSA operation).
  absl::StatusOr<std::shared_ptr<const crypto::PrivateKey>> UnsealRsa(const KeyRecord& record);
  // DELETED also erases the sealed material (and the cached key).
  absl::Status SetKeyState(uint64_t index, KeyState state, int64_t now_ms);
  // Seals the component under ComponentAad(ceremony_id, custodian). ALREADY_EXISTS if the
  // custodian already added one.
  absl::Status AddComponent(const std::string& ceremony_id, const std::string& custodian,
                            const std::string& kcv, const crypto::SecretBytes& component,
                            int64_t now_ms);
  // The ceremony's components, opened, in the order they were added. INTERNAL naming the
  // custodian if one fails to open.
  absl::StatusOr<std::vector<crypto::SecretBytes>> OpenComponents(const std::string& ceremony_id);

  absl::StatusOr<std::optional<KeyRecord>> FindKey(uint64_t index) { return rows_.FindKey(index); }
  absl::Status Prefetch(std::span<const uint64_t> indexes) { return rows_.Prefetch(indexes); }
  absl::StatusOr<std::vector<KeyRecord>> FindLiveKeys(KeyType type, const std::string& sn) {
    return rows_.FindLiveKeys(type, sn);
  }
  absl::Status PrefetchLive(std::span<const KeyType> types, const std::string& sn) {
    return rows_.PrefetchLive(types, sn);
  }
  absl::Status PrefetchWithLive(std::span<const uint64_t> indexes, std::span<const KeyType> types,
                                const std::string& sn) {
    return rows_.PrefetchWithLive(indexes, types, sn);
  }
  absl::StatusOr<std::vector<KeyRecord>> FindUndeletedKeysOf(const std::string& sn) {
    return rows_.FindUndeletedKeysOf(sn);
  }
  absl::StatusOr<bool> LiveLabelExists(const std::string& label) {
    return rows_.LiveLabelExists(label);
  }
  absl::Status InsertCeremony(const Ceremony& ceremony) { return rows_.InsertCeremony(ceremony); }
  absl::StatusOr<std::optional<Ceremony>> FindCeremony(const std::string& id) {
    return rows_.FindCeremony(id);
  }
  absl::StatusOr<std::vector<Ceremony>> FindExpiredCeremonies(int64_t now_ms) {
    return rows_.FindExpiredCeremonies(now_ms);
  }
  absl::Status SetCeremonyState(const std::string& id, CeremonyState state,
                                uint64_t result_key_index) {
    return rows_.SetCeremonyState(id, state, result_key_index);
  }
  absl::Status DeleteComponents(const std::string& ceremony_id) {
    return rows_.DeleteComponents(ceremony_id);
  }
  absl::Status Audit(const AuditEvent& event) { return rows_.Audit(event); }

 private:
  KeyBarrier& barrier_;
  KeyRecordTransaction& rows_;
};

class KeyBarrier {
 public:
  using Unit = absl::FunctionRef<absl::Status(KeyTransaction&)>;

  // `lmk` is copied into this object; `rows` must outlive it.
  KeyBarrier(KeyRecordStore& rows, const crypto::SecretBytes& lmk, size_t cache_capacity);

  // KeyRecordStore's units of work (same names, same guarantees), with sealing.
  absl::Status Transact(Unit fn);
  absl::Status TransactReadOnly(Unit fn);
  absl::Status TransactOneWrite(Unit fn);

  UnsealedKeyCache& cache() { return cache_; }

 private:
  friend class KeyTransaction;
  struct Sealed {
    Bytes nonce;
    Bytes sealed;
  };
  absl::StatusOr<Sealed> Seal(const crypto::SecretBytes& material,
                              std::span<const uint8_t> aad) const;
  // Nullopt if the bytes do not open under the LMK with this AAD.
  std::optional<crypto::SecretBytes> Open(std::span<const uint8_t> nonce,
                                          std::span<const uint8_t> sealed,
                                          std::span<const uint8_t> aad) const;

  KeyRecordStore& rows_;
  const crypto::SecretBytes lmk_;
  UnsealedKeyCache cache_;
};

}  // namespace rkl::hsm
