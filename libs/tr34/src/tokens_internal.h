#pragma once
// Pieces of tokens.cc that the known-answer tests reach directly. Not installed.

#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/tr34/tokens.h"

namespace rkl::tr34::internal {

// Decrypts the EncryptedContentInfo of `enveloped_data` with a known content-encryption key
// and parses the key block, skipping the key transport. The TR-34-2019 Annex B key tokens
// need it: their RSA-OAEP encryptedKey does not decrypt under the published KRD_1 key, while
// their content decrypts under the ephemeral key the annex states (tests/data/README.md).
absl::StatusOr<KeyBlock> DecryptKeyBlockWithContentKey(std::span<const uint8_t> enveloped_data,
                                                       const crypto::SecretBytes& cek);

// Parses a DER key block (SEQUENCE { version, kdh id, key, header attribute }).
absl::StatusOr<KeyBlock> ParseKeyBlock(const crypto::SecretBytes& der);

}  // namespace rkl::tr34::internal

namespace rkl::tr34::internal {

// A SignedData ContentInfo with one SignerInfo (version 1, issuerAndSerialNumber, SHA-256,
// rsaEncryption) over `econtent` of type `econtent_type` (an OID's DER encoding), whose
// signed attributes are contentType, messageDigest and `extra_attributes` (DER Attributes),
// in DER SET OF order, followed by `crls`. RSA PKCS#1 v1.5 signatures are deterministic, so
// the Annex B tokens can be rebuilt byte for byte from their content and the sample keys.
absl::StatusOr<Bytes> BuildSignedToken(std::span<const uint8_t> econtent_type,
                                       std::span<const uint8_t> econtent,
                                       std::vector<Bytes> extra_attributes, const CertId& signer,
                                       const crypto::PrivateKey& signer_key,
                                       std::span<const Bytes> crls);

// The same with no signed attributes: the signature covers `econtent`, of type id-data.
absl::StatusOr<Bytes> BuildSignedTokenWithoutAttributes(std::span<const uint8_t> econtent,
                                                        const CertId& signer,
                                                        const crypto::PrivateKey& signer_key);

// The DER of id-envelopedData, the content type a key token signs.
std::span<const uint8_t> EnvelopedDataOid();

// Attribute { id-data, SET { OCTET STRING header } } and { randomNonce, ... }.
Bytes KeyBlockHeaderAttribute(std::string_view header);
Bytes RandomNonceAttribute(std::span<const uint8_t> nonce);

}  // namespace rkl::tr34::internal
