#pragma once
// Test doubles for rkl-mtms, with real cryptography behind fake transports:
//  - TestAuthority signs real X.509 certificates and CRLs (terminal-root, operator-ca);
//  - FakeCa / FakeHsm / FakeKms implement the ports in memory (FakeHsm really decrypts
//    Ctk_Pu with OAEP and builds Ctk_pk per PROTOCOL §5, so an SN swap really fails);
//  - the Test*Service classes put the same fakes behind real gRPC services, so the gRPC
//    ports and mTLS are exercised too;
//  - InMemoryRepository is the in-memory MtmsRepository the unit tests run on;
//  - OperatorTerminal builds and signs packages as an operator terminal would.
// Test-only; not thread-safe unless stated.

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "mtms_core.h"
#include "mtms_ports.h"
#include "mtms_repository.h"
#include "rkl/common/clock.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/secret_bytes.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/rpc/identity.h"
#include "rkl/testing/fake_clock.h"
#include "rkl/testing/memory_refusal_counts.h"
#include "rkl/testing/wait.h"
#include "rkl/v1/ca.grpc.pb.h"
#include "rkl/v1/hsm.grpc.pb.h"
#include "rkl/v1/kms.grpc.pb.h"
#include "rkl/v1/mtms.pb.h"

namespace rkl::mtms::testing {

// 2026-01-01T00:00:00Z: tests never read the real clock for protocol decisions.
inline constexpr int64_t kT0Ms = 1767225600000;

// rkl::testing::FakeClock, starting at kT0Ms.
class FakeClock final : public rkl::testing::FakeClock {
 public:
  explicit FakeClock(int64_t now_ms = kT0Ms) : rkl::testing::FakeClock(now_ms) {}
};

struct OperatorCard {
  std::string operator_id;
  crypto::PrivateKey key;
  crypto::Certificate certificate;
};

// Thread-safe.
class TestAuthority {
 public:
  static std::unique_ptr<TestAuthority> Create(const Clock& clock);

  const crypto::Certificate& terminal_root() const { return terminal_root_; }
  const crypto::Certificate& operator_ca() const { return operator_ca_; }

  // CN "operator:<cn_id>"; valid from now-1h until now+`validity`.
  OperatorCard IssueOperator(const std::string& cn_id, absl::Duration validity = absl::Hours(24));
  // Same, but from an unrelated CA that is also called operator-ca.
  OperatorCard IssueForeignOperator(const std::string& cn_id);
  void Revoke(const crypto::Certificate& cert);
  // A CRL valid from now-1m until now+`next_update_in`.
  std::string CrlPem(absl::Duration next_update_in = absl::Hours(1));
  CaPort::IssuedCertificate IssueWork(const Bytes& public_key_der, const std::string& hsm_id,
                                      uint64_t key_index);

 private:
  TestAuthority(const Clock& clock, crypto::PrivateKey root_key, crypto::Certificate root,
                crypto::PrivateKey op_key, crypto::Certificate op)
      : clock_(clock),
        terminal_root_key_(std::move(root_key)),
        terminal_root_(std::move(root)),
        operator_ca_key_(std::move(op_key)),
        operator_ca_(std::move(op)) {}
  const Clock clock_;
  crypto::PrivateKey terminal_root_key_;
  crypto::Certificate terminal_root_;
  crypto::PrivateKey operator_ca_key_;
  crypto::Certificate operator_ca_;
  absl::Mutex mu_;
  std::vector<Bytes> revoked_ ABSL_GUARDED_BY(mu_);
  uint64_t crl_number_ ABSL_GUARDED_BY(mu_) = 0;
};

// Thread-safe.
class FakeCa final : public CaPort {
 public:
  FakeCa(TestAuthority& authority) : authority_(authority) {}
  absl::StatusOr<IssuedCertificate> IssueWorkCertificate(const Bytes& public_key_der,
                                                         const std::string& hsm_id,
                                                         uint64_t key_index) override;
  absl::StatusOr<std::string> GetIssuerCertificate(CaIssuer issuer) override;
  absl::StatusOr<std::string> GetCrl(CaIssuer issuer) override;

  std::atomic<bool> available{true};
  std::atomic<int64_t> crl_next_update_in_ms{3600 * 1000};
  std::atomic<int> crl_fetches{0};

 private:
  TestAuthority& authority_;
};

// Thread-safe. PK and MAK exist from the start at pk_index()/mak_index().
class FakeHsm final : public HsmPort {
 public:
  FakeHsm();
  absl::StatusOr<RsaKeyPair> GenerateRsaKeyPair(uint32_t bits, const std::string& label) override;
  absl::StatusOr<Bytes> TranslateTransportKey(const TranslateRequest& request) override;

  uint64_t pk_index() const { return 1; }
  uint64_t mak_index() const { return 2; }
  // Opens a Ctk_pk with this HSM's PK/MAK (what HSM #2 would do), for end-to-end checks.
  absl::StatusOr<std::string> OpenedAlgorithmName(const Bytes& ctk_pk) const;

  std::atomic<bool> available{true};
  std::atomic<int> translate_calls{0};

 private:
  crypto::SecretBytes pk_;
  crypto::SecretBytes mak_;
  mutable absl::Mutex mu_;
  std::map<uint64_t, crypto::PrivateKey> rsa_ ABSL_GUARDED_BY(mu_);
  uint64_t next_index_ ABSL_GUARDED_BY(mu_) = 100;
};

// Thread-safe. Stores SN → Ctk_pk; idempotent on identical Ctk_pk as KMS is.
class FakeKms final : public KmsPort {
 public:
  absl::StatusOr<Receipt> SubmitTransportKey(const std::string& sn, const Bytes& ctk_pk,
                                             const std::string& submission_id) override;
  // When not OK, every submit answers this.
  void SetAnswer(absl::Status status) {
    absl::MutexLock lock(&mu_);
    answer_ = std::move(status);
  }
  int calls() const { return calls_.load(); }
  int stored() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(stored_.size());
  }
  int duplicates() const { return duplicates_.load(); }
  std::optional<Bytes> Get(const std::string& sn) const {
    absl::MutexLock lock(&mu_);
    auto it = stored_.find(sn);
    if (it == stored_.end()) return std::nullopt;
    return it->second;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Status answer_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Bytes> stored_ ABSL_GUARDED_BY(mu_);
  std::atomic<int> calls_{0};
  std::atomic<int> duplicates_{0};
};

// MTMS's peers as fakes on one clock: the CA (a TestAuthority's operator-ca and CRL behind a
// FakeCa), HSM #1 and KMS.
struct FakePeers {
  FakeClock clock;
  std::unique_ptr<TestAuthority> authority = TestAuthority::Create(clock);
  FakeCa ca{*authority};
  FakeHsm hsm;
  FakeKms kms;
};

// Thread-safe. An HsmPort in front of another that holds every TranslateTransportKey call
// at a gate until Open(), counting how many calls are inside at once. Tests use it to see
// the forwarder's parallelism without timing: WaitForInFlight(n) returns true once n calls
// are held at the same time. Nothing hangs: a held call waits at most kGateTimeout, then
// opens the gate for good (and timed_out() says so).
class GatedHsm final : public HsmPort {
 public:
  static constexpr absl::Duration kGateTimeout = rkl::testing::kEventDeadline;

  explicit GatedHsm(HsmPort& inner) : inner_(inner) {}
  absl::StatusOr<RsaKeyPair> GenerateRsaKeyPair(uint32_t bits, const std::string& label) override {
    return inner_.GenerateRsaKeyPair(bits, label);
  }
  absl::StatusOr<Bytes> TranslateTransportKey(const TranslateRequest& request) override;

  // True once `n` calls are held at the gate at the same time; false after kGateTimeout.
  bool WaitForInFlight(int n);
  void Open();
  int in_flight() const;
  int max_in_flight() const;
  bool timed_out() const;

 private:
  HsmPort& inner_;
  mutable absl::Mutex mu_;
  bool open_ ABSL_GUARDED_BY(mu_) = false;
  bool timed_out_ ABSL_GUARDED_BY(mu_) = false;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  int max_in_flight_ ABSL_GUARDED_BY(mu_) = 0;
};

// Thread-safe. A KmsPort in front of a FakeKms that answers by SN prefix: SNs starting
// with kRejectPrefix get FAILED_PRECONDITION (a permanent refusal), kRetryPrefix
// UNAVAILABLE (a transient one); every other SN goes to the FakeKms.
class ScriptedKms final : public KmsPort {
 public:
  static constexpr char kRejectPrefix[] = "SN-KREJ";
  static constexpr char kRetryPrefix[] = "SN-KRETRY";

  explicit ScriptedKms(FakeKms& inner) : inner_(inner) {}
  absl::StatusOr<Receipt> SubmitTransportKey(const std::string& sn, const Bytes& ctk_pk,
                                             const std::string& submission_id) override;

 private:
  FakeKms& inner_;
};

// rkl.v1.Hsm over a FakeHsm; only `allowed_identity` may call.
class TestHsmService final : public v1::Hsm::Service {
 public:
  TestHsmService(FakeHsm& hsm, std::string allowed_identity);
  grpc::Status GenerateRsaKeyPair(grpc::ServerContext* ctx,
                                  const v1::GenerateRsaKeyPairRequest* req,
                                  v1::GenerateRsaKeyPairResponse* resp) override;
  grpc::Status TranslateTransportKey(grpc::ServerContext* ctx,
                                     const v1::TranslateTransportKeyRequest* req,
                                     v1::TranslateTransportKeyResponse* resp) override;

 private:
  FakeHsm& hsm_;
  rpc::Authorizer authz_;
};

// rkl.v1.CertificateAuthority over a FakeCa.
class TestCaService final : public v1::CertificateAuthority::Service {
 public:
  explicit TestCaService(FakeCa& ca) : ca_(ca) {}
  grpc::Status GetIssuerCertificate(grpc::ServerContext* ctx,
                                    const v1::GetIssuerCertificateRequest* req,
                                    v1::GetIssuerCertificateResponse* resp) override;
  grpc::Status IssueWorkCertificate(grpc::ServerContext* ctx,
                                    const v1::IssueWorkCertificateRequest* req,
                                    v1::IssuedCertificate* resp) override;
  grpc::Status GetCrl(grpc::ServerContext* ctx, const v1::GetCrlRequest* req,
                      v1::GetCrlResponse* resp) override;

 private:
  FakeCa& ca_;
};

// rkl.v1.Kms SubmitTransportKey over a FakeKms; only `mtms` may call.
class TestKmsService final : public v1::Kms::Service {
 public:
  explicit TestKmsService(FakeKms& kms);
  grpc::Status SubmitTransportKey(grpc::ServerContext* ctx,
                                  const v1::KmsSubmitTransportKeyRequest* req,
                                  v1::KmsSubmitTransportKeyResponse* resp) override;

 private:
  FakeKms& kms_;
  rpc::Authorizer authz_;
};

// Thread-safe in-memory MtmsRepository with the same guarantees as PostgreSQL's.
class InMemoryRepository final : public MtmsRepository {
 public:
  absl::StatusOr<std::optional<WorkKeyRecord>> CurrentWorkKey() override;
  absl::StatusOr<std::optional<WorkKeyRecord>> FindWorkKey(const std::string& serial) override;
  absl::StatusOr<std::vector<WorkKeyRecord>> ListWorkKeys() override;
  absl::StatusOr<InstallResult> InstallWorkKey(const WorkKeyRecord& key, bool rotate,
                                               const AuditEntry& audit) override;
  absl::StatusOr<RetireResult> RetireWorkKey(const std::string& serial, bool force, int64_t now_ms,
                                             const AuditEntry& audit) override;
  absl::StatusOr<IntakeResult> Intake(const SubmissionRecord& row, const AuditEntry& audit,
                                      const std::optional<IntakeClaim>& claim) override;
  absl::StatusOr<std::optional<SubmissionRecord>> GetSubmission(
      const std::string& submission_id) override;
  absl::StatusOr<std::vector<SubmissionRecord>> ListSubmissions(
      std::optional<SubmissionState> state, size_t limit,
      const std::optional<QueueCursor>& after) override;
  absl::StatusOr<QueueCounts> CountSubmissions() override;
  absl::StatusOr<std::vector<SubmissionRecord>> ClaimDue(const std::string& claim_token,
                                                         int64_t now_ms, int64_t lease_until_ms,
                                                         int limit) override;
  absl::StatusOr<uint64_t> MakeAllDue(int64_t now_ms) override;
  absl::StatusOr<bool> FinishForwarded(const std::string& submission_id,
                                       const std::string& claim_token, int64_t now_ms,
                                       const AuditEntry& audit) override;
  absl::StatusOr<bool> FinishSupersededIfNewer(const std::string& submission_id,
                                               const std::string& claim_token,
                                               const std::string& reason,
                                               const AuditEntry& audit) override;
  absl::StatusOr<bool> FinishRejected(const std::string& submission_id,
                                      const std::string& claim_token, const std::string& reason,
                                      const AuditEntry& audit) override;
  absl::StatusOr<bool> FinishRetryLater(const std::string& submission_id,
                                        const std::string& claim_token,
                                        const std::string& last_error,
                                        int64_t next_attempt_at_ms) override;
  absl::Status AppendAudit(const AuditEntry& audit) override;
  absl::StatusOr<std::vector<AuditEntry>> ListAudit(size_t limit) override;
  absl::Status AddRefusalCounts(const std::vector<audit::RefusalCount>& counts) override;
  absl::StatusOr<std::vector<audit::RefusalCount>> ListRefusalCounts() override;
  absl::StatusOr<int64_t> PurgeRefusalCounts(int64_t before_ms) override;

  // Test hook: replace the stored package bytes (a tampered database).
  void OverwritePackage(const std::string& submission_id, const Bytes& package);

 private:
  struct Row {
    SubmissionRecord record;
    std::string claimed_by;
    int64_t claimed_until_ms = 0;
  };
  void AuditLocked(const AuditEntry& audit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The row's ClaimFacts, as ClaimDue and a claimed Intake report them.
  SubmissionRecord::ClaimFacts FactsLocked(const SubmissionRecord& row) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<bool> Finish(const std::string& id, const std::string& token,
                              const std::function<void(SubmissionRecord&)>& apply,
                              const AuditEntry* audit);

  mutable absl::Mutex mu_;
  std::vector<WorkKeyRecord> work_keys_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Row> rows_ ABSL_GUARDED_BY(mu_);
  std::set<std::pair<std::string, Bytes>> nonces_ ABSL_GUARDED_BY(mu_);
  std::vector<AuditEntry> audit_ ABSL_GUARDED_BY(mu_);
  rkl::testing::MemoryRefusalCounts refusal_counts_;
};

// Builds what an operator terminal sends (PROTOCOL §3–§4).
struct PackageSpec {
  std::string sn = "SN-0001";
  crypto::KeyAlgorithm algorithm = crypto::KeyAlgorithm::kAes128;
  std::string ctk_pu_sn;      // SN bound into Ctk_Pu's label; empty = `sn`
  int64_t created_at_ms = 0;  // 0 = the clock's now
  Bytes nonce;                // empty = 16 random bytes
  std::string operator_id;    // empty = the card's id
  std::string work_serial;    // empty = the work certificate's serial
};

// Ctk_Pu for a fresh TK of `algorithm` under the work certificate's key, label bound to sn.
Bytes MakeCtkPu(const std::string& work_certificate_pem, const std::string& sn,
                crypto::KeyAlgorithm algorithm);
v1::TransportKeyPackage MakePackage(const PackageSpec& spec, const OperatorCard& card,
                                    const WorkCertificateBundle& work, const Clock& clock);
SubmitRequest SignPackage(const std::string& serialized, const OperatorCard& card);
SubmitRequest MakeSubmission(const PackageSpec& spec, const OperatorCard& card,
                             const WorkCertificateBundle& work, const Clock& clock);

// What an operator terminal sends to read its submission back (GetOwnSubmission): the
// query for `submission_id`, signed by `card` over kSubmissionQueryContext ‖ query.
struct QuerySpec {
  std::string operator_id;       // empty = the card's id
  int64_t created_at_ms = 0;     // 0 = the clock's now
  bool without_context = false;  // sign the bare query (the rule under test)
};
OwnSubmissionQuery MakeOwnSubmissionQuery(const std::string& submission_id,
                                          const OperatorCard& card, const Clock& clock,
                                          const QuerySpec& spec = {});

}  // namespace rkl::mtms::testing
