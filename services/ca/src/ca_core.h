#pragma once
// CaCore: the certificate authority's logic — bootstrap of the four issuers, issuance of HSM
// work, TR-34 KDH, operator and service certificates, revocation and CRLs (PROTOCOL §2). It knows
// nothing of gRPC; ca_grpc_service.cc adapts it, `rklctl pki init` calls Bootstrap directly.
//
// Custody (docs/pki.md "Custody"): a certificate that gives a person or a process privilege
// (service, admin:*, custodian:*, operator card) comes either from Bootstrap (`rklctl pki
// init`, offline, before any service runs) or from dual control: RequestServiceCertificate /
// RequestOperatorCertificate by one admin, then ApproveRequest by a second, distinct admin
// whose certificate this CA issued and has not revoked, before the request expires. Each
// step and each refusal is audited (ca_audit). Only HSM work certificates are signed on one
// caller's word: for `mtms` only (they certify a key that never leaves HSM #1). KDH
// certificates are asked for by `kms` only and signed only for the key the named HSM itself
// states (HsmKeySource) to be its live KDH signing key with the requested public key.
// IssueOperatorCertificate and IssueServiceCertificate are the signing steps those paths use;
// no RPC reaches them directly.
//
// Guarantees:
//  - issuer private keys exist in clear only in this process's memory, only while one
//    certificate or CRL is being signed; at rest they are sealed under the MasterKey;
//  - nothing is signed for a request that breaks a rule: identifiers, key types and sizes,
//    CSR self-signatures and validity are all checked first (INVALID_ARGUMENT naming the field);
//  - subjects and extensions come from profiles.h, never from the request's CSR;
//  - every issued certificate is recorded before it is returned; serials are 128-bit positive
//    random numbers (16 DER octets, top bit clear and next bit set, so 126 random bits and
//    always 32 hex digits), unique by database constraint (a collision is retried);
//  - not_after never exceeds the issuer's own not_after.
// Thread-safe if the repository is: CaCore holds no mutable state.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ca_repository.h"
#include "hsm_key_source.h"
#include "master_key.h"
#include "profiles.h"
#include "rkl/common/clock.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"

namespace rkl::ca {

// Validity periods and key algorithms. Defaults are the ones docs/pki.md states.
struct CaPolicy {
  std::string organization = "rkl";               // O of every subject; empty: no O attribute
  KeySpec terminal_root_key = KeySpec::kRsa3072;  // terminals verify RSA (PROTOCOL §1)
  KeySpec kdh_ca_key = KeySpec::kRsa3072;         // TR-34: terminals verify RSA here too
  KeySpec operator_ca_key = KeySpec::kEcP256;
  KeySpec service_ca_key = KeySpec::kEcP256;
  KeySpec bootstrap_leaf_key = KeySpec::kEcP256;  // service and admin keys the bootstrap writes
  int terminal_root_validity_days = 7300;         // burned into terminals: must outlive them
  int kdh_ca_validity_days = 7300;                // burned into terminals too
  int operator_ca_validity_days = 3650;
  int service_ca_validity_days = 3650;
  // Leaf defaults, which are also the ceilings: a request may ask for less, never more.
  int work_validity_days = 730;
  int kdh_validity_days = 730;
  int operator_validity_days = 365;
  int service_validity_days = 365;
  absl::Duration crl_validity = absl::Hours(7 * 24);  // nextUpdate - thisUpdate
  // notBefore is set this far in the past, so a verifier whose clock is slightly behind
  // the CA's accepts a certificate issued a moment ago.
  absl::Duration backdate = absl::Minutes(5);
  // How long a certificate request waits for its second admin before it expires.
  absl::Duration request_ttl = absl::Hours(24);
};
// INVALID_ARGUMENT naming the setting when a value is out of range.
absl::Status ValidatePolicy(const CaPolicy& policy);

// A key an HSM generated and holds, certified on its service's word: an HSM work key Pu
// (IssueWorkCertificate) or a TR-34 KDH signing key (IssueKdhCertificate).
struct HsmKeyCertificateRequest {
  Bytes public_key_der;  // SubjectPublicKeyInfo: RSA 2048-4096, e = 65537
  std::string hsm_id;
  uint64_t key_index = 0;      // the key's index inside that HSM
  uint32_t validity_days = 0;  // 0: policy default
};
using WorkCertificateRequest = HsmKeyCertificateRequest;
using KdhCertificateRequest = HsmKeyCertificateRequest;

struct OperatorCertificateRequest {
  std::string csr_pem;
  std::string operator_id;
  uint32_t validity_days = 0;
};

struct ServiceCertificateRequest {
  std::string csr_pem;
  std::string name;                    // service name or admin:<name>
  std::vector<std::string> dns_names;  // extra SANs (services only)
  uint32_t validity_days = 0;
};

// The authenticated caller of a custody step: its mTLS identity and the serial of the
// certificate it presented, both from the TLS layer (rpc::GetCallerIdentity,
// rpc::PeerCertificateSerialHex).
struct Caller {
  std::string identity;
  std::string certificate_serial_hex;
};

struct ApprovedRequest {
  CertificateRequestRecord request;
  crypto::Certificate certificate;
};

struct BootstrapRequest {
  std::vector<std::string> services = {"ca", "hsm-mtms", "hsm-kms", "mtms", "kms"};
  std::vector<std::string> extra_dns_names;  // added to every service certificate
  // The first administrators (identities admin:<name>): at least two, since every later
  // privileged certificate needs one admin to request it and another to approve it.
  std::vector<std::string> admin_names = {"admin1", "admin2"};
  // Key custodians (identities custodian:<name>); a key ceremony needs two of them.
  std::vector<std::string> custodian_names;
  std::string operator_id = "operator1";
  crypto::SecretBytes operator_pin;  // protects the operator card (PKCS#12)
  int pkcs12_iterations = crypto::Pkcs12WriteOptions{}.iterations;
};

struct KeyAndCertificate {
  std::string name;  // service name, admin:<name> or operator:<id>
  crypto::PrivateKey key;
  crypto::Certificate certificate;
};

struct BootstrapResult {
  crypto::Certificate terminal_root;
  crypto::Certificate kdh_ca;
  crypto::Certificate operator_ca;
  crypto::Certificate service_ca;
  std::vector<KeyAndCertificate> services;
  std::vector<KeyAndCertificate> admins;
  std::vector<KeyAndCertificate> custodians;
  KeyAndCertificate operator_card;
  Bytes operator_pkcs12;  // PIN-protected card: key, operator certificate, operator-ca
};

class CaCore {
 public:
  // `repository` and `master_key` are not owned and must outlive the core. `serial_source`
  // fills serial numbers (crypto::FillRandom in production). `hsm_keys` (not owned; may be
  // null: then no KDH certificate is issued) is how the core sees the keys inside HSMs.
  CaCore(CaRepository* repository, const MasterKey* master_key, CaPolicy policy, Clock clock,
         crypto::RandomSource serial_source, HsmKeySource* hsm_keys = nullptr);

  // OK when the CA is initialised under this master key. FAILED_PRECONDITION otherwise:
  // not initialised (run `rklctl pki init`), or the database records another key's KCV.
  absl::Status CheckReady();

  // Creates the four issuers and the first set of leaf certificates and records them all in
  // one transaction. FAILED_PRECONDITION if the CA is already initialised (nothing changes).
  absl::StatusOr<BootstrapResult> Bootstrap(const BootstrapRequest& request);
  // Creates one issuer an initialised CA lacks (kdh-ca, in a CA bootstrapped before it
  // existed; `rklctl pki add-issuer`, offline like the bootstrap): its key, self-signed
  // certificate and first CRL, recorded together and audited under `actor`.
  // FAILED_PRECONDITION if the CA is not initialised under this master key or already has
  // the issuer (an issuer is never replaced).
  absl::StatusOr<crypto::Certificate> AddIssuer(IssuerId issuer,
                                                const std::string& actor = "rklctl pki add-issuer");

  absl::StatusOr<crypto::Certificate> GetIssuerCertificate(IssuerId issuer);
  // CN hsm-work:<hsm_id>:<key_index>, keyEncipherment, from terminal-root. Issued on the
  // caller's word (`mtms`): the HSM is not asked (yet) whether it holds the key.
  absl::StatusOr<crypto::Certificate> IssueWorkCertificate(const WorkCertificateRequest& request);
  // TR-34: CN kdh:<hsm_id>:<key_index>, digitalSignature, from kdh-ca. FAILED_PRECONDITION
  // "kdh-ca: not bootstrapped" in a CA that lacks kdh-ca (AddIssuer makes it).
  // Only for a key the HSM itself states (hsm_keys) to be its live KDH signing key at
  // key_index with exactly the request's public key: FAILED_PRECONDITION when the CA has no
  // endpoint for hsm_id (or that endpoint answers as another HSM) or the key is superseded;
  // NOT_FOUND when the HSM has no such key; PERMISSION_DENIED when its key there is another
  // key or has another usage; UNAVAILABLE when the HSM cannot be reached. Nothing is
  // recorded for a refused request.
  absl::StatusOr<crypto::Certificate> IssueKdhCertificate(const KdhCertificateRequest& request);
  absl::StatusOr<crypto::Certificate> IssueOperatorCertificate(
      const OperatorCertificateRequest& request);
  absl::StatusOr<crypto::Certificate> IssueServiceCertificate(
      const ServiceCertificateRequest& request);

  // ---- Dual control ----
  // Records a pending request by `requester` (an admin holding a good certificate of this
  // CA, else PERMISSION_DENIED). Every rule of the issuance is checked now (INVALID_ARGUMENT
  // naming the field), so an approval signs exactly what was requested. Audited.
  absl::StatusOr<CertificateRequestRecord> RequestServiceCertificate(
      const Caller& requester, const ServiceCertificateRequest& request);
  absl::StatusOr<CertificateRequestRecord> RequestOperatorCertificate(
      const Caller& requester, const OperatorCertificateRequest& request);
  // Signs a pending request. `subject` must repeat the identity the request names, so an
  // approver approves what they think they approve. Refusals, each audited with nothing
  // else changed: PERMISSION_DENIED when the approver is not an admin holding a good
  // certificate of this CA, or made the request; FAILED_PRECONDITION when the request was
  // already approved, has expired (policy.request_ttl) or names another subject;
  // NOT_FOUND for an unknown id.
  absl::StatusOr<ApprovedRequest> ApproveRequest(const Caller& approver,
                                                 const std::string& request_id,
                                                 const std::string& subject);
  absl::StatusOr<CertificateRequestRecord> GetRequest(const std::string& request_id);
  // Newest first (at most kMaxListedRequests).
  absl::StatusOr<std::vector<CertificateRequestRecord>> ListRequests(bool pending_only);
  static constexpr int kMaxListedRequests = 500;
  // Pending and past its expiry at the core's clock.
  bool IsExpired(const CertificateRequestRecord& request) const;
  // Audits a call refused before it reached the core (authorization). Never fails: a
  // refusal stands even if its record cannot be written (logged instead).
  void RecordRefusal(const std::string& caller, std::string_view method,
                     const absl::Status& status);

  // Revokes a leaf and republishes its issuer's CRL. Allowed reasons: keyCompromise,
  // affiliationChanged, superseded, cessationOfOperation. Revoking a revoked certificate
  // returns it unchanged; issuer certificates cannot be revoked (FAILED_PRECONDITION).
  // Audited under `actor`.
  absl::StatusOr<CertificateRecord> Revoke(const std::string& serial_hex, crypto::CrlReason reason,
                                           const std::string& actor = "(unspecified)");
  // The issuer's current CRL, re-signed first if it is past half its life.
  absl::StatusOr<CrlRecord> GetCrl(IssuerId issuer);
  absl::StatusOr<CertificateRecord> GetCertificateStatus(const std::string& serial_hex);

  const CaPolicy& policy() const { return policy_; }

 private:
  struct Issuer {
    crypto::Certificate certificate;
    crypto::PrivateKey key;
  };
  struct LeafSpec {
    Profile profile;
    std::string common_name;
    crypto::PublicKey public_key;
    std::vector<std::string> dns_names;
    uint32_t validity_days;
  };

  // What a new issuer is made of, ready to record.
  struct NewIssuer {
    Issuer issuer;
    IssuerRecord record;
    CertificateRecord certificate;
    CrlRecord crl;
  };

  absl::StatusOr<Issuer> LoadIssuer(IssuerId issuer);
  // NOT_FOUND from the repository about `issuer`, told apart: the CA is not initialised, or
  // it is but lacks this issuer.
  absl::Status MissingIssuer(IssuerId issuer, const absl::Status& lookup);
  // A fresh key of the policy's type for `issuer`, its self-signed certificate (valid from
  // `now` for the policy's days) and its first, empty CRL.
  absl::StatusOr<NewIssuer> MakeIssuer(IssuerId issuer, Bytes serial, int64_t now);
  absl::StatusOr<crypto::Certificate> IssueHsmKeyCertificate(
      Profile profile, const HsmKeyCertificateRequest& request);
  // OK when HSM request.hsm_id states that its key request.key_index is a live KDH signing
  // key whose public key is `key` (IssueKdhCertificate's refusals otherwise).
  absl::Status CheckKdhKeyInHsm(const HsmKeyCertificateRequest& request,
                                const crypto::PublicKey& key);
  absl::StatusOr<CertificateRecord> RevokeUnaudited(const std::string& serial_hex,
                                                    crypto::CrlReason reason);
  absl::StatusOr<LeafSpec> ServiceLeaf(const ServiceCertificateRequest& request);
  absl::StatusOr<LeafSpec> OperatorLeaf(const OperatorCertificateRequest& request);
  // PERMISSION_DENIED unless `caller` is an admin whose presented certificate this CA issued
  // to that identity, unrevoked and unexpired.
  absl::Status CheckAdmin(const Caller& caller, const char* role);
  absl::StatusOr<CertificateRequestRecord> StoreRequest(const Caller& requester,
                                                        CertificateRequestRecord request,
                                                        const absl::StatusOr<LeafSpec>& leaf);
  void Audit(AuditRecord record);
  absl::StatusOr<crypto::Certificate> SignLeaf(const LeafSpec& spec, const Issuer& issuer,
                                               int64_t now);
  absl::StatusOr<crypto::Certificate> IssueAndRecord(const LeafSpec& spec);
  absl::StatusOr<CrlRecord> SignCrl(IssuerId issuer_id, const Issuer& issuer, uint64_t crl_number,
                                    const std::vector<RevokedEntry>& revoked, int64_t now);
  Bytes NewSerial();
  int64_t NowUnix() const;
  int DefaultValidityDays(Profile profile) const;

  CaRepository* repository_;
  const MasterKey* master_key_;
  const CaPolicy policy_;
  const Clock clock_;
  const crypto::RandomSource serial_source_;
  HsmKeySource* const hsm_keys_;
};

// The certificate record kept for `cert`.
CertificateRecord RecordOf(const crypto::Certificate& cert, IssuerId issuer, Profile profile);

// Upper-case hex SHA-256 of a CSR's SubjectPublicKeyInfo ("" if it does not parse): what a
// requester reads out to the approver so both know which key is being certified.
std::string CsrKeySha256Hex(const std::string& csr_pem);

// Upper-cases and checks a serial given by a caller: 2-40 hex digits, even length.
absl::StatusOr<std::string> NormalizeSerialHex(std::string_view serial_hex);

}  // namespace rkl::ca
