#include "operator_terminal.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fakes.h"
#include "rkl/crypto/ecdsa.h"
#include "rkl/v1/mtms.pb.h"

namespace rkl::pos {
namespace {

using ::testing::HasSubstr;
using testing::TerminalPki;

crypto::SecretBytes Pin(const char* pin) { return crypto::SecretBytes::CopyOf(AsBytes(pin)); }

TEST(OperatorCardTest, OpensWithTheRightPinOnly) {
  auto card = OperatorCard::Open(TerminalPki::Get().operator_p12, Pin(testing::kTestPin));
  ASSERT_TRUE(card.ok()) << card.status();
  EXPECT_EQ(card->operator_id(), testing::kOperatorId);

  auto wrong = OperatorCard::Open(TerminalPki::Get().operator_p12, Pin("0000"));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(wrong.status().message(), HasSubstr("operator_card"));
  EXPECT_THAT(wrong.status().message(), ::testing::Not(HasSubstr("0000")));

  auto garbage = OperatorCard::Open(Bytes{1, 2, 3}, Pin(testing::kTestPin));
  EXPECT_FALSE(garbage.ok());
}

TEST(OperatorCardTest, PackageFollowsProtocolSection4AndVerifies) {
  auto card = OperatorCard::Open(TerminalPki::Get().operator_p12, Pin(testing::kTestPin));
  ASSERT_TRUE(card.ok());
  TransportKeyOffer offer{"T-1", Bytes(256, 0xab), "0A1B", crypto::KeyAlgorithm::kAes256};
  auto signed_package = BuildSignedPackage(offer, *card, 1700000000123, crypto::FillRandom);
  ASSERT_TRUE(signed_package.ok()) << signed_package.status();

  rkl::v1::TransportKeyPackage p;
  ASSERT_TRUE(p.ParseFromArray(signed_package->package.data(),
                               static_cast<int>(signed_package->package.size())));
  EXPECT_EQ(p.sn(), "T-1");
  EXPECT_EQ(p.ctk_pu(), std::string(256, '\xab'));
  EXPECT_EQ(p.work_certificate_serial(), "0A1B");
  EXPECT_EQ(p.algorithm(), rkl::v1::KEY_ALGORITHM_AES256);
  EXPECT_EQ(p.created_at_unix_ms(), 1700000000123);
  EXPECT_EQ(p.nonce().size(), 16u);
  EXPECT_EQ(p.operator_id(), testing::kOperatorId);

  auto key = TerminalPki::Get().operator_cert.GetPublicKey();
  ASSERT_TRUE(key.ok());
  EXPECT_TRUE(crypto::EcdsaVerify(*key, signed_package->package, signed_package->signature).ok());
  Bytes altered = signed_package->package;
  altered[3] ^= 1;
  EXPECT_FALSE(crypto::EcdsaVerify(*key, altered, signed_package->signature).ok());

  // Every package gets a fresh nonce.
  auto second = BuildSignedPackage(offer, *card, 1700000000123, crypto::FillRandom);
  rkl::v1::TransportKeyPackage q;
  ASSERT_TRUE(q.ParseFromArray(second->package.data(), static_cast<int>(second->package.size())));
  EXPECT_NE(p.nonce(), q.nonce());
}

TEST(OperatorTerminalTest, SubmitNeedsAnOperatorCard) {
  testing::FakeKms kms;
  testing::FakeMtms mtms(kms);
  OperatorTerminal op(mtms, nullptr, testing::RealClock());
  TransportKeyOffer offer{"T-1", Bytes(256, 1), "0A", crypto::KeyAlgorithm::kAes128};
  EXPECT_EQ(op.Submit(offer).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(mtms.submissions(), 0);
  EXPECT_TRUE(op.FetchWorkCertificate().ok());
}

}  // namespace
}  // namespace rkl::pos
