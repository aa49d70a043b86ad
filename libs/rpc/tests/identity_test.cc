#include "rkl/rpc/identity.h"

#include <gtest/gtest.h>

namespace rkl::rpc {
namespace {

TEST(IsAdmin, RequiresPrefixAndName) {
  EXPECT_TRUE(IsAdmin("admin:alice"));
  EXPECT_FALSE(IsAdmin("admin:"));
  EXPECT_FALSE(IsAdmin("admin"));
  EXPECT_FALSE(IsAdmin("mtms"));
  EXPECT_FALSE(IsAdmin("xadmin:alice"));
  EXPECT_FALSE(IsAdmin(""));
}

TEST(Authorizer, ExactNamesAndAdminWildcard) {
  Authorizer authz;
  authz.Allow("RewrapTransportKey", {"mtms", "admin:*"}).Allow("ImportKey", {"admin:*"});

  EXPECT_TRUE(authz.Check("RewrapTransportKey", "mtms").ok());
  EXPECT_TRUE(authz.Check("RewrapTransportKey", "admin:bob").ok());
  EXPECT_TRUE(authz.Check("ImportKey", "admin:alice").ok());

  absl::Status denied = authz.Check("ImportKey", "mtms");
  EXPECT_EQ(denied.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.message(), "caller 'mtms' may not call ImportKey");

  EXPECT_EQ(authz.Check("RewrapTransportKey", "kms").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(authz.Check("RewrapTransportKey", "admin:").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(authz.Check("RewrapTransportKey", "mtms2").code(), absl::StatusCode::kPermissionDenied);
}

TEST(Authorizer, DefaultDenyAndNoAnonymousCallers) {
  Authorizer authz;
  authz.Allow("Echo", {"mtms"});
  EXPECT_EQ(authz.Check("Unlisted", "mtms").code(), absl::StatusCode::kPermissionDenied);
  absl::Status anonymous = authz.Check("Echo", "");
  EXPECT_EQ(anonymous.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(anonymous.message(), "caller '(unauthenticated)' may not call Echo");
}

TEST(Authorizer, RefusesMatchEverythingPatterns) {
  Authorizer authz;
  EXPECT_THROW(authz.Allow("Echo", {"*"}), std::invalid_argument);
  EXPECT_THROW(authz.Allow("Echo", {""}), std::invalid_argument);
}

}  // namespace
}  // namespace rkl::rpc
