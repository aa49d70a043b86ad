#include "lmk.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "key_barrier.h"
#include "rkl/crypto/random.h"
#include "rkl/testing/temp_dir.h"

namespace rkl::hsm {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Each test writes its LMK file as "lmk" in a fresh directory.
using LmkFileTest = rkl::testing::TempDirTest;

constexpr char kHex[] = "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F";

TEST_F(LmkFileTest, ReadsHexWithNewline) {
  auto lmk = LoadLmkFile(WriteFile("lmk", std::string(kHex) + "\n", 0600));
  ASSERT_TRUE(lmk.ok()) << lmk.status();
  EXPECT_EQ(lmk->size(), 32u);
  EXPECT_EQ(lmk->RevealSecret()[31], 0x1F);
}

TEST_F(LmkFileTest, ReadsRawBytes) {
  std::string raw(32, '\0');
  for (int i = 0; i < 32; ++i) raw[i] = static_cast<char>(i);
  auto lmk = LoadLmkFile(WriteFile("lmk", raw, 0400));
  ASSERT_TRUE(lmk.ok()) << lmk.status();
  auto hex = LoadLmkFile(WriteFile("lmk", kHex, 0600));
  EXPECT_TRUE(*lmk == *hex);
}

TEST_F(LmkFileTest, RefusesAFileOthersCanRead) {
  auto lmk = LoadLmkFile(WriteFile("lmk", kHex, 0644));
  ASSERT_FALSE(lmk.ok());
  EXPECT_EQ(lmk.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(lmk.status().message(), HasSubstr("0644"));
  EXPECT_THAT(lmk.status().message(), HasSubstr("chmod 600"));
  EXPECT_EQ(LoadLmkFile(WriteFile("lmk", kHex, 0640)).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(LmkFileTest, RefusesWrongContentWithoutEchoingIt) {
  auto short_file = LoadLmkFile(WriteFile("lmk", "00112233", 0600));
  EXPECT_EQ(short_file.status().code(), absl::StatusCode::kFailedPrecondition);
  std::string not_hex(64, 'Z');
  auto bad = LoadLmkFile(WriteFile("lmk", not_hex, 0600));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(bad.status().message(), Not(HasSubstr("ZZZZ")));
  EXPECT_EQ(LoadLmkFile(dir_ + "/missing").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(UnsealedKeyCacheTest, ServesOnlyTheExactRecordItOpened) {
  UnsealedKeyCache cache(2);
  auto key = crypto::RandomSecret(16);
  Bytes aad = {1}, nonce = {2}, sealed = {3};
  cache.Put(1, aad, nonce, sealed, key);
  ASSERT_TRUE(cache.Get(1, aad, nonce, sealed).has_value());
  EXPECT_TRUE(*cache.Get(1, aad, nonce, sealed) == key);
  // Any difference in what is stored makes it a miss (and drops the entry).
  EXPECT_FALSE(cache.Get(1, aad, nonce, Bytes{4}).has_value());
  EXPECT_FALSE(cache.Get(1, aad, nonce, sealed).has_value());
}

TEST(UnsealedKeyCacheTest, EvictsLeastRecentlyUsedAndCanBeDisabled) {
  UnsealedKeyCache cache(2);
  auto key = crypto::RandomSecret(16);
  Bytes b = {1};
  cache.Put(1, b, b, b, key);
  cache.Put(2, b, b, b, key);
  ASSERT_TRUE(cache.Get(1, b, b, b).has_value());  // 1 is now the most recent
  cache.Put(3, b, b, b, key);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_FALSE(cache.Get(2, b, b, b).has_value());
  EXPECT_TRUE(cache.Get(1, b, b, b).has_value());
  cache.Erase(1);
  EXPECT_FALSE(cache.Get(1, b, b, b).has_value());

  UnsealedKeyCache off(0);
  off.Put(1, b, b, b, key);
  EXPECT_EQ(off.size(), 0u);
}

TEST(KeyRecordAadTest, EveryFieldChangesTheAad) {
  Bytes base = KeyRecordAad(7, KeyType::kTek, 0x11, KeyUsage::kExportKek, "SN-1", 1000);
  EXPECT_NE(base, KeyRecordAad(8, KeyType::kTek, 0x11, KeyUsage::kExportKek, "SN-1", 1000));
  EXPECT_NE(base, KeyRecordAad(7, KeyType::kAuk, 0x11, KeyUsage::kExportKek, "SN-1", 1000));
  EXPECT_NE(base, KeyRecordAad(7, KeyType::kTek, 0x13, KeyUsage::kExportKek, "SN-1", 1000));
  EXPECT_NE(base, KeyRecordAad(7, KeyType::kTek, 0x11, KeyUsage::kTerminalAuth, "SN-1", 1000));
  EXPECT_NE(base, KeyRecordAad(7, KeyType::kTek, 0x11, KeyUsage::kExportKek, "SN-2", 1000));
  EXPECT_NE(base, KeyRecordAad(7, KeyType::kTek, 0x11, KeyUsage::kExportKek, "SN-1", 1001));
}

}  // namespace
}  // namespace rkl::hsm
