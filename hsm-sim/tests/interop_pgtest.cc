// Two HSM instances (HSM #1 for MTMS, HSM #2 for KMS), each with its own database and LMK,
// that ran the same ceremony (the patent's S101) interoperate end to end with a terminal
// built only from rkl::protocol, rkl::keyblock and rkl::crypto. Afterwards neither database
// holds any clear key the test knows, in raw, hex or base64 form.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "hsm_fixture.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"
#include "test_terminal.h"

namespace rkl::hsm {
namespace {

using testing::Call;
using testing::HsmInstance;
using testing::TestTerminal;
using Stub = v1::Hsm::Stub;

std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }
Bytes Raw(const std::string& s) { return Bytes(s.begin(), s.end()); }

TEST(InteropPgTest, TranslateOnOneImportOnTwoDeliverAndLeakNothing) {
  auto pki = rkl::testing::TestPki::Create();
  ASSERT_TRUE(pki.ok()) << pki.status();
  auto hsm1 = HsmInstance::Create(
      **pki, {.hsm_id = "hsm-mtms", .role = HsmRole::kMtms, .operational_identity = "mtms"});
  auto hsm2 = HsmInstance::Create(
      **pki, {.hsm_id = "hsm-kms", .role = HsmRole::kKms, .operational_identity = "kms"});
  ASSERT_TRUE(hsm1.ok()) << hsm1.status();
  ASSERT_TRUE(hsm2.ok()) << hsm2.status();
  ASSERT_FALSE((*hsm1)->lmk() == (*hsm2)->lmk());

  // S101: the MTMS custodian and the KMS custodian enter the same components into both.
  std::vector<crypto::SecretBytes> secrets;  // every clear key the test knows, for the end
  crypto::SecretBytes pk_a = crypto::RandomSecret(32), pk_b = crypto::RandomSecret(32);
  crypto::SecretBytes mak_a = crypto::RandomSecret(32), mak_b = crypto::RandomSecret(32);
  std::vector<std::pair<std::string, crypto::SecretBytes>> pk_parts = {
      {"custodian:mtms-custodian", pk_a}, {"custodian:kms-custodian", pk_b}};
  std::vector<std::pair<std::string, crypto::SecretBytes>> mak_parts = {
      {"custodian:mtms-custodian", mak_a}, {"custodian:kms-custodian", mak_b}};
  auto pk1 = testing::RunCeremony(**hsm1, v1::KEY_TYPE_PK, "PK-2026", pk_parts);
  auto mak1 = testing::RunCeremony(**hsm1, v1::KEY_TYPE_MAK, "MAK-2026", mak_parts);
  auto pk2 = testing::RunCeremony(**hsm2, v1::KEY_TYPE_PK, "PK-2026", pk_parts);
  auto mak2 = testing::RunCeremony(**hsm2, v1::KEY_TYPE_MAK, "MAK-2026", mak_parts);
  ASSERT_TRUE(pk1.ok() && mak1.ok() && pk2.ok() && mak2.ok())
      << pk1.status() << mak1.status() << pk2.status() << mak2.status();
  crypto::SecretBytes pk = testing::Xor(pk_a, pk_b), mak = testing::Xor(mak_a, mak_b);
  EXPECT_EQ(pk1->kcv, pk2->kcv);
  EXPECT_EQ(mak1->kcv, mak2->kcv);
  EXPECT_EQ(pk1->kcv, crypto::KcvHex(crypto::KeyAlgorithm::kAes256, pk).value());
  EXPECT_EQ(mak1->kcv, crypto::KcvHex(crypto::KeyAlgorithm::kAes256, mak).value());

  // S201: HSM #1 makes the work key pair.
  auto mtms = (*hsm1)->Stub("mtms");
  v1::GenerateRsaKeyPairRequest gen;
  gen.set_bits(2048);
  gen.set_label("mtms-work-2026-11");
  auto work = Call(*mtms, &Stub::GenerateRsaKeyPair, gen);
  ASSERT_TRUE(work.ok()) << work.status();

  for (crypto::KeyAlgorithm algorithm :
       {crypto::KeyAlgorithm::kAes128, crypto::KeyAlgorithm::kAes256,
        crypto::KeyAlgorithm::kTdes2}) {
    SCOPED_TRACE(std::string(crypto::KeyAlgorithmName(algorithm)));
    // S102-S103: the terminal makes TK and encrypts it to Pu.
    TestTerminal t = TestTerminal::Create(
        "SN-" + std::string(crypto::KeyAlgorithmName(algorithm)) + "-0001", algorithm);
    secrets.push_back(t.tk.tek);
    secrets.push_back(t.tk.auk);

    // S106 on HSM #1, with the operator's signed package as evidence (claim 4).
    v1::TranslateTransportKeyRequest tr;
    tr.set_pr_index(work->key_index());
    const Bytes ctk_pu = t.CtkPu(Raw(work->public_key_der()));
    tr.set_ctk_pu(Str(ctk_pu));
    tr.set_sn(t.sn);
    tr.set_created_at_unix_ms(1764000000000);
    tr.set_pk_index(pk1->key_index);
    tr.set_mak_index(mak1->key_index);
    tr.set_algorithm(static_cast<v1::KeyAlgorithm>(crypto::KeyAlgorithmCode(algorithm)));
    const TranslateEvidence evidence =
        (*hsm1)->operator_card().Sign(t.sn, ctk_pu, algorithm, 1764000000000);
    tr.set_package(Str(evidence.package));
    tr.set_package_signature(Str(evidence.package_signature));
    tr.set_operator_certificate_der(Str(evidence.operator_certificate_der));
    auto ctk = Call(*mtms, &Stub::TranslateTransportKey, tr);
    ASSERT_TRUE(ctk.ok()) << ctk.status();

    // S109-S111 and S401-S402 on HSM #2: import, then the challenge, as KMS does.
    auto kms = (*hsm2)->Stub("kms");
    auto keys = t.AuthKeys();
    Bytes rnd1 = crypto::RandomBytes(crypto::BlockSize(algorithm));
    v1::ImportAndChallengeRequest begin;
    begin.mutable_import()->set_pk_index(pk2->key_index);
    begin.mutable_import()->set_mak_index(mak2->key_index);
    begin.mutable_import()->set_sn(t.sn);
    begin.mutable_import()->set_ctk_pk(ctk->ctk_pk());
    begin.set_rnd1(Str(rnd1));
    auto begun = Call(*kms, &Stub::ImportAndChallenge, begin);
    ASSERT_TRUE(begun.ok()) << begun.status();
    const v1::ImportTransportKeyResponse* imported = &begun->imported();
    EXPECT_EQ(imported->tek_kcv(), t.TekKcv());
    EXPECT_EQ(imported->auk_kcv(), t.AukKcv());
    EXPECT_EQ(imported->created_at_unix_ms(), 1764000000000);
    Bytes rnd2 = Raw(begun->challenge().rnd2());
    ASSERT_TRUE(protocol::VerifyCrnd1(keys, rnd1, rnd2, Raw(begun->challenge().crnd1())).ok());

    // S403-S405 and S112-S113: the terminal's answer, then its TMK under TEK; the terminal
    // opens it and proves the install.
    v1::AuthenticateAndDeliverRequest deliver;
    deliver.mutable_verify()->set_auk_index(imported->auk_index());
    deliver.mutable_verify()->set_sn(t.sn);
    deliver.mutable_verify()->set_rnd1(Str(rnd1));
    deliver.mutable_verify()->set_rnd2(Str(rnd2));
    deliver.mutable_verify()->set_crnd2(Str(protocol::MakeCrnd2(keys, rnd1, rnd2).value()));
    deliver.set_algorithm(static_cast<v1::KeyAlgorithm>(crypto::KeyAlgorithmCode(algorithm)));
    deliver.set_tek_index(imported->tek_index());
    auto out = Call(*kms, &Stub::AuthenticateAndDeliver, deliver);
    ASSERT_TRUE(out.ok()) << out.status();
    const v1::GenerateTmkResponse* tmk = &out->tmk();
    auto delivered = keyblock::ParseTmkBlock(t.tk.tek, algorithm, out->block().key_block());
    ASSERT_TRUE(delivered.ok()) << delivered.status();
    EXPECT_EQ(delivered->tmk_algorithm, algorithm);
    EXPECT_EQ(delivered->tmk_kcv, tmk->kcv());
    secrets.push_back(delivered->tmk);
    v1::VerifyInstallProofRequest vp;
    vp.set_auk_index(imported->auk_index());
    vp.set_sn(t.sn);
    vp.set_tmk_kcv(delivered->tmk_kcv);
    vp.set_rnd1(Str(rnd1));
    vp.set_rnd2(Str(rnd2));
    vp.set_proof(
        Str(protocol::MakeInstallProof(keys, t.sn, FromHex(delivered->tmk_kcv).value(), rnd1, rnd2)
                .value()));
    EXPECT_TRUE(Call(*kms, &Stub::VerifyInstallProof, vp).ok());
  }

  // Both audit chains are intact.
  for (auto* hsm : {hsm1->get(), hsm2->get()}) {
    auto admin = hsm->Stub("admin:auditor");
    auto v = Call(*admin, &Stub::VerifyAuditChain, v1::VerifyAuditChainRequest());
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_TRUE(v->intact());
    EXPECT_GT(v->records_checked(), 10u);
  }

  // Leakage: no clear key the test knows, in any spelling, in either database.
  for (const crypto::SecretBytes* s : std::initializer_list<const crypto::SecretBytes*>{
           &pk, &mak, &pk_a, &pk_b, &mak_a, &mak_b, &(*hsm1)->lmk(), &(*hsm2)->lmk()}) {
    secrets.push_back(*s);
  }
  std::string dump1 = (*hsm1)->DumpDatabase(), dump2 = (*hsm2)->DumpDatabase();
  // The dump is real: it holds the audit rows and the sealed records.
  ASSERT_TRUE(absl::StrContains(dump1, "tk.translate"));
  ASSERT_TRUE(absl::StrContains(dump2, "tk.import_and_challenge"));
  int patterns = 0;
  for (const crypto::SecretBytes& secret : secrets) {
    for (const std::string& pattern : testing::LeakPatterns(secret.RevealSecret())) {
      ++patterns;
      EXPECT_FALSE(absl::StrContains(dump1, pattern))
          << "a known key leaked into HSM #1's database";
      EXPECT_FALSE(absl::StrContains(dump2, pattern))
          << "a known key leaked into HSM #2's database";
    }
  }
  EXPECT_EQ(patterns, static_cast<int>(secrets.size()) * 6);
}

TEST(InteropPgTest, LeakSearchFindsAPlantedKey) {
  // The leakage check above can fail: plant a key in a label and it is found.
  auto pki = rkl::testing::TestPki::Create();
  ASSERT_TRUE(pki.ok());
  auto hsm = HsmInstance::Create(
      **pki, {.hsm_id = "hsm-mtms", .role = HsmRole::kMtms, .operational_identity = "mtms"});
  ASSERT_TRUE(hsm.ok()) << hsm.status();
  crypto::SecretBytes planted = crypto::RandomSecret(16);
  auto kms = (*hsm)->Stub("mtms");
  v1::GenerateRsaKeyPairRequest gen;
  gen.set_bits(2048);
  gen.set_label(absl::Base64Escape(std::string(AsString(planted.RevealSecret()))).substr(0, 20));
  ASSERT_TRUE(Call(*kms, &Stub::GenerateRsaKeyPair, gen).ok());
  std::string dump = (*hsm)->DumpDatabase();
  bool found = false;
  for (const std::string& p : testing::LeakPatterns(planted.RevealSecret())) {
    found |= absl::StrContains(dump, p);
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace rkl::hsm
