#include "rkl/crypto/secret_bytes.h"

#include <gtest/gtest.h>

#include <type_traits>

namespace rkl::crypto {
namespace {

TEST(SecretBytes, CopyOfHoldsTheBytes) {
  const uint8_t raw[] = {1, 2, 3, 4};
  SecretBytes s = SecretBytes::CopyOf(raw);
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s.RevealSecret()[3], 4);
}

TEST(SecretBytes, EqualityComparesContentAndLength) {
  const uint8_t a[] = {1, 2, 3, 4}, b[] = {1, 2, 3, 5}, c[] = {1, 2, 3};
  EXPECT_TRUE(SecretBytes::CopyOf(a) == SecretBytes::CopyOf(a));
  EXPECT_FALSE(SecretBytes::CopyOf(a) == SecretBytes::CopyOf(b));
  EXPECT_FALSE(SecretBytes::CopyOf(a) == SecretBytes::CopyOf(c));
}

TEST(SecretBytes, MovedFromIsEmpty) {
  const uint8_t a[] = {9, 9};
  SecretBytes s = SecretBytes::CopyOf(a);
  SecretBytes t = std::move(s);
  EXPECT_TRUE(s.empty());  // NOLINT(bugprone-use-after-move): the guarantee under test
  EXPECT_EQ(t.size(), 2u);
}

TEST(SecretBytes, ConcatAndSub) {
  const uint8_t a[] = {1, 2}, b[] = {3, 4, 5};
  SecretBytes ab = SecretBytes::CopyOf(a).Concat(SecretBytes::CopyOf(b));
  ASSERT_EQ(ab.size(), 5u);
  SecretBytes mid = ab.Sub(1, 3);
  const uint8_t want[] = {2, 3, 4};
  EXPECT_TRUE(mid == SecretBytes::CopyOf(want));
  EXPECT_TRUE(ab.Sub(7, 1).empty());
}

// No implicit way to reach the bytes: not convertible to a span or vector.
static_assert(!std::is_convertible_v<SecretBytes, std::span<const uint8_t>>);
static_assert(!std::is_convertible_v<SecretBytes, std::vector<uint8_t>>);

}  // namespace
}  // namespace rkl::crypto
