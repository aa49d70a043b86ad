// Pure tests of migration validation and of the code rkl_embed_migrations generates.
#include "rkl/db/migration.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "rkl/db/test_migrations/migrations.h"

namespace rkl::db {
namespace {

using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(EmbeddedMigrationsTest, AllFilesInVersionOrderWithExactBytes) {
  std::span<const Migration> m = test_migrations::Migrations();
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].version, 1);
  EXPECT_EQ(m[0].name, "create_widgets");
  EXPECT_EQ(m[1].version, 2);
  EXPECT_EQ(m[1].name, "create_parts");
  EXPECT_EQ(m[2].version, 10);
  EXPECT_EQ(m[2].name, "counters");
  const std::string dir = RKL_DB_TEST_MIGRATIONS_DIR;
  EXPECT_EQ(m[0].sql, ReadFile(dir + "/001_create_widgets.sql"));
  EXPECT_EQ(m[1].sql, ReadFile(dir + "/002_create_parts.sql"));
  EXPECT_EQ(m[2].sql, ReadFile(dir + "/010_counters.sql"));
  EXPECT_TRUE(ValidateMigrations(m).ok());
}

TEST(ValidateMigrationsTest, AcceptsEmptyAndGaps) {
  EXPECT_TRUE(ValidateMigrations({}).ok());
  std::vector<Migration> m = {{1, "a", ""}, {5, "b", ""}};
  EXPECT_TRUE(ValidateMigrations(m).ok());
}

TEST(ValidateMigrationsTest, RejectsDuplicateNamingVersion) {
  std::vector<Migration> m = {{1, "a", ""}, {2, "b", ""}, {2, "c", ""}};
  absl::Status s = ValidateMigrations(m);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("duplicate migration version 2"));
}

TEST(ValidateMigrationsTest, RejectsDecreasingNamingVersion) {
  std::vector<Migration> m = {{1, "a", ""}, {3, "b", ""}, {2, "c", ""}};
  absl::Status s = ValidateMigrations(m);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("2 (c) follows 3 (b)"));
}

TEST(ValidateMigrationsTest, RejectsNonPositiveVersion) {
  std::vector<Migration> m = {{0, "zero", ""}};
  EXPECT_EQ(ValidateMigrations(m).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(MigrationChecksumTest, IsSha256Hex) {
  EXPECT_EQ(MigrationChecksum("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_NE(MigrationChecksum("abc"), MigrationChecksum("abc "));
}

}  // namespace
}  // namespace rkl::db
