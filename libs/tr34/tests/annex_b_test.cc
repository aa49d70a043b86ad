// Known-answer tests against the TR-34-2019 Annex B samples (tests/data/README.md says where
// they come from and which of them are inconsistent, and how each case is handled here).

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rkl/crypto/x509.h"
#include "rkl/crypto/x509_crl.h"
#include "rkl/tr34/tokens.h"
#include "test_data.h"
#include "tokens_internal.h"

namespace rkl::tr34 {
namespace {

using ::rkl::tr34::testing::HexBytes;
using ::rkl::tr34::testing::RawPeer;
using ::rkl::tr34::testing::ReadSample;
using ::rkl::tr34::testing::ReadSampleKey;
using ::rkl::tr34::testing::ReadSampleText;
using ::rkl::tr34::testing::SecretFromHex;
using ::testing::HasSubstr;

// Values the annex states.
constexpr char kSampleNonce[] = "167EB0E72781E4940112233445566778";  // B.12
constexpr char kSampleUnbindNonce[] = "7DEA1C00894E246A";            // B.11, B.14
constexpr char kSampleTmk[] = "0123456789ABCDEFFEDCBA9876543210";    // B.2.2.2
constexpr char kSampleTdesHeader[] = "A0256K0TB00E0000";             // B.2.2.2.1
constexpr char kSampleTdesCek[] = "0123456789ABCDEFFEDCBA9876543210FFEEDDCCBBAA9988";
constexpr char kSampleAesCek[] = "0123456789ABCDEFFEDCBA9876543210";
constexpr int64_t kSampleOnePassTime = 1581362033;  // 2020-02-10 19:13:53 UTC, B.8

crypto::Certificate SampleCert(const std::string& name) {
  auto cert = crypto::Certificate::FromPem(ReadSampleText(name));
  EXPECT_TRUE(cert.ok()) << name << ": " << cert.status();
  return *std::move(cert);
}

CertId Krd1Id() {
  auto id = CertIdOf(SampleCert("krd_1_cert.pem"));
  EXPECT_TRUE(id.ok());
  return *id;
}

// A published key token (B.8 or B.9): parsed, with what both share checked (signed by KDH 1,
// the TDES header, the CA KDH CRL, and a signature that verifies under KDH 1's key).
KeyToken ParseSampleKeyToken(const std::string& name) {
  Bytes token = ReadSample(name);
  PeerKey kdh1 = RawPeer("kdh_1_cert.pem");
  auto parsed = ParseKeyToken(token);
  EXPECT_TRUE(parsed.ok()) << name << ": " << parsed.status();
  if (!parsed.ok()) return KeyToken{};
  EXPECT_EQ(parsed->signer, kdh1.id);
  EXPECT_EQ(parsed->header, kSampleTdesHeader);
  EXPECT_EQ(parsed->crls, std::vector<Bytes>{ReadSample("ca_kdh_crl.der")});
  EXPECT_TRUE(VerifySignedToken(token, kdh1).ok()) << name;
  return *std::move(parsed);
}

// `token` signed again by the sample KDH 1 key around its own EnvelopedData, with the key
// block header and `attribute` as the TR-34 signed attributes.
Bytes ResignSampleKeyToken(const KeyToken& token, Bytes attribute) {
  auto rebuilt = internal::BuildSignedToken(
      internal::EnvelopedDataOid(), token.enveloped_data,
      {internal::KeyBlockHeaderAttribute(token.header), std::move(attribute)}, token.signer,
      ReadSampleKey("kdh_1_key.pem"), token.crls);
  EXPECT_TRUE(rebuilt.ok()) << rebuilt.status();
  return rebuilt.ok() ? *rebuilt : Bytes();
}

// A published signed token taken apart by `parse`, checked to name `signer` and to verify
// under its key.
template <typename Parse>
auto ParseSignedSample(const Bytes& token, Parse parse, const PeerKey& signer) {
  auto parsed = parse(token);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (parsed.ok()) {
    EXPECT_EQ(parsed->signer, signer.id);
  }
  EXPECT_TRUE(VerifySignedToken(token, signer).ok());
  return parsed;
}

// `rebuilt`, made by rkl's builder from what parsing `token` gave, is `token` to the byte.
void ExpectSameBytes(const absl::StatusOr<Bytes>& rebuilt, const Bytes& token) {
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status();
  EXPECT_EQ(ToHex(*rebuilt), ToHex(token));
}

TEST(AnnexB, RandomNumberTokenB12ParsesAndRebuildsByteForByte) {
  Bytes token = ReadSample("b12_rt_krd.der");
  auto nonce = ParseRandomNumberToken(token);
  ASSERT_TRUE(nonce.ok()) << nonce.status();
  EXPECT_EQ(ToHex(*nonce), kSampleNonce);
  ExpectSameBytes(BuildRandomNumberToken(*nonce), token);
}

TEST(AnnexB, KrdCredentialTokenB7ParsesAndRebuildsByteForByte) {
  Bytes token = ReadSample("b7_ct_krd.der");
  auto parsed = ParseCredentialToken(token);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->certificates.size(), 1u);
  EXPECT_EQ(parsed->certificates[0], SampleCert("krd_1_cert.pem"));
  EXPECT_TRUE(parsed->crls.empty());
  ExpectSameBytes(BuildCredentialToken(parsed->certificates), token);
}

TEST(AnnexB, KdhCredentialTokenB6IsMalformedAndRefused) {
  // B.6 puts the CRLs after the (empty) SignerInfos, against RFC 5652's field order.
  auto parsed = ParseCredentialToken(ReadSample("b6_ct_kdh.der"));
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << parsed.status();
  EXPECT_EQ(parsed.status().message(), "TR-34 token: malformed credential token");
}

TEST(AnnexB, SampleKdhCrlIsSignedByTheSampleCaKdh) {
  // The sample CRL (2010-11-02, next update 2010-12-02) lists serials 3400000008, 0A and 0B.
  auto crl = crypto::Crl::FromDer(ReadSample("ca_kdh_crl.der"));
  ASSERT_TRUE(crl.ok()) << crl.status();
  EXPECT_TRUE(crl->VerifySignature(SampleCert("ca_kdh_cert.pem")).ok());
  EXPECT_TRUE(crl->IsRevoked(HexBytes("3400000008")));
  EXPECT_FALSE(crl->IsRevoked(HexBytes("3400000006")));  // KDH 1
}

TEST(AnnexB, SampleKdhCertificateHasDuplicatedExtensionsAndIsRefused) {
  // KDH_1 carries basicConstraints and keyUsage twice (RFC 5280 §4.2 forbids it); rkl's
  // certificate type refuses it, so the tests below take its key through OpenSSL directly.
  auto cert = crypto::Certificate::FromPem(ReadSampleText("kdh_1_cert.pem"));
  EXPECT_EQ(cert.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(AnnexB, SampleCertificatesHaveTheirRoles) {
  crypto::Certificate krd = SampleCert("krd_1_cert.pem");
  crypto::Certificate ca_krd = SampleCert("ca_krd_cert.pem");
  crypto::Certificate ca_kdh = SampleCert("ca_kdh_cert.pem");
  EXPECT_TRUE(CheckRole(krd, Role::kKrd, ca_krd).ok());
  // The KRD certificate presented as a KDH one: refused on the issuing CA.
  absl::Status as_kdh = CheckRole(krd, Role::kKdh, ca_kdh);
  EXPECT_EQ(as_kdh.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(as_kdh.message(), HasSubstr("not a KDH certificate"));
  // A CA certificate is no end entity of either role.
  EXPECT_FALSE(CheckRole(ca_krd, Role::kKrd, SampleCert("root_cert.pem")).ok());
}

TEST(AnnexB, TwoPassKeyTokenB9ParsesAndVerifies) {
  KeyToken parsed = ParseSampleKeyToken("b9_two_pass_key_token.der");
  ASSERT_TRUE(parsed.krd_nonce.has_value());
  EXPECT_EQ(ToHex(*parsed.krd_nonce), kSampleNonce);
  EXPECT_FALSE(parsed.signing_time.has_value());
}

TEST(AnnexB, TwoPassKeyTokenB9RebuildsWithItsSignedAttributesInDerOrder) {
  // B.9 sends its signed attributes as contentType, randomNonce, key block header,
  // messageDigest: not the DER order of a SET OF (the header attribute's encoding sorts
  // before the nonce's). rkl's builder sorts, so the rebuilt token differs from B.9 only
  // there, and B.8's byte-for-byte rebuild below shows the rest of the encoding.
  Bytes token = ReadSample("b9_two_pass_key_token.der");
  KeyToken parsed = ParseSampleKeyToken("b9_two_pass_key_token.der");
  ASSERT_TRUE(parsed.krd_nonce.has_value());
  Bytes rebuilt = ResignSampleKeyToken(parsed, internal::RandomNonceAttribute(*parsed.krd_nonce));
  ASSERT_EQ(rebuilt.size(), token.size());
  EXPECT_NE(rebuilt, token);
  const std::string kHeaderThenNonce =
      "301F06092A864886F70D0107013112041041303235364B3054423030453030303030"
      "20060A2A864886F70D0109190331120410167EB0E72781E4940112233445566778";
  EXPECT_THAT(ToHex(rebuilt), HasSubstr(kHeaderThenNonce));
  EXPECT_TRUE(VerifySignedToken(rebuilt, RawPeer("kdh_1_cert.pem")).ok());
  auto reparsed = ParseKeyToken(rebuilt);
  ASSERT_TRUE(reparsed.ok());
  EXPECT_EQ(reparsed->enveloped_data, parsed.enveloped_data);
  EXPECT_EQ(reparsed->krd_nonce, parsed.krd_nonce);
  EXPECT_EQ(reparsed->header, parsed.header);
  EXPECT_EQ(reparsed->crls, parsed.crls);
}

TEST(AnnexB, TwoPassKeyTokenB9EncryptedKeyDoesNotOpenUnderSampleKrdKey) {
  // Inconsistent sample: the RSA-OAEP encryptedKey decodes under no OAEP hash choice with
  // the KRD_1 key, so the full KRD check stops at decryption, with the uniform message.
  Bytes token = ReadSample("b9_two_pass_key_token.der");
  auto block = ReceiveTwoPassKeyToken(token, RawPeer("kdh_1_cert.pem"), HexBytes(kSampleNonce),
                                      Krd1Id(), ReadSampleKey("krd_1_key.pem"));
  EXPECT_EQ(block.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(block.status().message(), "TR-34 key token: decryption failed");
}

TEST(AnnexB, TwoPassKeyTokenB9ContentDecryptsToThePublishedKeyBlock) {
  auto parsed = ParseKeyToken(ReadSample("b9_two_pass_key_token.der"));
  ASSERT_TRUE(parsed.ok());
  auto block = internal::DecryptKeyBlockWithContentKey(parsed->enveloped_data,
                                                       SecretFromHex(kSampleTdesCek));
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->key, SecretFromHex(kSampleTmk));
  EXPECT_EQ(block->header, kSampleTdesHeader);
  EXPECT_EQ(block->kdh_id, RawPeer("kdh_1_cert.pem").id);
  // The same key block as B.2.2.2.1 publishes in clear.
  auto published =
      internal::ParseKeyBlock(crypto::SecretBytes::CopyOf(ReadSample("b2221_tdes_key_block.der")));
  ASSERT_TRUE(published.ok());
  EXPECT_EQ(published->key, block->key);
  EXPECT_EQ(published->kdh_id, block->kdh_id);
}

TEST(AnnexB, SampleKeysCarryThePublishedKeyThroughOurTwoPassToken) {
  // The published KDH_1 and KRD_1 keys, the B.12 random number and the published TMK and
  // header, through rkl's builder and the KRD's full check.
  crypto::PrivateKey kdh_key = ReadSampleKey("kdh_1_key.pem");
  crypto::PrivateKey krd_key = ReadSampleKey("krd_1_key.pem");
  PeerKey kdh1 = RawPeer("kdh_1_cert.pem");
  auto krd1 = CertIdOf(SampleCert("krd_1_cert.pem"));
  ASSERT_TRUE(krd1.ok());
  crypto::SecretBytes tmk = SecretFromHex(kSampleTmk);
  KeyTokenRequest request{.kdh_id = kdh1.id,
                          .kdh_key = &kdh_key,
                          .krd = PeerKey{*krd1, krd_key.GetPublicKey()},
                          .tmk_family = crypto::CipherFamily::kTdes,
                          .tmk = &tmk,
                          .header = kSampleTdesHeader,
                          .krd_nonce = HexBytes(kSampleNonce),
                          .signing_time = std::nullopt,
                          .crls = {ReadSample("ca_kdh_crl.der")}};
  auto token = BuildKeyToken(request);
  ASSERT_TRUE(token.ok()) << token.status();
  auto block = ReceiveTwoPassKeyToken(*token, kdh1, HexBytes(kSampleNonce), *krd1, krd_key);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->key, tmk);
  EXPECT_EQ(block->header, kSampleTdesHeader);
}

TEST(AnnexB, OnePassKeyTokenB8ParsesVerifiesAndRebuildsByteForByte) {
  Bytes token = ReadSample("b8_one_pass_key_token.der");
  KeyToken parsed = ParseSampleKeyToken("b8_one_pass_key_token.der");
  EXPECT_FALSE(parsed.krd_nonce.has_value());
  ASSERT_TRUE(parsed.signing_time.has_value());
  EXPECT_EQ(*parsed.signing_time, kSampleOnePassTime);
  // signingTime as B.8 encodes it: UTCTime "200210191353Z".
  Bytes signing_time = HexBytes("301C06092A864886F70D010905310F170D3230303231303139313335335A");
  EXPECT_EQ(ToHex(ResignSampleKeyToken(parsed, signing_time)), ToHex(token));
  // Its EnvelopedData is B.9's, with the same inconsistent encryptedKey.
  auto block = ReceiveOnePassKeyToken(token, RawPeer("kdh_1_cert.pem"), kSampleOnePassTime + 10,
                                      300, 60, Krd1Id(), ReadSampleKey("krd_1_key.pem"));
  EXPECT_EQ(block.status().code(), absl::StatusCode::kUnauthenticated);
}

// B.11 or B.14 taken apart by `parse`, with what they share checked: signed by KDH 1, to
// KRD 1, answering the same random number, with the CA KDH CRL.
template <typename Parse>
auto ParseKdh1ToKrd1Sample(const Bytes& token, Parse parse) {
  auto parsed = ParseSignedSample(token, parse, RawPeer("kdh_1_cert.pem"));
  if (parsed.ok()) {
    EXPECT_EQ(parsed->krd_id, Krd1Id());
    EXPECT_EQ(parsed->krd_nonce, HexBytes(kSampleUnbindNonce));
    EXPECT_EQ(parsed->crls, std::vector<Bytes>{ReadSample("ca_kdh_crl.der")});
  }
  return parsed;
}

TEST(AnnexB, KdhUnbindTokenB14ParsesVerifiesAndRebuildsByteForByte) {
  Bytes token = ReadSample("b14_ubt_kdh_unbind.der");
  auto parsed = ParseKdh1ToKrd1Sample(token, ParseKdhUnbindToken);
  ASSERT_TRUE(parsed.ok());
  ExpectSameBytes(BuildKdhUnbindToken(parsed->signer, ReadSampleKey("kdh_1_key.pem"),
                                      parsed->krd_id, HexBytes(kSampleUnbindNonce), parsed->crls),
                  token);
}

TEST(AnnexB, CaUnbindTokenB13ParsesVerifiesAndRebuildsByteForByte) {
  Bytes token = ReadSample("b13_ubt_ca_unbind.der");
  crypto::Certificate ca_krd = SampleCert("ca_krd_cert.pem");
  auto ca_krd_peer = PeerKey{CertIdOf(ca_krd).value(), ca_krd.GetPublicKey().value()};
  // B.13 has no signed attributes: its signature covers the content.
  auto parsed = ParseSignedSample(token, ParseCaUnbindToken, ca_krd_peer);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->krd_id, Krd1Id());
  EXPECT_EQ(parsed->kdh_id, RawPeer("kdh_1_cert.pem").id);
  ExpectSameBytes(BuildCaUnbindToken(ca_krd_peer.id, ReadSampleKey("ca_krd_key.pem"),
                                     parsed->krd_id, parsed->kdh_id),
                  token);
  // Signed by the KDH instead, it does not verify as the CA's.
  EXPECT_FALSE(VerifySignedToken(token, RawPeer("kdh_1_cert.pem")).ok());
}

TEST(AnnexB, KdhRebindTokenB11ParsesVerifiesAndRebuildsByteForByte) {
  Bytes token = ReadSample("b11_rbt_kdh.der");
  auto parsed = ParseKdh1ToKrd1Sample(token, ParseRebindToken);
  ASSERT_TRUE(parsed.ok());
  EXPECT_FALSE(parsed->old_kdh_id.has_value());
  EXPECT_EQ(parsed->new_kdh.SubjectCommonName(), "TR34 Sample KDH 2");
  EXPECT_EQ(parsed->new_kdh.SerialHex(), "3400000007");
  ExpectSameBytes(
      BuildKdhRebindToken(parsed->signer, ReadSampleKey("kdh_1_key.pem"), parsed->krd_id,
                          parsed->new_kdh, HexBytes(kSampleUnbindNonce), parsed->crls),
      token);
}

TEST(AnnexB, CaRebindTokenB10ParsesVerifiesAndRebuildsByteForByte) {
  Bytes token = ReadSample("b10_rbt_ca_unbind.der");
  crypto::Certificate ca_krd = SampleCert("ca_krd_cert.pem");
  PeerKey ca_krd_peer{CertIdOf(ca_krd).value(), ca_krd.GetPublicKey().value()};
  auto parsed = ParseSignedSample(token, ParseRebindToken, ca_krd_peer);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->krd_id, Krd1Id());
  EXPECT_EQ(parsed->old_kdh_id, RawPeer("kdh_1_cert.pem").id);
  EXPECT_EQ(parsed->new_kdh.SubjectCommonName(), "TR34 Sample KDH 2");
  EXPECT_EQ(parsed->signing_time, 1'328'016'134);  // 2012-01-31 13:22:14 UTC
  EXPECT_FALSE(parsed->krd_nonce.has_value());
  ExpectSameBytes(
      BuildCaRebindToken(ca_krd_peer.id, ReadSampleKey("ca_krd_key.pem"), parsed->krd_id,
                         *parsed->old_kdh_id, parsed->new_kdh, *parsed->signing_time),
      token);
}

TEST(AnnexB, AesEnvelopedDataSampleHasAnEightByteIvAndIsRefused) {
  // B.2.2.3.2 (errata) names AES-128-CBC with the 8-byte TDES IV 0123456789ABCDEF.
  auto block = internal::DecryptKeyBlockWithContentKey(ReadSample("b2234_aes_enveloped_data.der"),
                                                       SecretFromHex(kSampleAesCek));
  EXPECT_EQ(block.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(block.status().message(), HasSubstr("IV is 8 bytes"));
}

TEST(AnnexB, AesKeyBlockSampleParses) {
  auto block =
      internal::ParseKeyBlock(crypto::SecretBytes::CopyOf(ReadSample("b2224_aes_key_block.der")));
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->key, SecretFromHex(kSampleTmk));
  EXPECT_EQ(block->header, "D0256K0AB00E0000");
  EXPECT_EQ(block->kdh_id, RawPeer("kdh_1_cert.pem").id);
}

}  // namespace
}  // namespace rkl::tr34
