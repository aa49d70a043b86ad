#pragma once
// The terminal manufacturer's KRD CA (TR-34 CA_KRD): an RSA-3072 self-signed CA whose key
// lives in a PIN-protected PKCS#12 "card" (`rkl-pos krd-ca init`), and the KRD certificates
// it issues to terminals at manufacture (subject CN = the SN, keyUsage keyEncipherment
// critical, CA:FALSE, RSA-2048 device key made inside the terminal's secure module).
//
// Guarantees: the CA's private key exists only in the PKCS#12 (PBES2, crypto/pkcs12.h) and
// in memory while a command runs; init never overwrites an existing CA; a card that does not
// hold a CA certificate matching its key is refused.
// Stateless free functions; thread-safe.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"

namespace rkl::pos {

inline constexpr char kKrdCaCardFile[] = "krd-ca.p12";
inline constexpr char kKrdCaCertificateFile[] = "krd-ca.pem";
inline constexpr char kDefaultKrdCaName[] = "krd-ca";
inline constexpr int kKrdCaKeyBits = 3072;
inline constexpr int kKrdDeviceKeyBits = 2048;
inline constexpr int64_t kTwentyYears = int64_t{20} * 365 * 86400 + 5 * 86400;

struct KrdCa {
  crypto::PrivateKey key;
  crypto::Certificate cert;
};

// A fresh CA: RSA-3072, CN `name`, valid 20 years from `now`, CA:TRUE pathlen 0 critical,
// keyUsage keyCertSign + cRLSign critical, SKI/AKI.
absl::StatusOr<KrdCa> CreateKrdCa(std::string_view name, int64_t now_unix_s);

// Writes DIR/krd-ca.p12 (mode 0600, PIN-protected) and DIR/krd-ca.pem (the certificate).
// ALREADY_EXISTS, and nothing written, when either file exists.
absl::Status WriteKrdCa(const std::string& dir, const KrdCa& ca, const crypto::SecretBytes& pin,
                        const crypto::Pkcs12WriteOptions& options = {});

// Opens a KRD CA card. UNAUTHENTICATED for a wrong PIN (pkcs12.h); FAILED_PRECONDITION
// "krd-ca-card: ..." when its certificate is not a CA that may sign certificates.
absl::StatusOr<KrdCa> OpenKrdCaCard(std::span<const uint8_t> p12, const crypto::SecretBytes& pin);

// The KRD certificate of terminal `sn` for `device_key`: validity 20 years from `now`,
// capped by the CA's notAfter.
absl::StatusOr<crypto::Certificate> IssueKrdCertificate(const KrdCa& ca, std::string_view sn,
                                                        const crypto::PublicKey& device_key,
                                                        int64_t now_unix_s);

}  // namespace rkl::pos
