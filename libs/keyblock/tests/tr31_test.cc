// TR-31 versions B and D: the two published vectors (TR-31:2018 A.7.3.2 and A.7.4, from
// shared/vectors/public-vectors.json), byte-exact rebuilding of both, round trips over every
// KBPK and key size, and one test per way a block must be refused.

#include "rkl/keyblock/tr31.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "rkl/common/hex.h"
#include "rkl/crypto/cipher.h"
#include "rkl/crypto/cmac.h"
#include "rkl/crypto/kcv.h"
#include "rkl/crypto/random.h"

namespace rkl::keyblock {
namespace {

using crypto::CipherFamily;
using crypto::SecretBytes;
using ::testing::HasSubstr;
using ::testing::Not;

Bytes H(std::string_view hex) { return FromHex(hex).value(); }
SecretBytes S(std::string_view hex) { return SecretBytes::CopyOf(H(hex)); }
std::string Hex(const SecretBytes& s) { return ToHex(s.RevealSecret()); }

// A RandomSource that replays fixed bytes, for byte-exact rebuilding.
crypto::RandomSource Fixed(Bytes bytes) {
  return [bytes](std::span<uint8_t> out) {
    ASSERT_EQ(out.size(), bytes.size());
    std::copy(bytes.begin(), bytes.end(), out.begin());
  };
}

// ---- public-vectors.json: tr31 ----
constexpr std::string_view kKbpkB = "1D22BF32387C600AD97F9B97A51311AC";
constexpr std::string_view kBlockB =
    "B0104B0TX12S0100KS1800604B120F9292800000BB68BE8680A400D9191AD4ECE45B6E6C0D21C4738A52190E248719"
    "E24B433627";
constexpr std::string_view kKeyB = "E8BC63E5479455E26577F715D587FE68";
constexpr std::string_view kKcvB = "9A4212";
constexpr std::string_view kPaddingB = "30111D18CC4C";  // recovered by decrypting the vector

constexpr std::string_view kKbpkD =
    "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6";
constexpr std::string_view kBlockD =
    "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05F742"
    "5509593D03A457DC34";
constexpr std::string_view kKeyD = "3F419E1CB7079442AA37474C2EFBF8B8";
constexpr std::string_view kKcvD = "08793E";
constexpr std::string_view kPaddingD = "1C2965473CE206BB855B01533782";

// Asserts that a failure message carries none of the secrets involved.
void ExpectNoSecrets(const absl::Status& s) {
  for (std::string_view secret : {kKbpkB, kKbpkD, kKeyB, kKeyD, kPaddingB, kPaddingD}) {
    EXPECT_THAT(std::string(s.message()), Not(HasSubstr(std::string(secret.substr(0, 8)))));
  }
}

void ExpectRefused(const SecretBytes& kbpk, std::string_view block, absl::StatusCode code,
                   std::string_view substring) {
  absl::StatusOr<ParsedKeyBlock> parsed = Parse(kbpk, block);
  ASSERT_FALSE(parsed.ok()) << block;
  EXPECT_EQ(parsed.status().code(), code) << parsed.status();
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(std::string(substring)));
  ExpectNoSecrets(parsed.status());
}

std::string Replace(std::string_view block, size_t pos, char c) {
  std::string out(block);
  out[pos] = c;
  return out;
}

// A published vector and everything parsing it must yield.
struct Vector {
  std::string name;
  std::string_view kbpk, block;
  KeyBlockVersion version;
  std::string key_usage;
  char algorithm, mode_of_use;
  std::string key_version;
  char exportability;
  std::vector<OptionalBlock> optional_blocks;
  std::string_view key, kcv;
  CipherFamily family;
};

class Tr31PublishedVectors : public ::testing::TestWithParam<Vector> {};

TEST_P(Tr31PublishedVectors, ParsesWithHeaderKeyAndKcv) {
  const Vector& v = GetParam();
  absl::StatusOr<ParsedKeyBlock> parsed = Parse(S(v.kbpk), v.block);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const KeyBlockHeader& h = parsed->header;
  EXPECT_EQ(h.version, v.version);
  EXPECT_EQ(h.key_usage, v.key_usage);
  EXPECT_EQ(h.algorithm, v.algorithm);
  EXPECT_EQ(h.mode_of_use, v.mode_of_use);
  EXPECT_EQ(h.key_version, v.key_version);
  EXPECT_EQ(h.exportability, v.exportability);
  EXPECT_EQ(h.optional_blocks, v.optional_blocks);
  EXPECT_EQ(Hex(parsed->key), v.key);
  EXPECT_EQ(crypto::KcvHex(v.family, parsed->key).value(), v.kcv);
}

INSTANTIATE_TEST_SUITE_P(Published, Tr31PublishedVectors,
                         ::testing::Values(Vector{"VersionB",
                                                  kKbpkB,
                                                  kBlockB,
                                                  KeyBlockVersion::kB,
                                                  "B0",
                                                  'T',
                                                  'X',
                                                  "12",
                                                  'S',
                                                  {OptionalBlock{"KS", "00604B120F9292800000"}},
                                                  kKeyB,
                                                  kKcvB,
                                                  CipherFamily::kTdes},
                                           Vector{"VersionD",
                                                  kKbpkD,
                                                  kBlockD,
                                                  KeyBlockVersion::kD,
                                                  "P0",
                                                  'A',
                                                  'E',
                                                  "00",
                                                  'E',
                                                  {},
                                                  kKeyD,
                                                  kKcvD,
                                                  CipherFamily::kAes}),
                         [](const ::testing::TestParamInfo<Vector>& info) {
                           return info.param.name;
                         });

TEST(Tr31Vectors, DerivedKeysMatchIndependentComputation) {
  // KBEK/KBAK computed with Python's `cryptography` CMAC from the TR-31 derivation data.
  KeyBlockKeys b = DeriveKeyBlockKeys(KeyBlockVersion::kB, S(kKbpkB)).value();
  EXPECT_EQ(Hex(b.encryption), "BCE8E2AD5D4489FD0EA5236A884DAC58");
  EXPECT_EQ(Hex(b.authentication), "1F9B2BDAF969C7B8B6C933AC7B9C6894");
  KeyBlockKeys d = DeriveKeyBlockKeys(KeyBlockVersion::kD, S(kKbpkD)).value();
  EXPECT_EQ(Hex(d.encryption), "396C9382A6E2E66A088774E1D6E46541F5EAD67D7204F8DD0D7AE8FDA334D3AC");
  EXPECT_EQ(Hex(d.authentication),
            "4EF24317696213840451890756757E573E0673483888F9B7F9B7517827F95022");
}

TEST(Tr31Vectors, PaddingConstantsAreTheVectorsOwn) {
  // Decrypt the vectors by hand (IV = MAC) to show the padding constants below come from them.
  KeyBlockKeys b = DeriveKeyBlockKeys(KeyBlockVersion::kB, S(kKbpkB)).value();
  SecretBytes payload_b =
      crypto::DecryptToSecret(CipherFamily::kTdes, crypto::BlockMode::kCbc, b.encryption,
                              H(kBlockB.substr(88)), H(kBlockB.substr(40, 48)))
          .value();
  EXPECT_EQ(Hex(payload_b), absl::StrCat("0080", std::string(kKeyB), std::string(kPaddingB)));
  KeyBlockKeys d = DeriveKeyBlockKeys(KeyBlockVersion::kD, S(kKbpkD)).value();
  SecretBytes payload_d =
      crypto::DecryptToSecret(CipherFamily::kAes, crypto::BlockMode::kCbc, d.encryption,
                              H(kBlockD.substr(80)), H(kBlockD.substr(16, 64)))
          .value();
  EXPECT_EQ(Hex(payload_d), absl::StrCat("0080", std::string(kKeyD), std::string(kPaddingD)));
}

TEST(Tr31Vectors, DeterministicBuildReproducesBothVectors) {
  KeyBlockHeader hb{
      KeyBlockVersion::kB, "B0", 'T', 'X', "12", 'S', {{"KS", "00604B120F9292800000"}}};
  absl::StatusOr<std::string> built_b = Build(S(kKbpkB), hb, S(kKeyB), Fixed(H(kPaddingB)));
  ASSERT_TRUE(built_b.ok()) << built_b.status();
  EXPECT_EQ(*built_b, kBlockB);

  KeyBlockHeader hd{KeyBlockVersion::kD, "P0", 'A', 'E', "00", 'E', {}};
  absl::StatusOr<std::string> built_d = Build(S(kKbpkD), hd, S(kKeyD), Fixed(H(kPaddingD)));
  ASSERT_TRUE(built_d.ok()) << built_d.status();
  EXPECT_EQ(*built_d, kBlockD);
}

// ---- round trips ----
struct RoundTripCase {
  KeyBlockVersion version;
  size_t kbpk_length;
  char algorithm;
  size_t key_length;
};

class Tr31RoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(Tr31RoundTrip, BuildThenParse) {
  const RoundTripCase c = GetParam();
  const SecretBytes kbpk = crypto::RandomSecret(c.kbpk_length);
  const SecretBytes key = crypto::RandomSecret(c.key_length);
  KeyBlockHeader header{c.version, "K0", c.algorithm, 'D', "00", 'N', {{"KC", "01ABCDEF"}}};
  absl::StatusOr<std::string> block = Build(kbpk, header, key);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->front(), static_cast<char>(c.version));
  EXPECT_EQ(std::stoul(block->substr(1, 4)), block->size());

  absl::StatusOr<ParsedKeyBlock> parsed = Parse(kbpk, *block);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE(parsed->key == key);
  // The parsed header is the input plus whatever PB Build had to add.
  KeyBlockHeader without_pb = parsed->header;
  if (!without_pb.optional_blocks.empty() && without_pb.optional_blocks.back().id == "PB") {
    without_pb.optional_blocks.pop_back();
  }
  EXPECT_EQ(without_pb, header);
  // Random padding: the same key wraps differently each time.
  EXPECT_NE(Build(kbpk, header, key).value(), *block);
}

INSTANTIATE_TEST_SUITE_P(AllKbpksAndKeys, Tr31RoundTrip,
                         ::testing::Values(RoundTripCase{KeyBlockVersion::kB, 16, 'T', 16},
                                           RoundTripCase{KeyBlockVersion::kB, 16, 'A', 16},
                                           RoundTripCase{KeyBlockVersion::kB, 16, 'A', 32},
                                           RoundTripCase{KeyBlockVersion::kB, 24, 'T', 24},
                                           RoundTripCase{KeyBlockVersion::kB, 24, 'A', 32},
                                           RoundTripCase{KeyBlockVersion::kD, 16, 'T', 16},
                                           RoundTripCase{KeyBlockVersion::kD, 16, 'A', 16},
                                           RoundTripCase{KeyBlockVersion::kD, 24, 'A', 24},
                                           RoundTripCase{KeyBlockVersion::kD, 32, 'T', 16},
                                           RoundTripCase{KeyBlockVersion::kD, 32, 'A', 16},
                                           RoundTripCase{KeyBlockVersion::kD, 32, 'A', 32}));

TEST(Tr31Build, AddsPaddingBlockToWholeCipherBlocks) {
  const SecretBytes kbpk = crypto::RandomSecret(32);
  // 16 + 8 = 24 characters: a PB of 8 brings the header to 32.
  KeyBlockHeader h{KeyBlockVersion::kD, "K0", 'A', 'D', "00", 'N', {{"KC", "0102"}}};
  std::string block = Build(kbpk, h, crypto::RandomSecret(16)).value();
  EXPECT_EQ(block.substr(0, 32),
            absl::StrCat("D", block.substr(1, 4), "K0AD00N0200KC080102PB080000"));
  // 16 + 14 = 30: two characters short of 32, so the PB spans into the next block (18).
  h.optional_blocks = {{"KC", "0102030405"}};
  block = Build(kbpk, h, crypto::RandomSecret(16)).value();
  EXPECT_EQ(block.substr(11, 37), "N0200KC0E0102030405PB12" + std::string(14, '0'));
  // Already aligned: no PB.
  h.optional_blocks = {{"KC", "010203040506"}};
  block = Build(kbpk, h, crypto::RandomSecret(16)).value();
  EXPECT_EQ(block.substr(12, 2), "01");
}

TEST(Tr31Build, LongFormOptionalBlockRoundTrips) {
  const SecretBytes kbpk = crypto::RandomSecret(16);
  const std::string big(300, 'X');  // 4 + 300 > 255: needs the long length form
  KeyBlockHeader h{KeyBlockVersion::kB, "K0", 'T', 'D', "00", 'N', {{"DA", big}}};
  std::string block = Build(kbpk, h, crypto::RandomSecret(16)).value();
  EXPECT_EQ(block.substr(16, 10), "DA00040136");  // 0x136 = 310 = 2 + 2 + 2 + 4 + 300
  ParsedKeyBlock parsed = Parse(kbpk, block).value();
  EXPECT_EQ(parsed.header.optional_blocks[0].data, big);
}

TEST(Tr31Build, RefusesBadInputs) {
  const SecretBytes tdes = crypto::RandomSecret(16), aes = crypto::RandomSecret(32);
  const SecretBytes key = crypto::RandomSecret(16);
  KeyBlockHeader ok{KeyBlockVersion::kD, "K0", 'A', 'D', "00", 'N', {}};
  ASSERT_TRUE(Build(aes, ok, key).ok());

  auto expect = [&](const SecretBytes& kbpk, const KeyBlockHeader& h, const SecretBytes& k,
                    std::string_view substring) {
    absl::StatusOr<std::string> r = Build(kbpk, h, k);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << substring;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(std::string(substring)));
  };
  KeyBlockHeader h = ok;
  h.key_usage = "K";
  expect(aes, h, key, "key usage");
  h = ok;
  h.mode_of_use = '*';
  expect(aes, h, key, "mode of use");
  h = ok;
  h.version = static_cast<KeyBlockVersion>('A');
  expect(aes, h, key, "unsupported key block version 'A'");
  expect(crypto::RandomSecret(20), ok, key, "version D needs an AES KBPK");
  h = ok;
  h.version = KeyBlockVersion::kB;
  expect(aes, h, key, "version B needs a TDES KBPK");
  expect(aes, ok, crypto::RandomSecret(20), "algorithm 'A' key must be 16, 24 or 32 bytes");
  h = ok;
  h.algorithm = 'T';
  expect(aes, h, crypto::RandomSecret(32), "algorithm 'T' key must be 16 or 24 bytes");
  h = ok;
  h.optional_blocks = {{"PB", "0000"}, {"KC", "01"}};
  expect(aes, h, key, "PB optional block must be the last");
  h.optional_blocks = {{"PB", "00"}};
  expect(aes, h, key, "not a multiple of 16");
  h.optional_blocks = {{"K", "00"}};
  expect(aes, h, key, "is not 2 alphanumerics");
  h.optional_blocks = {{"KC", "\n"}};
  expect(aes, h, key, "not printable");
  (void)tdes;
}

// ---- parse refusals ----
TEST(Tr31Parse, FlippedHeaderCharacterFailsTheMac) {
  // Key usage B0 -> B1: still well formed, but no longer what was MACed.
  ExpectRefused(S(kKbpkB), Replace(kBlockB, 6, '1'), absl::StatusCode::kUnauthenticated,
                "MAC does not verify");
  // Exportability E -> N in the D vector.
  ExpectRefused(S(kKbpkD), Replace(kBlockD, 11, 'N'), absl::StatusCode::kUnauthenticated,
                "MAC does not verify");
}

TEST(Tr31Parse, FlippedOptionalBlockDataFailsTheMac) {
  ExpectRefused(S(kKbpkB), Replace(kBlockB, 25, '5'), absl::StatusCode::kUnauthenticated,
                "MAC does not verify");
}

TEST(Tr31Parse, BadOptionalBlockLength) {
  // KS length 0x18 -> 0x1Z: not hex.
  ExpectRefused(S(kKbpkB), Replace(kBlockB, 19, 'Z'), absl::StatusCode::kInvalidArgument,
                "optional block 1 of 1 (KS) length \"1Z\" is not 2 hex digits");
  // 0x18 -> 0x02: shorter than its own ID and length.
  std::string b = std::string(kBlockB);
  b.replace(18, 2, "02");
  ExpectRefused(S(kKbpkB), b, absl::StatusCode::kInvalidArgument,
                "shorter than its own ID and length fields");
  // 0x18 -> 0xF8: runs past the end.
  b.replace(18, 2, "F8");
  ExpectRefused(S(kKbpkB), b, absl::StatusCode::kInvalidArgument, "runs past the end");
  // 0x18 -> 0x14: the header no longer ends on a cipher block boundary.
  b.replace(18, 2, "14");
  ExpectRefused(S(kKbpkB), b, absl::StatusCode::kInvalidArgument,
                "not a multiple of the cipher block size 8");
}

TEST(Tr31Parse, OptionalBlockCountMismatch) {
  // Claims 2 blocks; the second "block" is ciphertext whose length runs past the end.
  ExpectRefused(S(kKbpkB), Replace(kBlockB, 13, '2'), absl::StatusCode::kInvalidArgument,
                "optional block 2 of 2 (BB) length 104 runs past the end");
  // Claims 0 blocks: the KS block is taken for key data, which then is not whole blocks / hex.
  ExpectRefused(S(kKbpkB), Replace(kBlockB, 13, '0'), absl::StatusCode::kInvalidArgument,
                "encrypted key data is 72 hex characters, not a whole number of cipher blocks");
}

TEST(Tr31Parse, FlippedCiphertextFailsTheMac) {
  ExpectRefused(S(kKbpkB), Replace(kBlockB, 50, kBlockB[50] == '0' ? '1' : '0'),
                absl::StatusCode::kUnauthenticated, "MAC does not verify");
  ExpectRefused(S(kKbpkD), Replace(kBlockD, 16, kBlockD[16] == '0' ? '1' : '0'),
                absl::StatusCode::kUnauthenticated, "MAC does not verify");
}

TEST(Tr31Parse, FlippedMacFails) {
  ExpectRefused(S(kKbpkB), Replace(kBlockB, kBlockB.size() - 1, '8'),
                absl::StatusCode::kUnauthenticated, "MAC does not verify");
  ExpectRefused(S(kKbpkD), Replace(kBlockD, kBlockD.size() - 1, '5'),
                absl::StatusCode::kUnauthenticated, "MAC does not verify");
}

TEST(Tr31Parse, WrongKbpkFailsTheMac) {
  // (Changing only a parity bit would not do: DES ignores those bits, so "...11AD" is the
  // same TDES key as "...11AC".)
  ExpectRefused(S("1D22BF32387C600AD97F9B97A51311AE"), kBlockB, absl::StatusCode::kUnauthenticated,
                "MAC does not verify");
  ExpectRefused(crypto::RandomSecret(32), kBlockD, absl::StatusCode::kUnauthenticated,
                "MAC does not verify");
  // A KBPK of a size the version cannot use is a caller error, not an authentication failure.
  ExpectRefused(crypto::RandomSecret(32), kBlockB, absl::StatusCode::kInvalidArgument,
                "version B needs a TDES KBPK of 16 or 24 bytes, got 32");
}

TEST(Tr31Parse, LyingLengthField) {
  ExpectRefused(S(kKbpkB), Replace(kBlockB, 4, '5'), absl::StatusCode::kInvalidArgument,
                "block length field says 105 characters but the block has 104");
  ExpectRefused(S(kKbpkD), kBlockD.substr(0, kBlockD.size() - 2),
                absl::StatusCode::kInvalidArgument,
                "block length field says 112 characters but the block has 110");
  ExpectRefused(S(kKbpkD), Replace(kBlockD, 2, 'x'), absl::StatusCode::kInvalidArgument,
                "block length field \"0x12\" is not 4 decimal digits");
}

TEST(Tr31Parse, UnknownVersion) {
  for (char v : {'A', 'C', 'E', '0', 'b'}) {
    ExpectRefused(S(kKbpkD), Replace(kBlockD, 0, v), absl::StatusCode::kInvalidArgument,
                  "unsupported key block version '");
  }
  ExpectRefused(S(kKbpkD), "D01", absl::StatusCode::kInvalidArgument,
                "shorter than the 16-character header");
}

TEST(Tr31Parse, MalformedFixedFields) {
  ExpectRefused(S(kKbpkD), Replace(kBlockD, 14, '1'), absl::StatusCode::kInvalidArgument,
                "reserved field \"10\" is not \"00\"");
  ExpectRefused(S(kKbpkD), Replace(kBlockD, 12, 'X'), absl::StatusCode::kInvalidArgument,
                "optional block count \"X0\" is not 2 decimal digits");
  ExpectRefused(S(kKbpkD), Replace(kBlockD, 7, '#'), absl::StatusCode::kInvalidArgument,
                "algorithm '#' is not alphanumeric");
}

TEST(Tr31Parse, NonHexKeyDataOrMac) {
  std::string lower(kBlockD);
  lower[20] = 'f';  // '7' -> 'f': hex, but not the upper case the wire format uses
  ExpectRefused(S(kKbpkD), lower, absl::StatusCode::kInvalidArgument,
                "encrypted key data contains a character that is not upper-case hex");
  ExpectRefused(S(kKbpkD), Replace(kBlockD, kBlockD.size() - 3, 'G'),
                absl::StatusCode::kInvalidArgument, "MAC contains a character that is not");
}

TEST(Tr31Parse, KeyLengthFieldInconsistentWithKeyData) {
  // A correctly MACed block whose payload claims 1024 key bits in 22 bytes: built by hand with
  // the derived keys, as only a broken or hostile sender would.
  const SecretBytes kbpk = S(kKbpkD);
  const std::string header = "D0112K0AD00N0000";
  KeyBlockKeys keys = DeriveKeyBlockKeys(KeyBlockVersion::kD, kbpk).value();
  SecretBytes payload = SecretBytes::CopyOf(H("0400")).Concat(crypto::RandomSecret(30));
  SecretBytes mac_input = SecretBytes::CopyOf(AsBytes(header)).Concat(payload);
  Bytes mac = crypto::Cmac(CipherFamily::kAes, keys.authentication, mac_input).value();
  Bytes ct =
      crypto::Encrypt(CipherFamily::kAes, crypto::BlockMode::kCbc, keys.encryption, mac, payload)
          .value();
  const std::string block = header + ToHex(ct) + ToHex(mac);
  ASSERT_EQ(block.size(), 112u);
  ExpectRefused(kbpk, block, absl::StatusCode::kInvalidArgument,
                "key length field (1024 bits) is inconsistent with 30 bytes of key data");

  // The same with a plausible length that does not suit algorithm 'A'.
  payload = SecretBytes::CopyOf(H("0050")).Concat(crypto::RandomSecret(30));  // 10 bytes
  mac_input = SecretBytes::CopyOf(AsBytes(header)).Concat(payload);
  mac = crypto::Cmac(CipherFamily::kAes, keys.authentication, mac_input).value();
  ct = crypto::Encrypt(CipherFamily::kAes, crypto::BlockMode::kCbc, keys.encryption, mac, payload)
           .value();
  ExpectRefused(kbpk, header + ToHex(ct) + ToHex(mac), absl::StatusCode::kInvalidArgument,
                "algorithm 'A' key must be 16, 24 or 32 bytes, got 10");
}

}  // namespace
}  // namespace rkl::keyblock
