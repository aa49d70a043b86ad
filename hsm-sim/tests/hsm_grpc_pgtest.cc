// Every rkl-hsm command over real gRPC with mTLS, on a real database: the positive path and
// the refusals (wrong caller, wrong usage, unknown index, malformed input, bad MAC, wrong SN,
// expired ceremony, single custodian).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "hsm_fixture.h"
#include "rkl/crypto/random.h"
#include "rkl/rpc/channel.h"
#include "rkl/rpc/health.h"
#include "test_terminal.h"

namespace rkl::hsm {
namespace {

using testing::Call;
using testing::EncryptComponent;
using ::testing::HasSubstr;
using testing::HsmInstance;
using testing::TestTerminal;
using Stub = v1::Hsm::Stub;

constexpr char kKms[] = "kms";
constexpr char kAlice[] = "admin:alice";
constexpr char kBob[] = "admin:bob";

std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }
Bytes Raw(const std::string& s) { return Bytes(s.begin(), s.end()); }

// One HSM (operational identity "kms") with PK, MAK and a work key pair, shared by the suite:
// the ceremonies' RSA-3072 keys are slow to make.
class HsmGrpcTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = rkl::testing::TestPki::Create().value().release();
    hsm_ = HsmInstance::Create(*pki_).value().release();
    auto pk = testing::RunCeremony(
        *hsm_, v1::KEY_TYPE_PK, "PK-TEST",
        {{kAlice, crypto::RandomSecret(32)}, {kBob, crypto::RandomSecret(32)}});
    auto mak = testing::RunCeremony(
        *hsm_, v1::KEY_TYPE_MAK, "MAK-TEST",
        {{kAlice, crypto::RandomSecret(32)}, {kBob, crypto::RandomSecret(32)}});
    ASSERT_TRUE(pk.ok()) << pk.status();
    ASSERT_TRUE(mak.ok()) << mak.status();
    pk_ = pk->key_index;
    mak_ = mak->key_index;
    auto stub = hsm_->Stub(kKms);
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
    delete pki_;
  }

  void SetUp() override { kms_ = hsm_->Stub(kKms); }

  v1::TranslateTransportKeyRequest TranslateRequest(const TestTerminal& t) {
    v1::TranslateTransportKeyRequest req;
    req.set_pr_index(pr_);
    req.set_ctk_pu(Str(t.CtkPu(pu_)));
    req.set_sn(t.sn);
    req.set_created_at_unix_ms(1700000000000);
    req.set_pk_index(pk_);
    req.set_mak_index(mak_);
    req.set_algorithm(static_cast<v1::KeyAlgorithm>(crypto::KeyAlgorithmCode(t.tk.algorithm)));
    return req;
  }

  // Translate and import for a terminal; returns the import response.
  v1::ImportTransportKeyResponse Enrol(const TestTerminal& t) {
    auto ctk = Call(*kms_, &Stub::TranslateTransportKey, TranslateRequest(t));
    EXPECT_TRUE(ctk.ok()) << ctk.status();
    v1::ImportTransportKeyRequest req;
    req.set_pk_index(pk_);
    req.set_mak_index(mak_);
    req.set_sn(t.sn);
    req.set_ctk_pk(ctk->ctk_pk());
    auto imported = Call(*kms_, &Stub::ImportTransportKey, req);
    EXPECT_TRUE(imported.ok()) << imported.status();
    return *imported;
  }

  v1::GenerateTmkResponse Tmk(const std::string& sn,
                              v1::KeyAlgorithm a = v1::KEY_ALGORITHM_AES128) {
    v1::GenerateTmkRequest req;
    req.set_sn(sn);
    req.set_algorithm(a);
    auto r = Call(*kms_, &Stub::GenerateTmk, req);
    EXPECT_TRUE(r.ok()) << r.status();
    return *r;
  }

  static rkl::testing::TestPki* pki_;
  static HsmInstance* hsm_;
  static uint64_t pk_, mak_, pr_;
  static Bytes pu_;
  std::unique_ptr<Stub> kms_;
};

rkl::testing::TestPki* HsmGrpcTest::pki_ = nullptr;
HsmInstance* HsmGrpcTest::hsm_ = nullptr;
uint64_t HsmGrpcTest::pk_ = 0, HsmGrpcTest::mak_ = 0, HsmGrpcTest::pr_ = 0;
Bytes HsmGrpcTest::pu_;

TEST_F(HsmGrpcTest, HealthIsServing) {
  auto serving = rpc::CheckHealth(hsm_->Channel(kKms), "rkl.v1.Hsm", absl::Seconds(30));
  ASSERT_TRUE(serving.ok()) << serving.status();
  EXPECT_TRUE(*serving);
}

TEST_F(HsmGrpcTest, TranslateBatchGivesEachItemTheSingleCommandsAnswer) {
  TestTerminal a = TestTerminal::Create("SN-BATCH-A");
  TestTerminal b = TestTerminal::Create("SN-BATCH-B", crypto::KeyAlgorithm::kTdes2);
  v1::TranslateTransportKeysRequest req;
  *req.add_items() = TranslateRequest(a);
  v1::TranslateTransportKeyRequest rejected = TranslateRequest(b);
  rejected.set_ctk_pu(Str(b.CtkPu(pu_, "SN-BATCH-A")));  // under A's label
  *req.add_items() = rejected;
  v1::TranslateTransportKeyRequest unknown = TranslateRequest(b);
  unknown.set_pr_index(987654);
  *req.add_items() = unknown;
  *req.add_items() = TranslateRequest(b);
  auto r = Call(*kms_, &Stub::TranslateTransportKeys, req);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->outcomes_size(), req.items_size());
  for (int i = 0; i < req.items_size(); ++i) {
    SCOPED_TRACE(i);
    auto single = Call(*kms_, &Stub::TranslateTransportKey, req.items(i));
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
  EXPECT_EQ(r->outcomes(3).code(), 0);
  // A Ctk_pk from the batch imports like any other.
  v1::ImportTransportKeyRequest import;
  import.set_pk_index(pk_);
  import.set_mak_index(mak_);
  import.set_sn(b.sn);
  import.set_ctk_pk(r->outcomes(3).ctk_pk());
  auto imported = Call(*kms_, &Stub::ImportTransportKey, import);
  ASSERT_TRUE(imported.ok()) << imported.status();
  EXPECT_EQ(imported->tek_kcv(), b.TekKcv());

  // The call as a whole: no items, or more than 64.
  EXPECT_EQ(Call(*kms_, &Stub::TranslateTransportKeys, v1::TranslateTransportKeysRequest())
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  v1::TranslateTransportKeysRequest too_many;
  for (int i = 0; i < 65; ++i) *too_many.add_items() = TranslateRequest(a);
  EXPECT_EQ(Call(*kms_, &Stub::TranslateTransportKeys, too_many).status(),
            absl::InvalidArgumentError("items: between 1 and 64 translate commands"));
}

TEST_F(HsmGrpcTest, OperationalCommandsRefuseOtherServices) {
  auto mtms = hsm_->Stub("mtms");  // a valid service certificate, not this HSM's owner
  auto expect_denied = [](const absl::Status& s, const std::string& method) {
    EXPECT_EQ(s, absl::PermissionDeniedError("caller 'mtms' may not call " + method));
  };
  expect_denied(Call(*mtms, &Stub::GenerateRsaKeyPair, v1::GenerateRsaKeyPairRequest()).status(),
                "GenerateRsaKeyPair");
  expect_denied(Call(*mtms, &Stub::GetPublicKey, v1::GetPublicKeyRequest()).status(),
                "GetPublicKey");
  expect_denied(
      Call(*mtms, &Stub::TranslateTransportKey, v1::TranslateTransportKeyRequest()).status(),
      "TranslateTransportKey");
  expect_denied(
      Call(*mtms, &Stub::TranslateTransportKeys, v1::TranslateTransportKeysRequest()).status(),
      "TranslateTransportKeys");
  expect_denied(Call(*mtms, &Stub::ImportTransportKey, v1::ImportTransportKeyRequest()).status(),
                "ImportTransportKey");
  expect_denied(Call(*mtms, &Stub::GenerateTmk, v1::GenerateTmkRequest()).status(), "GenerateTmk");
  expect_denied(Call(*mtms, &Stub::AuthChallenge, v1::AuthChallengeRequest()).status(),
                "AuthChallenge");
  expect_denied(Call(*mtms, &Stub::AuthVerify, v1::AuthVerifyRequest()).status(), "AuthVerify");
  expect_denied(Call(*mtms, &Stub::ExportKeyBlock, v1::ExportKeyBlockRequest()).status(),
                "ExportKeyBlock");
  expect_denied(Call(*mtms, &Stub::VerifyInstallProof, v1::VerifyInstallProofRequest()).status(),
                "VerifyInstallProof");
  expect_denied(Call(*mtms, &Stub::GetKeyInfo, v1::GetKeyInfoRequest()).status(), "GetKeyInfo");
  expect_denied(Call(*mtms, &Stub::ImportAndChallenge, v1::ImportAndChallengeRequest()).status(),
                "ImportAndChallenge");
  expect_denied(
      Call(*mtms, &Stub::AuthenticateAndDeliver, v1::AuthenticateAndDeliverRequest()).status(),
      "AuthenticateAndDeliver");
  expect_denied(Call(*mtms, &Stub::GenerateRandom, v1::GenerateRandomRequest()).status(),
                "GenerateRandom");
}

TEST_F(HsmGrpcTest, AdminCommandsRefuseServices) {
  auto expect_denied = [](const absl::Status& s, const std::string& method) {
    EXPECT_EQ(s, absl::PermissionDeniedError("caller 'kms' may not call " + method));
  };
  expect_denied(Call(*kms_, &Stub::BeginCeremony, v1::BeginCeremonyRequest()).status(),
                "BeginCeremony");
  expect_denied(Call(*kms_, &Stub::GetCeremony, v1::GetCeremonyRequest()).status(), "GetCeremony");
  expect_denied(Call(*kms_, &Stub::AddComponent, v1::AddComponentRequest()).status(),
                "AddComponent");
  expect_denied(Call(*kms_, &Stub::CompleteCeremony, v1::CompleteCeremonyRequest()).status(),
                "CompleteCeremony");
  expect_denied(Call(*kms_, &Stub::DeleteKey, v1::DeleteKeyRequest()).status(), "DeleteKey");
  expect_denied(Call(*kms_, &Stub::VerifyAuditChain, v1::Empty()).status(), "VerifyAuditChain");
}

TEST_F(HsmGrpcTest, RefusalsAreAudited) {
  auto mtms = hsm_->Stub("mtms");
  (void)Call(*mtms, &Stub::GenerateTmk, v1::GenerateTmkRequest());
  ASSERT_TRUE(hsm_->daemon().audit_log().Seal().ok());
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  auto row = tx.exec1("SELECT actor, action, result FROM hsm_audit ORDER BY seq DESC LIMIT 1");
  EXPECT_EQ(row[0].as<std::string>(), "mtms");
  EXPECT_EQ(row[1].as<std::string>(), "GenerateTmk");
  EXPECT_EQ(row[2].as<std::string>(), "PERMISSION_DENIED");
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

TEST_F(HsmGrpcTest, AdminsMayUseOperationalCommands) {
  auto admin = hsm_->Stub(kAlice);
  v1::GenerateRandomRequest req;
  req.set_length(24);
  auto r = Call(*admin, &Stub::GenerateRandom, req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->random().size(), 24u);
  req.set_length(2000);
  EXPECT_EQ(Call(*admin, &Stub::GenerateRandom, req).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmGrpcTest, RsaKeyPairAndPublicKey) {
  v1::GetPublicKeyRequest get;
  get.set_key_index(pr_);
  auto pub = Call(*kms_, &Stub::GetPublicKey, get);
  ASSERT_TRUE(pub.ok()) << pub.status();
  EXPECT_EQ(Raw(pub->public_key_der()), pu_);
  get.set_key_index(999999);
  EXPECT_EQ(Call(*kms_, &Stub::GetPublicKey, get).status().code(), absl::StatusCode::kNotFound);
  get.set_key_index(pk_);
  EXPECT_EQ(Call(*kms_, &Stub::GetPublicKey, get).status().code(),
            absl::StatusCode::kPermissionDenied);
  v1::GenerateRsaKeyPairRequest gen;
  gen.set_bits(4096);
  gen.set_label("too-big");
  EXPECT_EQ(Call(*kms_, &Stub::GenerateRsaKeyPair, gen).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(HsmGrpcTest, CeremonyStatusAndDualControl) {
  auto alice = hsm_->Stub(kAlice);
  v1::BeginCeremonyRequest begin;
  begin.set_label("PK-DUAL");
  begin.set_key_type(v1::KEY_TYPE_PK);
  begin.set_component_count(2);
  auto begun = Call(*alice, &Stub::BeginCeremony, begin);
  ASSERT_TRUE(begun.ok()) << begun.status();
  Bytes key = Raw(begun->component_encryption_key_der());
  EXPECT_EQ(crypto::PublicKey::FromDer(key)->Bits(), 3072);

  v1::AddComponentRequest add;
  add.set_ceremony_id(begun->ceremony_id());
  add.set_encrypted_component(
      Str(EncryptComponent(key, begun->ceremony_id(), crypto::RandomSecret(32))));
  ASSERT_TRUE(Call(*alice, &Stub::AddComponent, add).ok());
  // Single custodian: a second component from alice is refused, completion is refused.
  add.set_encrypted_component(
      Str(EncryptComponent(key, begun->ceremony_id(), crypto::RandomSecret(32))));
  EXPECT_EQ(Call(*alice, &Stub::AddComponent, add).status().code(),
            absl::StatusCode::kAlreadyExists);
  v1::CompleteCeremonyRequest complete;
  complete.set_ceremony_id(begun->ceremony_id());
  EXPECT_EQ(Call(*alice, &Stub::CompleteCeremony, complete).status().code(),
            absl::StatusCode::kFailedPrecondition);

  v1::GetCeremonyRequest get;
  get.set_ceremony_id(begun->ceremony_id());
  auto status = Call(*alice, &Stub::GetCeremony, get);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->state(), v1::CEREMONY_STATE_OPEN);
  EXPECT_EQ(status->components_added(), 1u);
  EXPECT_THAT(status->custodians(), ::testing::ElementsAre(kAlice));
  EXPECT_EQ(Raw(status->component_encryption_key_der()), key);

  auto bob = hsm_->Stub(kBob);
  ASSERT_TRUE(Call(*bob, &Stub::AddComponent, add).ok());
  auto done = Call(*bob, &Stub::CompleteCeremony, complete);
  ASSERT_TRUE(done.ok()) << done.status();
  status = Call(*alice, &Stub::GetCeremony, get);
  EXPECT_EQ(status->state(), v1::CEREMONY_STATE_COMPLETED);
  EXPECT_EQ(status->result_key_index(), done->key_index());
  EXPECT_TRUE(status->component_encryption_key_der().empty());
  // No component rows remain.
  pqxx::connection conn(hsm_->dsn());
  pqxx::work tx(conn);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM hsm_ceremony_component")[0].as<int>(), 0);
  // Completing again is refused.
  EXPECT_EQ(Call(*bob, &Stub::CompleteCeremony, complete).status().code(),
            absl::StatusCode::kFailedPrecondition);
  get.set_ceremony_id(std::string(32, 'A'));  // well formed, never issued
  EXPECT_EQ(Call(*alice, &Stub::GetCeremony, get).status().code(), absl::StatusCode::kNotFound);
  // Not what BeginCeremony issues (32 upper-case hex digits): refused before any lookup,
  // and never echoed back, however long.
  for (std::string bad :
       {std::string("no-such-ceremony"), std::string(32, 'a'), std::string(1 << 16, 'A')}) {
    get.set_ceremony_id(bad);
    auto r = Call(*alice, &Stub::GetCeremony, get);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_LT(r.status().message().size(), 100u);
  }
}

TEST_F(HsmGrpcTest, ExpiredCeremonyIsRefused) {
  auto alice = hsm_->Stub(kAlice);
  v1::BeginCeremonyRequest begin;
  begin.set_label("MAK-EXPIRES");
  begin.set_key_type(v1::KEY_TYPE_MAK);
  begin.set_component_count(2);
  begin.set_ttl_seconds(30);
  auto begun = Call(*alice, &Stub::BeginCeremony, begin);
  ASSERT_TRUE(begun.ok()) << begun.status();
  Bytes key = Raw(begun->component_encryption_key_der());
  v1::AddComponentRequest add;
  add.set_ceremony_id(begun->ceremony_id());
  add.set_encrypted_component(
      Str(EncryptComponent(key, begun->ceremony_id(), crypto::RandomSecret(32))));
  ASSERT_TRUE(Call(*alice, &Stub::AddComponent, add).ok());
  hsm_->clock().Advance(absl::Seconds(31));
  auto bob = hsm_->Stub(kBob);
  auto late = Call(*bob, &Stub::AddComponent, add);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(late.status().message(), HasSubstr("expired"));
  v1::GetCeremonyRequest get;
  get.set_ceremony_id(begun->ceremony_id());
  auto status = Call(*alice, &Stub::GetCeremony, get);
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
  EXPECT_EQ(imported.created_at_unix_ms(), 1700000000000);
  v1::GetKeyInfoRequest info_req;
  info_req.set_key_index(imported.tek_index());
  auto info = Call(*kms_, &Stub::GetKeyInfo, info_req);
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
  EXPECT_EQ(Call(*kms_, &Stub::TranslateTransportKey, req).status(),
            absl::UnauthenticatedError("transport key rejected"));
  req = TranslateRequest(t);
  req.set_sn("bad sn!");
  EXPECT_EQ(Call(*kms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req = TranslateRequest(t);
  req.set_ctk_pu("short");
  EXPECT_EQ(Call(*kms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req = TranslateRequest(t);
  req.set_algorithm(v1::KEY_ALGORITHM_UNSPECIFIED);
  EXPECT_EQ(Call(*kms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req = TranslateRequest(t);
  req.set_pr_index(pk_);  // PK used as the decryption key
  EXPECT_EQ(Call(*kms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kPermissionDenied);
  req = TranslateRequest(t);
  req.set_mak_index(987654);
  EXPECT_EQ(Call(*kms_, &Stub::TranslateTransportKey, req).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(HsmGrpcTest, ImportRefusals) {
  TestTerminal t = TestTerminal::Create("SN-GRPC-3");
  auto ctk = Call(*kms_, &Stub::TranslateTransportKey, TranslateRequest(t));
  ASSERT_TRUE(ctk.ok());
  v1::ImportTransportKeyRequest req;
  req.set_pk_index(pk_);
  req.set_mak_index(mak_);
  req.set_sn(t.sn);
  std::string bad_mac = ctk->ctk_pk();
  bad_mac.back() ^= 1;
  req.set_ctk_pk(bad_mac);
  EXPECT_EQ(Call(*kms_, &Stub::ImportTransportKey, req).status(),
            absl::UnauthenticatedError("ctk_pk: MAC does not verify"));
  pqxx::connection conn(hsm_->dsn());
  {
    pqxx::work tx(conn);
    EXPECT_EQ(
        tx.exec_params1("SELECT count(*) FROM hsm_key WHERE bound_sn = $1", t.sn)[0].as<int>(), 0);
  }
  req.set_ctk_pk(ctk->ctk_pk());
  req.set_sn("SN-GRPC-OTHER");
  EXPECT_EQ(Call(*kms_, &Stub::ImportTransportKey, req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req.set_sn(t.sn);
  req.set_ctk_pk("RKL1 is not enough");
  EXPECT_EQ(Call(*kms_, &Stub::ImportTransportKey, req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req.set_ctk_pk(std::string(600, 'x'));
  EXPECT_EQ(Call(*kms_, &Stub::ImportTransportKey, req).status().code(),
            absl::StatusCode::kInvalidArgument);
  req.set_ctk_pk(ctk->ctk_pk());
  req.set_pk_index(mak_);
  EXPECT_EQ(Call(*kms_, &Stub::ImportTransportKey, req).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(HsmGrpcTest, TmkAuthenticationExportAndInstallProof) {
  TestTerminal t = TestTerminal::Create("SN-GRPC-4");
  auto imported = Enrol(t);
  auto tmk = Tmk(t.sn);
  EXPECT_TRUE(tmk.created());
  auto again = Tmk(t.sn);
  EXPECT_FALSE(again.created());
  EXPECT_EQ(again.tmk_index(), tmk.tmk_index());

  Bytes rnd1 = crypto::RandomBytes(16);
  v1::AuthChallengeRequest ch;
  ch.set_auk_index(imported.auk_index());
  ch.set_sn(t.sn);
  ch.set_rnd1(Str(rnd1));
  auto challenge = Call(*kms_, &Stub::AuthChallenge, ch);
  ASSERT_TRUE(challenge.ok()) << challenge.status();
  Bytes rnd2 = Raw(challenge->rnd2());
  ASSERT_TRUE(protocol::VerifyCrnd1(t.AuthKeys(), rnd1, rnd2, Raw(challenge->crnd1())).ok());
  v1::AuthVerifyRequest verify;
  verify.set_auk_index(imported.auk_index());
  verify.set_sn(t.sn);
  verify.set_rnd1(Str(rnd1));
  verify.set_rnd2(Str(rnd2));
  verify.set_crnd2(challenge->crnd1());  // reflection
  EXPECT_EQ(Call(*kms_, &Stub::AuthVerify, verify).status().code(),
            absl::StatusCode::kUnauthenticated);
  verify.set_crnd2(Str(protocol::MakeCrnd2(t.AuthKeys(), rnd1, rnd2).value()));
  EXPECT_TRUE(Call(*kms_, &Stub::AuthVerify, verify).ok());
  verify.set_sn("SN-GRPC-OTHER");
  EXPECT_EQ(Call(*kms_, &Stub::AuthVerify, verify).status().code(),
            absl::StatusCode::kPermissionDenied);
  ch.set_rnd1("short");
  EXPECT_EQ(Call(*kms_, &Stub::AuthChallenge, ch).status().code(),
            absl::StatusCode::kInvalidArgument);

  v1::ExportKeyBlockRequest exp;
  exp.set_key_index(tmk.tmk_index());
  exp.set_kek_index(imported.tek_index());
  exp.set_sn(t.sn);
  auto block = Call(*kms_, &Stub::ExportKeyBlock, exp);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->key_kcv(), tmk.kcv());
  EXPECT_EQ(block->kek_kcv(), t.TekKcv());
  auto delivered = keyblock::ParseTmkBlock(t.tk.tek, t.tk.algorithm, block->key_block());
  ASSERT_TRUE(delivered.ok()) << delivered.status();
  EXPECT_EQ(delivered->tmk_kcv, tmk.kcv());
  exp.set_key_index(imported.auk_index());  // the AUK is not exportable
  EXPECT_EQ(Call(*kms_, &Stub::ExportKeyBlock, exp).status().code(),
            absl::StatusCode::kPermissionDenied);
  exp.set_key_index(tmk.tmk_index());
  exp.set_sn("SN-GRPC-OTHER");
  EXPECT_EQ(Call(*kms_, &Stub::ExportKeyBlock, exp).status().code(),
            absl::StatusCode::kPermissionDenied);

  v1::VerifyInstallProofRequest proof;
  proof.set_auk_index(imported.auk_index());
  proof.set_sn(t.sn);
  proof.set_tmk_kcv(tmk.kcv());
  proof.set_rnd1(Str(rnd1));
  proof.set_rnd2(Str(rnd2));
  Bytes p = protocol::MakeInstallProof(t.AuthKeys(), t.sn, FromHex(tmk.kcv()).value(), rnd1, rnd2)
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
  auto ctk = Call(*kms_, &Stub::TranslateTransportKey, TranslateRequest(t));
  ASSERT_TRUE(ctk.ok()) << ctk.status();
  Bytes rnd1 = crypto::RandomBytes(16);
  v1::ImportAndChallengeRequest begin;
  begin.mutable_import()->set_pk_index(pk_);
  begin.mutable_import()->set_mak_index(mak_);
  begin.mutable_import()->set_sn(t.sn);
  begin.mutable_import()->set_ctk_pk(ctk->ctk_pk());
  begin.set_rnd1(Str(rnd1));
  auto begun = Call(*kms_, &Stub::ImportAndChallenge, begin);
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
  auto tmk = Tmk("SN-GRPC-5", v1::KEY_ALGORITHM_TDES2);
  v1::GetKeyInfoRequest info_req;
  info_req.set_key_index(tmk.tmk_index());
  auto info = Call(*kms_, &Stub::GetKeyInfo, info_req);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->type(), v1::KEY_TYPE_TMK);
  EXPECT_EQ(info->algorithm(), v1::KEY_ALGORITHM_TDES2);
  EXPECT_EQ(info->label(), "tmk:SN-GRPC-5");
  info_req.set_key_index(0);
  EXPECT_EQ(Call(*kms_, &Stub::GetKeyInfo, info_req).status().code(),
            absl::StatusCode::kInvalidArgument);
  info_req.set_key_index(123456789);
  EXPECT_EQ(Call(*kms_, &Stub::GetKeyInfo, info_req).status().code(), absl::StatusCode::kNotFound);

  auto admin = hsm_->Stub(kAlice);
  v1::DeleteKeyRequest del;
  del.set_key_index(tmk.tmk_index());
  ASSERT_TRUE(Call(*admin, &Stub::DeleteKey, del).ok());
  info_req.set_key_index(tmk.tmk_index());
  EXPECT_EQ(Call(*kms_, &Stub::GetKeyInfo, info_req)->state(), v1::KEY_STATE_DELETED);
  del.set_key_index(123456789);
  EXPECT_EQ(Call(*admin, &Stub::DeleteKey, del).status().code(), absl::StatusCode::kNotFound);
  // A deleted TMK cannot be exported, and a new one can be made for the SN.
  EXPECT_TRUE(Tmk("SN-GRPC-5", v1::KEY_ALGORITHM_TDES2).created());
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
  v1::GenerateTmkRequest req;
  req.set_sn("SN-1");
  req.set_algorithm(v1::KEY_ALGORITHM_AES128);
  EXPECT_EQ(Call(*stub, &Stub::GenerateTmk, req).status(),
            absl::FailedPreconditionError("HSM self-test failed"));
  v1::GenerateRandomRequest rnd;
  rnd.set_length(8);
  EXPECT_EQ(Call(*stub, &Stub::GenerateRandom, rnd).status(),
            absl::FailedPreconditionError("HSM self-test failed"));
}

}  // namespace
}  // namespace rkl::hsm
