#pragma once
// SealingKey: a key-encryption key (KEK) that seals secret records at rest. The CA seals its
// issuers' private keys under its master key with one, a POS secure module seals its state
// under its device key; a key store seals each of its rows under one SealingKey, with an AAD
// of its own per row.
//
// Sealed layout (public; one stored value):
//     nonce (12 bytes, drawn from the key's RandomSource) ‖ ciphertext (as long as the
//     plaintext) ‖ tag (16)
// = AES-256-GCM(KEK, nonce, plaintext, AAD), the layout of aead.h: a record sealed by
// AeadSeal opens here and the other way round, so files and rows written before SealingKey
// existed still open. The layout has no version byte; a different layout would need a new
// type and a migration of every stored record, not a flag.
// The AAD is not stored: the caller rebuilds it from what the record belongs to (an issuer
// and its certificate, a terminal's SN, a key's row), so a record moved to another owner
// does not open.
//
// Guarantees:
//  - the KEK is checked once, by Create (32 bytes), and never leaves the object: there is no
//    accessor, and no error names a byte of it or of a plaintext;
//  - Open refuses a record shorter than nonce + tag with INVALID_ARGUMENT (its length is
//    public); anything else that does not authenticate (another KEK, another AAD, a changed
//    or missing byte) is one UNAUTHENTICATED status with no detail of which check failed;
//  - random 96-bit nonces: keep the number of seals under one KEK well below 2^32.
// Move-only, so the KEK is not copied by accident. Const use from several threads is safe
// when the RandomSource is (FillRandom is).

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/secret_bytes.h"

namespace rkl::crypto {

class SealingKey {
 public:
  static constexpr size_t kKekSize = 32;
  // Bytes a sealed record adds to its plaintext: nonce and tag.
  static constexpr size_t kOverhead = 12 + 16;

  // INVALID_ARGUMENT unless `kek` is 32 bytes. Nonces come from `random`; production passes
  // FillRandom (the default), tests a deterministic source.
  static absl::StatusOr<SealingKey> Create(SecretBytes kek, RandomSource random = FillRandom);

  SealingKey(SealingKey&&) noexcept = default;
  SealingKey& operator=(SealingKey&&) noexcept = default;
  SealingKey(const SealingKey&) = delete;
  SealingKey& operator=(const SealingKey&) = delete;

  // nonce ‖ ciphertext ‖ tag, kOverhead bytes longer than `plaintext`.
  absl::StatusOr<Bytes> Seal(std::span<const uint8_t> aad, const SecretBytes& plaintext) const;
  // The plaintext of `sealed`, if it was sealed under this KEK with this `aad`.
  absl::StatusOr<SecretBytes> Open(std::span<const uint8_t> aad,
                                   std::span<const uint8_t> sealed) const;

 private:
  SealingKey(SecretBytes kek, RandomSource random)
      : kek_(std::move(kek)), random_(std::move(random)) {}

  SecretBytes kek_;
  RandomSource random_;
};

}  // namespace rkl::crypto
