// Every rkl-hsm command over real gRPC with mTLS, on a real database: the positive path and
// the refusals (wrong caller, wrong usage, unknown index, malformed input, bad MAC, wrong SN,
// expired ceremony, single custodian).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <pqxx/pqxx>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "hsm_fixture.h"
#include "rkl/crypto/random.h"
#include "rkl/metrics/metrics.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/health.h"
#include "test_terminal.h"

namespace rkl::hsm {
namespace {

using testing::BeginRequest;
using testing::Call;
using testing::CompleteRequest;
using testing::ComponentRequest;
using ::testing::HasSubstr;
using testing::HsmInstance;
using ::testing::Not;
using testing::TestTerminal;
using Stub = v1::Hsm::Stub;

constexpr char kKms[] = "kms";
constexpr char kMtms[] = "mtms";
constexpr char kAlice[] = "admin:alice";
constexpr char kBob[] = "admin:bob";
constexpr int64_t kCreatedAt = 1'700'000'000'000;
constexpr char kCarol[] = "custodian:carol";  // key custodians: the ceremony's only callers
constexpr char kDave[] = "custodian:dave";

std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }

// One scrape of `hsm`'s metrics: the value of series `name` with exactly `labels` (-1 when
// there is none).
double Metric(HsmInstance& hsm, std::string_view name,
              const std::map<std::string, std::string>& labels = {}) {
  return metrics::SampleValue(hsm.daemon().metrics().Collect(), name, labels).value_or(-1);
}
double Commands(HsmInstance& hsm, const std::string& command, const std::string& result) {
  return std::max(
      0.0, Metric(hsm, "rkl_hsm_commands_total", {{"command", command}, {"result", result}}));
}
Bytes Raw(const std::string& s) { return Bytes(s.begin(), s.end()); }

// HSM #1 (role mtms, for "mtms") and HSM #2 (role kms, for "kms") with the same PK and MAK,
// and a work key pair in HSM #1, shared by the suite: the ceremonies' RSA-3072 keys are slow
// to make. `hsm_` is HSM #2.
class HsmGrpcTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = rkl::testing::TestPki::Create().value().release();
    hsm1_ =
        HsmInstance::Create(
            *pki_, {.hsm_id = "hsm-mtms", .role = HsmRole::kMtms, .operational_identity = kMtms})
            .value()
            .release();
    hsm_ = HsmInstance::Create(*pki_).value().release();
    const std::vector<std::pair<std::string, crypto::SecretBytes>> pk_parts = {
        {kCarol, crypto::RandomSecret(32)}, {kDave, crypto::RandomSecret(32)}};
    const std::vector<std::pair<std::string, crypto::SecretBytes>> mak_parts = {
        {kCarol, crypto::RandomSecret(32)}, {kDave, crypto::RandomSecret(32)}};
    for (auto [hsm, pk, mak] : {std::tuple{hsm1_, &pk1_, &mak1_}, std::tuple{hsm_, &pk_, &mak_}}) {
      auto p = testing::RunCeremony(*hsm, v1::KEY_TYPE_PK, "PK-TEST", pk_parts);
      auto m = testing::RunCeremony(*hsm, v1::KEY_TYPE_MAK, "MAK-TEST", mak_parts);
      ASSERT_TRUE(p.ok()) << p.status();
      ASSERT_TRUE(m.ok()) << m.status();
      *pk = p->key_index;
      *mak = m->key_index;
    }
    auto stub = hsm1_->Stub(kMtms);
    v1::GenerateRsaKeyPairRequest req;
    req.set_bits(2048);
    req.set_label("work-test");
    auto rsa = Call(*stub, &Stub::GenerateRsaKeyPair, req);
    ASSERT_TRUE(rsa.ok()) << rsa.status();
    pr_ = rsa->key_index();
    pu_ = Raw(rsa->public_key_der());
  }
  static void TearDownTestSuite() {
    delete hsm_;
    delete hsm1_;
    delete pki_;
  }

  void SetUp() override {
    kms_ = hsm_->Stub(kKms);
    mtms_ = hsm1_->Stub(kMtms);
  }

  // A translate request for `t` with its operator evidence, as MTMS sends it.
  v1::TranslateTransportKeyRequest TranslateRequest(const TestTerminal& t) {
    v1::TranslateTransportKeyRequest req;
    req.set_pr_index(pr_);
    const Bytes ctk_pu = t.CtkPu(pu_);
    req.set_ctk_pu(Str(ctk_pu));
    req.set_sn(t.sn);
    req.set_created_at_unix_ms(kCreatedAt);
    req.set_pk_index(pk1_);
    req.set_mak_index(mak1_);
    req.set_algorithm(static_cast<v1::KeyAlgorithm>(crypto::KeyAlgorithmCode(t.tk.algorithm)));
    SetEvidence(req);
    return req;
  }
  // Signs `req`'s fields anew, as the operator would have.
  static void SetEvidence(v1::TranslateTransportKeyRequest& req) {
    auto algorithm = crypto::KeyAlgorithmFromCode(static_cast<uint8_t>(req.algorithm()));
    TranslateEvidence e = hsm1_->operator_card().Sign(
        req.sn(), Raw(req.ctk_pu()), algorithm.ok() ? *algorithm : crypto::KeyAlgorithm::kAes128,
        req.created_at_unix_ms());
    req.set_package(Str(e.package));
    req.set_package_signature(Str(e.package_signature));
    req.set_operator_certificate_der(Str(e.operator_certificate_der));
  }

  v1::ImportAndChallengeRequest ImportRequest(const std::string& sn, const std::string& ctk_pk,
                                              const Bytes& rnd1) {
    v1::ImportAndChallengeRequest req;
    req.mutable_import()->set_pk_index(pk_);
    req.mutable_import()->set_mak_index(mak_);
    req.mutable_import()->set_sn(sn);
    req.mutable_import()->set_ctk_pk(ctk_pk);
    req.set_rnd1(Str(rnd1));
    return req;
  }

  // Translate on HSM #1 and import on HSM #2 for a terminal; returns the import response.
  v1::ImportTransportKeyResponse Enrol(const TestTerminal& t) {
    auto ctk = Call(*mtms_, &Stub::TranslateTransportKey, TranslateRequest(t));
    EXPECT_TRUE(ctk.ok()) << ctk.status();
    auto begun = Call(
        *kms_, &Stub::ImportAndChallenge,
        ImportRequest(t.sn, ctk->ctk_pk(), crypto::RandomBytes(crypto::BlockSize(t.tk.algorithm))));
    EXPECT_TRUE(begun.ok()) << begun.status();
    return begun->imported();
  }

  // A §7 authentication by `t`, then its TMK under `tek`.
  absl::StatusOr<v1::AuthenticateAndDeliverResponse> Deliver(const TestTerminal& t, uint64_t auk,
                                                             uint64_t tek) {
    Bytes rnd1 = crypto::RandomBytes(crypto::BlockSize(t.tk.algorithm));
    v1::AuthChallengeRequest ch;
    ch.set_auk_index(auk);
    ch.set_sn(t.sn);
    ch.set_rnd1(Str(rnd1));
    auto challenge = Call(*kms_, &Stub::AuthChallenge, ch);
    if (!challenge.ok()) return challenge.status();
    v1::AuthenticateAndDeliverRequest deliver;
    auto* verify = deliver.mutable_verify();
    verify->set_auk_index(auk);
    verify->set_sn(t.sn);
    verify->set_rnd1(Str(rnd1));
    verify->set_rnd2(challenge->rnd2());
    verify->set_crnd2(Str(protocol::MakeCrnd2(t.AuthKeys(), rnd1, Raw(challenge->rnd2())).value()));
    deliver.set_algorithm(static_cast<v1::KeyAlgorithm>(crypto::KeyAlgorithmCode(t.tk.algorithm)));
    deliver.set_tek_index(tek);
    return Call(*kms_, &Stub::AuthenticateAndDeliver, deliver);
  }

  static rkl::testing::TestPki* pki_;
  static HsmInstance* hsm1_;
  static HsmInstance* hsm_;
  static uint64_t pk_, mak_, pk1_, mak1_, pr_;
  static Bytes pu_;
  std::unique_ptr<Stub> kms_;
  std::unique_ptr<Stub> mtms_;
};

rkl::testing::TestPki* HsmGrpcTest::pki_ = nullptr;
HsmInstance* HsmGrpcTest::hsm1_ = nullptr;
HsmInstance* HsmGrpcTest::hsm_ = nullptr;
uint64_t HsmGrpcTest::pk_ = 0, HsmGrpcTest::mak_ = 0, HsmGrpcTest::pk1_ = 0, HsmGrpcTest::mak1_ = 0,
         HsmGrpcTest::pr_ = 0;
Bytes HsmGrpcTest::pu_;

TEST_F(HsmGrpcTest, HealthIsServing) {
  auto serving = rpc::CheckHealth(hsm_->Channel(kKms), "rkl.v1.Hsm", absl::Seconds(30));
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_TRUE(*serving);
}

TEST_F(HsmGrpcTest, TranslateBatchItemsAreAuditedUnderTheirOwnRequestIds) {
  // Item A names its flow's id; item B's is malformed, so B's record has the call's own id.
  TestTerminal a = TestTerminal::Create("SN-RID-A");
  TestTerminal b = TestTerminal::Create("SN-RID-B");
  const std::string call_id(32, 'c'), id_a(32, 'a');
  v1::TranslateTransportKeysRequest req;
  *req.add_items() = TranslateRequest(a);
  *req.add_items() = TranslateRequest(b);
  req.add_request_ids(id_a);
  req.add_request_ids("not a request id");
  auto ctx = rpc::MakeClientContext(testing::kRpcTimeout, call_id);
  v1::TranslateTransportKeysResponse resp;
  const grpc::Status s = mtms_->TranslateTransportKeys(ctx.get(), req, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(resp.outcomes_size(), 2);
  for (const auto& o : resp.outcomes()) EXPECT_EQ(o.code(), 0) << o.message();
  ASSERT_TRUE(hsm1_->daemon().audit_log().Seal().ok());
  pqxx::connection conn(hsm1_->dsn());
  pqxx::work tx(conn);
  auto translated_under = [&](const std::string& sn) {
    pqxx::result r = tx.exec_params(
        "SELECT request_id FROM hsm_audit WHERE action = 'tk.translate' AND sn = $1", sn);
    return r.size() == 1 ? r[0][0].as<std::string>() : std::string("(none or several)");
  };
  EXPECT_EQ(translated_under(a.sn), id_a);
  EXPECT_EQ(translated_under(b.sn), call_id);
}

TEST_F(HsmGrpcTest, TranslateBatchGivesEachItemTheSingleCommandsAnswer) {
  TestTerminal a = TestTerminal::Create("SN-BATCH-A");
  TestTerminal b = TestTerminal::Create("SN-BATCH-B", crypto::KeyAlgorithm::kTdes2);
  v1::TranslateTransportKeysRequest req;
  *req.add_items() = TranslateRequest(a);
  v1::TranslateTransportKeyRequest rejected = TranslateRequest(b);
  rejected.set_ctk_pu(Str(b.CtkPu(pu_, "SN-BATCH-A")));  // under A's label
  SetEvidence(rejected);
  *req.add_items() = rejected;
  v1::TranslateTransportKeyRequest unknown = TranslateRequest(b);
  unknown.set_pr_index(987654);
  *req.add_items() = unknown;
  v1::TranslateTransportKeyRequest forged = TranslateRequest(b);
  forged.set_sn("SN-BATCH-A");  // b's package, presented for A
  *req.add_items() = forged;
  *req.add_items() = TranslateRequest(b);
  auto r = Call(*mtms_, &Stub::TranslateTransportKeys, req);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->outcomes_size(), req.items_size());
  for (int i = 0; i < req.items_size(); ++i) {
    SCOPED_TRACE(i);
    auto single = Call(*mtms_, &Stub::TranslateTransportKey, req.items(i));
    const v1::TranslateTransportKeyOutcome& outcome = r->outcomes(i);
    EXPECT_EQ(outcome.code(), static_cast<int>(single.status().code()));
    EXPECT_EQ(outcome.message(), std::string(single.status().message()));
    if (single.ok()) {
      EXPECT_EQ(outcome.ctk_pk(), single->ctk_pk());
    } else {
      EXPECT_TRUE(outcome.ctk_pk().empty());
    }
  }
  EXPECT_EQ(r->outcomes(0).code(), 0);
  EXPECT_EQ(r->outcomes(1).code(), static_cast<int>(grpc::StatusCode::UNAUTHENTICATED));
  EXPECT_EQ(r->outcomes(1).message(), "transport key rejected");
  EXPECT_EQ(r->outcomes(2).code(), static_cast<int>(grpc::StatusCode::NOT_FOUND));
  EXPECT_EQ(r->outcomes(3).code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED));
  EXPECT_EQ(r->outcomes(4).code(), 0);
  // A Ctk_pk from the batch imports like any other.
  auto imported = Call(*kms_, &Stub::ImportAndChallenge,
                       ImportRequest(b.sn, r->outcomes(4).ctk_pk(), crypto::RandomBytes(8)));
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->imported().tek_kcv(), b.TekKcv());

  // The call as a whole: no items, or more than 64.
  EXPECT_EQ(Call(*mtms_, &Stub::TranslateTransportKeys, v1::TranslateTransportKeysRequest())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  v1::TranslateTransportKeysRequest too_many;
  for (int i = 0; i < 65; ++i) *too_many.add_items() = TranslateRequest(a);
  EXPECT_EQ(Call(*mtms_, &Stub::TranslateTransportKeys, too_many).status(),
            absl::InvalidArgumentError("items: between 1 and 64 translate commands"));
}

// Calls `method` on `stub` with an empty request; its status.
absl::Status CallEmpty(Stub& stub, const std::string& method) {
  if (method == "GenerateRsaKeyPair")
    return Call(stub, &Stub::GenerateRsaKeyPair, v1::GenerateRsaKeyPairRequest()).status();
  if (method == "GetPublicKey")
    return Call(stub, &Stub::GetPublicKey, v1::GetPublicKeyRequest()).status();
  if (method == "GetCertifiableKey")
    return Call(stub, &Stub::GetCertifiableKey, v1::GetPublicKeyRequest()).status();
  if (method == "TranslateTransportKey")
    return Call(stub, &Stub::TranslateTransportKey, v1::TranslateTransportKeyRequest()).status();
  if (method == "TranslateTransportKeys")
    return Call(stub, &Stub::TranslateTransportKeys, v1::TranslateTransportKeysRequest()).status();
  if (method == "BeginCeremony")
    return Call(stub, &Stub::BeginCeremony, v1::BeginCeremonyRequest()).status();
  if (method == "GetCeremony")
    return Call(stub, &Stub::GetCeremony, v1::GetCeremonyRequest()).status();
  if (method == "AddComponent")
    return Call(stub, &Stub::AddComponent, v1::AddComponentRequest()).status();
  if (method == "CompleteCeremony")
    return Call(stub, &Stub::CompleteCeremony, v1::CompleteCeremonyRequest()).status();
  if (method == "AuthChallenge")
    return Call(stub, &Stub::AuthChallenge, v1::AuthChallengeRequest()).status();
  if (method == "VerifyInstallProof")
    return Call(stub, &Stub::VerifyInstallProof, v1::VerifyInstallProofRequest()).status();
  if (method == "ImportAndChallenge")
    return Call(stub, &Stub::ImportAndChallenge, v1::ImportAndChallengeRequest()).status();
  if (method == "AuthenticateAndDeliver")
    return Call(stub, &Stub::AuthenticateAndDeliver, v1::AuthenticateAndDeliverRequest()).status();
  if (method == "DestroyTerminalKeys")
    return Call(stub, &Stub::DestroyTerminalKeys, v1::DestroyTerminalKeysRequest()).status();
  if (method == "GenerateKdhKey")
    return Call(stub, &Stub::GenerateKdhKey, v1::GenerateKdhKeyRequest()).status();
  if (method == "BuildKeyToken")
    return Call(stub, &Stub::BuildKeyToken, v1::BuildKeyTokenRequest()).status();
  if (method == "VerifyKeyTokenInstallProof")
    return Call(stub, &Stub::VerifyKeyTokenInstallProof, v1::VerifyKeyTokenInstallProofRequest())
        .status();
  if (method == "GetKeyInfo")
    return Call(stub, &Stub::GetKeyInfo, v1::GetKeyInfoRequest()).status();
  if (method == "DeleteKey") return Call(stub, &Stub::DeleteKey, v1::DeleteKeyRequest()).status();
  if (method == "VerifyAuditChain")
    return Call(stub, &Stub::VerifyAuditChain, v1::VerifyAuditChainRequest()).status();
  if (method == "AnchorAuditChain")
    return Call(stub, &Stub::AnchorAuditChain, v1::Empty()).status();
  if (method == "GenerateRandom")
    return Call(stub, &Stub::GenerateRandom, v1::GenerateRandomRequest()).status();
  return absl::InternalError("unknown method " + method);
}

TEST_F(HsmGrpcTest, EachRoleServesItsOwnServiceAndAdminsOnlyManageKeys) {
  // Who may call what (docs/hsm.md): every method of the service, on each role, for each
  // kind of caller. An admitted call gets past authorization (its empty request is then
  // refused for what it is); anyone else is refused by name.
  const std::vector<std::string> mtms_role = {"GenerateRsaKeyPair", "GetPublicKey",
                                              "TranslateTransportKey", "TranslateTransportKeys",
                                              "GenerateRandom"};
  const std::vector<std::string> kms_role = {
      "AuthChallenge",          "VerifyInstallProof",  "ImportAndChallenge",
      "AuthenticateAndDeliver", "DestroyTerminalKeys", "GenerateRandom",
      "GenerateKdhKey",         "BuildKeyToken",       "VerifyKeyTokenInstallProof"};
  const std::vector<std::string> custodian = {"BeginCeremony", "GetCeremony", "AddComponent",
                                              "CompleteCeremony"};
  const std::vector<std::string> admin = {"GetCeremony", "GetKeyInfo", "DeleteKey",
                                          "VerifyAuditChain", "AnchorAuditChain"};
  // Both roles, for the CA only.
  const std::vector<std::string> ca = {"GetCertifiableKey"};
  std::vector<std::string> all = admin;
  all.insert(all.end(), ca.begin(), ca.end());
  all.insert(all.end(), custodian.begin(), custodian.end());
  all.insert(all.end(), mtms_role.begin(), mtms_role.end());
  all.insert(all.end(), kms_role.begin(), kms_role.end());
  // Every RPC of the service is in the table.
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("rkl.v1.Hsm");
  ASSERT_NE(service, nullptr);
  EXPECT_EQ(static_cast<int>(std::set<std::string>(all.begin(), all.end()).size()),
            service->method_count());
  auto contains = [](const std::vector<std::string>& v, const std::string& m) {
    return std::find(v.begin(), v.end(), m) != v.end();
  };
  struct Role {
    HsmInstance* hsm;
    std::string service;
    const std::vector<std::string>* methods;
  };
  for (const Role& role : {Role{hsm1_, kMtms, &mtms_role}, Role{hsm_, kKms, &kms_role}}) {
    for (const std::string& caller : {std::string(kMtms), std::string(kKms), std::string(kAlice),
                                      std::string(kCarol), std::string("ca")}) {
      auto stub = role.hsm->Stub(caller);
      for (const std::string& method : std::set<std::string>(all.begin(), all.end())) {
        SCOPED_TRACE(role.service + " HSM, " + caller + " calls " + method);
        const bool allowed = (caller == role.service && contains(*role.methods, method)) ||
                             (caller == kAlice && contains(admin, method)) ||
                             (caller == kCarol && contains(custodian, method)) ||
                             (caller == "ca" && contains(ca, method));
        const absl::Status denied =
            absl::PermissionDeniedError("caller '" + caller + "' may not call " + method);
        const absl::Status s = CallEmpty(*stub, method);
        if (allowed) {
          EXPECT_NE(s, denied);
        } else {
          EXPECT_EQ(s, denied);
        }
      }
    }
  }
}

TEST_F(HsmGrpcTest, RefusalsAreAudited) {
  auto admin = hsm_->Stub(kAlice);
  (void)Call(*admin, &Stub::AuthenticateAndDeliver, v1::AuthenticateAndDeliverRequest());
  ASSERT_TRUE(hsm_->daemon().audit_log().Seal().ok());
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  auto row =
      tx.exec1("SELECT actor, action, result, detail FROM hsm_audit ORDER BY seq DESC LIMIT 1");
  EXPECT_EQ(row[0].as<std::string>(), kAlice);
  EXPECT_EQ(row[1].as<std::string>(), "rpc.refused");
  EXPECT_EQ(row[2].as<std::string>(), "PERMISSION_DENIED");
  EXPECT_TRUE(row[3].as<std::string>().starts_with("method=AuthenticateAndDeliver "))
      << row[3].as<std::string>();
}

TEST_F(HsmGrpcTest, ClientWithoutCertificateCannotConnect) {
  rpc::ChannelOptions options;
  options.tls = pki_->Anonymous();
  options.authority = "hsm-kms";
  auto channel = rpc::MakeChannel("127.0.0.1:" + std::to_string(hsm_->daemon().port()), options);
  ASSERT_TRUE(channel.ok());
  auto stub = v1::Hsm::NewStub(*channel);
  v1::GenerateRandomRequest req;
  req.set_length(8);
  EXPECT_EQ(Call(*stub, &Stub::GenerateRandom, req).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(HsmGrpcTest, GenerateRandomForTheRolesService) {
  v1::GenerateRandomRequest req;
  req.set_length(24);
  auto r = Call(*kms_, &Stub::GenerateRandom, req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->random().size(), 24u);
  req.set_length(2000);
  EXPECT_EQ(Call(*kms_, &Stub::GenerateRandom, req).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmGrpcTest, RsaKeyPairAndPublicKey) {
  v1::GetPublicKeyRequest get;
  get.set_key_index(pr_);
  auto pub = Call(*mtms_, &Stub::GetPublicKey, get);
  ASSERT_TRUE(pub.ok()) << pub.status();
  EXPECT_EQ(Raw(pub->public_key_der()), pu_);
  get.set_key_index(999999);
  EXPECT_EQ(Call(*mtms_, &Stub::GetPublicKey, get).status().code(), absl::StatusCode::kNotFound);
  get.set_key_index(pk1_);
  EXPECT_EQ(Call(*mtms_, &Stub::GetPublicKey, get).status().code(),
            absl::StatusCode::kPermissionDenied);
  v1::GenerateRsaKeyPairRequest gen;
  gen.set_bits(4096);
  gen.set_label("too-big");
  EXPECT_EQ(Call(*mtms_, &Stub::GenerateRsaKeyPair, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmGrpcTest, CeremonyStatusAndDualControl) {
  auto carol = hsm_->Stub(kCarol);
  const v1::BeginCeremonyRequest begin = BeginRequest("PK-DUAL", v1::KEY_TYPE_PK);
  auto begun = Call(*carol, &Stub::BeginCeremony, begin);
  ASSERT_TRUE(begun.ok()) << begun.status();
  Bytes key = Raw(begun->component_encryption_key_der());
  EXPECT_EQ(crypto::PublicKey::FromDer(key)->Bits(), 3072);

  v1::AddComponentRequest add = ComponentRequest(*begun, crypto::RandomSecret(32));
  ASSERT_TRUE(Call(*carol, &Stub::AddComponent, add).ok());
  // Single custodian: a second component from carol is refused, completion is refused.
  add = ComponentRequest(*begun, crypto::RandomSecret(32));
  EXPECT_EQ(Call(*carol, &Stub::AddComponent, add).status().code(),
            absl::StatusCode::kAlreadyExists);
  const v1::CompleteCeremonyRequest complete = CompleteRequest(*begun);
  EXPECT_EQ(Call(*carol, &Stub::CompleteCeremony, complete).status().code(),
            absl::StatusCode::kFailedPrecondition);

  v1::GetCeremonyRequest get;
  get.set_ceremony_id(begun->ceremony_id());
  auto status = Call(*carol, &Stub::GetCeremony, get);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->state(), v1::CEREMONY_STATE_OPEN);
  EXPECT_EQ(status->components_added(), 1u);
  EXPECT_THAT(status->custodians(), ::testing::ElementsAre(kCarol));
  EXPECT_EQ(Raw(status->component_encryption_key_der()), key);

  auto dave = hsm_->Stub(kDave);
  ASSERT_TRUE(Call(*dave, &Stub::AddComponent, add).ok());
  auto done = Call(*dave, &Stub::CompleteCeremony, complete);
  ASSERT_TRUE(done.ok()) << done.status();
  status = Call(*carol, &Stub::GetCeremony, get);
  EXPECT_EQ(status->state(), v1::CEREMONY_STATE_COMPLETED);
  EXPECT_EQ(status->result_key_index(), done->key_index());
  EXPECT_TRUE(status->component_encryption_key_der().empty());
  // No component rows remain.
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM hsm_ceremony_component")[0].as<int>(), 0);
  // Completing again is refused.
  EXPECT_EQ(Call(*dave, &Stub::CompleteCeremony, complete).status().code(),
            absl::StatusCode::kFailedPrecondition);
  get.set_ceremony_id(std::string(32, 'A'));  // well formed, never issued
  EXPECT_EQ(Call(*carol, &Stub::GetCeremony, get).status().code(), absl::StatusCode::kNotFound);
  // Not what BeginCeremony issues (32 upper-case hex digits): refused before any lookup,
  // and never echoed back, however long.
  for (std::string bad :
       {std::string("no-such-ceremony"), std::string(32, 'a'), std::string(1 << 16, 'A')}) {
    get.set_ceremony_id(bad);
    auto r = Call(*carol, &Stub::GetCeremony, get);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_LT(r.status().message().size(), 100u);
  }
}

// Issue 20: an admin — even holding two admin certificates — cannot run a ceremony; two
// components from one custodian are refused. Nothing is created; every refusal is audited.
TEST_F(HsmGrpcTest, CeremoniesNeedTwoDistinctCustodians) {
  // Other tests of the suite are refused ceremony commands too: count this test's own.
  auto admin_refusals = [this] {
    EXPECT_TRUE(hsm_->daemon().audit_log().Seal().ok());
    pqxx::connection conn(hsm_->dsn());
    pqxx::work tx(conn);
    return tx
        .exec1(
            "SELECT count(*) FROM hsm_audit WHERE actor IN ('admin:alice', 'admin:bob')"
            " AND action = 'rpc.refused' AND split_part(detail, ' ', 1) IN"
            " ('method=BeginCeremony', 'method=AddComponent', 'method=CompleteCeremony')"
            " AND result = 'PERMISSION_DENIED'")[0]
        .as<int>();
  };
  const int refusals_before = admin_refusals();
  auto alice = hsm_->Stub(kAlice);
  auto bob = hsm_->Stub(kBob);
  auto carol = hsm_->Stub(kCarol);
  const v1::BeginCeremonyRequest begin = BeginRequest("PK-ALONE", v1::KEY_TYPE_PK);
  EXPECT_EQ(Call(*alice, &Stub::BeginCeremony, begin).status(),
            absl::PermissionDeniedError("caller 'admin:alice' may not call BeginCeremony"));
  auto begun = Call(*carol, &Stub::BeginCeremony, begin);
  ASSERT_TRUE(begun.ok()) << begun.status();
  const v1::AddComponentRequest add = ComponentRequest(*begun, crypto::RandomSecret(32));
  for (Stub* admin : {alice.get(), bob.get()}) {
    EXPECT_EQ(Call(*admin, &Stub::AddComponent, add).status().code(),
              absl::StatusCode::kPermissionDenied);
  }
  ASSERT_TRUE(Call(*carol, &Stub::AddComponent, add).ok());
  EXPECT_EQ(Call(*carol, &Stub::AddComponent, add).status().code(),
            absl::StatusCode::kAlreadyExists);
  const v1::CompleteCeremonyRequest complete = CompleteRequest(*begun);
  EXPECT_EQ(Call(*alice, &Stub::CompleteCeremony, complete).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Call(*carol, &Stub::CompleteCeremony, complete).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(hsm_->daemon().audit_log().Seal().ok());
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM hsm_key WHERE label = 'PK-ALONE'")[0].as<int>(), 0);
  tx.commit();
  EXPECT_EQ(admin_refusals() - refusals_before, 4);
}

TEST_F(HsmGrpcTest, ExpiredCeremonyIsRefused) {
  auto carol = hsm_->Stub(kCarol);
  v1::BeginCeremonyRequest begin = BeginRequest("MAK-EXPIRES", v1::KEY_TYPE_MAK);
  begin.set_ttl_seconds(30);
  auto begun = Call(*carol, &Stub::BeginCeremony, begin);
  ASSERT_TRUE(begun.ok()) << begun.status();
  const v1::AddComponentRequest add = ComponentRequest(*begun, crypto::RandomSecret(32));
  ASSERT_TRUE(Call(*carol, &Stub::AddComponent, add).ok());
  hsm_->clock().Advance(absl::Seconds(31));
  auto dave = hsm_->Stub(kDave);
  auto late = Call(*dave, &Stub::AddComponent, add);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(late.status().message(), HasSubstr("expired"));
  v1::GetCeremonyRequest get;
  get.set_ceremony_id(begun->ceremony_id());
  auto status = Call(*carol, &Stub::GetCeremony, get);
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status->state(), v1::CEREMONY_STATE_EXPIRED);
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  EXPECT_EQ(tx.exec_params1("SELECT count(*) FROM hsm_ceremony_component WHERE ceremony_id = $1",
                            begun->ceremony_id())[0]
                .as<int>(),
            0);
  EXPECT_TRUE(tx.exec_params1("SELECT sealed IS NULL FROM hsm_key k JOIN hsm_ceremony c ON "
                              "c.ceremony_key_index = k.key_index WHERE c.ceremony_id = $1",
                              begun->ceremony_id())[0]
                  .as<bool>());
}

TEST_F(HsmGrpcTest, TranslateAndImport) {
  TestTerminal t = TestTerminal::Create("SN-GRPC-1");
  auto imported = Enrol(t);
  EXPECT_EQ(imported.tek_kcv(), t.TekKcv());
  EXPECT_EQ(imported.auk_kcv(), t.AukKcv());
  EXPECT_EQ(imported.algorithm(), v1::KEY_ALGORITHM_AES128);
  EXPECT_EQ(imported.created_at_unix_ms(), kCreatedAt);
  auto admin = hsm_->Stub(kAlice);
  v1::GetKeyInfoRequest info_req;
  info_req.set_key_index(imported.tek_index());
  auto info = Call(*admin, &Stub::GetKeyInfo, info_req);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->type(), v1::KEY_TYPE_TEK);
  EXPECT_EQ(info->usage(), v1::KEY_USAGE_EXPORT_KEK);
  EXPECT_EQ(info->bound_sn(), t.sn);
  EXPECT_EQ(info->kcv(), t.TekKcv());
  EXPECT_EQ(info->state(), v1::KEY_STATE_ACTIVE);
}

TEST_F(HsmGrpcTest, TranslateRefusals) {
  TestTerminal t = TestTerminal::Create("SN-GRPC-2");
  auto req = TranslateRequest(t);
  req.set_sn("SN-OTHER");  // Ctk_Pu is bound to SN-GRPC-2 by its OAEP label
  SetEvidence(req);
  EXPECT_EQ(Call(*mtms_, &Stub::TranslateTransportKey, req).status(),
            absl::UnauthenticatedError("transport key rejected"));
  req = TranslateRequest(t);
  req.set_sn("bad sn!");
  EXPECT_EQ(Call(*mtms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req = TranslateRequest(t);
  req.set_ctk_pu("short");
  EXPECT_EQ(Call(*mtms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req = TranslateRequest(t);
  req.set_algorithm(v1::KEY_ALGORITHM_UNSPECIFIED);
  EXPECT_EQ(Call(*mtms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req = TranslateRequest(t);
  req.set_pr_index(pk1_);  // PK used as the decryption key
  EXPECT_EQ(Call(*mtms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kPermissionDenied);
  req = TranslateRequest(t);
  req.set_mak_index(987654);
  EXPECT_EQ(Call(*mtms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kNotFound);
  // Without the operator's evidence, or with a forged signature: refused before decryption.
  req = TranslateRequest(t);
  req.clear_package_signature();
  EXPECT_EQ(Call(*mtms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kUnauthenticated);
  req = TranslateRequest(t);
  std::string forged = req.package_signature();
  forged.back() ^= 1;
  req.set_package_signature(forged);
  auto r = Call(*mtms_, &Stub::TranslateTransportKey, req);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(r.status().message(), HasSubstr("package_signature"));
  // HSM #2 translates nothing, whoever asks.
  EXPECT_EQ(Call(*kms_, &Stub::TranslateTransportKey, TranslateRequest(t)).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(HsmGrpcTest, ImportRefusals) {
  TestTerminal t = TestTerminal::Create("SN-GRPC-3");
  auto ctk = Call(*mtms_, &Stub::TranslateTransportKey, TranslateRequest(t));
  ASSERT_TRUE(ctk.ok());
  const Bytes rnd1 = crypto::RandomBytes(16);
  std::string bad_mac = ctk->ctk_pk();
  bad_mac.back() ^= 1;
  EXPECT_EQ(Call(*kms_, &Stub::ImportAndChallenge, ImportRequest(t.sn, bad_mac, rnd1)).status(),
            absl::UnauthenticatedError("ctk_pk: MAC does not verify"));
  pqxx::connection conn(hsm_->dsn());
  {
    pqxx::work tx(conn);
    EXPECT_EQ(
        tx.exec_params1("SELECT count(*) FROM hsm_key WHERE bound_sn = $1", t.sn)[0].as<int>(), 0);
  }
  EXPECT_EQ(
      Call(*kms_, &Stub::ImportAndChallenge, ImportRequest("SN-GRPC-OTHER", ctk->ctk_pk(), rnd1))
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Call(*kms_, &Stub::ImportAndChallenge, ImportRequest(t.sn, "RKL1 is not enough", rnd1))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Call(*kms_, &Stub::ImportAndChallenge, ImportRequest(t.sn, std::string(600, 'x'), rnd1))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto swapped = ImportRequest(t.sn, ctk->ctk_pk(), rnd1);
  swapped.mutable_import()->set_pk_index(mak_);
  EXPECT_EQ(Call(*kms_, &Stub::ImportAndChallenge, swapped).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(HsmGrpcTest, AuthenticationDeliveryAndInstallProof) {
  TestTerminal t = TestTerminal::Create("SN-GRPC-4");
  auto imported = Enrol(t);
  Bytes rnd1 = crypto::RandomBytes(16);
  v1::AuthChallengeRequest ch;
  ch.set_auk_index(imported.auk_index());
  ch.set_sn(t.sn);
  ch.set_rnd1(Str(rnd1));
  auto challenge = Call(*kms_, &Stub::AuthChallenge, ch);
  ASSERT_TRUE(challenge.ok()) << challenge.status();
  Bytes rnd2 = Raw(challenge->rnd2());
  ASSERT_TRUE(protocol::VerifyCrnd1(t.AuthKeys(), rnd1, rnd2, Raw(challenge->crnd1())).ok());
  v1::AuthenticateAndDeliverRequest deliver;
  auto* verify = deliver.mutable_verify();
  verify->set_auk_index(imported.auk_index());
  verify->set_sn(t.sn);
  verify->set_rnd1(Str(rnd1));
  verify->set_rnd2(Str(rnd2));
  verify->set_crnd2(challenge->crnd1());  // reflection
  deliver.set_algorithm(v1::KEY_ALGORITHM_AES128);
  deliver.set_tek_index(imported.tek_index());
  EXPECT_EQ(Call(*kms_, &Stub::AuthenticateAndDeliver, deliver).status().code(),
            absl::StatusCode::kUnauthenticated);
  verify->set_crnd2(Str(protocol::MakeCrnd2(t.AuthKeys(), rnd1, rnd2).value()));
  verify->set_sn("SN-GRPC-OTHER");
  EXPECT_EQ(Call(*kms_, &Stub::AuthenticateAndDeliver, deliver).status().code(),
            absl::StatusCode::kPermissionDenied);
  verify->set_sn(t.sn);
  deliver.set_tek_index(imported.auk_index());  // the AUK is no KEK
  EXPECT_EQ(Call(*kms_, &Stub::AuthenticateAndDeliver, deliver).status().code(),
            absl::StatusCode::kPermissionDenied);
  deliver.set_tek_index(imported.tek_index());
  auto out = Call(*kms_, &Stub::AuthenticateAndDeliver, deliver);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->block().kek_kcv(), t.TekKcv());
  auto delivered = keyblock::ParseTmkBlock(t.tk.tek, t.tk.algorithm, out->block().key_block());
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_EQ(delivered->tmk_kcv, out->tmk().kcv());
  ch.set_rnd1("short");
  EXPECT_EQ(Call(*kms_, &Stub::AuthChallenge, ch).status().code(),
            absl::StatusCode::kInvalidArgument);

  v1::VerifyInstallProofRequest proof;
  proof.set_auk_index(imported.auk_index());
  proof.set_sn(t.sn);
  proof.set_tmk_kcv(out->tmk().kcv());
  proof.set_rnd1(Str(rnd1));
  proof.set_rnd2(Str(rnd2));
  Bytes p =
      protocol::MakeInstallProof(t.AuthKeys(), t.sn, FromHex(out->tmk().kcv()).value(), rnd1, rnd2)
          .value();
  proof.set_proof(Str(p));
  EXPECT_TRUE(Call(*kms_, &Stub::VerifyInstallProof, proof).ok());
  p[3] ^= 1;
  proof.set_proof(Str(p));
  EXPECT_EQ(Call(*kms_, &Stub::VerifyInstallProof, proof).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(HsmGrpcTest, CompositeCommandsOverGrpc) {
  TestTerminal t = TestTerminal::Create("SN-GRPC-COMPOSITE");
  auto ctk = Call(*mtms_, &Stub::TranslateTransportKey, TranslateRequest(t));
  ASSERT_TRUE(ctk.ok()) << ctk.status();
  Bytes rnd1 = crypto::RandomBytes(16);
  auto begun = Call(*kms_, &Stub::ImportAndChallenge, ImportRequest(t.sn, ctk->ctk_pk(), rnd1));
  ASSERT_TRUE(begun.ok()) << begun.status();
  EXPECT_EQ(begun->imported().auk_kcv(), t.AukKcv());
  Bytes rnd2 = Raw(begun->challenge().rnd2());
  ASSERT_TRUE(
      protocol::VerifyCrnd1(t.AuthKeys(), rnd1, rnd2, Raw(begun->challenge().crnd1())).ok());

  v1::AuthenticateAndDeliverRequest deliver;
  auto* verify = deliver.mutable_verify();
  verify->set_auk_index(begun->imported().auk_index());
  verify->set_sn(t.sn);
  verify->set_rnd1(Str(rnd1));
  verify->set_rnd2(Str(rnd2));
  verify->set_crnd2(begun->challenge().crnd1());  // reflection: refused, nothing made
  deliver.set_algorithm(v1::KEY_ALGORITHM_AES128);
  deliver.set_tek_index(begun->imported().tek_index());
  EXPECT_EQ(Call(*kms_, &Stub::AuthenticateAndDeliver, deliver).status().code(),
            absl::StatusCode::kUnauthenticated);
  {
    pqxx::connection conn(hsm_->dsn());
    pqxx::work tx(conn);
    EXPECT_EQ(tx.exec_params1("SELECT count(*) FROM hsm_key WHERE key_type = 6 AND bound_sn = $1",
                              t.sn)[0]
                  .as<int64_t>(),
              0);
  }
  verify->set_crnd2(Str(protocol::MakeCrnd2(t.AuthKeys(), rnd1, rnd2).value()));
  auto delivered = Call(*kms_, &Stub::AuthenticateAndDeliver, deliver);
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_TRUE(delivered->tmk().created());
  EXPECT_EQ(delivered->block().kek_kcv(), t.TekKcv());
  auto block = keyblock::ParseTmkBlock(t.tk.tek, t.tk.algorithm, delivered->block().key_block());
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->tmk_kcv, delivered->tmk().kcv());
}

TEST_F(HsmGrpcTest, KeyInfoAndDelete) {
  TestTerminal t = TestTerminal::Create("SN-GRPC-5", crypto::KeyAlgorithm::kTdes2);
  auto imported = Enrol(t);
  auto tmk = Deliver(t, imported.auk_index(), imported.tek_index());
  ASSERT_TRUE(tmk.ok()) << tmk.status();
  auto admin = hsm_->Stub(kAlice);
  v1::GetKeyInfoRequest info_req;
  info_req.set_key_index(tmk->tmk().tmk_index());
  auto info = Call(*admin, &Stub::GetKeyInfo, info_req);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->type(), v1::KEY_TYPE_TMK);
  EXPECT_EQ(info->algorithm(), v1::KEY_ALGORITHM_TDES2);
  EXPECT_EQ(info->label(), "tmk:SN-GRPC-5");
  EXPECT_EQ(info->kek_index(), imported.tek_index());
  info_req.set_key_index(0);
  EXPECT_EQ(Call(*admin, &Stub::GetKeyInfo, info_req).status().code(),
            absl::StatusCode::kInvalidArgument);
  info_req.set_key_index(123456789);
  EXPECT_EQ(Call(*admin, &Stub::GetKeyInfo, info_req).status().code(), absl::StatusCode::kNotFound);

  v1::DeleteKeyRequest del;
  del.set_key_index(tmk->tmk().tmk_index());
  ASSERT_TRUE(Call(*admin, &Stub::DeleteKey, del).ok());
  info_req.set_key_index(tmk->tmk().tmk_index());
  EXPECT_EQ(Call(*admin, &Stub::GetKeyInfo, info_req)->state(), v1::KEY_STATE_DELETED);
  del.set_key_index(123456789);
  EXPECT_EQ(Call(*admin, &Stub::DeleteKey, del).status().code(), absl::StatusCode::kNotFound);
  // A deleted TMK cannot be delivered; the next delivery makes a new one.
  auto next = Deliver(t, imported.auk_index(), imported.tek_index());
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE(next->tmk().created());
  EXPECT_NE(next->tmk().tmk_index(), tmk->tmk().tmk_index());
}

TEST_F(HsmGrpcTest, RevocationDestroysTheTerminalsKeys) {
  TestTerminal t = TestTerminal::Create("SN-GRPC-REVOKED");
  auto imported = Enrol(t);
  auto tmk = Deliver(t, imported.auk_index(), imported.tek_index());
  ASSERT_TRUE(tmk.ok()) << tmk.status();
  v1::DestroyTerminalKeysRequest destroy;
  destroy.set_sn(t.sn);
  destroy.set_reason("stolen");
  auto destroyed = Call(*kms_, &Stub::DestroyTerminalKeys, destroy);
  ASSERT_TRUE(destroyed.ok()) << destroyed.status();
  EXPECT_THAT(destroyed->destroyed_key_indexes(),
              ::testing::UnorderedElementsAre(imported.tek_index(), imported.auk_index(),
                                              tmk->tmk().tmk_index()));
  auto admin = hsm_->Stub(kAlice);
  for (uint64_t index : destroyed->destroyed_key_indexes()) {
    v1::GetKeyInfoRequest info_req;
    info_req.set_key_index(index);
    EXPECT_EQ(Call(*admin, &Stub::GetKeyInfo, info_req)->state(), v1::KEY_STATE_DELETED);
  }
  EXPECT_EQ(Deliver(t, imported.auk_index(), imported.tek_index()).status().code(),
            absl::StatusCode::kNotFound);
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  EXPECT_EQ(tx.exec_params1("SELECT count(*) FROM hsm_key WHERE bound_sn = $1 AND "
                            "(state <> 3 OR sealed IS NOT NULL)",
                            t.sn)[0]
                .as<int>(),
            0);
}

TEST_F(HsmGrpcTest, CommandsAreCountedByNameAndResult) {
  const double ok = Commands(*hsm_, "GenerateRandom", "OK");
  const double invalid = Commands(*hsm_, "GenerateRandom", "INVALID_ARGUMENT");
  const double denied = Commands(*hsm_, "AuthenticateAndDeliver", "PERMISSION_DENIED");
  const double delivered = Commands(*hsm_, "AuthenticateAndDeliver", "OK");
  v1::GenerateRandomRequest req;
  req.set_length(8);
  ASSERT_TRUE(Call(*kms_, &Stub::GenerateRandom, req).ok());
  ASSERT_TRUE(Call(*kms_, &Stub::GenerateRandom, req).ok());
  req.set_length(2000);
  ASSERT_EQ(Call(*kms_, &Stub::GenerateRandom, req).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Refused by authorization, before the command runs: counted too.
  auto admin = hsm_->Stub(kAlice);
  ASSERT_EQ(Call(*admin, &Stub::AuthenticateAndDeliver, v1::AuthenticateAndDeliverRequest())
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Commands(*hsm_, "GenerateRandom", "OK"), ok + 2);
  EXPECT_EQ(Commands(*hsm_, "GenerateRandom", "INVALID_ARGUMENT"), invalid + 1);
  EXPECT_EQ(Commands(*hsm_, "AuthenticateAndDeliver", "PERMISSION_DENIED"), denied + 1);
  EXPECT_EQ(Commands(*hsm_, "AuthenticateAndDeliver", "OK"), delivered);
  EXPECT_EQ(Metric(*hsm_, "rkl_hsm_self_test_ok"), 1);
}

TEST_F(HsmGrpcTest, KeyGaugesFollowTheKeyTable) {
  const std::vector<std::string> types = {"rsa_private", "pk", "mak", "tek", "auk", "tmk"};
  const std::vector<std::string> states = {"active", "superseded", "deleted"};
  auto keys = [&](const std::string& type, const std::string& state) {
    return Metric(*hsm_, "rkl_hsm_keys", {{"type", type}, {"state", state}});
  };
  // Every type × state is a series, zeros included, and each is the table's count.
  auto check_against_table = [&] {
    pqxx::connection conn(hsm_->dsn());
    pqxx::work tx(conn);
    for (size_t t = 0; t < types.size(); ++t) {
      for (size_t s = 0; s < states.size(); ++s) {
        const auto n =
            tx.exec_params1("SELECT count(*) FROM hsm_key WHERE key_type = $1 AND state = $2",
                            static_cast<int>(t + 1), static_cast<int>(s + 1))[0]
                .as<int64_t>();
        EXPECT_EQ(keys(types[t], states[s]), static_cast<double>(n))
            << types[t] << "/" << states[s];
      }
    }
  };
  check_against_table();
  const double tek = keys("tek", "active"), auk = keys("auk", "active");
  const double tmk = keys("tmk", "active"), tmk_deleted = keys("tmk", "deleted");
  EXPECT_GE(keys("pk", "active"), 1);  // the suite's ceremony made one

  TestTerminal t = TestTerminal::Create("SN-METRICS-1");
  auto imported = Enrol(t);
  EXPECT_EQ(keys("tek", "active"), tek + 1);
  EXPECT_EQ(keys("auk", "active"), auk + 1);
  EXPECT_EQ(keys("tmk", "active"), tmk);
  auto delivered = Deliver(t, imported.auk_index(), imported.tek_index());
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_EQ(keys("tmk", "active"), tmk + 1);
  v1::DeleteKeyRequest del;
  del.set_key_index(delivered->tmk().tmk_index());
  ASSERT_TRUE(Call(*hsm_->Stub(kAlice), &Stub::DeleteKey, del).ok());
  EXPECT_EQ(keys("tmk", "active"), tmk);
  EXPECT_EQ(keys("tmk", "deleted"), tmk_deleted + 1);
  check_against_table();
  // No SN in any series (label values are enum names).
  const std::string exposition = hsm_->daemon().metrics().Render();
  EXPECT_THAT(exposition, HasSubstr("rkl_hsm_keys{"));
  EXPECT_THAT(exposition, Not(HasSubstr("SN-METRICS")));
}

TEST_F(HsmGrpcTest, AuditChainGaugesFollowTheChain) {
  // The daemon's sealer is off in this suite: records wait until Seal().
  ASSERT_TRUE(hsm_->daemon().audit_log().Seal().ok());
  auto chain = [&](const char* name) { return Metric(*hsm_, name, {{"chain", "hsm"}}); };
  int64_t head = 0;
  {
    pqxx::connection conn(hsm_->dsn());
    pqxx::work tx(conn);
    head = tx.exec1("SELECT coalesce(max(seq), 0) FROM hsm_audit")[0].as<int64_t>();
  }
  ASSERT_GT(head, 0);
  EXPECT_EQ(chain("rkl_audit_chain_records"), static_cast<double>(head));
  EXPECT_EQ(chain("rkl_audit_pending_records"), 0);
  EXPECT_EQ(chain("rkl_audit_oldest_pending_age_seconds"), 0);

  // A refusal is audited: one pending record, stamped by the daemon's clock.
  auto admin = hsm_->Stub(kAlice);
  (void)Call(*admin, &Stub::AuthenticateAndDeliver, v1::AuthenticateAndDeliverRequest());
  EXPECT_EQ(chain("rkl_audit_pending_records"), 1);
  EXPECT_EQ(chain("rkl_audit_oldest_pending_age_seconds"), 0);
  hsm_->clock().Advance(absl::Seconds(7));
  EXPECT_EQ(chain("rkl_audit_pending_records"), 1);
  EXPECT_EQ(chain("rkl_audit_oldest_pending_age_seconds"), 7);
  EXPECT_GE(chain("rkl_audit_seconds_since_last_seal"), 7);

  ASSERT_TRUE(hsm_->daemon().audit_log().Seal().ok());
  EXPECT_EQ(chain("rkl_audit_chain_records"), static_cast<double>(head + 1));
  EXPECT_EQ(chain("rkl_audit_pending_records"), 0);
  EXPECT_EQ(chain("rkl_audit_oldest_pending_age_seconds"), 0);
  // The chain's newest record is the refusal, 7 s old by the daemon's clock.
  EXPECT_EQ(chain("rkl_audit_seconds_since_last_seal"), 7);
}

TEST(HsmSelfTestPgTest, FailedSelfTestMeansNotServingAndRefusals) {
  auto pki = rkl::testing::TestPki::Create();
  ASSERT_TRUE(pki.ok());
  auto hsm = HsmInstance::Create(**pki, {.fail_self_test = true});
  ASSERT_TRUE(hsm.ok()) << hsm.status();
  EXPECT_FALSE((*hsm)->daemon().self_test().passed);
  auto channel = (*hsm)->Channel(kKms);
  auto service = rpc::CheckHealth(channel, "rkl.v1.Hsm", absl::Seconds(30));
  ASSERT_TRUE(service.ok()) << service.status();
  EXPECT_FALSE(*service);
  auto overall = rpc::CheckHealth(channel, "", absl::Seconds(30));
  ASSERT_TRUE(overall.ok());
  EXPECT_FALSE(*overall);
  auto stub = v1::Hsm::NewStub(channel);
  v1::AuthenticateAndDeliverRequest req;
  req.mutable_verify()->set_sn("SN-1");
  req.set_algorithm(v1::KEY_ALGORITHM_AES128);
  EXPECT_EQ(Call(*stub, &Stub::AuthenticateAndDeliver, req).status(),
            absl::FailedPreconditionError("HSM self-test failed"));
  v1::GenerateRandomRequest rnd;
  rnd.set_length(8);
  EXPECT_EQ(Call(*stub, &Stub::GenerateRandom, rnd).status(),
            absl::FailedPreconditionError("HSM self-test failed"));
  EXPECT_EQ(Metric(**hsm, "rkl_hsm_self_test_ok"), 0);
  EXPECT_EQ(Commands(**hsm, "GenerateRandom", "FAILED_PRECONDITION"), 1);
  EXPECT_EQ(Commands(**hsm, "AuthenticateAndDeliver", "FAILED_PRECONDITION"), 1);
  EXPECT_EQ(Commands(**hsm, "GenerateRandom", "OK"), 0);
}

}  // namespace
}  // namespace rkl::hsm
