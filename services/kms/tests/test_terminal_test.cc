// The test terminal is itself tested: it must refuse what a real terminal refuses, or the
// suites that rely on it could pass against a broken KMS.

#include "test_terminal.h"

#include <gtest/gtest.h>

#include "rkl/crypto/random.h"
#include "rkl/keyblock/tmk_block.h"
#include "rkl/keyblock/tr31.h"

namespace rkl::kms::testing {
namespace {

using crypto::KeyAlgorithm;

class TestTerminalTest : public ::testing::Test {
 protected:
  // A block built the way HSM #2 must build it, under the terminal's TEK (kept by the
  // terminal; reached here only through a tampering hook: we rebuild via the profile).
  std::string GoodBlock(const crypto::SecretBytes& tek, const crypto::SecretBytes& tmk) {
    return *keyblock::BuildTmkBlock(tek, KeyAlgorithm::kAes128, tmk, KeyAlgorithm::kAes128);
  }
};

TEST_F(TestTerminalTest, RejectsBlocksThatBreakTheProfile) {
  // Drive a terminal whose TEK we know by construction: a fresh terminal plus a block
  // built with a different TEK must fail authentication.
  TestTerminal t("POS-T", KeyAlgorithm::kAes128);
  crypto::SecretBytes other_tek = crypto::GenerateKey(KeyAlgorithm::kAes128);
  crypto::SecretBytes tmk = crypto::GenerateKey(KeyAlgorithm::kAes128);
  std::string block = GoodBlock(other_tek, tmk);
  EXPECT_FALSE(t.AcceptKeyBlock(block, "000000").ok());
  EXPECT_FALSE(t.AcceptKeyBlock("", "").ok());
  EXPECT_FALSE(t.AcceptKeyBlock("D0016K0ADN00N0200", "").ok());
  EXPECT_FALSE(t.has_tmk());
}

TEST_F(TestTerminalTest, ChecksHeaderFieldsWithItsOwnTek) {
  TestTerminal t("POS-T", KeyAlgorithm::kAes128);
  crypto::SecretBytes tmk = crypto::GenerateKey(KeyAlgorithm::kAes128);
  // Build blocks under the terminal's TEK with one field wrong each time.
  auto tek_hex = t.SecretHexForLeakChecks()[0];
  auto tek_bytes = FromHex(tek_hex);
  ASSERT_TRUE(tek_bytes.ok());
  crypto::SecretBytes tek = crypto::SecretBytes::CopyOf(*tek_bytes);
  auto header = keyblock::TmkBlockHeader(tek, KeyAlgorithm::kAes128, tmk, KeyAlgorithm::kAes128);
  ASSERT_TRUE(header.ok());
  std::string kcv = header->optional_blocks[0].data.substr(2);

  auto build = [&](const keyblock::KeyBlockHeader& h) { return *keyblock::Build(tek, h, tmk); };
  {
    TestTerminal copy = t;
    ASSERT_TRUE(copy.AcceptKeyBlock(build(*header), kcv).ok());
    EXPECT_TRUE(copy.has_tmk());
    EXPECT_FALSE(copy.AcceptKeyBlock(build(*header), "ABCDEF").ok());  // KCV beside the block
  }
  auto wrong = [&](auto mutate) {
    keyblock::KeyBlockHeader h = *header;
    mutate(h);
    TestTerminal copy = t;
    return copy.AcceptKeyBlock(build(h), kcv);
  };
  EXPECT_FALSE(wrong([](auto& h) { h.key_usage = "K1"; }).ok());
  EXPECT_FALSE(wrong([](auto& h) { h.mode_of_use = 'E'; }).ok());
  EXPECT_FALSE(wrong([](auto& h) { h.key_version = "01"; }).ok());
  EXPECT_FALSE(wrong([](auto& h) { h.exportability = 'E'; }).ok());
  EXPECT_FALSE(wrong([](auto& h) { h.algorithm = 'T'; }).ok());
  EXPECT_FALSE(wrong([](auto& h) { h.optional_blocks[0].data = "01000000"; }).ok());
  EXPECT_FALSE(wrong([](auto& h) { h.optional_blocks[1].data = "01000000"; }).ok());
  EXPECT_FALSE(wrong([](auto& h) { std::swap(h.optional_blocks[0], h.optional_blocks[1]); }).ok());
  EXPECT_FALSE(wrong([](auto& h) { h.optional_blocks.pop_back(); }).ok());
}

}  // namespace
}  // namespace rkl::kms::testing
