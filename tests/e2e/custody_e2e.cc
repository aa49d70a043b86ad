// Key custody attacks against a live deployment (issue 20, findings 1 and 4), each written
// as the attack with the deployment's own certificates, each asserting the refusal:
//
//  AdminAttack      one admin certificate (and then one key custodian's) tries the chain that
//                   used to recover a terminal's TMK: its own TEK' encrypted to Pu → HSM #1
//                   translates → HSM #2 imports → the victim's TMK exported under TEK'. Every
//                   step is PERMISSION_DENIED, and the single-step RPCs the chain used no
//                   longer exist (UNIMPLEMENTED).
//  MtmsWithoutOperatorSignature
//                   the `mtms` identity asks HSM #1 to translate the same Ctk_Pu' without a
//                   valid operator signature for it: none, forged, from a CA of its own, or
//                   a real operator's signature over another terminal's package. Refused.
//  KmsImportSupersedes
//                   the `kms` identity imports a transport key with another TEK for the
//                   victim (made with the deployment's operator card, as a compromised KMS
//                   host holding one could): the import supersedes the victim's TMK, so the
//                   delivery under TEK' carries a new TMK, never the victim's.
//  Tr34Attack       TR-34 (docs/tr34.md): no admin, custodian or mtms identity reaches a KDH
//                   step (KDH key, key token, install proof, KDH certificate), and the `kms`
//                   identity cannot have HSM #2 put a terminal's TMK — TR-34 or patent — in a
//                   key token for a KRD of its own making, for the KDH's own certificate, or
//                   for a genuine KRD of another SN, whether or not it asks to replace it.
//
// custody_hsm.sh runs the first two and the TR-34 attacks, checks that no database row changed (an
// audit record of each refusal is allowed), then runs the third. Environment:
//   E2E_PKI                           rklctl pki init output (service and admin identities)
//   E2E_HSM_MTMS_ADDR, E2E_HSM_KMS_ADDR, E2E_MTMS_ADDR
//   E2E_HSM_MTMS_PK_INDEX, E2E_HSM_MTMS_MAK_INDEX, E2E_HSM_KMS_PK_INDEX, E2E_HSM_KMS_MAK_INDEX
//   E2E_OPERATOR_CARD, E2E_OPERATOR_PIN_FILE   the deployment's operator card
//   E2E_VICTIM_SN, E2E_VICTIM_TEK_INDEX, E2E_VICTIM_AUK_INDEX, E2E_VICTIM_TMK_INDEX,
//   E2E_VICTIM_TMK_KCV                an INSTALLED terminal, as KMS records it
//   E2E_TR34_VICTIM_SN, E2E_TR34_VICTIM_TMK_INDEX, E2E_TR34_VICTIM_KRD_CERT (DER file)
//                                     an INSTALLED TR-34 terminal, as KMS records it
//   E2E_KDH_KEY_INDEX, E2E_KDH_CERT (DER file)  the deployment's KDH key
//   E2E_CA_ADDR
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/client_unary_call.h>
#include <grpcpp/impl/rpc_method.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "e2e_support.h"
#include "rkl/common/hex.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/keys.h"
#include "rkl/crypto/pkcs12.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/protocol/auth.h"
#include "rkl/protocol/transport_key.h"
#include "rkl/rpc/call_context.h"
#include "rkl/rpc/channel.h"
#include "rkl/v1/ca.grpc.pb.h"
#include "rkl/v1/hsm.grpc.pb.h"
#include "rkl/v1/mtms.grpc.pb.h"

namespace rkl::e2e {
namespace {

using grpc::StatusCode;
using H = v1::Hsm::Stub;

std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }
Bytes Raw(const std::string& s) { return Bytes(s.begin(), s.end()); }

std::shared_ptr<grpc::Channel> Channel(const std::string& service, Who who) {
  static std::map<std::pair<std::string, Who>, std::shared_ptr<grpc::Channel>> cache;
  auto& slot = cache[{service, who}];
  if (slot) return slot;
  auto channel = rpc::MakeChannel(ServiceAddress(service), ChannelOptionsAs(service, who));
  EXPECT_TRUE(channel.ok()) << channel.status();
  slot = channel.ok() ? *channel : nullptr;
  return slot;
}

std::unique_ptr<H> Hsm(const std::string& which, Who who) {
  return v1::Hsm::NewStub(Channel(which, who));
}

template <typename Stub, typename Req, typename Resp>
grpc::Status Call(Stub& stub, grpc::Status (Stub::*m)(grpc::ClientContext*, const Req&, Resp*),
                  const Req& req, Resp* resp = nullptr) {
  Resp ignored;
  auto ctx = rpc::MakeClientContext(absl::Seconds(60));
  return (stub.*m)(ctx.get(), req, resp != nullptr ? resp : &ignored);
}

#define EXPECT_CODE(expr, code)                                              \
  do {                                                                       \
    grpc::Status _s = (expr);                                                \
    EXPECT_EQ(_s.error_code(), code) << #expr << ": " << _s.error_message(); \
  } while (0)

// HSM #1's current work key: Pr's index and Pu (what any operator terminal can read).
struct WorkKey {
  uint64_t pr_index = 0;
  crypto::PublicKey pu;
};
WorkKey CurrentWorkKey() {
  auto mtms = v1::Mtms::NewStub(Channel("mtms", Who::kAdmin));
  v1::ListWorkKeysResponse keys;
  grpc::Status s = Call(*mtms, &v1::Mtms::Stub::ListWorkKeys, v1::Empty(), &keys);
  EXPECT_TRUE(s.ok()) << s.error_message();
  for (const auto& k : keys.work_keys()) {
    if (k.state() != v1::WorkKey::STATE_CURRENT) continue;
    auto cert = crypto::Certificate::FromPem(k.certificate_pem()).value();
    return {k.hsm_key_index(), cert.GetPublicKey().value()};
  }
  ADD_FAILURE() << "MTMS has no current work key";
  return {0, crypto::GenerateRsaKey(2048)->GetPublicKey()};
}

// The attacker's own transport key for the victim: TK' = TEK' ‖ AUK', encrypted to Pu.
struct ForgedTransportKey {
  protocol::TransportKey tk;
  Bytes ctk_pu;
};
ForgedTransportKey Forge(const crypto::PublicKey& pu, const std::string& sn) {
  const auto a = crypto::KeyAlgorithm::kAes128;
  ForgedTransportKey f{{a, crypto::GenerateKey(a), crypto::GenerateKey(a)}, {}};
  f.ctk_pu =
      crypto::RsaOaepEncrypt(pu, protocol::EncodeTkPayload(f.tk).value(), protocol::OaepLabel(sn))
          .value();
  return f;
}

v1::TranslateTransportKeyRequest TranslateRequest(const WorkKey& wk, const std::string& sn,
                                                  const Bytes& ctk_pu, int64_t created_at_ms) {
  v1::TranslateTransportKeyRequest req;
  req.set_pr_index(wk.pr_index);
  req.set_ctk_pu(Str(ctk_pu));
  req.set_sn(sn);
  req.set_created_at_unix_ms(created_at_ms);
  req.set_pk_index(EnvIndex("E2E_HSM_MTMS_PK_INDEX"));
  req.set_mak_index(EnvIndex("E2E_HSM_MTMS_MAK_INDEX"));
  req.set_algorithm(v1::KEY_ALGORITHM_AES128);
  return req;
}

// An operator card: the deployment's (from its PKCS#12), or one of the attacker's own.
struct Card {
  crypto::PrivateKey key;
  crypto::Certificate certificate;
  std::string id;
};
Card DeploymentCard() {
  std::string pin = ReadFile(Env("E2E_OPERATOR_PIN_FILE"));
  while (!pin.empty() && (pin.back() == '\n' || pin.back() == '\r')) pin.pop_back();
  auto p12 = crypto::ReadPkcs12(AsBytes(ReadFile(Env("E2E_OPERATOR_CARD"))),
                                crypto::SecretBytes::CopyOf(AsBytes(pin)))
                 .value();
  const std::string cn = p12.certificate.SubjectCommonName();
  return {std::move(p12.private_key), std::move(p12.certificate), cn.substr(cn.find(':') + 1)};
}
Card SelfMadeCard() {
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  auto ca_key = crypto::GenerateEcP256Key().value();
  crypto::CertificateBuilder ca;
  ca.SetSubjectCommonName("operator-ca")
      .SetSerial({0x01, 0x02})
      .SetValidity(now - 3600, now + 86400)
      .SetBasicConstraints(true, 0)
      .SetKeyUsage(crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign);
  auto ca_cert = ca.SelfSign(ca_key).value();
  auto key = crypto::GenerateEcP256Key().value();
  crypto::CertificateBuilder leaf;
  leaf.SetSubjectCommonName("operator:operator1")
      .SetSerial({0x03, 0x04})
      .SetValidity(now - 3600, now + 86400)
      .SetPublicKey(key.GetPublicKey())
      .SetBasicConstraints(false, std::nullopt)
      .SetKeyUsage(crypto::KeyUsage::kDigitalSignature);
  auto cert = leaf.Sign(ca_cert, ca_key).value();
  return {std::move(key), std::move(cert), "operator1"};
}

// `req` with a package for `package_sn` signed by `card` (the evidence MTMS passes on).
void Sign(v1::TranslateTransportKeyRequest& req, const Card& card, const std::string& package_sn) {
  v1::TransportKeyPackage p;
  p.set_sn(package_sn);
  p.set_ctk_pu(req.ctk_pu());
  p.set_work_certificate_serial("00");
  p.set_algorithm(req.algorithm());
  p.set_created_at_unix_ms(req.created_at_unix_ms());
  p.set_nonce(Str(crypto::RandomBytes(16)));
  p.set_operator_id(card.id);
  const std::string b = p.SerializeAsString();
  req.set_package(b);
  req.set_package_signature(Str(crypto::EcdsaSign(card.key, AsBytes(b)).value()));
  req.set_operator_certificate_der(Str(card.certificate.ToDer()));
}

v1::ImportAndChallengeRequest ImportRequest(const std::string& sn, const std::string& ctk_pk) {
  v1::ImportAndChallengeRequest req;
  req.mutable_import()->set_pk_index(EnvIndex("E2E_HSM_KMS_PK_INDEX"));
  req.mutable_import()->set_mak_index(EnvIndex("E2E_HSM_KMS_MAK_INDEX"));
  req.mutable_import()->set_sn(sn);
  req.mutable_import()->set_ctk_pk(ctk_pk);
  req.set_rnd1(Str(crypto::RandomBytes(16)));
  return req;
}

// A call of an RPC by name, for the ones the service no longer has.
grpc::Status CallByName(const std::shared_ptr<grpc::Channel>& channel, const std::string& method) {
  auto ctx = rpc::MakeClientContext(absl::Seconds(60));
  v1::Empty req, resp;
  return grpc::internal::BlockingUnaryCall(
      channel.get(),
      grpc::internal::RpcMethod(method.c_str(), grpc::internal::RpcMethod::NORMAL_RPC), ctx.get(),
      req, &resp);
}

// ---- One admin certificate, the whole chain ------------------------------------------------

// Every step, as `who` (an admin or a key custodian): refused.
void ExpectTheChainRefused(Who who) {
  const std::string victim = Env("E2E_VICTIM_SN");
  auto hsm1 = Hsm("hsm-mtms", who);
  auto hsm2 = Hsm("hsm-kms", who);
  // 1. TEK' of the attacker's making, encrypted to Pu for the victim's SN.
  const WorkKey wk = CurrentWorkKey();
  const ForgedTransportKey forged = Forge(wk.pu, victim);
  // 2. HSM #1, translate it: refused, with or without an operator's signature on it.
  v1::TranslateTransportKeyRequest tr =
      TranslateRequest(wk, victim, forged.ctk_pu, absl::ToUnixMillis(absl::Now()));
  EXPECT_CODE(Call(*hsm1, &H::TranslateTransportKey, tr), StatusCode::PERMISSION_DENIED);
  Sign(tr, DeploymentCard(), victim);
  EXPECT_CODE(Call(*hsm1, &H::TranslateTransportKey, tr), StatusCode::PERMISSION_DENIED);
  v1::TranslateTransportKeysRequest batch;
  *batch.add_items() = tr;
  EXPECT_CODE(Call(*hsm1, &H::TranslateTransportKeys, batch), StatusCode::PERMISSION_DENIED);
  // 3. HSM #2, import a Ctk_pk for the victim (the attacker has none; any bytes do: the
  //    refusal comes first).
  EXPECT_CODE(Call(*hsm2, &H::ImportAndChallenge, ImportRequest(victim, std::string(120, 'x'))),
              StatusCode::PERMISSION_DENIED);
  // 4. HSM #2, the victim's TMK under a TEK: the delivery is refused...
  v1::AuthenticateAndDeliverRequest deliver;
  deliver.mutable_verify()->set_auk_index(EnvIndex("E2E_VICTIM_AUK_INDEX"));
  deliver.mutable_verify()->set_sn(victim);
  deliver.set_algorithm(v1::KEY_ALGORITHM_AES128);
  deliver.set_tek_index(EnvIndex("E2E_VICTIM_TEK_INDEX"));
  EXPECT_CODE(Call(*hsm2, &H::AuthenticateAndDeliver, deliver), StatusCode::PERMISSION_DENIED);
  // ... and the single-step commands the chain used exist no more, on either HSM.
  for (const char* removed : {"/rkl.v1.Hsm/ImportTransportKey", "/rkl.v1.Hsm/GenerateTmk",
                              "/rkl.v1.Hsm/AuthVerify", "/rkl.v1.Hsm/ExportKeyBlock"}) {
    for (const char* which : {"hsm-mtms", "hsm-kms"}) {
      SCOPED_TRACE(absl::StrCat(which, removed));
      EXPECT_CODE(CallByName(Channel(which, who), removed), StatusCode::UNIMPLEMENTED);
    }
  }
  // Nothing else operational is open to an admin or a custodian either.
  v1::AuthChallengeRequest ch;
  ch.set_auk_index(EnvIndex("E2E_VICTIM_AUK_INDEX"));
  ch.set_sn(victim);
  ch.set_rnd1(Str(crypto::RandomBytes(16)));
  EXPECT_CODE(Call(*hsm2, &H::AuthChallenge, ch), StatusCode::PERMISSION_DENIED);
  v1::DestroyTerminalKeysRequest destroy;
  destroy.set_sn(victim);
  EXPECT_CODE(Call(*hsm2, &H::DestroyTerminalKeys, destroy), StatusCode::PERMISSION_DENIED);
  v1::GenerateRandomRequest rnd;
  rnd.set_length(16);
  EXPECT_CODE(Call(*hsm1, &H::GenerateRandom, rnd), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*hsm2, &H::GenerateRandom, rnd), StatusCode::PERMISSION_DENIED);
  v1::GetPublicKeyRequest pub;
  pub.set_key_index(wk.pr_index);
  EXPECT_CODE(Call(*hsm1, &H::GetPublicKey, pub), StatusCode::PERMISSION_DENIED);
  v1::GenerateRsaKeyPairRequest gen;
  gen.set_bits(2048);
  gen.set_label("attacker");
  EXPECT_CODE(Call(*hsm1, &H::GenerateRsaKeyPair, gen), StatusCode::PERMISSION_DENIED);
}

TEST(AdminAttack, EveryStepOfTheChainIsRefused) {
  ExpectTheChainRefused(Who::kAdmin);
  // What an admin may do is look: the victim's TMK is there, ACTIVE, bound to its TEK.
  v1::GetKeyInfoRequest info;
  info.set_key_index(EnvIndex("E2E_VICTIM_TMK_INDEX"));
  v1::KeyInfo key;
  ASSERT_TRUE(Call(*Hsm("hsm-kms", Who::kAdmin), &H::GetKeyInfo, info, &key).ok());
  EXPECT_EQ(key.state(), v1::KEY_STATE_ACTIVE);
  EXPECT_EQ(key.kek_index(), EnvIndex("E2E_VICTIM_TEK_INDEX"));
}

TEST(AdminAttack, AKeyCustodiansCertificateIsRefusedEveryStepToo) {
  // A custodian enters key components in ceremonies, and does nothing else: not even look.
  ExpectTheChainRefused(Who::kCustodian);
  v1::GetKeyInfoRequest info;
  info.set_key_index(EnvIndex("E2E_VICTIM_TMK_INDEX"));
  EXPECT_CODE(Call(*Hsm("hsm-kms", Who::kCustodian), &H::GetKeyInfo, info),
              StatusCode::PERMISSION_DENIED);
}

TEST(AdminAttack, ServicesMayNotUseTheOtherRolesHsm) {
  // A compromised MTMS host cannot reach HSM #2's commands, nor KMS's HSM #1's.
  const std::string victim = Env("E2E_VICTIM_SN");
  EXPECT_CODE(Call(*Hsm("hsm-kms", Who::kMtms), &H::ImportAndChallenge,
                   ImportRequest(victim, std::string(120, 'x'))),
              StatusCode::PERMISSION_DENIED);
  const WorkKey wk = CurrentWorkKey();
  v1::TranslateTransportKeyRequest tr =
      TranslateRequest(wk, victim, Forge(wk.pu, victim).ctk_pu, absl::ToUnixMillis(absl::Now()));
  Sign(tr, DeploymentCard(), victim);
  EXPECT_CODE(Call(*Hsm("hsm-mtms", Who::kKms), &H::TranslateTransportKey, tr),
              StatusCode::PERMISSION_DENIED);
  // Each HSM refuses the other role's commands to its own service too.
  EXPECT_CODE(Call(*Hsm("hsm-kms", Who::kKms), &H::TranslateTransportKey, tr),
              StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(Call(*Hsm("hsm-mtms", Who::kMtms), &H::ImportAndChallenge,
                   ImportRequest(victim, std::string(120, 'x'))),
              StatusCode::PERMISSION_DENIED);
}

// ---- The mtms identity without an operator's signature -------------------------------------

TEST(MtmsWithoutOperatorSignature, TranslationIsRefused) {
  const std::string victim = Env("E2E_VICTIM_SN");
  auto hsm1 = Hsm("hsm-mtms", Who::kMtms);
  const WorkKey wk = CurrentWorkKey();
  const ForgedTransportKey forged = Forge(wk.pu, victim);
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  const Card card = DeploymentCard();

  struct Attempt {
    std::string what;
    v1::TranslateTransportKeyRequest req;
    StatusCode code;
  };
  std::vector<Attempt> attempts;
  v1::TranslateTransportKeyRequest r = TranslateRequest(wk, victim, forged.ctk_pu, now_ms);
  attempts.push_back({"no signature at all", r, StatusCode::UNAUTHENTICATED});
  Sign(r, card, victim);
  std::string sig = r.package_signature();
  sig[sig.size() / 2] ^= 0x01;
  r.set_package_signature(sig);
  attempts.push_back({"a forged signature", r, StatusCode::UNAUTHENTICATED});
  r = TranslateRequest(wk, victim, forged.ctk_pu, now_ms);
  Sign(r, SelfMadeCard(), victim);
  attempts.push_back({"an operator card of the attacker's own CA", r, StatusCode::UNAUTHENTICATED});
  r = TranslateRequest(wk, victim, forged.ctk_pu, now_ms);
  Sign(r, card, "E2E-SOMEONE-ELSE");
  attempts.push_back(
      {"a real operator's package for another SN", r, StatusCode::PERMISSION_DENIED});
  r = TranslateRequest(wk, victim, forged.ctk_pu, now_ms);
  Sign(r, card, victim);
  r.set_ctk_pu(Str(Forge(wk.pu, victim).ctk_pu));  // signed for another Ctk_Pu
  attempts.push_back(
      {"a real operator's package for another Ctk_Pu", r, StatusCode::PERMISSION_DENIED});

  v1::TranslateTransportKeysRequest batch;
  for (const Attempt& a : attempts) {
    SCOPED_TRACE(a.what);
    v1::TranslateTransportKeyResponse resp;
    grpc::Status s = Call(*hsm1, &H::TranslateTransportKey, a.req, &resp);
    EXPECT_EQ(s.error_code(), a.code) << s.error_message();
    EXPECT_TRUE(resp.ctk_pk().empty());
    // Refused on the evidence, before anything was decrypted.
    EXPECT_NE(s.error_message(), "transport key rejected");
    *batch.add_items() = a.req;
  }
  // The batch path refuses each item the same way.
  v1::TranslateTransportKeysResponse outcomes;
  ASSERT_TRUE(Call(*hsm1, &H::TranslateTransportKeys, batch, &outcomes).ok());
  ASSERT_EQ(outcomes.outcomes_size(), static_cast<int>(attempts.size()));
  for (size_t i = 0; i < attempts.size(); ++i) {
    SCOPED_TRACE(attempts[i].what);
    EXPECT_EQ(outcomes.outcomes(static_cast<int>(i)).code(), static_cast<int>(attempts[i].code));
    EXPECT_TRUE(outcomes.outcomes(static_cast<int>(i)).ctk_pk().empty());
  }
}

// ---- The kms identity with a transport key of its own --------------------------------------

TEST(KmsImportSupersedes, TheVictimsTmkNeverLeavesUnderAnotherTek) {
  const std::string victim = Env("E2E_VICTIM_SN");
  const std::string victim_kcv = Env("E2E_VICTIM_TMK_KCV");
  const uint64_t victim_tmk = EnvIndex("E2E_VICTIM_TMK_INDEX");
  // A valid Ctk_pk of TEK' for the victim, the way a compromised KMS host holding an
  // operator card could have one made: signed package, translated by HSM #1 as mtms.
  const WorkKey wk = CurrentWorkKey();
  const ForgedTransportKey forged = Forge(wk.pu, victim);
  v1::TranslateTransportKeyRequest tr =
      TranslateRequest(wk, victim, forged.ctk_pu, absl::ToUnixMillis(absl::Now()));
  Sign(tr, DeploymentCard(), victim);
  v1::TranslateTransportKeyResponse ctk;
  grpc::Status s = Call(*Hsm("hsm-mtms", Who::kMtms), &H::TranslateTransportKey, tr, &ctk);
  ASSERT_TRUE(s.ok()) << s.error_message();

  auto hsm2 = Hsm("hsm-kms", Who::kKms);
  v1::ImportAndChallengeRequest im = ImportRequest(victim, ctk.ctk_pk());
  v1::ImportAndChallengeResponse begun;
  s = Call(*hsm2, &H::ImportAndChallenge, im, &begun);
  ASSERT_TRUE(s.ok()) << s.error_message();
  // The import superseded the victim's live TMK with its TEK and AUK.
  auto admin = Hsm("hsm-kms", Who::kAdmin);
  v1::GetKeyInfoRequest info;
  info.set_key_index(victim_tmk);
  v1::KeyInfo key;
  ASSERT_TRUE(Call(*admin, &H::GetKeyInfo, info, &key).ok());
  EXPECT_EQ(key.state(), v1::KEY_STATE_SUPERSEDED);
  // The old TEK cannot carry anything any more.
  v1::AuthenticateAndDeliverRequest deliver;
  auto* verify = deliver.mutable_verify();
  const protocol::AuthKeys keys =
      protocol::DeriveAuthKeys(forged.tk.algorithm, forged.tk.auk, victim).value();
  const Bytes rnd1 = Raw(im.rnd1()), rnd2 = Raw(begun.challenge().rnd2());
  verify->set_auk_index(begun.imported().auk_index());
  verify->set_sn(victim);
  verify->set_rnd1(im.rnd1());
  verify->set_rnd2(begun.challenge().rnd2());
  verify->set_crnd2(Str(protocol::MakeCrnd2(keys, rnd1, rnd2).value()));
  deliver.set_algorithm(v1::KEY_ALGORITHM_AES128);
  deliver.set_tek_index(EnvIndex("E2E_VICTIM_TEK_INDEX"));
  EXPECT_CODE(Call(*hsm2, &H::AuthenticateAndDeliver, deliver), StatusCode::FAILED_PRECONDITION);
  // Under TEK' (replace_existing false: "the existing TMK, please"), HSM #2 makes a new TMK.
  deliver.set_tek_index(begun.imported().tek_index());
  v1::AuthenticateAndDeliverResponse out;
  s = Call(*hsm2, &H::AuthenticateAndDeliver, deliver, &out);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(out.tmk().created());
  EXPECT_NE(out.tmk().tmk_index(), victim_tmk);
  EXPECT_NE(out.tmk().kcv(), victim_kcv);
  auto block = keyblock::ParseTmkBlock(forged.tk.tek, forged.tk.algorithm, out.block().key_block());
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_NE(block->tmk_kcv, victim_kcv);
  EXPECT_EQ(block->tmk_kcv, out.tmk().kcv());
}

// ---- TR-34: the KDH steps, and whose KRD a TMK may be addressed to -------------------------

// A KRD certificate of the attacker's own making (a CA of its own), naming `sn`.
Bytes SelfMadeKrdCertificate(const std::string& sn) {
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  auto ca_key = crypto::GenerateRsaKey(2048).value();
  crypto::CertificateBuilder ca;
  ca.SetSubjectCommonName("krd-ca")
      .SetSerial({0x05, 0x06})
      .SetValidity(now - 3600, now + 86400)
      .SetBasicConstraints(true, 0)
      .SetKeyUsage(crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign);
  auto ca_cert = ca.SelfSign(ca_key).value();
  auto key = crypto::GenerateRsaKey(2048).value();
  crypto::CertificateBuilder leaf;
  leaf.SetSubjectCommonName(sn)
      .SetSerial({0x07, 0x08})
      .SetValidity(now - 3600, now + 86400)
      .SetPublicKey(key.GetPublicKey())
      .SetBasicConstraints(false, std::nullopt)
      .SetKeyUsage(crypto::KeyUsage::kKeyEncipherment);
  return leaf.Sign(ca_cert, ca_key).value().ToDer();
}

v1::BuildKeyTokenRequest TokenRequest(const std::string& sn, const std::string& krd_der,
                                      bool replace_existing) {
  v1::BuildKeyTokenRequest req;
  req.set_sn(sn);
  req.set_algorithm(v1::KEY_ALGORITHM_AES128);
  req.set_krd_certificate_der(krd_der);
  req.set_krd_nonce(Str(crypto::RandomBytes(16)));
  req.set_kdh_key_index(EnvIndex("E2E_KDH_KEY_INDEX"));
  req.set_kdh_certificate_der(ReadFile(Env("E2E_KDH_CERT")));
  req.set_replace_existing(replace_existing);
  return req;
}

TEST(Tr34Attack, NoAdminCustodianOrMtmsReachesAKdhStep) {
  const std::string victim = Env("E2E_TR34_VICTIM_SN");
  const std::string genuine = ReadFile(Env("E2E_TR34_VICTIM_KRD_CERT"));
  auto attacker_key = crypto::GenerateRsaKey(2048).value();
  for (Who who : {Who::kAdmin, Who::kCustodian, Who::kMtms}) {
    SCOPED_TRACE(static_cast<int>(who));
    auto hsm2 = Hsm("hsm-kms", who);
    v1::GenerateKdhKeyRequest gen;
    gen.set_bits(2048);
    gen.set_label("attacker-kdh");
    EXPECT_CODE(Call(*hsm2, &H::GenerateKdhKey, gen), StatusCode::PERMISSION_DENIED);
    for (bool replace : {false, true}) {
      EXPECT_CODE(Call(*hsm2, &H::BuildKeyToken, TokenRequest(victim, genuine, replace)),
                  StatusCode::PERMISSION_DENIED);
    }
    v1::VerifyKeyTokenInstallProofRequest proof;
    proof.set_tmk_index(EnvIndex("E2E_TR34_VICTIM_TMK_INDEX"));
    proof.set_sn(victim);
    proof.set_krd_nonce(Str(crypto::RandomBytes(16)));
    proof.set_proof(Str(crypto::RandomBytes(16)));
    EXPECT_CODE(Call(*hsm2, &H::VerifyKeyTokenInstallProof, proof), StatusCode::PERMISSION_DENIED);
    // A KDH certificate for a key of the attacker's: it could sign tokens terminals accept.
    auto ca = v1::CertificateAuthority::NewStub(Channel("ca", who));
    v1::IssueKdhCertificateRequest issue;
    issue.set_public_key_der(Str(attacker_key.GetPublicKey().ToDer()));
    issue.set_hsm_id("hsm-kms");
    issue.set_key_index(1);
    EXPECT_CODE(Call(*ca, &v1::CertificateAuthority::Stub::IssueKdhCertificate, issue),
                StatusCode::PERMISSION_DENIED);
  }
}

TEST(Tr34Attack, KmsCannotAddressATerminalsTmkToAKrdOfItsChoosing) {
  const std::string tr34_victim = Env("E2E_TR34_VICTIM_SN");
  const std::string patent_victim = Env("E2E_VICTIM_SN");
  const std::string genuine = ReadFile(Env("E2E_TR34_VICTIM_KRD_CERT"));
  const std::string kdh_cert = ReadFile(Env("E2E_KDH_CERT"));
  auto hsm2 = Hsm("hsm-kms", Who::kKms);
  for (const std::string& victim : {tr34_victim, patent_victim}) {
    SCOPED_TRACE(victim);
    const std::string own = Str(SelfMadeKrdCertificate(victim));
    for (bool replace : {false, true}) {
      // A KRD of a CA of its own, naming the victim.
      EXPECT_CODE(Call(*hsm2, &H::BuildKeyToken, TokenRequest(victim, own, replace)),
                  StatusCode::PERMISSION_DENIED);
      // The KDH's own certificate (a key it holds, of the other role).
      EXPECT_CODE(Call(*hsm2, &H::BuildKeyToken, TokenRequest(victim, kdh_cert, replace)),
                  StatusCode::PERMISSION_DENIED);
    }
  }
  // A genuine KRD, for an SN it does not name.
  for (bool replace : {false, true}) {
    EXPECT_CODE(Call(*hsm2, &H::BuildKeyToken, TokenRequest(patent_victim, genuine, replace)),
                StatusCode::PERMISSION_DENIED);
  }
}

// A stolen `kms` identity asks the CA for a KDH certificate of a key of its own (it would
// sign key tokens terminals accept, for a TMK it knows). The CA asks HSM #2 itself which key
// it would certify, and refuses; a refusal changes no row (custody_hsm.sh's fingerprint).
TEST(Tr34Attack, KmsCannotHaveAKeyOfItsOwnCertifiedAsTheKdh) {
  using C = v1::CertificateAuthority::Stub;
  auto ca = v1::CertificateAuthority::NewStub(Channel("ca", Who::kKms));
  const uint64_t kdh_index = EnvIndex("E2E_KDH_KEY_INDEX");
  auto own = crypto::GenerateRsaKey(2048).value();
  v1::IssueKdhCertificateRequest issue;
  issue.set_public_key_der(Str(own.GetPublicKey().ToDer()));
  issue.set_hsm_id("hsm-kms");
  // Its own key under the real KDH key's index, and under an index HSM #2 does not have.
  issue.set_key_index(kdh_index);
  EXPECT_CODE(Call(*ca, &C::IssueKdhCertificate, issue), StatusCode::PERMISSION_DENIED);
  issue.set_key_index(kdh_index + 1'000'000);
  EXPECT_CODE(Call(*ca, &C::IssueKdhCertificate, issue), StatusCode::NOT_FOUND);
  // The genuine KDH public key under another key's index (the TR-34 victim's TMK).
  const std::string kdh_der = ReadFile(Env("E2E_KDH_CERT"));
  auto kdh_cert = crypto::Certificate::FromDer(Bytes(kdh_der.begin(), kdh_der.end()));
  ASSERT_TRUE(kdh_cert.ok()) << kdh_cert.status();
  issue.set_public_key_der(Str(kdh_cert->GetPublicKey().value().ToDer()));
  issue.set_key_index(EnvIndex("E2E_TR34_VICTIM_TMK_INDEX"));
  EXPECT_CODE(Call(*ca, &C::IssueKdhCertificate, issue), StatusCode::PERMISSION_DENIED);
  // An HSM the CA has no endpoint for: it certifies only keys it can see.
  issue.set_key_index(kdh_index);
  issue.set_hsm_id("hsm-of-my-own");
  EXPECT_CODE(Call(*ca, &C::IssueKdhCertificate, issue), StatusCode::FAILED_PRECONDITION);
  // The genuine certificate, issued at KDH provisioning through the same check, names the
  // KDH key's index (a second one is not asked for: it would change the CA's rows).
  EXPECT_EQ(kdh_cert->SubjectCommonName(), absl::StrCat("kdh:hsm-kms:", kdh_index));
}

}  // namespace
}  // namespace rkl::e2e
