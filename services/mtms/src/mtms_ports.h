#pragma once
// The narrow views rkl-mtms has of its three peers: HSM #1, the CA and KMS. The core and
// the forwarder depend only on these interfaces; mtms_grpc_ports.h implements them over
// mTLS gRPC channels, and unit tests substitute fakes.
//
// Conventions every implementation follows:
//  - UNAVAILABLE means "the peer could not be reached or did not answer in time; the same
//    call may be retried" (gRPC UNAVAILABLE and DEADLINE_EXCEEDED both become UNAVAILABLE);
//  - any other error is the peer's own answer, code and message kept;
//  - nothing crossing these interfaces is clear key material: Pu is public, Ctk_Pu is
//    RSA-OAEP ciphertext, Ctk_pk is wrapped under PK and MACed under MAK.
// Implementations must be thread-safe: the gRPC handlers and the forwarder call them
// concurrently.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/key_algorithm.h"

namespace rkl::mtms {

class HsmPort {
 public:
  virtual ~HsmPort() = default;

  struct RsaKeyPair {
    uint64_t key_index = 0;  // where Pr lives inside HSM #1
    Bytes public_key_der;    // SubjectPublicKeyInfo of Pu
  };
  // S201.
  virtual absl::StatusOr<RsaKeyPair> GenerateRsaKeyPair(uint32_t bits,
                                                        const std::string& label) = 0;

  struct TranslateRequest {
    uint64_t pr_index = 0;
    Bytes ctk_pu;
    std::string sn;
    int64_t created_at_unix_ms = 0;
    uint64_t pk_index = 0;
    uint64_t mak_index = 0;
    crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128;
    // The evidence HSM #1 verifies itself before it translates (claim 4): the stored,
    // operator-signed package B, byte-exact, its signature and the operator certificate.
    Bytes package;
    Bytes package_signature;
    Bytes operator_certificate_der;
    // The package's flow (sent per item in a batch); empty: the sending thread's.
    std::string request_id;
  };
  // S106 (PROTOCOL §5): Ctk_Pu → Ctk_pk inside HSM #1, for a package an operator signed.
  // Every decryption or format failure is the HSM's one uniform UNAUTHENTICATED; missing or
  // bad evidence is UNAUTHENTICATED / PERMISSION_DENIED with its own message.
  virtual absl::StatusOr<Bytes> TranslateTransportKey(const TranslateRequest& request) = 0;
  // Many translations in one call: one answer per request, in order, each the answer
  // TranslateTransportKey gives for it; an error only when the call itself failed (then it
  // is every request's answer). The default makes one TranslateTransportKey call per
  // request (mtms_batchers.cc).
  virtual absl::StatusOr<std::vector<absl::StatusOr<Bytes>>> TranslateTransportKeys(
      std::span<const TranslateRequest> requests);
};

enum class CaIssuer { kTerminalRoot, kOperatorCa };

class CaPort {
 public:
  virtual ~CaPort() = default;

  struct IssuedCertificate {
    std::string certificate_pem;
    std::string serial_hex;
  };
  // S202–S203: the CA signs Pu under terminal-root into HsmWCRT.
  virtual absl::StatusOr<IssuedCertificate> IssueWorkCertificate(const Bytes& public_key_der,
                                                                 const std::string& hsm_id,
                                                                 uint64_t key_index) = 0;
  virtual absl::StatusOr<std::string> GetIssuerCertificate(CaIssuer issuer) = 0;
  // The issuer's current CRL as PEM (its signature and freshness are checked by the caller).
  virtual absl::StatusOr<std::string> GetCrl(CaIssuer issuer) = 0;
};

class KmsPort {
 public:
  virtual ~KmsPort() = default;

  struct Receipt {
    bool duplicate = false;  // KMS already held this exact Ctk_pk
  };
  // S107–S108. Idempotent at KMS for the same Ctk_pk.
  virtual absl::StatusOr<Receipt> SubmitTransportKey(const std::string& sn, const Bytes& ctk_pk,
                                                     const std::string& submission_id) = 0;
  struct Submission {
    std::string sn;
    Bytes ctk_pk;
    std::string submission_id;
    std::string request_id;  // the package's flow (sent per item in a batch)
  };
  // Many submissions in one call: one answer per submission, in order, each the answer
  // SubmitTransportKey gives for it; an error only when the call itself failed (then it is
  // every submission's answer). The default makes one SubmitTransportKey call per
  // submission (mtms_batchers.cc).
  virtual absl::StatusOr<std::vector<absl::StatusOr<Receipt>>> SubmitTransportKeys(
      std::span<const Submission> submissions);
};

}  // namespace rkl::mtms
