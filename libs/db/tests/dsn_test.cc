#include "rkl/db/dsn.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace rkl::db {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(RedactDsnTest, KeyValueForm) {
  std::string r = RedactDsn("host=db.example port=5432 user=kms password=hunter2 dbname=rkl_kms");
  EXPECT_THAT(r, Not(HasSubstr("hunter2")));
  EXPECT_THAT(r, HasSubstr("password=[redacted]"));
  EXPECT_THAT(r, HasSubstr("host=db.example"));
  EXPECT_THAT(r, HasSubstr("dbname=rkl_kms"));
}

TEST(RedactDsnTest, QuotedPasswordWithSpaces) {
  std::string r = RedactDsn("host=h password='a secret value' user=u");
  EXPECT_THAT(r, Not(HasSubstr("secret")));
  EXPECT_THAT(r, HasSubstr("user=u"));
}

TEST(RedactDsnTest, UriForm) {
  std::string r = RedactDsn("postgresql://kms:hunter2@db.example:5433/rkl_kms?sslmode=require");
  EXPECT_THAT(r, Not(HasSubstr("hunter2")));
  EXPECT_THAT(r, HasSubstr("port=5433"));
  EXPECT_THAT(r, HasSubstr("sslmode=require"));
}

TEST(RedactDsnTest, UnparsableDsnIsNotEchoed) {
  EXPECT_EQ(RedactDsn("host=h password='unterminated"), "[unparsable DSN]");
}

TEST(DescribeDsnTargetTest, NamesServerNotSecrets) {
  EXPECT_EQ(DescribeDsnTarget("host=h port=1 user=u password=p dbname=d sslmode=disable"),
            "host=h port=1 dbname=d user=u");
}

TEST(ScrubPasswordTest, RemovesEveryOccurrence) {
  EXPECT_EQ(ScrubPassword("x hunter2 y hunter2", "password=hunter2 host=h"),
            "x [redacted] y [redacted]");
  EXPECT_EQ(ScrubPassword("nothing here", "host=h"), "nothing here");
}

}  // namespace
}  // namespace rkl::db
