#pragma once
// ANSI X9 TR-34-2019 tokens as CMS (RFC 5652) structures, DER on the wire: the KRD random
// number token (RT_KRD), the credential tokens (CT_KRD, CT_KDH), the one- and two-pass key
// tokens, the KDH and CA unbind tokens and the KDH and CA rebind tokens, with the checks the
// KRD makes before it accepts a key. Builders are the KDH's side (to run inside HSM #2),
// Receive*/Verify*/Check* the KRD's.
//
// Guarantees:
//  - a clear TMK exists only as crypto::SecretBytes (KeyBlock::key); the decrypted key block
//    and the ephemeral content-encryption key are held in SecretBytes too, and no error
//    message carries key bytes or decrypted bytes;
//  - a key token is accepted (Receive*KeyToken) only when the KDH's signature over the signed
//    attributes verifies, the messageDigest and contentType attributes match the content,
//    the random number (two-pass) or signing time (one-pass) is the expected one, the
//    EnvelopedData is addressed to this KRD (issuer and serial), the key block names the
//    signing KDH and carries the signed key block header;
//  - certificate roles are told apart by the CA that issued them (see CheckRole), so a KRD
//    certificate never passes as a KDH one, or the reverse.
// Not checked here: the KDH's revocation (the caller runs CheckKdhNotRevoked on the CRLs that
// come with CT_KDH and the key token) and replay of a one-pass token within its window (the
// caller keeps the last accepted signing time).
// Parsing uses OpenSSL's CMS API (d2i_CMS_ContentInfo, signer and attribute accessors),
// except for EnvelopedData and the key block, read by hand so that the content-encryption
// key and the decrypted key block stay in SecretBytes.
// Builders compose DER by hand: OpenSSL's CMS signing adds a signingTime read from the wall
// clock to every SignerInfo, which the two-pass token must not carry, and its OAEP parameters
// and attribute sets cannot be made to follow the standard's encodings exactly.
// Stateless free functions; thread-safe.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"

namespace rkl::tr34 {

// A certificate named as TR-34 names KDHs and KRDs: the DER IssuerAndSerialNumber.
struct CertId {
  Bytes der;
  friend bool operator==(const CertId&, const CertId&) = default;
};
absl::StatusOr<CertId> CertIdOf(const crypto::Certificate& cert);

// The two TR-34 roles. rkl keeps a separate CA for each (CA_KDH, CA_KRD), so a certificate's
// role is the CA that issued it: CheckRole accepts `cert` for `role` only if its issuer name
// is `role_ca`'s subject, its signature verifies under `role_ca`'s key, it is not a CA, and its
// keyUsage allows the role's operation (digitalSignature for a KDH, keyEncipherment for a
// KRD). A KRD certificate presented with CA_KDH fails on the issuer. FAILED_PRECONDITION.
enum class Role { kKdh, kKrd };
absl::Status CheckRole(const crypto::Certificate& cert, Role role,
                       const crypto::Certificate& role_ca);

// A peer's identity and public key: the KDH whose signature a KRD checks, or the KRD a KDH
// encrypts to.
struct PeerKey {
  CertId id;
  crypto::PublicKey key;
};
// CheckRole, then the certificate's id and key.
absl::StatusOr<PeerKey> PeerFromCertificate(const crypto::Certificate& cert, Role role,
                                            const crypto::Certificate& role_ca);

// The KRD's check of the KDH CA's CRL that comes with CT_KDH and the key tokens: among
// `crls` one is issued and signed by `ca_kdh` and current at `now` (lastUpdate <= now <=
// nextUpdate), and it does not list `kdh_cert`. FAILED_PRECONDITION "revoked" for a listed
// KDH, FAILED_PRECONDITION for no usable CRL (a KRD cannot tell a revoked KDH from one whose
// CRL was withheld, so it refuses both).
absl::Status CheckKdhNotRevoked(const crypto::Certificate& kdh_cert, std::span<const Bytes> crls,
                                const crypto::Certificate& ca_kdh, int64_t now);

// ---- RT_KRD: the KRD's random number, an Attribute { randomNonce, SET { OCTET STRING } } ----
inline constexpr size_t kMinNonceSize = 8;
absl::StatusOr<Bytes> BuildRandomNumberToken(std::span<const uint8_t> nonce);
absl::StatusOr<Bytes> ParseRandomNumberToken(std::span<const uint8_t> token);

// ---- CT_KRD / CT_KDH: degenerate SignedData (no signer) carrying certificates and CRLs ----
struct CredentialToken {
  std::vector<crypto::Certificate> certificates;
  std::vector<Bytes> crls;  // DER CertificateList
};
absl::StatusOr<Bytes> BuildCredentialToken(std::span<const crypto::Certificate> certificates,
                                           std::span<const Bytes> crls = {});
absl::StatusOr<CredentialToken> ParseCredentialToken(std::span<const uint8_t> token);

// ---- key block and key tokens ----

// The TR-34 key block the EnvelopedData carries: version 1, the KDH's id, the key, and the
// key block header (a TR-31 style header such as "A0256K0TB00E0000").
struct KeyBlock {
  CertId kdh_id;
  crypto::SecretBytes key;
  std::string header;
};

// What the KDH builds a key token from. Exactly one of krd_nonce (two-pass: the KRD's random
// number from RT_KRD) and signing_time (one-pass, unix seconds) is set. The TMK is a TDES key
// (16 or 24 bytes, encrypted under an ephemeral TDES key) or an AES key (16, 24 or 32 bytes,
// under an ephemeral AES key of the same size).
struct KeyTokenRequest {
  CertId kdh_id;
  const crypto::PrivateKey* kdh_key = nullptr;
  PeerKey krd;
  crypto::CipherFamily tmk_family = crypto::CipherFamily::kAes;
  const crypto::SecretBytes* tmk = nullptr;
  std::string header;
  std::optional<Bytes> krd_nonce;
  std::optional<int64_t> signing_time;
  std::vector<Bytes> crls;  // the KDH CA's CRL, as TR-34 sends it with the token
};
absl::StatusOr<Bytes> BuildKeyToken(const KeyTokenRequest& request);

// A key token taken apart, nothing verified yet.
struct KeyToken {
  CertId signer;
  std::optional<Bytes> krd_nonce;
  std::optional<int64_t> signing_time;
  std::string header;    // from the signed attributes
  Bytes enveloped_data;  // DER EnvelopedData
  std::vector<Bytes> crls;
};
absl::StatusOr<KeyToken> ParseKeyToken(std::span<const uint8_t> token);

// Checks the one SignerInfo of a signed token (key token, unbind token): signer id, SHA-256,
// contentType and messageDigest attributes, and the RSA signature over the signed attributes.
// UNAUTHENTICATED on a bad signature.
absl::Status VerifySignedToken(std::span<const uint8_t> token, const PeerKey& signer);

// Decrypts an EnvelopedData addressed to `own_id` with `own_key` and parses the key block.
// PERMISSION_DENIED when it is addressed to another KRD; one UNAUTHENTICATED message for every
// decryption or padding failure.
absl::StatusOr<KeyBlock> DecryptKeyBlock(std::span<const uint8_t> enveloped_data,
                                         const CertId& own_id, const crypto::PrivateKey& own_key);

// The KRD's whole check of a two-pass key token (see the guarantees above).
absl::StatusOr<KeyBlock> ReceiveTwoPassKeyToken(std::span<const uint8_t> token, const PeerKey& kdh,
                                                std::span<const uint8_t> own_nonce,
                                                const CertId& own_id,
                                                const crypto::PrivateKey& own_key);
// The same for a one-pass token: its signing time must lie in [now - max_age, now + max_skew].
absl::StatusOr<KeyBlock> ReceiveOnePassKeyToken(std::span<const uint8_t> token, const PeerKey& kdh,
                                                int64_t now, int64_t max_age, int64_t max_skew,
                                                const CertId& own_id,
                                                const crypto::PrivateKey& own_key);

// ---- KDH unbind token: SignedData by the KDH over id-data { KRD id }, with the KRD's
// random number as a signed attribute and the KDH CA's CRL ----
struct UnbindToken {
  CertId signer;
  CertId krd_id;
  std::optional<Bytes> krd_nonce;
  std::vector<Bytes> crls;
};
absl::StatusOr<UnbindToken> ParseKdhUnbindToken(std::span<const uint8_t> token);
absl::StatusOr<Bytes> BuildKdhUnbindToken(const CertId& kdh_id, const crypto::PrivateKey& kdh_key,
                                          const CertId& krd_id, std::span<const uint8_t> krd_nonce,
                                          std::span<const Bytes> crls);

// ---- CA unbind token: SignedData by the KRD's CA (no signed attributes) over id-data
// { KRD id, KDH id }, telling the KRD to forget its KDH ----
struct CaUnbindToken {
  CertId signer;
  CertId krd_id;
  CertId kdh_id;
};
absl::StatusOr<CaUnbindToken> ParseCaUnbindToken(std::span<const uint8_t> token);
absl::StatusOr<Bytes> BuildCaUnbindToken(const CertId& ca_krd_id,
                                         const crypto::PrivateKey& ca_krd_key, const CertId& krd_id,
                                         const CertId& kdh_id);

// ---- rebind tokens: a new KDH certificate for a KRD, as a degenerate SignedData carrying
// the KRD's id (and, from the CA, the old KDH's id), signed by the current KDH with the KRD's
// random number (KDH rebind) or by the KRD's CA with a signing time (CA rebind) ----
struct RebindToken {
  CertId signer;
  CertId krd_id;
  std::optional<CertId> old_kdh_id;  // CA rebind only
  crypto::Certificate new_kdh;
  std::optional<Bytes> krd_nonce;       // KDH rebind
  std::optional<int64_t> signing_time;  // CA rebind
  std::vector<Bytes> crls;
};
absl::StatusOr<RebindToken> ParseRebindToken(std::span<const uint8_t> token);
absl::StatusOr<Bytes> BuildKdhRebindToken(const CertId& kdh_id, const crypto::PrivateKey& kdh_key,
                                          const CertId& krd_id, const crypto::Certificate& new_kdh,
                                          std::span<const uint8_t> krd_nonce,
                                          std::span<const Bytes> crls);
absl::StatusOr<Bytes> BuildCaRebindToken(const CertId& ca_krd_id,
                                         const crypto::PrivateKey& ca_krd_key, const CertId& krd_id,
                                         const CertId& old_kdh_id,
                                         const crypto::Certificate& new_kdh, int64_t signing_time);

}  // namespace rkl::tr34
