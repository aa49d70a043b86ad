#include "rkl/protocol/auth.h"

#include <gtest/gtest.h>

#include "rkl/crypto/kdf.h"
#include "rkl/crypto/random.h"

namespace rkl::protocol {
namespace {

using crypto::KeyAlgorithm;

class AuthTest : public ::testing::TestWithParam<KeyAlgorithm> {
 protected:
  KeyAlgorithm alg() const { return GetParam(); }
  size_t b() const { return crypto::BlockSize(alg()); }
  crypto::SecretBytes auk_ = crypto::GenerateKey(GetParam());
  Bytes rnd1_ = crypto::RandomBytes(crypto::BlockSize(GetParam()));
  Bytes rnd2_ = crypto::RandomBytes(crypto::BlockSize(GetParam()));
};

TEST_P(AuthTest, BothSidesAgree) {
  auto kms = DeriveAuthKeys(alg(), auk_, "SN-1");
  auto pos = DeriveAuthKeys(alg(), auk_, "SN-1");
  ASSERT_TRUE(kms.ok() && pos.ok());
  EXPECT_EQ(kms->k2p.size(), auk_.size());
  EXPECT_FALSE(kms->k2p == kms->p2k);  // directions are separated

  auto crnd1 = MakeCrnd1(*kms, rnd1_, rnd2_);
  ASSERT_TRUE(crnd1.ok());
  EXPECT_EQ(crnd1->size(), 2 * b());
  EXPECT_TRUE(VerifyCrnd1(*pos, rnd1_, rnd2_, *crnd1).ok());
  auto crnd2 = MakeCrnd2(*pos, rnd1_, rnd2_);
  ASSERT_TRUE(crnd2.ok());
  EXPECT_TRUE(VerifyCrnd2(*kms, rnd1_, rnd2_, *crnd2).ok());

  Bytes kcv = {0x9A, 0x42, 0x12};
  auto proof = MakeInstallProof(*pos, "SN-1", kcv, rnd1_, rnd2_);
  ASSERT_TRUE(proof.ok());
  EXPECT_TRUE(VerifyInstallProof(*kms, "SN-1", kcv, rnd1_, rnd2_, *proof).ok());
}

TEST_P(AuthTest, KeysFollowTheKdfOfSection7) {
  auto keys = DeriveAuthKeys(alg(), auk_, "SN-1");
  ASSERT_TRUE(keys.ok());
  auto family = crypto::FamilyOf(alg());
  auto k2p = crypto::KdfCounterCmac(family, auk_, "RKL-AUTH-K2P", "SN-1", auk_.size() * 8);
  auto p2k = crypto::KdfCounterCmac(family, auk_, "RKL-AUTH-P2K", "SN-1", auk_.size() * 8);
  EXPECT_TRUE(keys->k2p == *k2p);
  EXPECT_TRUE(keys->p2k == *p2k);
}

TEST_P(AuthTest, ReflectedCrnd1IsNotAValidCrnd2) {
  auto kms = *DeriveAuthKeys(alg(), auk_, "SN-1");
  Bytes crnd1 = *MakeCrnd1(kms, rnd1_, rnd2_);
  EXPECT_EQ(VerifyCrnd2(kms, rnd1_, rnd2_, crnd1).code(), absl::StatusCode::kUnauthenticated);
  // Even with the nonces swapped, as an attacker opening a second session would arrange.
  EXPECT_EQ(VerifyCrnd2(kms, rnd2_, rnd1_, crnd1).code(), absl::StatusCode::kUnauthenticated);
}

TEST_P(AuthTest, WrongKeyOrSnOrNonceFails) {
  auto kms = *DeriveAuthKeys(alg(), auk_, "SN-1");
  auto other_sn = *DeriveAuthKeys(alg(), auk_, "SN-2");
  auto other_key = *DeriveAuthKeys(alg(), crypto::GenerateKey(alg()), "SN-1");
  Bytes crnd2 = *MakeCrnd2(other_sn, rnd1_, rnd2_);
  EXPECT_EQ(VerifyCrnd2(kms, rnd1_, rnd2_, crnd2).code(), absl::StatusCode::kUnauthenticated);
  crnd2 = *MakeCrnd2(other_key, rnd1_, rnd2_);
  EXPECT_EQ(VerifyCrnd2(kms, rnd1_, rnd2_, crnd2).code(), absl::StatusCode::kUnauthenticated);
  Bytes crnd1 = *MakeCrnd1(other_key, rnd1_, rnd2_);
  EXPECT_EQ(VerifyCrnd1(kms, rnd1_, rnd2_, crnd1).code(), absl::StatusCode::kUnauthenticated);
  Bytes good = *MakeCrnd2(kms, rnd1_, rnd2_);
  Bytes other_rnd1 = crypto::RandomBytes(b());
  EXPECT_EQ(VerifyCrnd2(kms, other_rnd1, rnd2_, good).code(), absl::StatusCode::kUnauthenticated);
}

TEST_P(AuthTest, MalformedTokensAreInvalidArgument) {
  auto kms = *DeriveAuthKeys(alg(), auk_, "SN-1");
  Bytes short_rnd(b() - 1, 0);
  EXPECT_EQ(MakeCrnd1(kms, short_rnd, rnd2_).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(VerifyCrnd2(kms, rnd1_, rnd2_, Bytes(3 * b(), 0)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DeriveAuthKeys(alg(), crypto::RandomSecret(24), "SN").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(AuthTest, InstallProofBindsSnKcvAndNonces) {
  auto keys = *DeriveAuthKeys(alg(), auk_, "SN-1");
  Bytes kcv = {1, 2, 3};
  Bytes proof = *MakeInstallProof(keys, "SN-1", kcv, rnd1_, rnd2_);
  EXPECT_EQ(VerifyInstallProof(keys, "SN-2", kcv, rnd1_, rnd2_, proof).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyInstallProof(keys, "SN-1", Bytes{1, 2, 4}, rnd1_, rnd2_, proof).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(VerifyInstallProof(keys, "SN-1", kcv, rnd2_, rnd1_, proof).code(),
            absl::StatusCode::kUnauthenticated);
  Bytes flipped = proof;
  flipped[0] ^= 0x80;
  EXPECT_EQ(VerifyInstallProof(keys, "SN-1", kcv, rnd1_, rnd2_, flipped).code(),
            absl::StatusCode::kUnauthenticated);
}

INSTANTIATE_TEST_SUITE_P(AllAlgorithms, AuthTest,
                         ::testing::Values(KeyAlgorithm::kTdes2, KeyAlgorithm::kAes128,
                                           KeyAlgorithm::kAes256));

}  // namespace
}  // namespace rkl::protocol
