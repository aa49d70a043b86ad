#include "rkl/crypto/kdf.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "rkl/common/hex.h"
#include "rkl/common/status_macros.h"
#include "rkl/crypto/cmac.h"

namespace rkl::crypto {

absl::StatusOr<SecretBytes> KdfCounterCmac(CipherFamily family, const SecretBytes& key,
                                           std::span<const uint8_t> label,
                                           std::span<const uint8_t> context, size_t length_bits) {
  if (length_bits == 0 || length_bits % 8 != 0 || length_bits > 0xFFFF) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KDF: output length ", length_bits, " bits must be a positive multiple of 8 below 65536"));
  }
  const size_t out_len = length_bits / 8;
  const size_t prf_len = CmacSize(family);
  const size_t blocks = (out_len + prf_len - 1) / prf_len;
  if (blocks > 0xFF) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KDF: ", length_bits, " bits needs more than 255 blocks of the 1-byte counter"));
  }

  // The fixed input is public (label and context are identifiers), so a plain buffer is fine.
  Bytes input;
  input.reserve(1 + label.size() + 1 + context.size() + 2);
  input.push_back(0);  // counter, set per block below
  input.insert(input.end(), label.begin(), label.end());
  input.push_back(0x00);
  input.insert(input.end(), context.begin(), context.end());
  input.push_back(static_cast<uint8_t>(length_bits >> 8));
  input.push_back(static_cast<uint8_t>(length_bits));

  SecretBytes out(out_len);
  auto dst = out.RevealSecretMutable();
  for (size_t i = 1; i <= blocks; ++i) {
    input[0] = static_cast<uint8_t>(i);
    RKL_ASSIGN_OR_RETURN(SecretBytes k_i, CmacToSecret(family, key, input));
    const size_t offset = (i - 1) * prf_len;
    const size_t take = std::min(prf_len, out_len - offset);
    std::copy_n(k_i.RevealSecret().begin(), take, dst.begin() + offset);
  }
  return out;
}

absl::StatusOr<SecretBytes> KdfCounterCmac(CipherFamily family, const SecretBytes& key,
                                           std::string_view label, std::string_view context,
                                           size_t length_bits) {
  return KdfCounterCmac(family, key, AsBytes(label), AsBytes(context), length_bits);
}

}  // namespace rkl::crypto
