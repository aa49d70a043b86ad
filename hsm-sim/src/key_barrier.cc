#include "key_barrier.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/aead.h"

namespace rkl::hsm {
namespace {

void PutBigEndian(Bytes& out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void PutShortString(Bytes& out, std::string_view s) {
  out.push_back(static_cast<uint8_t>(std::min<size_t>(s.size(), 255)));
  out.insert(out.end(), s.begin(), s.begin() + std::min<size_t>(s.size(), 255));
}

bool Equal(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

absl::Status IntegrityError(uint64_t index) {
  return absl::InternalError(absl::StrCat("key record ", index, " failed its integrity check"));
}

}  // namespace

Bytes KeyRecordAad(uint64_t index, KeyType type, uint8_t algorithm, KeyUsage usage,
                   std::string_view bound_sn, int64_t created_at_ms, uint64_t kek_index,
                   std::string_view bound_krd) {
  // Records without a KEK or KRD keep the first layout, so keys sealed before the bindings
  // existed still open; a bound record's tag differs, so it cannot pass for an unbound one
  // (nor a KRD-bound one for a TEK-bound one).
  const std::string_view tag = !bound_krd.empty() ? "RKL-HSM-KEY-3"
                               : kek_index != 0   ? "RKL-HSM-KEY-2"
                                                  : "RKL-HSM-KEY-1";
  Bytes aad(tag.begin(), tag.end());
  PutBigEndian(aad, index, 8);
  aad.push_back(static_cast<uint8_t>(type));
  aad.push_back(algorithm);
  aad.push_back(static_cast<uint8_t>(usage));
  PutShortString(aad, bound_sn);
  PutBigEndian(aad, static_cast<uint64_t>(created_at_ms), 8);
  if (kek_index != 0 || !bound_krd.empty()) PutBigEndian(aad, kek_index, 8);
  if (!bound_krd.empty()) PutShortString(aad, bound_krd);
  return aad;
}

Bytes KeyRecordAad(const KeyRecord& r) {
  return KeyRecordAad(r.index, r.type, r.algorithm, r.usage, r.bound_sn, r.created_at_ms,
                      r.kek_index, r.bound_krd);
}

Bytes ComponentAad(std::string_view ceremony_id, std::string_view custodian) {
  constexpr std::string_view kTag = "RKL-HSM-COMPONENT-1";
  Bytes aad(kTag.begin(), kTag.end());
  PutShortString(aad, ceremony_id);
  PutShortString(aad, custodian);
  return aad;
}

// ---- UnsealedKeyCache ----------------------------------------------------------------------

UnsealedKeyCache::Entry* UnsealedKeyCache::Find(uint64_t index, std::span<const uint8_t> aad,
                                                std::span<const uint8_t> nonce,
                                                std::span<const uint8_t> sealed) {
  auto it = entries_.find(index);
  if (it == entries_.end()) return nullptr;
  Entry& e = it->second;
  if (!Equal(e.aad, aad) || !Equal(e.nonce, nonce) || !Equal(e.sealed, sealed)) {
    // The record changed since it was opened: forget the old key and open the record again.
    lru_.erase(e.lru);
    entries_.erase(it);
    return nullptr;
  }
  return &e;
}

std::optional<crypto::SecretBytes> UnsealedKeyCache::Get(uint64_t index,
                                                         std::span<const uint8_t> aad,
                                                         std::span<const uint8_t> nonce,
                                                         std::span<const uint8_t> sealed) {
  absl::MutexLock lock(&mu_);
  Entry* e = Find(index, aad, nonce, sealed);
  if (e == nullptr) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, e->lru);
  ++hits_;
  return e->key;
}

std::shared_ptr<const crypto::PrivateKey> UnsealedKeyCache::GetParsed(
    uint64_t index, std::span<const uint8_t> aad, std::span<const uint8_t> nonce,
    std::span<const uint8_t> sealed) {
  absl::MutexLock lock(&mu_);
  Entry* e = Find(index, aad, nonce, sealed);
  if (e == nullptr || e->parsed == nullptr) return nullptr;
  lru_.splice(lru_.begin(), lru_, e->lru);
  ++hits_;
  return e->parsed;
}

void UnsealedKeyCache::PutParsed(uint64_t index, std::span<const uint8_t> aad,
                                 std::span<const uint8_t> nonce, std::span<const uint8_t> sealed,
                                 std::shared_ptr<const crypto::PrivateKey> key) {
  absl::MutexLock lock(&mu_);
  if (Entry* e = Find(index, aad, nonce, sealed)) e->parsed = std::move(key);
}

void UnsealedKeyCache::Put(uint64_t index, Bytes aad, Bytes nonce, Bytes sealed,
                           const crypto::SecretBytes& key) {
  if (capacity_ == 0) return;
  absl::MutexLock lock(&mu_);
  if (auto it = entries_.find(index); it != entries_.end()) {
    lru_.erase(it->second.lru);
    entries_.erase(it);
  }
  while (entries_.size() >= capacity_) {
    entries_.erase(lru_.back());  // SecretBytes' destructor zeroes the evicted key
    lru_.pop_back();
  }
  lru_.push_front(index);
  entries_.emplace(index,
                   Entry{std::move(aad), std::move(nonce), std::move(sealed), key, lru_.begin()});
}

void UnsealedKeyCache::Erase(uint64_t index) {
  absl::MutexLock lock(&mu_);
  if (auto it = entries_.find(index); it != entries_.end()) {
    lru_.erase(it->second.lru);
    entries_.erase(it);
  }
}

size_t UnsealedKeyCache::size() const {
  absl::MutexLock lock(&mu_);
  return entries_.size();
}

uint64_t UnsealedKeyCache::hits() const {
  absl::MutexLock lock(&mu_);
  return hits_;
}

// ---- KeyBarrier ------------------------------------------------------------------------------

KeyBarrier::KeyBarrier(KeyRecordStore& rows, const crypto::SecretBytes& lmk, size_t cache_capacity)
    : rows_(rows), lmk_(lmk), cache_(cache_capacity) {}

absl::Status KeyBarrier::Transact(Unit fn) {
  return rows_.Transact([&](KeyRecordTransaction& rows) {
    KeyTransaction tx(*this, rows);
    return fn(tx);
  });
}

absl::Status KeyBarrier::TransactReadOnly(Unit fn) {
  return rows_.TransactReadOnly([&](KeyRecordTransaction& rows) {
    KeyTransaction tx(*this, rows);
    return fn(tx);
  });
}

absl::Status KeyBarrier::TransactOneWrite(Unit fn) {
  return rows_.TransactOneWrite([&](KeyRecordTransaction& rows) {
    KeyTransaction tx(*this, rows);
    return fn(tx);
  });
}

absl::StatusOr<KeyBarrier::Sealed> KeyBarrier::Seal(const crypto::SecretBytes& material,
                                                    std::span<const uint8_t> aad) const {
  // AeadSeal's nonce ‖ ciphertext ‖ tag, stored as two columns.
  RKL_ASSIGN_OR_RETURN(Bytes blob, crypto::AeadSeal(lmk_, material, aad));
  return Sealed{Bytes(blob.begin(), blob.begin() + crypto::kAeadNonceSize),
                Bytes(blob.begin() + crypto::kAeadNonceSize, blob.end())};
}

std::optional<crypto::SecretBytes> KeyBarrier::Open(std::span<const uint8_t> nonce,
                                                    std::span<const uint8_t> sealed,
                                                    std::span<const uint8_t> aad) const {
  if (nonce.size() != crypto::kAeadNonceSize) return std::nullopt;
  Bytes blob(nonce.begin(), nonce.end());
  blob.insert(blob.end(), sealed.begin(), sealed.end());
  auto opened = crypto::AeadOpen(lmk_, blob, aad);
  if (!opened.ok()) return std::nullopt;
  return *std::move(opened);
}

// ---- KeyTransaction --------------------------------------------------------------------------

absl::StatusOr<KeyRecord> KeyTransaction::InsertKey(const NewKey& key, int64_t now_ms) {
  RKL_ASSIGN_OR_RETURN(std::vector<KeyRecord> r, InsertKeys({&key, 1}, now_ms));
  return std::move(r.front());
}

absl::StatusOr<std::vector<KeyRecord>> KeyTransaction::InsertKeys(std::span<const NewKey> keys,
                                                                  int64_t now_ms) {
  std::vector<KeyRecord> records;
  for (const NewKey& key : keys) {
    RKL_ASSIGN_OR_RETURN(uint64_t index, rows_.NextKeyIndex());
    KeyRecord r{.index = index,
                .type = key.type,
                .algorithm = key.algorithm,
                .usage = key.usage,
                .bound_sn = key.bound_sn,
                .label = key.label,
                .kcv = key.kcv,
                .state = KeyState::kActive,
                .created_at_ms = now_ms,
                .rsa_bits = key.rsa_bits,
                .public_key_der = key.public_key_der,
                .kek_index = key.kek_index,
                .bound_krd = key.bound_krd};
    RKL_ASSIGN_OR_RETURN(KeyBarrier::Sealed sealed, barrier_.Seal(key.material, KeyRecordAad(r)));
    r.nonce = std::move(sealed.nonce);
    r.sealed = std::move(sealed.sealed);
    records.push_back(std::move(r));
  }
  RKL_RETURN_IF_ERROR(rows_.InsertKeys(records));
  return records;
}

absl::StatusOr<crypto::SecretBytes> KeyTransaction::Unseal(const KeyRecord& k) {
  Bytes aad = KeyRecordAad(k);
  if (auto cached = barrier_.cache_.Get(k.index, aad, k.nonce, k.sealed)) return *cached;
  std::optional<crypto::SecretBytes> key = barrier_.Open(k.nonce, k.sealed, aad);
  if (!key) return IntegrityError(k.index);
  barrier_.cache_.Put(k.index, std::move(aad), k.nonce, k.sealed, *key);
  return *std::move(key);
}

absl::StatusOr<std::shared_ptr<const crypto::PrivateKey>> KeyTransaction::UnsealRsa(
    const KeyRecord& k) {
  const Bytes aad = KeyRecordAad(k);
  if (auto cached = barrier_.cache_.GetParsed(k.index, aad, k.nonce, k.sealed)) return cached;
  RKL_ASSIGN_OR_RETURN(crypto::SecretBytes der, Unseal(k));  // caches the bytes
  auto parsed = crypto::PrivateKey::FromPkcs8DerSecret(der);
  if (!parsed.ok() || parsed->Type() != crypto::KeyType::kRsa) return IntegrityError(k.index);
  auto key = std::make_shared<const crypto::PrivateKey>(*std::move(parsed));
  barrier_.cache_.PutParsed(k.index, aad, k.nonce, k.sealed, key);
  return key;
}

absl::Status KeyTransaction::SetKeyState(uint64_t index, KeyState state, int64_t now_ms) {
  RKL_RETURN_IF_ERROR(rows_.SetKeyState(index, state, now_ms));
  if (state == KeyState::kDeleted) barrier_.cache_.Erase(index);
  return absl::OkStatus();
}

absl::Status KeyTransaction::AddComponent(const std::string& ceremony_id,
                                          const std::string& custodian, const std::string& kcv,
                                          const crypto::SecretBytes& component, int64_t now_ms) {
  RKL_ASSIGN_OR_RETURN(KeyBarrier::Sealed sealed,
                       barrier_.Seal(component, ComponentAad(ceremony_id, custodian)));
  return rows_.InsertComponent(ceremony_id, kcv,
                               SealedComponent{.custodian = custodian,
                                               .nonce = std::move(sealed.nonce),
                                               .sealed = std::move(sealed.sealed)},
                               now_ms);
}

absl::StatusOr<std::vector<crypto::SecretBytes>> KeyTransaction::OpenComponents(
    const std::string& ceremony_id) {
  RKL_ASSIGN_OR_RETURN(std::vector<SealedComponent> rows, rows_.FindComponents(ceremony_id));
  std::vector<crypto::SecretBytes> out;
  for (const SealedComponent& c : rows) {
    std::optional<crypto::SecretBytes> component =
        barrier_.Open(c.nonce, c.sealed, ComponentAad(ceremony_id, c.custodian));
    if (!component) {
      return absl::InternalError(absl::StrCat("component of '", c.custodian, "' in ceremony ",
                                              ceremony_id, " failed its integrity check"));
    }
    out.push_back(*std::move(component));
  }
  return out;
}

}  // namespace rkl::hsm
