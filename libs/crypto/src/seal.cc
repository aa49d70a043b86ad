#include "rkl/crypto/seal.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/crypto/aead.h"

namespace rkl::crypto {

static_assert(SealingKey::kKekSize == kAeadKeySize);
static_assert(SealingKey::kOverhead == kAeadNonceSize + kAeadTagSize);

absl::StatusOr<SealingKey> SealingKey::Create(SecretBytes kek, RandomSource random) {
  if (kek.size() != kKekSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("sealing key: must be 32 bytes, got ", kek.size()));
  }
  if (!random) return absl::InvalidArgumentError("sealing key: no random source");
  return SealingKey(std::move(kek), std::move(random));
}

absl::StatusOr<Bytes> SealingKey::Seal(std::span<const uint8_t> aad,
                                       const SecretBytes& plaintext) const {
  return AeadSeal(kek_, plaintext, aad, random_);
}

absl::StatusOr<SecretBytes> SealingKey::Open(std::span<const uint8_t> aad,
                                             std::span<const uint8_t> sealed) const {
  return AeadOpen(kek_, sealed, aad);
}

}  // namespace rkl::crypto
