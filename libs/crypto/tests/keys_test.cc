// PrivateKey import rules shared by both supported key types.

#include "rkl/crypto/keys.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <functional>
#include <string>

#include "rkl/crypto/ecdsa.h"
#include "rkl/crypto/rsa.h"

namespace rkl::crypto {
namespace {

struct KeyKind {
  const char* name;
  std::function<absl::StatusOr<PrivateKey>()> generate;
};

class PrivateKeyImportTest : public ::testing::TestWithParam<KeyKind> {};

TEST_P(PrivateKeyImportTest, NeedsPrivateComponent) {
  auto key = GetParam().generate();
  ASSERT_TRUE(key.ok());
  EvpPkeyPtr pub(EVP_PKEY_dup(key->GetPublicKey().evp_pkey()));
  ASSERT_NE(pub, nullptr);
  EXPECT_EQ(PrivateKey::FromEvpPkey(std::move(pub)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Keys, PrivateKeyImportTest,
                         ::testing::Values(KeyKind{"EcP256", [] { return GenerateEcP256Key(); }},
                                           KeyKind{"Rsa2048", [] { return GenerateRsaKey(2048); }}),
                         [](const ::testing::TestParamInfo<KeyKind>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace rkl::crypto
