#include "rkl/db/errors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <pqxx/except>

namespace rkl::db {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(ClassifyExceptionTest, UniqueViolationIsAlreadyExistsWithoutValues) {
  pqxx::unique_violation e(
      "ERROR:  duplicate key value violates unique constraint \"widgets_label_key\"\n"
      "DETAIL:  Key (label)=(secret-value) already exists.\n",
      "INSERT INTO widgets VALUES ($1)", "23505");
  DbError err = ClassifyException(e);
  EXPECT_EQ(err.status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(err.status.message(), HasSubstr("23505"));
  EXPECT_THAT(err.status.message(), HasSubstr("widgets_label_key"));
  EXPECT_THAT(err.status.message(), Not(HasSubstr("secret-value")));
  EXPECT_FALSE(err.retryable);
}

TEST(ClassifyExceptionTest, IntegrityViolationsAreFailedPrecondition) {
  pqxx::foreign_key_violation fk(
      "ERROR:  insert or update on table \"parts\" violates foreign key constraint "
      "\"parts_widget_id_fkey\"\n",
      "", "23503");
  EXPECT_EQ(ClassifyException(fk).status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(ClassifyException(fk).status.message(), HasSubstr("parts_widget_id_fkey"));
  pqxx::check_violation check("ERROR:  violates check constraint \"w_check\"", "", "23514");
  EXPECT_EQ(ClassifyException(check).status.code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ClassifyExceptionTest, ConflictsAreRetryableAborted) {
  DbError ser = ClassifyException(pqxx::serialization_failure("could not serialize"));
  EXPECT_EQ(ser.status.code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(ser.retryable);
  EXPECT_FALSE(ser.connection_lost);
  DbError dl = ClassifyException(pqxx::deadlock_detected("deadlock"));
  EXPECT_EQ(dl.status.code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(dl.retryable);
}

TEST(ClassifyExceptionTest, LostConnectionIsUnavailableAndDropsTheConnection) {
  DbError err = ClassifyException(pqxx::broken_connection("server closed the connection"));
  EXPECT_EQ(err.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(err.retryable);
  EXPECT_TRUE(err.connection_lost);
}

TEST(ClassifyExceptionTest, LostDuringCommitIsUnknownAndNotRetried) {
  DbError err = ClassifyException(pqxx::in_doubt_error("lost during commit"));
  EXPECT_EQ(err.status.code(), absl::StatusCode::kUnknown);
  EXPECT_FALSE(err.retryable);
  EXPECT_TRUE(err.connection_lost);
}

TEST(ClassifyExceptionTest, OtherSqlErrorsAreInternalWithSqlStateOnly) {
  pqxx::data_exception e("ERROR:  invalid input syntax for type integer: \"4111111111111111\"",
                         "SELECT $1::int", "22P02");
  DbError err = ClassifyException(e);
  EXPECT_EQ(err.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(err.status.message(), HasSubstr("22P02"));
  EXPECT_THAT(err.status.message(), Not(HasSubstr("4111")));
}

TEST(ClassifyExceptionTest, ServerShutdownByStateIsUnavailable) {
  pqxx::sql_error e("ERROR:  terminating connection due to administrator command", "", "57P01");
  DbError err = ClassifyException(e);
  EXPECT_EQ(err.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(err.connection_lost);
}

TEST(ClassifyExceptionTest, StatementTimeoutIsDeadlineExceeded) {
  pqxx::sql_error e("ERROR:  canceling statement due to statement timeout", "", "57014");
  EXPECT_EQ(ClassifyException(e).status.code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(ClassifyExceptionTest, ConversionErrorDoesNotQuoteTheValue) {
  pqxx::conversion_error e("Could not convert string to integer: '4111111111111111'");
  DbError err = ClassifyException(e);
  EXPECT_EQ(err.status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(err.status.message(), Not(HasSubstr("4111")));
}

TEST(ClassifyExceptionTest, UnknownExceptionIsInternal) {
  EXPECT_EQ(ClassifyException(std::runtime_error("boom")).status.code(),
            absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace rkl::db
