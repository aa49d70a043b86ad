#pragma once
// Test doubles for the simulator's unit tests: a throwaway terminal PKI (terminal-root,
// HsmWCRT, operator card, and the bad certificates the terminal must refuse), an in-memory
// MTMS that really decrypts Ctk_Pu with Pr and forwards TEK/AUK to an in-memory KMS, and a
// KMS that really runs PROTOCOL §7/§8 (rkl::protocol + rkl::keyblock) — with switches that
// make it misbehave (cannot prove AUK, tampered MAC, wrong header, wrong KC, ...). Both are
// also served over real gRPC with TLS (FakeServers). Thread-safe.

#include <grpcpp/impl/codegen/service_type.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "krd_ca.h"
#include "ports.h"
#include "rkl/crypto/key_algorithm.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"
#include "rkl/rpc/server.h"
#include "rkl/testing/test_pki.h"
#include "secure_module.h"
#include "terminal.h"

namespace rkl::pos::testing {

inline constexpr char kTestPin[] = "2468-test-pin";
inline constexpr char kOperatorId[] = "alice";

// Certificates and keys of one test world. Create() is slow-ish (RSA keys): share it.
struct TerminalPki {
  static const TerminalPki& Get();

  crypto::PrivateKey root_key;
  crypto::Certificate root;     // HsmRCRT
  crypto::PrivateKey work_key;  // Pr
  crypto::Certificate work;     // HsmWCRT
  // Refused work certificates (all for work_key's public key).
  crypto::Certificate work_other_issuer;
  crypto::Certificate work_wrong_usage;
  crypto::Certificate work_not_critical;
  crypto::Certificate work_expired;
  crypto::Certificate other_root;
  // A valid work certificate for another key (HSM #1 renewed its work key).
  crypto::PrivateKey renewed_work_key;
  crypto::Certificate renewed_work;
  // Operator card.
  crypto::Certificate operator_ca;
  crypto::PrivateKey operator_key;
  crypto::Certificate operator_cert;
  Bytes operator_p12;  // PIN kTestPin
};

// The TR-34 side of a test world: kdh-ca with its CRLs, the KDH (a real RSA key, tokens
// built with rkl::tr34), the certificates a KRD must refuse as a KDH, and a KRD CA for
// manufacturing test terminals. Built once; relative to the real clock.
struct KdhWorld {
  static const KdhWorld& Get();

  crypto::PrivateKey kdh_ca_key;
  crypto::Certificate kdh_ca;
  crypto::PrivateKey kdh_key;
  crypto::Certificate kdh;        // role KDH under kdh_ca
  Bytes crl;                      // current kdh-ca CRL, lists nobody
  Bytes revoked_crl;              // current kdh-ca CRL listing kdh
  Bytes stale_crl;                // kdh-ca CRL whose nextUpdate has passed
  crypto::Certificate other_kdh;  // another valid KDH under kdh_ca (same key)
  crypto::PrivateKey other_ca_key;
  crypto::Certificate other_ca;       // same name as kdh_ca, another key
  crypto::Certificate kdh_other_ca;   // a "KDH" certificate issued by other_ca
  Bytes other_ca_crl;                 // other_ca's current CRL
  KrdCa krd_ca;                       // the manufacturer's KRD CA
  crypto::Certificate krd_role_cert;  // a KRD certificate (keyEncipherment) under krd_ca
  crypto::PrivateKey other_krd_key;
  crypto::Certificate other_krd;  // another terminal's KRD certificate
  Bytes krd_ca_p12;               // krd_ca as a card, PIN kTestPin
  KrdFactory Factory() const { return KrdFactory{&kdh_ca, &krd_ca}; }
};

// How the fake KMS misbehaves on the TR-34 RPCs.
enum class Tr34Misbehaviour {
  kNone,
  kRevokedKdh,          // CT_KDH's CRL lists the KDH
  kNoCrl,               // CT_KDH carries no CRL
  kStaleCrl,            // CT_KDH's CRL is past its nextUpdate
  kKdhFromOtherCa,      // CT_KDH: a KDH certificate from another CA of the same name
  kKrdCertAsKdh,        // CT_KDH: a KRD-role certificate
  kOtherKdh,            // CT_KDH: another valid KDH than the one bound
  kTwoKdhCertificates,  // CT_KDH: the KDH certificate and another one
  kWrongTmkLength,      // an AES-256 TMK under the AES TMK header for an AES-128 terminal
  kRevokedInToken,      // the key token's CRL lists the KDH
  kReplayToken,         // RequestKeyToken answers with the previous token of the SN
  kWrongNonce,          // the token carries another random number
  kOtherKrd,            // the token is addressed to another KRD
  kTamperEnvelope,      // a byte of the EnvelopedData flipped
  kTamperSignature,     // a byte of the signature flipped
  kHeaderMismatch,      // the key block header of the other cipher family
  kKcvMismatch,         // tmk_kcv differs from the TMK's
  kRejectConfirmation,  // ConfirmKeyToken answers UNAVAILABLE (KMS did nothing)
};

enum class KmsMisbehaviour {
  kNone,
  kCannotProveAuk,      // Crnd1 under a wrong key
  kBadMac,              // key block MAC altered
  kBadHeader,           // valid MAC, but exportability 'E'
  kBadKc,               // valid MAC, KC block of another key
  kWrongTmkAlgorithm,   // AES-256 TMK for an AES-128 terminal
  kWrongKcvField,       // response tmk_kcv differs from the block's KC
  kRejectConfirmation,  // ConfirmInstallation fails
};

class FakeKms final : public KmsTerminalPort, public KmsTr34Port, public KmsAdminPort {
 public:
  void set_tr34_misbehaviour(Tr34Misbehaviour m) {
    absl::MutexLock l(&mu_);
    tr34_misbehaviour_ = m;
  }
  // Called at the start of every RequestKeyToken (the terminal has committed its random
  // number by then): tests snapshot the secure module there.
  void set_on_key_token_request(std::function<void(const std::string& sn)> hook) {
    absl::MutexLock l(&mu_);
    on_key_token_request_ = std::move(hook);
  }
  int key_token_calls() {
    absl::MutexLock l(&mu_);
    return key_token_calls_;
  }
  int confirm_key_token_calls() {
    absl::MutexLock l(&mu_);
    return confirm_key_token_calls_;
  }
  absl::StatusOr<Bytes> GetKdhCredential(const std::string& sn) override;
  absl::StatusOr<KeyTokenDelivery> RequestKeyToken(const std::string& sn, const Bytes& ct_krd,
                                                   const Bytes& rt_krd,
                                                   crypto::KeyAlgorithm algorithm) override;
  absl::StatusOr<std::string> ConfirmKeyToken(const std::string& sn, const Bytes& proof) override;

  // What MTMS forwards (S107–S108), already unwrapped (the fake skips HSM #2).
  void Ingest(const std::string& sn, crypto::KeyAlgorithm algorithm, crypto::SecretBytes tek,
              crypto::SecretBytes auk);
  void set_misbehaviour(KmsMisbehaviour m) {
    absl::MutexLock l(&mu_);
    misbehaviour_ = m;
  }
  // BeginAuthentication answers NOT_FOUND this many more times per SN after Ingest.
  void set_forwarding_delay(int begin_calls) {
    absl::MutexLock l(&mu_);
    forwarding_delay_ = begin_calls;
  }
  // The TMK KMS generated for `sn` (test oracle).
  crypto::SecretBytes TmkOf(const std::string& sn);
  // Forgets `sn`'s TMK: the next delivery carries a new one (KMS and terminal disagree).
  void ForgetTmk(const std::string& sn);
  std::string StateOf(const std::string& sn) {
    absl::MutexLock l(&mu_);
    return terminals_.at(sn).state;
  }
  int confirm_calls() {
    absl::MutexLock l(&mu_);
    return confirm_calls_;
  }
  int begin_calls() {
    absl::MutexLock l(&mu_);
    return begin_calls_;
  }

  // The wait of every BeginAuthentication call, in order.
  std::vector<absl::Duration> begin_waits() {
    absl::MutexLock l(&mu_);
    return begin_waits_;
  }

  absl::StatusOr<AuthChallenge> BeginAuthentication(const std::string& sn, const Bytes& rnd1,
                                                    absl::Duration wait) override;
  absl::StatusOr<KeyDelivery> CompleteAuthentication(const std::string& session_id,
                                                     const std::string& sn,
                                                     const Bytes& crnd2) override;
  absl::StatusOr<std::string> ConfirmInstallation(const std::string& session_id,
                                                  const std::string& sn,
                                                  const Bytes& proof) override;
  absl::StatusOr<KmsTerminalView> GetTerminal(const std::string& sn) override;
  absl::StatusOr<std::vector<KmsTerminalView>> ListTerminals(const std::string& sn_prefix) override;

 private:
  struct Record {
    crypto::KeyAlgorithm algorithm;
    crypto::SecretBytes tek, auk, tmk;
    std::string tmk_kcv;
    std::string state = "TERMINAL_STATE_TK_RECEIVED";
    int not_found_remaining = 0;
    // TR-34.
    Bytes tr34_nonce;  // of the last token issued
    Bytes last_token;
    std::string last_kcv;
  };
  struct Session {
    std::string sn;
    Bytes rnd1, rnd2;
    bool completed = false;
  };
  absl::Mutex mu_;
  std::map<std::string, Record> terminals_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Session> sessions_ ABSL_GUARDED_BY(mu_);
  KmsMisbehaviour misbehaviour_ ABSL_GUARDED_BY(mu_) = KmsMisbehaviour::kNone;
  int forwarding_delay_ ABSL_GUARDED_BY(mu_) = 0;
  int begin_calls_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<absl::Duration> begin_waits_ ABSL_GUARDED_BY(mu_);
  int confirm_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int next_session_ ABSL_GUARDED_BY(mu_) = 0;
  Tr34Misbehaviour tr34_misbehaviour_ ABSL_GUARDED_BY(mu_) = Tr34Misbehaviour::kNone;
  std::function<void(const std::string&)> on_key_token_request_ ABSL_GUARDED_BY(mu_);
  int key_token_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int confirm_key_token_calls_ ABSL_GUARDED_BY(mu_) = 0;
};

class FakeMtms final : public MtmsPort {
 public:
  // Serves `work` (signed by the TerminalPki root unless another is set) and forwards
  // accepted packages to `kms`.
  explicit FakeMtms(FakeKms& kms) : kms_(kms) {}
  void set_work_certificate(const crypto::Certificate& cert) {
    absl::MutexLock l(&mu_);
    work_override_ = cert.ToPem();
  }
  int submissions() {
    absl::MutexLock l(&mu_);
    return submissions_;
  }

  absl::StatusOr<WorkCertificateBundle> GetWorkCertificate() override;
  absl::StatusOr<SubmissionReceipt> SubmitTransportKey(
      const Bytes& package, const Bytes& signature,
      const std::string& operator_certificate_pem) override;
  // Not modelled: the in-memory MTMS forwards at once and keeps no submissions.
  absl::StatusOr<SubmissionView> GetOwnSubmission(const Bytes&, const Bytes&,
                                                  const std::string&) override {
    return absl::UnimplementedError("FakeMtms keeps no submissions");
  }

 private:
  FakeKms& kms_;
  absl::Mutex mu_;
  std::string work_override_ ABSL_GUARDED_BY(mu_);
  int submissions_ ABSL_GUARDED_BY(mu_) = 0;
};

// The x-request-id each call to the fakes' gRPC services arrived with, in order.
class CallLog {
 public:
  struct Call {
    std::string method;  // "SubmitTransportKey"
    std::string request_id;
  };
  void Add(std::string method, std::string request_id) {
    absl::MutexLock lock(&mu_);
    calls_.push_back({std::move(method), std::move(request_id)});
  }
  std::vector<Call> calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  void Clear() {
    absl::MutexLock lock(&mu_);
    calls_.clear();
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<Call> calls_ ABSL_GUARDED_BY(mu_);
};

// Both fakes behind real gRPC servers on 127.0.0.1:0 with TLS from a TestPki
// (server-authenticated for terminals; admin RPCs need an admin:* client certificate).
class FakeServers {
 public:
  static absl::StatusOr<std::unique_ptr<FakeServers>> Start();
  ~FakeServers();

  FakeKms& kms() { return kms_; }
  FakeMtms& mtms() { return mtms_; }
  // The terminal-facing calls (MTMS GetWorkCertificate and SubmitTransportKey, KMS
  // Begin/CompleteAuthentication and ConfirmInstallation) with their request ids.
  CallLog& calls() { return calls_; }
  std::string mtms_target() const;
  std::string kms_target() const;
  rkl::testing::TestPki& pki() { return *pki_; }
  const rpc::TlsFiles& admin_tls() const { return admin_tls_; }

 private:
  FakeServers() : mtms_(kms_) {}
  FakeKms kms_;
  FakeMtms mtms_;
  CallLog calls_;
  std::unique_ptr<rkl::testing::TestPki> pki_;
  rpc::TlsFiles admin_tls_;
  std::unique_ptr<grpc::Service> mtms_service_;
  std::unique_ptr<grpc::Service> kms_service_;
  std::unique_ptr<rpc::Server> mtms_server_;
  std::unique_ptr<rpc::Server> kms_server_;
};

// Test-only view of a secure module's clear keys, to search outputs for them.
struct RevealedKeys {
  Bytes tek, auk, tmk, device_key;
  Bytes krd_private_key;  // TR-34: the KRD's RSA private key, PKCS#1 RSAPrivateKey DER
};

}  // namespace rkl::pos::testing

namespace rkl::pos {
// Friend of SecureModule (see secure_module.h); exists only in the test target.
class SecureModuleTestPeer {
 public:
  static testing::RevealedKeys RevealKeysForTest(const SecureModule& module);
};
}  // namespace rkl::pos

namespace rkl::pos::testing {
// A fresh temporary directory, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Reads a file for byte-identity checks.
Bytes FileBytes(const std::string& path);

inline Clock RealClock() { return SystemClock(); }
}  // namespace rkl::pos::testing
