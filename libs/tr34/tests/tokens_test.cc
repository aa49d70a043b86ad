// Round trips through rkl's own TR-34 builders and the KRD's checks, over a PKI made here
// (root-less: a self-signed CA_KDH and CA_KRD, a KDH, two KRDs), and the refusals the KRD
// must make. Annex B known answers are in annex_b_test.cc.

#include "rkl/tr34/tokens.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rkl/crypto/random.h"
#include "rkl/crypto/rsa.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"
#include "test_data.h"
#include "tokens_internal.h"

namespace rkl::tr34 {
namespace {

using ::rkl::tr34::testing::ReadSample;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kNow = 1'800'000'000;  // 2027-01-15, inside every certificate's validity
constexpr char kAesHeader[] = "D0256K0AB00E0000";
constexpr char kTdesHeader[] = "A0256K0TB00E0000";

struct Party {
  crypto::PrivateKey key;
  crypto::Certificate cert;
};

crypto::PrivateKey NewKey() {
  auto key = crypto::GenerateRsaKey(2048);
  EXPECT_TRUE(key.ok());
  return *std::move(key);
}

Party NewCa(const std::string& cn) {
  crypto::PrivateKey key = NewKey();
  auto cert = crypto::CertificateBuilder()
                  .SetSubjectCommonName(cn)
                  .SetSerial({0x01})
                  .SetValidity(kNow - 86'400, kNow + 86'400 * 365)
                  .SetBasicConstraints(true, 0)
                  .SetKeyUsage(crypto::KeyUsage::kKeyCertSign | crypto::KeyUsage::kCrlSign)
                  .SelfSign(key);
  EXPECT_TRUE(cert.ok()) << cert.status();
  return Party{std::move(key), *std::move(cert)};
}

Party NewEndEntity(const std::string& cn, uint8_t serial, crypto::KeyUsage usage, const Party& ca) {
  crypto::PrivateKey key = NewKey();
  auto cert = crypto::CertificateBuilder()
                  .SetSubjectCommonName(cn)
                  .SetSerial({serial})
                  .SetValidity(kNow - 86'400, kNow + 86'400 * 365)
                  .SetPublicKey(key.GetPublicKey())
                  .SetBasicConstraints(false, std::nullopt)
                  .SetKeyUsage(usage)
                  .Sign(ca.cert, ca.key);
  EXPECT_TRUE(cert.ok()) << cert.status();
  return Party{std::move(key), *std::move(cert)};
}

class Tr34Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ca_kdh_ = new Party(NewCa("rkl test CA KDH"));
    ca_krd_ = new Party(NewCa("rkl test CA KRD"));
    kdh_ = new Party(NewEndEntity("rkl KDH", 2, crypto::KeyUsage::kDigitalSignature, *ca_kdh_));
    krd_ = new Party(NewEndEntity("terminal 1", 3, crypto::KeyUsage::kKeyEncipherment, *ca_krd_));
    other_krd_ =
        new Party(NewEndEntity("terminal 2", 4, crypto::KeyUsage::kKeyEncipherment, *ca_krd_));
  }
  static void TearDownTestSuite() {
    for (Party* p : {ca_kdh_, ca_krd_, kdh_, krd_, other_krd_}) delete p;
  }

  static PeerKey Peer(const Party& party, Role role) {
    auto peer =
        PeerFromCertificate(party.cert, role, role == Role::kKdh ? ca_kdh_->cert : ca_krd_->cert);
    EXPECT_TRUE(peer.ok()) << peer.status();
    return *std::move(peer);
  }
  static CertId Id(const Party& party) {
    auto id = CertIdOf(party.cert);
    EXPECT_TRUE(id.ok());
    return *id;
  }

  // A two-pass request from the KDH to `to` for an AES `tmk`; tests change what they need.
  static KeyTokenRequest Request(const Party& to, const crypto::SecretBytes& tmk,
                                 const Bytes& nonce) {
    return KeyTokenRequest{.kdh_id = Id(*kdh_),
                           .kdh_key = &kdh_->key,
                           .krd = Peer(to, Role::kKrd),
                           .tmk_family = crypto::CipherFamily::kAes,
                           .tmk = &tmk,
                           .header = kAesHeader,
                           .krd_nonce = nonce,
                           .signing_time = std::nullopt,
                           .crls = {ReadSample("ca_kdh_crl.der")}};
  }

  // A key token from the KDH to `to`, two-pass when a nonce is given, else one-pass at kNow.
  absl::StatusOr<Bytes> Token(const Party& to, crypto::CipherFamily family,
                              const crypto::SecretBytes& tmk, std::optional<Bytes> nonce,
                              const std::string& header) {
    KeyTokenRequest request = Request(to, tmk, nonce_);
    request.tmk_family = family;
    request.header = header;
    request.krd_nonce = nonce;
    if (!nonce.has_value()) request.signing_time = kNow;
    return BuildKeyToken(request);
  }

  absl::StatusOr<KeyBlock> ReceiveTwoPass(const Bytes& token, const Bytes& nonce) {
    return ReceiveTwoPassKeyToken(token, Peer(*kdh_, Role::kKdh), nonce, Id(*krd_), krd_->key);
  }

  // No refusal may echo key material.
  static void ExpectNoSecretIn(const absl::Status& status, const crypto::SecretBytes& tmk) {
    EXPECT_FALSE(status.ok());
    EXPECT_THAT(std::string(status.message()), Not(HasSubstr(ToHex(tmk.RevealSecret()))));
  }

  static inline Party* ca_kdh_ = nullptr;
  static inline Party* ca_krd_ = nullptr;
  static inline Party* kdh_ = nullptr;
  static inline Party* krd_ = nullptr;
  static inline Party* other_krd_ = nullptr;
  Bytes nonce_ = crypto::RandomBytes(16);
};

struct TmkCase {
  crypto::CipherFamily family;
  size_t size;
  const char* header;
};

class Tr34TmkTest : public Tr34Test, public ::testing::WithParamInterface<TmkCase> {};

TEST_P(Tr34TmkTest, TwoPassTokenRoundTrips) {
  crypto::SecretBytes tmk = crypto::RandomSecret(GetParam().size);
  auto token = Token(*krd_, GetParam().family, tmk, nonce_, GetParam().header);
  ASSERT_TRUE(token.ok()) << token.status();
  auto block = ReceiveTwoPass(*token, nonce_);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->key, tmk);
  EXPECT_EQ(block->header, GetParam().header);
  EXPECT_EQ(block->kdh_id, Id(*kdh_));
}

TEST_P(Tr34TmkTest, OnePassTokenRoundTripsInsideTheWindow) {
  crypto::SecretBytes tmk = crypto::RandomSecret(GetParam().size);
  auto token = Token(*krd_, GetParam().family, tmk, std::nullopt, GetParam().header);
  ASSERT_TRUE(token.ok()) << token.status();
  auto parsed = ParseKeyToken(*token);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->signing_time, kNow);
  auto block = ReceiveOnePassKeyToken(*token, Peer(*kdh_, Role::kKdh), kNow + 30, 300, 60,
                                      Id(*krd_), krd_->key);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->key, tmk);
}

INSTANTIATE_TEST_SUITE_P(Tmks, Tr34TmkTest,
                         ::testing::Values(TmkCase{crypto::CipherFamily::kAes, 16, kAesHeader},
                                           TmkCase{crypto::CipherFamily::kAes, 24, kAesHeader},
                                           TmkCase{crypto::CipherFamily::kAes, 32, kAesHeader},
                                           TmkCase{crypto::CipherFamily::kTdes, 16, kTdesHeader},
                                           TmkCase{crypto::CipherFamily::kTdes, 24, kTdesHeader}));

TEST_F(Tr34Test, TokenFollowsTheAnnexLayout) {
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  auto token = Token(*krd_, crypto::CipherFamily::kAes, tmk, nonce_, kAesHeader);
  ASSERT_TRUE(token.ok());
  auto parsed = ParseKeyToken(*token);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->signer, Id(*kdh_));
  EXPECT_EQ(parsed->krd_nonce, nonce_);
  EXPECT_FALSE(parsed->signing_time.has_value());
  EXPECT_EQ(parsed->header, kAesHeader);
  ASSERT_EQ(parsed->crls.size(), 1u);
  std::string hex = ToHex(parsed->enveloped_data);
  // RSAES-OAEP with RFC 4055's tagged SHA-256 / MGF1-SHA-256 / empty-label parameters.
  EXPECT_THAT(hex, HasSubstr("06092A864886F70D010107"));
  EXPECT_THAT(hex, HasSubstr("A00F300D06096086480165030402010500"));
  // AES-128-CBC content encryption with a 16-byte IV.
  EXPECT_THAT(hex, HasSubstr("06096086480165030401020410"));
}

TEST_F(Tr34Test, WrongRandomNumberIsRefused) {
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  auto token = Token(*krd_, crypto::CipherFamily::kAes, tmk, nonce_, kAesHeader);
  ASSERT_TRUE(token.ok());
  Bytes other = nonce_;
  other[0] ^= 0x01;
  auto block = ReceiveTwoPass(*token, other);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(block.status().message(), HasSubstr("random number"));
  ExpectNoSecretIn(block.status(), tmk);
}

TEST_F(Tr34Test, OnePassTokenOutsideTheWindowIsRefused) {
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  auto token = Token(*krd_, crypto::CipherFamily::kAes, tmk, std::nullopt, kAesHeader);
  ASSERT_TRUE(token.ok());
  PeerKey kdh = Peer(*kdh_, Role::kKdh);
  for (int64_t now : {kNow + 301, kNow - 61}) {
    auto block = ReceiveOnePassKeyToken(*token, kdh, now, 300, 60, Id(*krd_), krd_->key);
    EXPECT_EQ(block.status().code(), absl::StatusCode::kUnauthenticated) << now;
    EXPECT_THAT(block.status().message(), HasSubstr("signing time"));
  }
  // A two-pass token offered as one-pass has no signing time.
  auto two_pass = Token(*krd_, crypto::CipherFamily::kAes, tmk, nonce_, kAesHeader);
  ASSERT_TRUE(two_pass.ok());
  EXPECT_FALSE(ReceiveOnePassKeyToken(*two_pass, kdh, kNow, 300, 60, Id(*krd_), krd_->key).ok());
}

TEST_F(Tr34Test, TokenAddressedToAnotherKrdIsRefused) {
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  auto token = Token(*other_krd_, crypto::CipherFamily::kAes, tmk, nonce_, kAesHeader);
  ASSERT_TRUE(token.ok());
  auto block = ReceiveTwoPass(*token, nonce_);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(block.status().message(), HasSubstr("addressed to another KRD"));
  ExpectNoSecretIn(block.status(), tmk);
  // Claiming the other KRD's identity without its key opens nothing either.
  auto parsed = ParseKeyToken(*token);
  ASSERT_TRUE(parsed.ok());
  auto forged = DecryptKeyBlock(parsed->enveloped_data, Id(*other_krd_), krd_->key);
  EXPECT_EQ(forged.status().message(), "TR-34 key token: decryption failed");
}

TEST_F(Tr34Test, TamperedEnvelopeIsRefused) {
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  auto token = Token(*krd_, crypto::CipherFamily::kAes, tmk, nonce_, kAesHeader);
  ASSERT_TRUE(token.ok());
  auto parsed = ParseKeyToken(*token);
  ASSERT_TRUE(parsed.ok());
  // A byte of the encrypted content, found by its place at the end of the EnvelopedData.
  Bytes tampered = *token;
  std::string hex = ToHex(tampered);
  size_t env_at = hex.find(ToHex(parsed->enveloped_data)) / 2;
  ASSERT_NE(env_at, std::string::npos / 2);
  tampered[env_at + parsed->enveloped_data.size() - 5] ^= 0x40;
  auto block = ReceiveTwoPass(tampered, nonce_);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(block.status().message(), HasSubstr("messageDigest"));
  ExpectNoSecretIn(block.status(), tmk);
  // The envelope alone, tampered, fails decryption with the uniform message (or, if the
  // padding happens to survive, yields no valid key block).
  Bytes envelope = parsed->enveloped_data;
  envelope[envelope.size() - 20] ^= 0x40;
  auto opened = DecryptKeyBlock(envelope, Id(*krd_), krd_->key);
  EXPECT_FALSE(opened.ok());
  ExpectNoSecretIn(opened.status(), tmk);
}

TEST_F(Tr34Test, TamperedSignatureIsRefused) {
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  auto token = Token(*krd_, crypto::CipherFamily::kAes, tmk, nonce_, kAesHeader);
  ASSERT_TRUE(token.ok());
  Bytes tampered = *token;
  tampered[tampered.size() - 1] ^= 0x01;  // the signature is the last field
  auto block = ReceiveTwoPass(tampered, nonce_);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(block.status().message(), HasSubstr("signature does not verify"));
  ExpectNoSecretIn(block.status(), tmk);
}

TEST_F(Tr34Test, TokenFromAnotherSignerIsRefused) {
  // The other KRD's key signs a token naming the real KDH: the KDH's key does not verify it.
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  KeyTokenRequest request = Request(*krd_, tmk, nonce_);
  request.kdh_key = &other_krd_->key;
  auto token = BuildKeyToken(request);
  ASSERT_TRUE(token.ok());
  auto block = ReceiveTwoPass(*token, nonce_);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kUnauthenticated);
  // Naming itself instead, it is not the expected KDH.
  request.kdh_id = Id(*other_krd_);
  token = BuildKeyToken(request);
  ASSERT_TRUE(token.ok());
  block = ReceiveTwoPass(*token, nonce_);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(block.status().message(), HasSubstr("another KDH"));
}

TEST_F(Tr34Test, KeyBlockMustMatchTheSignedTokenAroundIt) {
  // A validly signed token around an EnvelopedData whose key block says something else:
  // another header than the signed one, or another KDH than the signer.
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  auto resign = [&](const Bytes& token, std::string_view signed_header) {
    auto parsed = ParseKeyToken(token);
    EXPECT_TRUE(parsed.ok());
    auto out = internal::BuildSignedToken(
        internal::EnvelopedDataOid(), parsed->enveloped_data,
        {internal::KeyBlockHeaderAttribute(signed_header), internal::RandomNonceAttribute(nonce_)},
        Id(*kdh_), kdh_->key, {});
    EXPECT_TRUE(out.ok());
    return *out;
  };
  auto token = Token(*krd_, crypto::CipherFamily::kAes, tmk, nonce_, kAesHeader);
  ASSERT_TRUE(token.ok());
  auto block = ReceiveTwoPass(resign(*token, "D0256K0AB00N0000"), nonce_);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(block.status().message(), HasSubstr("header differs"));
  ExpectNoSecretIn(block.status(), tmk);

  KeyTokenRequest other_kdh = Request(*krd_, tmk, nonce_);
  other_kdh.kdh_id = Id(*other_krd_);
  auto foreign = BuildKeyToken(other_kdh);
  ASSERT_TRUE(foreign.ok());
  block = ReceiveTwoPass(resign(*foreign, kAesHeader), nonce_);
  EXPECT_EQ(block.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(block.status().message(), HasSubstr("names another KDH"));
  ExpectNoSecretIn(block.status(), tmk);
}

TEST_F(Tr34Test, KrdCertificateIsNeverAKdhCertificate) {
  auto as_kdh = PeerFromCertificate(krd_->cert, Role::kKdh, ca_kdh_->cert);
  EXPECT_EQ(as_kdh.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(as_kdh.status().message(), HasSubstr("not issued by the KDH CA"));
  // Even presented with the CA that did issue it, its keyUsage is not a KDH's.
  auto with_own_ca = PeerFromCertificate(krd_->cert, Role::kKdh, ca_krd_->cert);
  EXPECT_EQ(with_own_ca.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(with_own_ca.status().message(), HasSubstr("digitalSignature"));
  // And the reverse.
  auto as_krd = PeerFromCertificate(kdh_->cert, Role::kKrd, ca_krd_->cert);
  EXPECT_EQ(as_krd.status().code(), absl::StatusCode::kFailedPrecondition);
  // A certificate whose issuer name matches but whose signature is another CA's.
  Party impostor_ca = NewCa("rkl test CA KDH");
  Party impostor = NewEndEntity("rkl KDH", 2, crypto::KeyUsage::kDigitalSignature, impostor_ca);
  auto forged = PeerFromCertificate(impostor.cert, Role::kKdh, ca_kdh_->cert);
  EXPECT_EQ(forged.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(forged.status().message(), HasSubstr("does not verify"));
}

TEST_F(Tr34Test, RevokedKdhIsRefused) {
  auto crl_with = [&](std::vector<Bytes> revoked, int64_t last, int64_t next, const Party& ca) {
    crypto::CrlBuilder builder;
    builder.SetLastUpdate(last).SetNextUpdate(next);
    for (Bytes& serial : revoked) builder.AddRevoked(std::move(serial), last);
    auto crl = builder.Sign(ca.cert, ca.key);
    EXPECT_TRUE(crl.ok()) << crl.status();
    return crl->ToDer();
  };
  const crypto::Certificate& kdh = kdh_->cert;
  Bytes clean = crl_with({{0x09}}, kNow - 60, kNow + 3600, *ca_kdh_);
  EXPECT_TRUE(CheckKdhNotRevoked(kdh, std::vector<Bytes>{clean}, ca_kdh_->cert, kNow).ok());
  Bytes revoking = crl_with({kdh.SerialBytes()}, kNow - 60, kNow + 3600, *ca_kdh_);
  absl::Status revoked = CheckKdhNotRevoked(kdh, std::vector<Bytes>{revoking}, ca_kdh_->cert, kNow);
  EXPECT_EQ(revoked.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(revoked.message(), HasSubstr("is revoked"));
  // A stale CRL, one signed by another CA and none at all: no usable CRL.
  Bytes stale = crl_with({}, kNow - 7200, kNow - 3600, *ca_kdh_);
  Bytes foreign = crl_with({}, kNow - 60, kNow + 3600, *ca_krd_);
  for (const std::vector<Bytes>& crls :
       {std::vector<Bytes>{stale}, std::vector<Bytes>{foreign}, std::vector<Bytes>{}}) {
    absl::Status status = CheckKdhNotRevoked(kdh, crls, ca_kdh_->cert, kNow);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(status.message(), HasSubstr("no current CRL"));
  }
}

TEST_F(Tr34Test, BuilderRefusesBadRequests) {
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  crypto::SecretBytes odd = crypto::RandomSecret(20);
  EXPECT_FALSE(Token(*krd_, crypto::CipherFamily::kAes, odd, nonce_, kAesHeader).ok());
  EXPECT_FALSE(Token(*krd_, crypto::CipherFamily::kTdes, odd, nonce_, kTdesHeader).ok());
  EXPECT_FALSE(Token(*krd_, crypto::CipherFamily::kAes, tmk, Bytes(4, 0), kAesHeader).ok());
  EXPECT_FALSE(Token(*krd_, crypto::CipherFamily::kAes, tmk, nonce_, "").ok());
  KeyTokenRequest both = Request(*krd_, tmk, nonce_);
  both.signing_time = kNow;
  EXPECT_EQ(BuildKeyToken(both).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Tr34Test, RandomNumberTokenRoundTripsAndRefusesShortNonces) {
  auto token = BuildRandomNumberToken(nonce_);
  ASSERT_TRUE(token.ok());
  EXPECT_EQ(ParseRandomNumberToken(*token).value(), nonce_);
  EXPECT_FALSE(BuildRandomNumberToken(Bytes(7, 1)).ok());
  Bytes truncated(token->begin(), token->end() - 1);
  EXPECT_FALSE(ParseRandomNumberToken(truncated).ok());
}

TEST_F(Tr34Test, CredentialTokenRoundTripsWithCrl) {
  Bytes crl = ReadSample("ca_kdh_crl.der");
  std::vector<crypto::Certificate> certs = {kdh_->cert, ca_kdh_->cert};
  auto token = BuildCredentialToken(certs, std::vector<Bytes>{crl});
  ASSERT_TRUE(token.ok());
  auto parsed = ParseCredentialToken(*token);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->certificates.size(), 2u);
  EXPECT_EQ(parsed->certificates[0], kdh_->cert);
  EXPECT_EQ(parsed->certificates[1], ca_kdh_->cert);
  ASSERT_EQ(parsed->crls.size(), 1u);
  EXPECT_EQ(parsed->crls[0], crl);
  // A signed token is no credential token.
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  auto key_token = Token(*krd_, crypto::CipherFamily::kAes, tmk, nonce_, kAesHeader);
  ASSERT_TRUE(key_token.ok());
  EXPECT_FALSE(ParseCredentialToken(*key_token).ok());
}

TEST_F(Tr34Test, KdhUnbindTokenRoundTripsAndVerifies) {
  auto token = BuildKdhUnbindToken(Id(*kdh_), kdh_->key, Id(*krd_), nonce_, {});
  ASSERT_TRUE(token.ok()) << token.status();
  auto parsed = ParseKdhUnbindToken(*token);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->krd_id, Id(*krd_));
  EXPECT_EQ(parsed->krd_nonce, nonce_);
  EXPECT_TRUE(VerifySignedToken(*token, Peer(*kdh_, Role::kKdh)).ok());
  Bytes tampered = *token;
  tampered[tampered.size() - 1] ^= 0x01;
  EXPECT_EQ(VerifySignedToken(tampered, Peer(*kdh_, Role::kKdh)).code(),
            absl::StatusCode::kUnauthenticated);
  // An unbind token is not a key token.
  EXPECT_FALSE(ParseKeyToken(*token).ok());
}

TEST_F(Tr34Test, CaUnbindTokenRoundTripsAndVerifies) {
  auto token = BuildCaUnbindToken(Id(*ca_krd_), ca_krd_->key, Id(*krd_), Id(*kdh_));
  ASSERT_TRUE(token.ok()) << token.status();
  auto parsed = ParseCaUnbindToken(*token);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->signer, Id(*ca_krd_));
  EXPECT_EQ(parsed->krd_id, Id(*krd_));
  EXPECT_EQ(parsed->kdh_id, Id(*kdh_));
  PeerKey ca{Id(*ca_krd_), ca_krd_->key.GetPublicKey()};
  EXPECT_TRUE(VerifySignedToken(*token, ca).ok());
  Bytes tampered = *token;
  tampered[tampered.size() - 1] ^= 0x01;
  EXPECT_EQ(VerifySignedToken(tampered, ca).code(), absl::StatusCode::kUnauthenticated);
  // Another CA's key does not verify it.
  EXPECT_FALSE(VerifySignedToken(*token, PeerKey{Id(*ca_krd_), ca_kdh_->key.GetPublicKey()}).ok());
}

TEST_F(Tr34Test, RebindTokensRoundTripAndVerify) {
  Party new_kdh = NewEndEntity("rkl KDH 2", 5, crypto::KeyUsage::kDigitalSignature, *ca_kdh_);
  auto from_kdh = BuildKdhRebindToken(Id(*kdh_), kdh_->key, Id(*krd_), new_kdh.cert, nonce_,
                                      std::vector<Bytes>{ReadSample("ca_kdh_crl.der")});
  ASSERT_TRUE(from_kdh.ok()) << from_kdh.status();
  auto parsed = ParseRebindToken(*from_kdh);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->krd_id, Id(*krd_));
  EXPECT_EQ(parsed->new_kdh, new_kdh.cert);
  EXPECT_EQ(parsed->krd_nonce, nonce_);
  EXPECT_FALSE(parsed->old_kdh_id.has_value());
  EXPECT_TRUE(VerifySignedToken(*from_kdh, Peer(*kdh_, Role::kKdh)).ok());
  // The new KDH certificate still has to pass the role check before a KRD trusts it.
  EXPECT_TRUE(CheckRole(parsed->new_kdh, Role::kKdh, ca_kdh_->cert).ok());

  auto from_ca =
      BuildCaRebindToken(Id(*ca_krd_), ca_krd_->key, Id(*krd_), Id(*kdh_), new_kdh.cert, kNow);
  ASSERT_TRUE(from_ca.ok()) << from_ca.status();
  parsed = ParseRebindToken(*from_ca);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->old_kdh_id, Id(*kdh_));
  EXPECT_EQ(parsed->signing_time, kNow);
  EXPECT_TRUE(VerifySignedToken(*from_ca, PeerKey{Id(*ca_krd_), ca_krd_->key.GetPublicKey()}).ok());
  // A rebind token is no key token, and the KDH's key does not verify the CA's token.
  EXPECT_FALSE(ParseKeyToken(*from_ca).ok());
  EXPECT_FALSE(VerifySignedToken(*from_ca, Peer(*kdh_, Role::kKdh)).ok());
}

TEST_F(Tr34Test, TrailingBytesAreRefused) {
  crypto::SecretBytes tmk = crypto::RandomSecret(16);
  auto token = Token(*krd_, crypto::CipherFamily::kAes, tmk, nonce_, kAesHeader);
  ASSERT_TRUE(token.ok());
  Bytes longer = *token;
  longer.push_back(0x00);
  EXPECT_EQ(ParseKeyToken(longer).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::tr34
