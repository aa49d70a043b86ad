// TR-34 on a real HSM #2 (rkl-hsm over mTLS on PostgreSQL): the KDH key, key tokens opened
// on the KRD's side, the KRD binding as stored (and tamper-bound), the install proof, who may
// call the commands, and that no key reaches the database or the audit chain.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <pqxx/pqxx>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hsm_fixture.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "test_tr34.h"

namespace rkl::hsm {
namespace {

using testing::Call;
using ::testing::HasSubstr;
using testing::HsmInstance;
using testing::Tr34Party;
using Stub = v1::Hsm::Stub;

constexpr char kKms[] = "kms";
constexpr char kMtms[] = "mtms";
constexpr char kAlice[] = "admin:alice";
constexpr char kSn[] = "TR34-PG-1";

std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }
Bytes Raw(const std::string& s) { return Bytes(s.begin(), s.end()); }

class Tr34PgTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = rkl::testing::TestPki::Create().value().release();
    krd_ca_ = new Tr34Party(testing::NewTr34Ca("pg KRD CA"));
    kdh_ca_ = new Tr34Party(testing::NewTr34Ca("pg KDH CA"));
    krd_a_ = new Tr34Party(testing::NewKrd(kSn, 10, *krd_ca_));
    krd_b_ = new Tr34Party(testing::NewKrd(kSn, 11, *krd_ca_));
    const std::string ca_file = pki_->dir() + "/krd-ca.pem";
    std::ofstream(ca_file) << krd_ca_->cert.ToPem();
    hsm_ = HsmInstance::Create(*pki_, {.krd_ca_files = {ca_file}}).value().release();
    auto kms = hsm_->Stub(kKms);
    v1::GenerateKdhKeyRequest req;
    req.set_bits(2048);
    req.set_label("kdh-pg");
    auto kdh = Call(*kms, &Stub::GenerateKdhKey, req);
    ASSERT_TRUE(kdh.ok()) << kdh.status();
    kdh_index_ = kdh->key_index();
    kdh_cert_ = new crypto::Certificate(
        testing::NewKdhCertificate(Raw(kdh->public_key_der()), 2, *kdh_ca_));
  }
  static void TearDownTestSuite() {
    delete hsm_;
    delete kdh_cert_;
    for (Tr34Party* p : {krd_ca_, kdh_ca_, krd_a_, krd_b_}) delete p;
    delete pki_;
  }

  void SetUp() override {
    kms_ = hsm_->Stub(kKms);
    admin_ = hsm_->Stub(kAlice);
  }

  static v1::BuildKeyTokenRequest Request(const Tr34Party& krd, const std::string& sn,
                                          const Bytes& nonce, bool replace = false) {
    v1::BuildKeyTokenRequest req;
    req.set_sn(sn);
    req.set_algorithm(v1::KEY_ALGORITHM_AES128);
    req.set_krd_certificate_der(Str(testing::Der(krd.cert)));
    req.set_krd_nonce(Str(nonce));
    req.set_kdh_key_index(kdh_index_);
    req.set_kdh_certificate_der(Str(testing::Der(*kdh_cert_)));
    req.set_replace_existing(replace);
    return req;
  }

  v1::KeyInfo Info(uint64_t index) {
    v1::GetKeyInfoRequest req;
    req.set_key_index(index);
    auto info = Call(*admin_, &Stub::GetKeyInfo, req);
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? *info : v1::KeyInfo();
  }

  static rkl::testing::TestPki* pki_;
  static Tr34Party* krd_ca_;
  static Tr34Party* kdh_ca_;
  static Tr34Party* krd_a_;
  static Tr34Party* krd_b_;
  static HsmInstance* hsm_;
  static uint64_t kdh_index_;
  static crypto::Certificate* kdh_cert_;
  std::unique_ptr<Stub> kms_, admin_;
};

rkl::testing::TestPki* Tr34PgTest::pki_ = nullptr;
Tr34Party* Tr34PgTest::krd_ca_ = nullptr;
Tr34Party* Tr34PgTest::kdh_ca_ = nullptr;
Tr34Party* Tr34PgTest::krd_a_ = nullptr;
Tr34Party* Tr34PgTest::krd_b_ = nullptr;
HsmInstance* Tr34PgTest::hsm_ = nullptr;
uint64_t Tr34PgTest::kdh_index_ = 0;
crypto::Certificate* Tr34PgTest::kdh_cert_ = nullptr;

TEST_F(Tr34PgTest, KeyTokenRoundTripBindingProofAndNoLeak) {
  EXPECT_EQ(Info(kdh_index_).usage(), v1::KEY_USAGE_KDH_SIGN);

  const Bytes nonce = crypto::RandomBytes(16);
  auto built = Call(*kms_, &Stub::BuildKeyToken, Request(*krd_a_, kSn, nonce));
  ASSERT_TRUE(built.ok()) << built.status();
  EXPECT_TRUE(built->created());
  EXPECT_EQ(built->krd_id(), testing::KrdIdOfCert(krd_a_->cert));
  auto block = testing::ReceiveToken(Raw(built->key_token()), *kdh_cert_, *krd_a_, nonce);
  ASSERT_TRUE(block.ok()) << block.status();
  const crypto::SecretBytes tmk = block->key;
  EXPECT_EQ(built->tmk_kcv(), crypto::KcvHex(crypto::KeyAlgorithm::kAes128, tmk).value());

  // The binding as PostgreSQL keeps it.
  v1::KeyInfo info = Info(built->tmk_index());
  EXPECT_EQ(info.bound_krd(), built->krd_id());
  EXPECT_EQ(info.bound_sn(), kSn);
  EXPECT_EQ(info.kek_index(), 0u);
  EXPECT_EQ(info.state(), v1::KEY_STATE_ACTIVE);

  // Again with a new nonce: the same TMK, in a token for that nonce.
  const Bytes nonce2 = crypto::RandomBytes(32);
  auto again = Call(*kms_, &Stub::BuildKeyToken, Request(*krd_a_, kSn, nonce2));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->created());
  EXPECT_EQ(again->tmk_index(), built->tmk_index());
  EXPECT_EQ(again->tmk_kcv(), built->tmk_kcv());
  EXPECT_TRUE(testing::ReceiveToken(Raw(again->key_token()), *kdh_cert_, *krd_a_, nonce2).ok());

  // Another KRD for the SN is refused and A's TMK is untouched.
  auto other = Call(*kms_, &Stub::BuildKeyToken, Request(*krd_b_, kSn, nonce2));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(other.status().message(), HasSubstr("tmk: bound to another KRD"));
  EXPECT_EQ(Info(built->tmk_index()).kcv(), built->tmk_kcv());
  EXPECT_EQ(Info(built->tmk_index()).state(), v1::KEY_STATE_ACTIVE);

  // The install proof.
  v1::VerifyKeyTokenInstallProofRequest proof;
  proof.set_tmk_index(built->tmk_index());
  proof.set_sn(kSn);
  proof.set_krd_nonce(Str(nonce2));
  proof.set_proof(Str(tr34::InstallProof(crypto::KeyAlgorithm::kAes128, tmk, kSn, nonce2).value()));
  EXPECT_TRUE(Call(*kms_, &Stub::VerifyKeyTokenInstallProof, proof).ok());
  v1::VerifyKeyTokenInstallProofRequest wrong = proof;
  wrong.set_krd_nonce(Str(nonce));
  EXPECT_EQ(Call(*kms_, &Stub::VerifyKeyTokenInstallProof, wrong).status(),
            absl::UnauthenticatedError("proof: does not verify"));

  // The audit chain holds the commands, intact, and no key is anywhere in the database.
  auto chain = Call(*admin_, &Stub::VerifyAuditChain, v1::VerifyAuditChainRequest());
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_TRUE(chain->intact());
  const std::string dump = hsm_->DumpDatabase();
  ASSERT_TRUE(absl::StrContains(dump, "tmk.build_key_token"));
  ASSERT_TRUE(absl::StrContains(dump, "install.verify_key_token_proof"));
  ASSERT_TRUE(absl::StrContains(dump, built->krd_id()));
  for (const std::string& pattern : testing::LeakPatterns(tmk.RevealSecret())) {
    EXPECT_FALSE(absl::StrContains(dump, pattern)) << "the TMK leaked into the database";
  }
}

TEST_F(Tr34PgTest, RebindingAStoredTmkToAnotherKrdBreaksIt) {
  // The KRD binding is in the record's AAD: whoever rewrites the column to another KRD gets
  // a record that no longer opens, never a token for that KRD.
  const std::string sn = "TR34-PG-TAMPER";
  Tr34Party krd = testing::NewKrd(sn, 20, *krd_ca_);
  Tr34Party thief = testing::NewKrd(sn, 21, *krd_ca_);
  auto built = Call(*kms_, &Stub::BuildKeyToken, Request(krd, sn, crypto::RandomBytes(16)));
  ASSERT_TRUE(built.ok()) << built.status();
  hsm_->Sql(absl::StrCat("UPDATE hsm_key SET bound_krd = '", testing::KrdIdOfCert(thief.cert),
                         "' WHERE key_index = ", built->tmk_index()));
  auto stolen = Call(*kms_, &Stub::BuildKeyToken, Request(thief, sn, crypto::RandomBytes(16)));
  EXPECT_EQ(stolen.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(stolen.status().message(), HasSubstr("failed its integrity check"));
  // The schema keeps KRD bindings to TMKs and to KRD ids.
  EXPECT_THROW(hsm_->Sql(absl::StrCat("UPDATE hsm_key SET bound_krd = 'not-an-id' WHERE "
                                      "key_index = ",
                                      built->tmk_index())),
               std::exception);
  EXPECT_THROW(
      hsm_->Sql(absl::StrCat("UPDATE hsm_key SET bound_krd = '", testing::KrdIdOfCert(thief.cert),
                             "' WHERE key_index = ", kdh_index_)),
      std::exception);
}

TEST_F(Tr34PgTest, ConcurrentFirstTokensAgreeOnOneTmk) {
  // Eight first requests for one KRD at once (KMS replicas, a terminal retrying): one TMK is
  // made, and every token carries it.
  const std::string sn = "TR34-PG-RACE";
  Tr34Party krd = testing::NewKrd(sn, 30, *krd_ca_);
  std::vector<absl::StatusOr<v1::BuildKeyTokenResponse>> results(8);
  std::vector<Bytes> nonces(results.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i) {
    nonces[i] = crypto::RandomBytes(16);
    threads.emplace_back([&, i] {
      auto stub = hsm_->Stub(kKms);
      results[i] = Call(*stub, &Stub::BuildKeyToken, Request(krd, sn, nonces[i]));
    });
  }
  for (auto& t : threads) t.join();
  int created = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    EXPECT_EQ(results[i]->tmk_index(), results[0]->tmk_index());
    created += results[i]->created();
    auto block = testing::ReceiveToken(Raw(results[i]->key_token()), *kdh_cert_, krd, nonces[i]);
    ASSERT_TRUE(block.ok()) << block.status();
    EXPECT_EQ(crypto::KcvHex(crypto::KeyAlgorithm::kAes128, block->key).value(),
              results[0]->tmk_kcv());
  }
  EXPECT_EQ(created, 1);
}

TEST_F(Tr34PgTest, OnlyKmsMayCallTheTr34Commands) {
  for (const std::string caller : {kMtms, kAlice}) {
    SCOPED_TRACE(caller);
    auto stub = hsm_->Stub(caller);
    v1::GenerateKdhKeyRequest gen;
    gen.set_bits(2048);
    gen.set_label("kdh-by-" + caller);
    EXPECT_EQ(Call(*stub, &Stub::GenerateKdhKey, gen).status(),
              absl::PermissionDeniedError("caller '" + caller + "' may not call GenerateKdhKey"));
    EXPECT_EQ(
        Call(*stub, &Stub::BuildKeyToken, Request(*krd_a_, kSn, crypto::RandomBytes(16))).status(),
        absl::PermissionDeniedError("caller '" + caller + "' may not call BuildKeyToken"));
    EXPECT_EQ(
        Call(*stub, &Stub::VerifyKeyTokenInstallProof, v1::VerifyKeyTokenInstallProofRequest())
            .status(),
        absl::PermissionDeniedError("caller '" + caller +
                                    "' may not call VerifyKeyTokenInstallProof"));
  }
}

// The CA asks the HSM itself which key it certifies: the `ca` identity gets the KDH key's
// public half, usage and this HSM's own id; nobody else may ask.
TEST_F(Tr34PgTest, TheCaSeesTheKdhKeyAsTheHsmHoldsIt) {
  v1::GetPublicKeyRequest req;
  req.set_key_index(kdh_index_);
  auto key = Call(*hsm_->Stub("ca"), &Stub::GetCertifiableKey, req);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->usage(), v1::KEY_USAGE_KDH_SIGN);
  EXPECT_EQ(key->hsm_id(), "hsm-kms");
  EXPECT_EQ(Raw(key->public_key_der()), kdh_cert_->GetPublicKey()->ToDer());
  req.set_key_index(kdh_index_ + 1000);
  EXPECT_EQ(Call(*hsm_->Stub("ca"), &Stub::GetCertifiableKey, req).status().code(),
            absl::StatusCode::kNotFound);
  req.set_key_index(kdh_index_);
  for (const std::string caller : {kKms, kMtms, kAlice}) {
    EXPECT_EQ(
        Call(*hsm_->Stub(caller), &Stub::GetCertifiableKey, req).status(),
        absl::PermissionDeniedError("caller '" + caller + "' may not call GetCertifiableKey"));
  }
}

TEST(Tr34UnconfiguredPgTest, WithoutKrdCasTheHsmBuildsNoToken) {
  auto pki = rkl::testing::TestPki::Create();
  ASSERT_TRUE(pki.ok()) << pki.status();
  auto hsm = HsmInstance::Create(**pki);
  ASSERT_TRUE(hsm.ok()) << hsm.status();
  auto kms = (*hsm)->Stub(kKms);
  v1::GenerateKdhKeyRequest gen;
  gen.set_bits(2048);
  gen.set_label("kdh");
  auto kdh = Call(*kms, &Stub::GenerateKdhKey, gen);
  ASSERT_TRUE(kdh.ok()) << kdh.status();
  v1::BuildKeyTokenRequest req;
  req.set_sn("TR34-PG-2");
  req.set_algorithm(v1::KEY_ALGORITHM_AES128);
  req.set_krd_nonce(std::string(16, 'n'));
  req.set_kdh_key_index(kdh->key_index());
  EXPECT_EQ(Call(*kms, &Stub::BuildKeyToken, req).status(),
            absl::FailedPreconditionError("tr34: not configured"));
}

}  // namespace
}  // namespace rkl::hsm
