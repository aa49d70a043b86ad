// rkl's TMK delivery profile (PROTOCOL §8) over TR-31.

#include "rkl/keyblock/tmk_block.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <string_view>

#include "rkl/common/hex.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"

namespace rkl::keyblock {
namespace {

using crypto::KeyAlgorithm;
using crypto::SecretBytes;
using ::testing::HasSubstr;

Bytes H(std::string_view hex) { return FromHex(hex).value(); }
SecretBytes S(std::string_view hex) { return SecretBytes::CopyOf(H(hex)); }

crypto::RandomSource Fixed(Bytes bytes) {
  return [bytes](std::span<uint8_t> out) {
    ASSERT_EQ(out.size(), bytes.size());
    std::copy(bytes.begin(), bytes.end(), out.begin());
  };
}

// KP = "00" ‖ KCV(TEK) = 0011B651; no PB (40 header characters are whole TDES blocks).
constexpr std::string_view kExpectedTdes =
    "B0104K0TD00N0200KC0C009A4212KP0C0011B6511D8102BB7760B4A47BD4D1416F5D2DA7B53A27A06D8143097B7E69"
    "6E72DD6F43";
// KP = "01" ‖ KCV(TEK) = 01233155; PB08 brings the header from 40 to 48 characters.
constexpr std::string_view kExpectedAes =
    "D0144K0AD00N0300KC0C0108793EKP0C01233155PB0800001F0D9A839D845C8A493D797BEE589C3E2F29E0FB968CD0"
    "054277CF18105CDDAB338FFB036D34F76A124C76A3292B1042";

constexpr KeyAlgorithm kAll[] = {KeyAlgorithm::kTdes2, KeyAlgorithm::kAes128,
                                 KeyAlgorithm::kAes256};

TEST(TmkBlock, RoundTripEveryTekAndTmkAlgorithm) {
  for (KeyAlgorithm tek_alg : kAll) {
    for (KeyAlgorithm tmk_alg : kAll) {
      SCOPED_TRACE(std::string(crypto::KeyAlgorithmName(tek_alg)) + " / " +
                   std::string(crypto::KeyAlgorithmName(tmk_alg)));
      const SecretBytes tek = crypto::GenerateKey(tek_alg);
      const SecretBytes tmk = crypto::GenerateKey(tmk_alg);
      absl::StatusOr<std::string> block = BuildTmkBlock(tek, tek_alg, tmk, tmk_alg);
      ASSERT_TRUE(block.ok()) << block.status();
      absl::StatusOr<TmkDelivery> got = ParseTmkBlock(tek, tek_alg, *block);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_TRUE(got->tmk == tmk);
      EXPECT_EQ(got->tmk_algorithm, tmk_alg);
      EXPECT_EQ(got->tmk_kcv, crypto::KcvHex(tmk_alg, tmk).value());
      // Every field of the profile, as a generic TR-31 reader sees it.
      ParsedKeyBlock generic = Parse(tek, *block).value();
      const KeyBlockHeader& h = generic.header;
      const bool tdes_tek = tek_alg == KeyAlgorithm::kTdes2;
      EXPECT_EQ(h.version, tdes_tek ? KeyBlockVersion::kB : KeyBlockVersion::kD);
      EXPECT_EQ(h.key_usage, "K0");
      EXPECT_EQ(h.algorithm, tmk_alg == KeyAlgorithm::kTdes2 ? 'T' : 'A');
      EXPECT_EQ(h.mode_of_use, 'D');
      EXPECT_EQ(h.key_version, "00");
      EXPECT_EQ(h.exportability, 'N');
      ASSERT_GE(h.optional_blocks.size(), 2u);
      EXPECT_EQ(h.optional_blocks[0].id, "KC");
      EXPECT_EQ(h.optional_blocks[0].data,
                (tmk_alg == KeyAlgorithm::kTdes2 ? "00" : "01") + got->tmk_kcv);
      EXPECT_EQ(h.optional_blocks[1].id, "KP");
      EXPECT_EQ(h.optional_blocks[1].data,
                (tdes_tek ? "00" : "01") + crypto::KcvHex(tek_alg, tek).value());
      // KC + KP = 24 characters after the 16-character header: 40 is whole TDES blocks but
      // needs a PB to reach 48 for AES.
      if (tdes_tek) {
        EXPECT_EQ(h.optional_blocks.size(), 2u);
      } else {
        ASSERT_EQ(h.optional_blocks.size(), 3u);
        EXPECT_EQ(h.optional_blocks[2], (OptionalBlock{"PB", "0000"}));
      }
    }
  }
}

// Known answer built by rkl with fixed padding and checked with an independent TR-31 decoder
// (a Python implementation of TR-31:2018 written from the standard while developing this).
TEST(TmkBlock, KnownAnswerTdesTek) {
  const SecretBytes tek = S("1D22BF32387C600AD97F9B97A51311AC");  // the TR-31 A.7.3.2 KBPK
  const SecretBytes tmk = S("E8BC63E5479455E26577F715D587FE68");  // KCV 9A4212
  absl::StatusOr<std::string> block =
      BuildTmkBlock(tek, KeyAlgorithm::kTdes2, tmk, KeyAlgorithm::kTdes2, Fixed(H("A1A2A3A4A5A6")));
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(*block, kExpectedTdes);
}

TEST(TmkBlock, KnownAnswerAesTek) {
  const SecretBytes tek =
      S("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6");  // A.7.4 KBPK
  const SecretBytes tmk = S("3F419E1CB7079442AA37474C2EFBF8B8");              // KCV 08793E
  absl::StatusOr<std::string> block =
      BuildTmkBlock(tek, KeyAlgorithm::kAes256, tmk, KeyAlgorithm::kAes128,
                    Fixed(H("B1B2B3B4B5B6B7B8B9BABBBCBDBE")));
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(*block, kExpectedAes);
  absl::StatusOr<TmkDelivery> got = ParseTmkBlock(tek, KeyAlgorithm::kAes256, *block);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->tmk_kcv, "08793E");
}

void ExpectRefused(const absl::StatusOr<TmkDelivery>& got, absl::StatusCode code,
                   std::string_view substring) {
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), code) << got.status();
  EXPECT_THAT(std::string(got.status().message()), HasSubstr(std::string(substring)));
}

TEST(TmkBlock, WrongTekIsUnauthenticated) {
  const SecretBytes tek = crypto::GenerateKey(KeyAlgorithm::kAes128);
  const SecretBytes tmk = crypto::GenerateKey(KeyAlgorithm::kAes128);
  const std::string block =
      BuildTmkBlock(tek, KeyAlgorithm::kAes128, tmk, KeyAlgorithm::kAes128).value();
  ExpectRefused(
      ParseTmkBlock(crypto::GenerateKey(KeyAlgorithm::kAes128), KeyAlgorithm::kAes128, block),
      absl::StatusCode::kUnauthenticated, "MAC does not verify");
}

TEST(TmkBlock, VersionMustMatchTekAlgorithm) {
  const SecretBytes tek = crypto::GenerateKey(KeyAlgorithm::kTdes2);
  const std::string block =
      BuildTmkBlock(tek, KeyAlgorithm::kTdes2, crypto::GenerateKey(KeyAlgorithm::kTdes2),
                    KeyAlgorithm::kTdes2)
          .value();
  // Same 16 bytes presented as an AES-128 TEK: the profile wants a 'D' block.
  ExpectRefused(ParseTmkBlock(tek, KeyAlgorithm::kAes128, block),
                absl::StatusCode::kInvalidArgument, "AES128 TEK requires key block version 'D'");
}

TEST(TmkBlock, ProfileViolationsAreInvalidArgument) {
  const SecretBytes tek = crypto::GenerateKey(KeyAlgorithm::kAes128);
  const SecretBytes tmk = crypto::GenerateKey(KeyAlgorithm::kAes128);
  const KeyBlockHeader good =
      TmkBlockHeader(tek, KeyAlgorithm::kAes128, tmk, KeyAlgorithm::kAes128).value();
  auto parse_with = [&](const KeyBlockHeader& h, const SecretBytes& key) {
    return ParseTmkBlock(tek, KeyAlgorithm::kAes128, Build(tek, h, key).value());
  };
  ASSERT_TRUE(parse_with(good, tmk).ok());

  KeyBlockHeader h = good;
  h.key_usage = "K1";
  ExpectRefused(parse_with(h, tmk), absl::StatusCode::kInvalidArgument, "key usage must be \"K0\"");
  h = good;
  h.mode_of_use = 'B';
  ExpectRefused(parse_with(h, tmk), absl::StatusCode::kInvalidArgument, "mode of use must be 'D'");
  h = good;
  h.key_version = "01";
  ExpectRefused(parse_with(h, tmk), absl::StatusCode::kInvalidArgument, "key version number");
  h = good;
  h.exportability = 'E';
  ExpectRefused(parse_with(h, tmk), absl::StatusCode::kInvalidArgument,
                "exportability must be 'N'");
  h = good;
  h.optional_blocks[0].data = "01000000";
  ExpectRefused(parse_with(h, tmk), absl::StatusCode::kInvalidArgument,
                "KC block does not match the check value of the delivered key");
  h = good;
  h.optional_blocks[1].data = "00" + h.optional_blocks[1].data.substr(2);  // wrong KCV method
  ExpectRefused(parse_with(h, tmk), absl::StatusCode::kInvalidArgument,
                "KP block does not match the check value of the TEK");
  h = good;
  std::swap(h.optional_blocks[0], h.optional_blocks[1]);
  ExpectRefused(parse_with(h, tmk), absl::StatusCode::kInvalidArgument,
                "optional blocks must be KC, KP and optionally PB");
  h = good;
  h.optional_blocks.pop_back();
  ExpectRefused(parse_with(h, tmk), absl::StatusCode::kInvalidArgument,
                "optional blocks must be KC, KP");
  h = good;
  ExpectRefused(parse_with(h, crypto::RandomSecret(24)), absl::StatusCode::kInvalidArgument,
                "algorithm 'A' with a 24-byte key is not a TMK algorithm");
}

TEST(TmkBlock, BuildChecksKeyLengths) {
  absl::StatusOr<std::string> r =
      BuildTmkBlock(crypto::RandomSecret(16), KeyAlgorithm::kAes256,
                    crypto::GenerateKey(KeyAlgorithm::kAes128), KeyAlgorithm::kAes128);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("TEK must be 32 bytes for AES256"));
  r = BuildTmkBlock(crypto::GenerateKey(KeyAlgorithm::kAes128), KeyAlgorithm::kAes128,
                    crypto::RandomSecret(32), KeyAlgorithm::kTdes2);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("TMK must be 16 bytes for TDES2"));
}

}  // namespace
}  // namespace rkl::keyblock
