#include "rkl/protocol/transport_key.h"

#include <gtest/gtest.h>

#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/kwp.h"
#include "rkl/crypto/random.h"

namespace rkl::protocol {
namespace {

using crypto::GenerateKey;

TransportKey FreshTk(KeyAlgorithm alg) { return {alg, GenerateKey(alg), GenerateKey(alg)}; }

class TransportKeyTest : public ::testing::TestWithParam<KeyAlgorithm> {};

TEST_P(TransportKeyTest, PayloadRoundTrip) {
  TransportKey tk = FreshTk(GetParam());
  auto p = EncodeTkPayload(tk);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->size(), 2 + 2 * crypto::KeyLength(GetParam()));
  EXPECT_EQ(p->RevealSecret()[0], 0x01);
  EXPECT_EQ(p->RevealSecret()[1], crypto::KeyAlgorithmCode(GetParam()));
  auto back = ParseTkPayload(*p);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->algorithm, GetParam());
  EXPECT_TRUE(back->tek == tk.tek);
  EXPECT_TRUE(back->auk == tk.auk);
}

TEST_P(TransportKeyTest, CtkPkRoundTripAndLayout) {
  TransportKey tk = FreshTk(GetParam());
  auto pk = crypto::RandomSecret(32), mak = crypto::RandomSecret(32);
  CtkPkHeader h{GetParam(), "SN-42", 1764000000123, {1, 2, 3}, {4, 5, 6}};
  auto ctk = BuildCtkPk(h, *EncodeTkPayload(tk), pk, mak);
  ASSERT_TRUE(ctk.ok()) << ctk.status();

  // Independent reading of the layout of PROTOCOL §5.
  Bytes header = EncodeCtkPkHeader(h);
  ASSERT_EQ(header.size(), 4 + 1 + 1 + 5 + 8 + 3 + 3u);
  EXPECT_EQ(AsString(std::span(header).first(4)), "RKL1");
  EXPECT_TRUE(std::equal(header.begin(), header.end(), ctk->begin()));
  size_t w_len = (*ctk)[header.size()] << 8 | (*ctk)[header.size() + 1];
  ASSERT_EQ(ctk->size(), header.size() + 2 + w_len + 16);
  Bytes covered(ctk->begin(), ctk->end() - 16);
  Bytes m(ctk->end() - 16, ctk->end());
  EXPECT_EQ(*crypto::Cmac(crypto::CipherFamily::kAes, mak, covered), m);
  Bytes w(ctk->begin() + header.size() + 2, ctk->end() - 16);
  auto p = crypto::KwpUnwrap(pk, w);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(*p == *EncodeTkPayload(tk));

  auto parsed = ParseCtkPk(*ctk);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->header.sn, "SN-42");
  EXPECT_EQ(parsed->header.created_at_unix_ms, 1764000000123);
  EXPECT_EQ(parsed->header.pk_kcv, (std::array<uint8_t, 3>{1, 2, 3}));
  auto opened = OpenCtkPk(*parsed, pk, mak);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_TRUE(opened->tek == tk.tek);
  EXPECT_TRUE(opened->auk == tk.auk);
}

// The published limit (kms.proto, docs/kms.md: 150 bytes) is what the largest valid input
// produces: a 32-character SN and an AES-256 TK.
TEST(CtkPkSize, TheLargestValidCtkPkIsTheDocumentedLimit) {
  auto pk = crypto::RandomSecret(32), mak = crypto::RandomSecret(32);
  CtkPkHeader h{KeyAlgorithm::kAes256, std::string(32, 'S'), 1764000000123, {1, 2, 3}, {4, 5, 6}};
  auto ctk = BuildCtkPk(h, *EncodeTkPayload(FreshTk(KeyAlgorithm::kAes256)), pk, mak);
  ASSERT_TRUE(ctk.ok()) << ctk.status();
  EXPECT_EQ(ctk->size(), kMaxCtkPkSize);
  EXPECT_EQ(kMaxCtkPkSize, 150u);
}

INSTANTIATE_TEST_SUITE_P(AllAlgorithms, TransportKeyTest,
                         ::testing::Values(KeyAlgorithm::kTdes2, KeyAlgorithm::kAes128,
                                           KeyAlgorithm::kAes256));

TEST(TkPayload, RejectsMalformedPayloads) {
  TransportKey tk = FreshTk(KeyAlgorithm::kAes128);
  SecretBytes good = *EncodeTkPayload(tk);
  SecretBytes bad_format = good;
  bad_format.RevealSecretMutable()[0] = 0x02;
  EXPECT_EQ(ParseTkPayload(bad_format).status().code(), absl::StatusCode::kInvalidArgument);
  SecretBytes bad_code = good;
  bad_code.RevealSecretMutable()[1] = 0x12;
  EXPECT_EQ(ParseTkPayload(bad_code).status().code(), absl::StatusCode::kInvalidArgument);
  // AES-128 payload relabelled as AES-256: the length no longer fits the algorithm.
  SecretBytes relabelled = good;
  relabelled.RevealSecretMutable()[1] = 0x13;
  EXPECT_EQ(ParseTkPayload(relabelled).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTkPayload(good.Sub(0, good.size() - 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTkPayload(good.Concat(SecretBytes(1))).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TkPayload, RejectsTdesKeysWithoutOddParity) {
  TransportKey tk = FreshTk(KeyAlgorithm::kTdes2);
  SecretBytes p = *EncodeTkPayload(tk);
  p.RevealSecretMutable()[2] ^= 0x01;  // one parity bit of TEK
  EXPECT_EQ(ParseTkPayload(p).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TkPayload, EncodeRejectsWrongKeyLength) {
  TransportKey tk{KeyAlgorithm::kAes256, crypto::RandomSecret(16), crypto::RandomSecret(32)};
  EXPECT_EQ(EncodeTkPayload(tk).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(OaepLabel, IsPrefixAndSn) { EXPECT_EQ(AsString(OaepLabel("ABC-1")), "RKL-TK:ABC-1"); }

class CtkPkNegative : public ::testing::Test {
 protected:
  void SetUp() override {
    tk_ = FreshTk(KeyAlgorithm::kAes128);
    CtkPkHeader h{KeyAlgorithm::kAes128, "TERM-1", 1764000000000, {1, 2, 3}, {4, 5, 6}};
    ctk_ = *BuildCtkPk(h, *EncodeTkPayload(tk_), pk_, mak_);
  }
  absl::StatusCode Open(const Bytes& ctk, const SecretBytes& pk, const SecretBytes& mak) {
    auto parsed = ParseCtkPk(ctk);
    if (!parsed.ok()) return parsed.status().code();
    return OpenCtkPk(*parsed, pk, mak).status().code();
  }
  TransportKey tk_;
  SecretBytes pk_ = crypto::RandomSecret(32), mak_ = crypto::RandomSecret(32);
  Bytes ctk_;
};

TEST_F(CtkPkNegative, EveryFlippedBitIsRefused) {
  ASSERT_EQ(Open(ctk_, pk_, mak_), absl::StatusCode::kOk);
  for (size_t i = 0; i < ctk_.size(); ++i) {
    Bytes t = ctk_;
    t[i] ^= 0x01;
    absl::StatusCode c = Open(t, pk_, mak_);
    EXPECT_TRUE(c == absl::StatusCode::kUnauthenticated || c == absl::StatusCode::kInvalidArgument)
        << "byte " << i << " gave " << c;
  }
}

TEST_F(CtkPkNegative, WrongMakIsUnauthenticated) {
  EXPECT_EQ(Open(ctk_, pk_, crypto::RandomSecret(32)), absl::StatusCode::kUnauthenticated);
}

TEST_F(CtkPkNegative, WrongPkIsUnauthenticated) {
  EXPECT_EQ(Open(ctk_, crypto::RandomSecret(32), mak_), absl::StatusCode::kUnauthenticated);
}

TEST_F(CtkPkNegative, TruncatedOrExtendedIsInvalidArgument) {
  Bytes shorter(ctk_.begin(), ctk_.end() - 1);
  Bytes longer = ctk_;
  longer.push_back(0);
  EXPECT_EQ(ParseCtkPk(shorter).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCtkPk(longer).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCtkPk(Bytes(1000, 0)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseCtkPk(Bytes()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CtkPkNegative, HeaderWithInvalidSnIsInvalidArgument) {
  Bytes t = ctk_;
  t[6] = 'a';  // first SN character, lower case
  EXPECT_EQ(ParseCtkPk(t).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rkl::protocol
