#include "test_support.h"

#include <algorithm>

#include "rkl/common/status_macros.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/protocol/transport_key.h"
#include "rkl/rpc/status.h"

namespace rkl::mtms::testing {
namespace {

Bytes Serial() {
  Bytes s = crypto::RandomBytes(16);
  s[0] &= 0x7F;
  s[0] |= 0x01;
  return s;
}

template <typename T>
T Must(absl::StatusOr<T> v) {
  if (!v.ok()) {
    fprintf(stderr, "test support: %s\n", v.status().ToString().c_str());
    std::abort();
  }
  return *std::move(v);
}

crypto::Certificate SelfSignedCa(const crypto::PrivateKey& key, const std::string& cn,
                                 int64_t now_s) {
  crypto::CertificateBuilder b;
  b.SetSubjectCommonName(cn)
      .SetSerial(Serial())
      .SetValidity(now_s - 86400, now_s + 3650 * 86400)
      .SetBasicConstraints(true, 0)
      .SetKeyUsage(crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign);
  return Must(b.SelfSign(key));
}

OperatorCard IssueCard(const crypto::Certificate& issuer, const crypto::PrivateKey& issuer_key,
                       const std::string& id, int64_t now_s, absl::Duration validity) {
  crypto::PrivateKey key = Must(crypto::GenerateEcP256Key());
  crypto::CertificateBuilder b;
  b.SetSubjectCommonName("operator:" + id)
      .SetSerial(Serial())
      .SetValidity(now_s - 3600, now_s + absl::ToInt64Seconds(validity))
      .SetPublicKey(key.GetPublicKey())
      .SetBasicConstraints(false, std::nullopt)
      .SetKeyUsage(crypto::KeyUsage::kDigitalSignature);
  crypto::Certificate cert = Must(b.Sign(issuer, issuer_key));
  return OperatorCard{id, std::move(key), std::move(cert)};
}

std::string ToStr(const Bytes& b) { return std::string(AsString(b)); }
Bytes ToBytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

}  // namespace

// ---- TestAuthority ----

std::unique_ptr<TestAuthority> TestAuthority::Create(const Clock& clock) {
  const int64_t now_s = NowUnixSeconds(clock);
  crypto::PrivateKey root_key = Must(crypto::GenerateRsaKey(2048));
  crypto::Certificate root = SelfSignedCa(root_key, "terminal-root", now_s);
  crypto::PrivateKey op_key = Must(crypto::GenerateEcP256Key());
  crypto::Certificate op = SelfSignedCa(op_key, "operator-ca", now_s);
  return std::unique_ptr<TestAuthority>(new TestAuthority(
      clock, std::move(root_key), std::move(root), std::move(op_key), std::move(op)));
}

OperatorCard TestAuthority::IssueOperator(const std::string& cn_id, absl::Duration validity) {
  return IssueCard(operator_ca_, operator_ca_key_, cn_id, NowUnixSeconds(clock_), validity);
}

OperatorCard TestAuthority::IssueForeignOperator(const std::string& cn_id) {
  crypto::PrivateKey key = Must(crypto::GenerateEcP256Key());
  crypto::Certificate ca = SelfSignedCa(key, "operator-ca", NowUnixSeconds(clock_));
  return IssueCard(ca, key, cn_id, NowUnixSeconds(clock_), absl::Hours(24));
}

void TestAuthority::Revoke(const crypto::Certificate& cert) {
  absl::MutexLock lock(&mu_);
  revoked_.push_back(cert.SerialBytes());
}

std::string TestAuthority::CrlPem(absl::Duration next_update_in) {
  const int64_t now_s = NowUnixSeconds(clock_);
  crypto::CrlBuilder b;
  {
    absl::MutexLock lock(&mu_);
    for (const Bytes& serial : revoked_) b.AddRevoked(serial, now_s - 60);
    b.SetCrlNumber(++crl_number_);
  }
  b.SetLastUpdate(now_s - 60).SetNextUpdate(now_s + absl::ToInt64Seconds(next_update_in));
  return Must(b.Sign(operator_ca_, operator_ca_key_)).ToPem();
}

CaPort::IssuedCertificate TestAuthority::IssueWork(const Bytes& public_key_der,
                                                   const std::string& hsm_id, uint64_t key_index) {
  const int64_t now_s = NowUnixSeconds(clock_);
  crypto::CertificateBuilder b;
  b.SetSubjectCommonName("hsm-work:" + hsm_id + ":" + std::to_string(key_index))
      .SetSerial(Serial())
      .SetValidity(now_s - 3600, now_s + 365 * 86400)
      .SetPublicKey(Must(crypto::PublicKey::FromDer(public_key_der)))
      .SetBasicConstraints(false, std::nullopt)
      .SetKeyUsage(crypto::KeyUsage::kKeyEncipherment);
  crypto::Certificate cert = Must(b.Sign(terminal_root_, terminal_root_key_));
  return {cert.ToPem(), cert.SerialHex()};
}

// ---- FakeCa ----

absl::StatusOr<CaPort::IssuedCertificate> FakeCa::IssueWorkCertificate(const Bytes& public_key_der,
                                                                       const std::string& hsm_id,
                                                                       uint64_t key_index) {
  if (!available) return absl::UnavailableError("ca unavailable");
  return authority_.IssueWork(public_key_der, hsm_id, key_index);
}

absl::StatusOr<std::string> FakeCa::GetIssuerCertificate(CaIssuer issuer) {
  if (!available) return absl::UnavailableError("ca unavailable");
  return issuer == CaIssuer::kTerminalRoot ? authority_.terminal_root().ToPem()
                                           : authority_.operator_ca().ToPem();
}

absl::StatusOr<std::string> FakeCa::GetCrl(CaIssuer issuer) {
  if (!available) return absl::UnavailableError("ca unavailable");
  ++crl_fetches;
  return authority_.CrlPem(absl::Milliseconds(crl_next_update_in_ms.load()));
}

// ---- FakeHsm ----

FakeHsm::FakeHsm() : pk_(crypto::RandomSecret(32)), mak_(crypto::RandomSecret(32)) {}

absl::StatusOr<HsmPort::RsaKeyPair> FakeHsm::GenerateRsaKeyPair(uint32_t bits,
                                                                const std::string& label) {
  if (!available) return absl::UnavailableError("hsm unavailable");
  RKL_ASSIGN_OR_RETURN(crypto::PrivateKey key, crypto::GenerateRsaKey(static_cast<int>(bits)));
  Bytes der = key.GetPublicKey().ToDer();
  absl::MutexLock lock(&mu_);
  uint64_t index = next_index_++;
  rsa_.emplace(index, std::move(key));
  return RsaKeyPair{index, der};
}

absl::StatusOr<Bytes> FakeHsm::TranslateTransportKey(const TranslateRequest& request) {
  if (!available) return absl::UnavailableError("hsm unavailable");
  ++translate_calls;
  if (request.pk_index != pk_index() || request.mak_index != mak_index()) {
    return absl::NotFoundError("key index: no such key");
  }
  // As HSM #1 does (OperatorEvidence): only what an operator signed, exactly.
  auto cert = crypto::Certificate::FromDer(request.operator_certificate_der);
  if (!cert.ok()) return absl::UnauthenticatedError("operator_certificate_der: missing");
  auto signer = cert->GetPublicKey();
  if (!signer.ok() ||
      !crypto::EcdsaVerify(*signer, request.package, request.package_signature).ok()) {
    return absl::UnauthenticatedError("package_signature: does not verify");
  }
  v1::TransportKeyPackage package;
  if (!package.ParseFromArray(request.package.data(), static_cast<int>(request.package.size())) ||
      package.sn() != request.sn || ToBytes(package.ctk_pu()) != request.ctk_pu ||
      package.created_at_unix_ms() != request.created_at_unix_ms ||
      package.algorithm() != static_cast<int>(crypto::KeyAlgorithmCode(request.algorithm))) {
    return absl::PermissionDeniedError("package: signed for something else");
  }
  const absl::Status rejected = absl::UnauthenticatedError("transport key rejected");
  absl::MutexLock lock(&mu_);
  auto it = rsa_.find(request.pr_index);
  if (it == rsa_.end()) return absl::NotFoundError("pr_index: no such key");
  absl::StatusOr<crypto::SecretBytes> payload =
      crypto::RsaOaepDecrypt(it->second, request.ctk_pu, protocol::OaepLabel(request.sn));
  if (!payload.ok()) return rejected;
  absl::StatusOr<protocol::TransportKey> tk = protocol::ParseTkPayload(*payload);
  if (!tk.ok() || tk->algorithm != request.algorithm) return rejected;
  protocol::CtkPkHeader header{.algorithm = request.algorithm,
                               .sn = request.sn,
                               .created_at_unix_ms = request.created_at_unix_ms};
  Bytes pk_kcv = *crypto::Kcv(crypto::CipherFamily::kAes, pk_);
  Bytes mak_kcv = *crypto::Kcv(crypto::CipherFamily::kAes, mak_);
  std::copy_n(pk_kcv.begin(), 3, header.pk_kcv.begin());
  std::copy_n(mak_kcv.begin(), 3, header.mak_kcv.begin());
  return protocol::BuildCtkPk(header, *payload, pk_, mak_);
}

absl::StatusOr<std::string> FakeHsm::OpenedAlgorithmName(const Bytes& ctk_pk) const {
  RKL_ASSIGN_OR_RETURN(protocol::ParsedCtkPk parsed, protocol::ParseCtkPk(ctk_pk));
  RKL_ASSIGN_OR_RETURN(protocol::TransportKey tk, protocol::OpenCtkPk(parsed, pk_, mak_));
  return std::string(crypto::KeyAlgorithmName(tk.algorithm));
}

// ---- FakeKms ----

absl::StatusOr<KmsPort::Receipt> FakeKms::SubmitTransportKey(const std::string& sn,
                                                             const Bytes& ctk_pk,
                                                             const std::string& submission_id) {
  ++calls_;
  absl::MutexLock lock(&mu_);
  if (!answer_.ok()) return answer_;
  auto it = stored_.find(sn);
  if (it != stored_.end() && it->second == ctk_pk) {
    ++duplicates_;
    return Receipt{.duplicate = true};
  }
  stored_[sn] = ctk_pk;
  return Receipt{.duplicate = false};
}

// ---- GatedHsm ----

absl::StatusOr<Bytes> GatedHsm::TranslateTransportKey(const TranslateRequest& request) {
  {
    absl::MutexLock lock(&mu_);
    ++in_flight_;
    max_in_flight_ = std::max(max_in_flight_, in_flight_);
    if (!mu_.AwaitWithTimeout(absl::Condition(&open_), kGateTimeout)) {
      timed_out_ = true;
      open_ = true;  // never make the next call wait again
    }
  }
  absl::StatusOr<Bytes> result = inner_.TranslateTransportKey(request);
  absl::MutexLock lock(&mu_);
  --in_flight_;
  return result;
}

bool GatedHsm::WaitForInFlight(int n) {
  absl::MutexLock lock(&mu_);
  auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ >= n; };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), kGateTimeout);
}

void GatedHsm::Open() {
  absl::MutexLock lock(&mu_);
  open_ = true;
}

int GatedHsm::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

int GatedHsm::max_in_flight() const {
  absl::MutexLock lock(&mu_);
  return max_in_flight_;
}

bool GatedHsm::timed_out() const {
  absl::MutexLock lock(&mu_);
  return timed_out_;
}

// ---- ScriptedKms ----

absl::StatusOr<KmsPort::Receipt> ScriptedKms::SubmitTransportKey(const std::string& sn,
                                                                 const Bytes& ctk_pk,
                                                                 const std::string& submission_id) {
  if (sn.rfind(kRejectPrefix, 0) == 0) {
    return absl::FailedPreconditionError("sn: TMK already installed");
  }
  if (sn.rfind(kRetryPrefix, 0) == 0) return absl::UnavailableError("kms unavailable");
  return inner_.SubmitTransportKey(sn, ctk_pk, submission_id);
}

// ---- gRPC test services ----

TestHsmService::TestHsmService(FakeHsm& hsm, std::string allowed_identity) : hsm_(hsm) {
  authz_.Allow("GenerateRsaKeyPair", {allowed_identity});
  authz_.Allow("TranslateTransportKey", {allowed_identity});
}

grpc::Status TestHsmService::GenerateRsaKeyPair(grpc::ServerContext* ctx,
                                                const v1::GenerateRsaKeyPairRequest* req,
                                                v1::GenerateRsaKeyPairResponse* resp) {
  if (absl::Status s = authz_.Check(*ctx, "GenerateRsaKeyPair"); !s.ok()) {
    return rpc::ToGrpcStatus(s);
  }
  auto pair = hsm_.GenerateRsaKeyPair(req->bits(), req->label());
  if (!pair.ok()) return rpc::ToGrpcStatus(pair.status());
  resp->set_key_index(pair->key_index);
  resp->set_public_key_der(ToStr(pair->public_key_der));
  return grpc::Status::OK;
}

grpc::Status TestHsmService::TranslateTransportKey(grpc::ServerContext* ctx,
                                                   const v1::TranslateTransportKeyRequest* req,
                                                   v1::TranslateTransportKeyResponse* resp) {
  if (absl::Status s = authz_.Check(*ctx, "TranslateTransportKey"); !s.ok()) {
    return rpc::ToGrpcStatus(s);
  }
  auto algorithm = crypto::KeyAlgorithmFromCode(static_cast<uint8_t>(req->algorithm()));
  if (!algorithm.ok()) return rpc::ToGrpcStatus(algorithm.status());
  auto ctk_pk = hsm_.TranslateTransportKey(
      {.pr_index = req->pr_index(),
       .ctk_pu = ToBytes(req->ctk_pu()),
       .sn = req->sn(),
       .created_at_unix_ms = req->created_at_unix_ms(),
       .pk_index = req->pk_index(),
       .mak_index = req->mak_index(),
       .algorithm = *algorithm,
       .package = ToBytes(req->package()),
       .package_signature = ToBytes(req->package_signature()),
       .operator_certificate_der = ToBytes(req->operator_certificate_der())});
  if (!ctk_pk.ok()) return rpc::ToGrpcStatus(ctk_pk.status());
  resp->set_ctk_pk(ToStr(*ctk_pk));
  return grpc::Status::OK;
}

grpc::Status TestCaService::GetIssuerCertificate(grpc::ServerContext* ctx,
                                                 const v1::GetIssuerCertificateRequest* req,
                                                 v1::GetIssuerCertificateResponse* resp) {
  auto pem = ca_.GetIssuerCertificate(
      req->issuer() == v1::ISSUER_TERMINAL_ROOT ? CaIssuer::kTerminalRoot : CaIssuer::kOperatorCa);
  if (!pem.ok()) return rpc::ToGrpcStatus(pem.status());
  resp->set_certificate_pem(*pem);
  return grpc::Status::OK;
}

grpc::Status TestCaService::IssueWorkCertificate(grpc::ServerContext* ctx,
                                                 const v1::IssueWorkCertificateRequest* req,
                                                 v1::IssuedCertificate* resp) {
  if (rpc::GetCallerIdentity(*ctx).name != "mtms") {
    return rpc::ToGrpcStatus(absl::PermissionDeniedError("only mtms"));
  }
  auto issued =
      ca_.IssueWorkCertificate(ToBytes(req->public_key_der()), req->hsm_id(), req->key_index());
  if (!issued.ok()) return rpc::ToGrpcStatus(issued.status());
  resp->set_certificate_pem(issued->certificate_pem);
  resp->set_serial_hex(issued->serial_hex);
  return grpc::Status::OK;
}

grpc::Status TestCaService::GetCrl(grpc::ServerContext* ctx, const v1::GetCrlRequest* req,
                                   v1::GetCrlResponse* resp) {
  auto pem = ca_.GetCrl(CaIssuer::kOperatorCa);
  if (!pem.ok()) return rpc::ToGrpcStatus(pem.status());
  resp->set_crl_pem(*pem);
  return grpc::Status::OK;
}

TestKmsService::TestKmsService(FakeKms& kms) : kms_(kms) {
  authz_.Allow("SubmitTransportKey", {"mtms"});
}

grpc::Status TestKmsService::SubmitTransportKey(grpc::ServerContext* ctx,
                                                const v1::KmsSubmitTransportKeyRequest* req,
                                                v1::KmsSubmitTransportKeyResponse* resp) {
  if (absl::Status s = authz_.Check(*ctx, "SubmitTransportKey"); !s.ok()) {
    return rpc::ToGrpcStatus(s);
  }
  auto receipt =
      kms_.SubmitTransportKey(req->sn(), ToBytes(req->ctk_pk()), req->mtms_submission_id());
  if (!receipt.ok()) return rpc::ToGrpcStatus(receipt.status());
  resp->set_state(v1::TERMINAL_STATE_TK_RECEIVED);
  resp->set_duplicate(receipt->duplicate);
  return grpc::Status::OK;
}

// ---- InMemoryRepository ----

absl::StatusOr<std::optional<WorkKeyRecord>> InMemoryRepository::CurrentWorkKey() {
  absl::MutexLock lock(&mu_);
  for (const WorkKeyRecord& k : work_keys_) {
    if (k.state == WorkKeyState::kCurrent) return k;
  }
  return std::nullopt;
}

absl::StatusOr<std::optional<WorkKeyRecord>> InMemoryRepository::FindWorkKey(
    const std::string& serial) {
  absl::MutexLock lock(&mu_);
  for (const WorkKeyRecord& k : work_keys_) {
    if (k.serial_hex == serial) return k;
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<WorkKeyRecord>> InMemoryRepository::ListWorkKeys() {
  absl::MutexLock lock(&mu_);
  std::vector<WorkKeyRecord> keys(work_keys_.rbegin(), work_keys_.rend());
  return keys;
}

absl::StatusOr<MtmsRepository::InstallResult> InMemoryRepository::InstallWorkKey(
    const WorkKeyRecord& key, bool rotate, const AuditEntry& audit) {
  absl::MutexLock lock(&mu_);
  for (WorkKeyRecord& k : work_keys_) {
    if (k.state != WorkKeyState::kCurrent) continue;
    if (!rotate) return InstallResult{k, false};
    k.state = WorkKeyState::kPrevious;
  }
  WorkKeyRecord installed = key;
  installed.state = WorkKeyState::kCurrent;
  work_keys_.push_back(installed);
  AuditLocked(audit);
  return InstallResult{installed, true};
}

absl::StatusOr<MtmsRepository::RetireResult> InMemoryRepository::RetireWorkKey(
    const std::string& serial, bool force, int64_t now_ms, const AuditEntry& audit) {
  absl::MutexLock lock(&mu_);
  RetireResult result;
  for (WorkKeyRecord& k : work_keys_) {
    if (k.serial_hex != serial) continue;
    result.key = k;
    if (k.state == WorkKeyState::kCurrent) {
      result.outcome = RetireOutcome::kIsCurrent;
      return result;
    }
    if (k.state == WorkKeyState::kRetired) {
      result.outcome = RetireOutcome::kRetired;
      return result;
    }
    for (const auto& [id, row] : rows_) {
      if (row.record.work_certificate_serial == serial &&
          row.record.state == SubmissionState::kReceived) {
        ++result.in_flight;
      }
    }
    if (result.in_flight > 0 && !force) {
      result.outcome = RetireOutcome::kInFlight;
      return result;
    }
    k.state = WorkKeyState::kRetired;
    k.retired_at_ms = now_ms;
    result.key = k;
    result.outcome = RetireOutcome::kRetired;
    AuditLocked(audit);
    return result;
  }
  return result;
}

absl::StatusOr<IntakeResult> InMemoryRepository::Intake(const SubmissionRecord& row,
                                                        const AuditEntry& audit,
                                                        const std::optional<IntakeClaim>& claim) {
  absl::MutexLock lock(&mu_);
  IntakeResult result;
  const WorkKeyRecord* key = nullptr;
  for (const WorkKeyRecord& k : work_keys_) {
    if (k.serial_hex == row.work_certificate_serial) key = &k;
  }
  if (key == nullptr) return result;  // kUnknownWorkKey
  if (key->state == WorkKeyState::kRetired) {
    result.outcome = InsertOutcome::kRetiredWorkKey;
    return result;
  }
  if (!nonces_.insert({row.operator_id, row.nonce}).second) {
    result.outcome = InsertOutcome::kReplay;
    return result;
  }
  result.outcome = InsertOutcome::kInserted;
  result.facts = FactsLocked(row);
  Row stored;
  stored.record = row;
  stored.record.state = SubmissionState::kReceived;
  stored.record.next_attempt_at_ms = row.received_at_ms;
  if (claim.has_value()) {
    stored.claimed_by = claim->claim_token;
    stored.claimed_until_ms = claim->lease_until_ms;
  }
  rows_[row.submission_id] = stored;
  AuditLocked(audit);
  return result;
}

SubmissionRecord::ClaimFacts InMemoryRepository::FactsLocked(const SubmissionRecord& row) const {
  SubmissionRecord::ClaimFacts facts;
  for (const WorkKeyRecord& k : work_keys_) {
    if (k.serial_hex == row.work_certificate_serial) {
      facts.work_key_state = k.state;
      facts.work_key_index = k.hsm_key_index;
    }
  }
  for (const auto& [id, other] : rows_) {
    const SubmissionRecord& n = other.record;
    if (n.sn == row.sn && n.created_at_ms > row.created_at_ms &&
        (n.state == SubmissionState::kReceived || n.state == SubmissionState::kForwarded)) {
      facts.newer_sibling = true;
    }
  }
  return facts;
}

absl::StatusOr<std::optional<SubmissionRecord>> InMemoryRepository::GetSubmission(
    const std::string& submission_id) {
  absl::MutexLock lock(&mu_);
  auto it = rows_.find(submission_id);
  if (it == rows_.end()) return std::nullopt;
  return it->second.record;
}

absl::StatusOr<std::vector<SubmissionRecord>> InMemoryRepository::ListSubmissions(
    std::optional<SubmissionState> state, size_t limit, const std::optional<QueueCursor>& after) {
  absl::MutexLock lock(&mu_);
  std::vector<SubmissionRecord> all;
  for (const auto& [id, row] : rows_) {
    if (state.has_value() && row.record.state != *state) continue;
    if (after.has_value() && std::tie(row.record.received_at_ms, row.record.submission_id) <=
                                 std::tie(after->received_at_ms, after->submission_id)) {
      continue;
    }
    all.push_back(row.record);
  }
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return std::tie(a.received_at_ms, a.submission_id) <
           std::tie(b.received_at_ms, b.submission_id);
  });
  if (all.size() > limit) all.resize(limit);
  return all;
}

absl::StatusOr<QueueCounts> InMemoryRepository::CountSubmissions() {
  absl::MutexLock lock(&mu_);
  QueueCounts c;
  for (const auto& [id, row] : rows_) {
    ++c.Of(row.record.state);
    if (row.record.state == SubmissionState::kReceived &&
        (c.oldest_received_at_ms == 0 || row.record.received_at_ms < c.oldest_received_at_ms)) {
      c.oldest_received_at_ms = row.record.received_at_ms;
    }
  }
  return c;
}

absl::StatusOr<std::vector<SubmissionRecord>> InMemoryRepository::ClaimDue(
    const std::string& claim_token, int64_t now_ms, int64_t lease_until_ms, int limit) {
  absl::MutexLock lock(&mu_);
  std::vector<Row*> due;
  for (auto& [id, row] : rows_) {
    if (row.record.state == SubmissionState::kReceived && row.record.next_attempt_at_ms <= now_ms &&
        (row.claimed_by.empty() || row.claimed_until_ms <= now_ms)) {
      due.push_back(&row);
    }
  }
  std::sort(due.begin(), due.end(), [](const Row* a, const Row* b) {
    return std::tie(a->record.received_at_ms, a->record.submission_id) <
           std::tie(b->record.received_at_ms, b->record.submission_id);
  });
  std::vector<SubmissionRecord> claimed;
  for (Row* row : due) {
    if (static_cast<int>(claimed.size()) >= limit) break;
    row->claimed_by = claim_token;
    row->claimed_until_ms = lease_until_ms;
    claimed.push_back(row->record);
    claimed.back().claim = FactsLocked(row->record);
  }
  return claimed;
}

absl::StatusOr<uint64_t> InMemoryRepository::MakeAllDue(int64_t now_ms) {
  absl::MutexLock lock(&mu_);
  uint64_t n = 0;
  for (auto& [id, row] : rows_) {
    if (row.record.state == SubmissionState::kReceived && row.record.next_attempt_at_ms > now_ms) {
      row.record.next_attempt_at_ms = now_ms;
      ++n;
    }
  }
  return n;
}

absl::StatusOr<bool> InMemoryRepository::Finish(const std::string& id, const std::string& token,
                                                const std::function<void(SubmissionRecord&)>& apply,
                                                const AuditEntry* audit) {
  absl::MutexLock lock(&mu_);
  auto it = rows_.find(id);
  if (it == rows_.end() || it->second.claimed_by != token ||
      it->second.record.state != SubmissionState::kReceived) {
    return false;
  }
  apply(it->second.record);
  ++it->second.record.attempts;
  it->second.claimed_by.clear();
  it->second.claimed_until_ms = 0;
  if (audit != nullptr) AuditLocked(*audit);
  return true;
}

absl::StatusOr<bool> InMemoryRepository::FinishForwarded(const std::string& submission_id,
                                                         const std::string& claim_token,
                                                         int64_t now_ms, const AuditEntry& audit) {
  return Finish(
      submission_id, claim_token,
      [&](SubmissionRecord& r) {
        r.state = SubmissionState::kForwarded;
        r.forwarded_at_ms = now_ms;
        r.last_error.clear();
      },
      &audit);
}

absl::StatusOr<bool> InMemoryRepository::FinishRejected(const std::string& submission_id,
                                                        const std::string& claim_token,
                                                        const std::string& reason,
                                                        const AuditEntry& audit) {
  return Finish(
      submission_id, claim_token,
      [&](SubmissionRecord& r) {
        r.state = SubmissionState::kRejected;
        r.reason = reason;
      },
      &audit);
}

absl::StatusOr<bool> InMemoryRepository::FinishSupersededIfNewer(const std::string& submission_id,
                                                                 const std::string& claim_token,
                                                                 const std::string& reason,
                                                                 const AuditEntry& audit) {
  absl::MutexLock lock(&mu_);
  auto it = rows_.find(submission_id);
  if (it == rows_.end() || it->second.claimed_by != claim_token ||
      it->second.record.state != SubmissionState::kReceived) {
    return false;
  }
  const SubmissionRecord& r = it->second.record;
  bool newer = false;
  for (const auto& [id, other] : rows_) {
    const SubmissionRecord& n = other.record;
    if (n.sn == r.sn && n.created_at_ms > r.created_at_ms &&
        (n.state == SubmissionState::kReceived || n.state == SubmissionState::kForwarded)) {
      newer = true;
    }
  }
  if (!newer) return false;
  it->second.record.state = SubmissionState::kRejected;
  it->second.record.reason = reason;
  ++it->second.record.attempts;
  it->second.claimed_by.clear();
  it->second.claimed_until_ms = 0;
  AuditLocked(audit);
  return true;
}

absl::StatusOr<bool> InMemoryRepository::FinishRetryLater(const std::string& submission_id,
                                                          const std::string& claim_token,
                                                          const std::string& last_error,
                                                          int64_t next_attempt_at_ms) {
  return Finish(
      submission_id, claim_token,
      [&](SubmissionRecord& r) {
        r.last_error = last_error;
        r.next_attempt_at_ms = next_attempt_at_ms;
      },
      nullptr);
}

absl::Status InMemoryRepository::AppendAudit(const AuditEntry& audit) {
  absl::MutexLock lock(&mu_);
  AuditLocked(audit);
  return absl::OkStatus();
}

absl::Status InMemoryRepository::AddRefusalCounts(const std::vector<audit::RefusalCount>& counts) {
  refusal_counts_.Add(counts);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<audit::RefusalCount>> InMemoryRepository::ListRefusalCounts() {
  return refusal_counts_.List();
}

absl::StatusOr<int64_t> InMemoryRepository::PurgeRefusalCounts(int64_t before_ms) {
  return refusal_counts_.Purge(before_ms);
}

absl::StatusOr<std::vector<AuditEntry>> InMemoryRepository::ListAudit(size_t limit) {
  absl::MutexLock lock(&mu_);
  std::vector<AuditEntry> out(audit_.rbegin(), audit_.rend());
  if (out.size() > limit) out.resize(limit);
  return out;
}

void InMemoryRepository::AuditLocked(const AuditEntry& audit) {
  AuditEntry r;
  static_cast<AuditEntry&>(r) = audit;
  r.seq = audit_.size() + 1;
  audit_.push_back(std::move(r));
}

void InMemoryRepository::OverwritePackage(const std::string& submission_id, const Bytes& package) {
  absl::MutexLock lock(&mu_);
  rows_[submission_id].record.package = package;
}

// ---- Operator terminal ----

Bytes MakeCtkPu(const std::string& work_certificate_pem, const std::string& sn,
                crypto::KeyAlgorithm algorithm) {
  crypto::Certificate cert = Must(crypto::Certificate::FromPem(work_certificate_pem));
  crypto::PublicKey pu = Must(cert.GetPublicKey());
  protocol::TransportKey tk{algorithm, crypto::GenerateKey(algorithm),
                            crypto::GenerateKey(algorithm)};
  crypto::SecretBytes payload = Must(protocol::EncodeTkPayload(tk));
  return Must(crypto::RsaOaepEncrypt(pu, payload, protocol::OaepLabel(sn)));
}

v1::TransportKeyPackage MakePackage(const PackageSpec& spec, const OperatorCard& card,
                                    const WorkCertificateBundle& work, const Clock& clock) {
  v1::TransportKeyPackage p;
  p.set_sn(spec.sn);
  p.set_ctk_pu(ToStr(MakeCtkPu(work.certificate_pem,
                               spec.ctk_pu_sn.empty() ? spec.sn : spec.ctk_pu_sn, spec.algorithm)));
  p.set_work_certificate_serial(spec.work_serial.empty() ? work.serial_hex : spec.work_serial);
  p.set_algorithm(static_cast<v1::KeyAlgorithm>(crypto::KeyAlgorithmCode(spec.algorithm)));
  p.set_created_at_unix_ms(spec.created_at_ms == 0 ? NowUnixMs(clock) : spec.created_at_ms);
  p.set_nonce(ToStr(spec.nonce.empty() ? crypto::RandomBytes(16) : spec.nonce));
  p.set_operator_id(spec.operator_id.empty() ? card.operator_id : spec.operator_id);
  return p;
}

SubmitRequest SignPackage(const std::string& serialized, const OperatorCard& card) {
  Bytes sig = Must(crypto::EcdsaSign(card.key, AsBytes(serialized)));
  return SubmitRequest{.package = serialized,
                       .signature = ToStr(sig),
                       .operator_certificate_pem = card.certificate.ToPem()};
}

SubmitRequest MakeSubmission(const PackageSpec& spec, const OperatorCard& card,
                             const WorkCertificateBundle& work, const Clock& clock) {
  return SignPackage(MakePackage(spec, card, work, clock).SerializeAsString(), card);
}

OwnSubmissionQuery MakeOwnSubmissionQuery(const std::string& submission_id,
                                          const OperatorCard& card, const Clock& clock,
                                          const QuerySpec& spec) {
  v1::SubmissionQuery query;
  query.set_submission_id(submission_id);
  query.set_operator_id(spec.operator_id.empty() ? card.operator_id : spec.operator_id);
  query.set_created_at_unix_ms(spec.created_at_ms != 0 ? spec.created_at_ms : NowUnixMs(clock));
  const std::string serialized = query.SerializeAsString();
  const std::string to_sign =
      spec.without_context ? serialized : std::string(kSubmissionQueryContext) + serialized;
  Bytes sig = Must(crypto::EcdsaSign(card.key, AsBytes(to_sign)));
  return OwnSubmissionQuery{.query = serialized,
                            .signature = ToStr(sig),
                            .operator_certificate_pem = card.certificate.ToPem()};
}

}  // namespace rkl::mtms::testing
