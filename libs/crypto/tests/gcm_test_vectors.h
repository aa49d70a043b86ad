#pragma once
// The McGrew–Viega / NIST GCM test case 16 (AES-256, 60-byte plaintext, 20-byte AAD), shared
// by aead_test.cc (the primitive) and seal_test.cc (the same bytes as a stored sealed record).

#include <string_view>

namespace rkl::crypto::gcm_test_case_16 {

constexpr std::string_view kKey =
    "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
constexpr std::string_view kNonce = "cafebabefacedbaddecaf888";
constexpr std::string_view kPlain =
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
constexpr std::string_view kAad = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
constexpr std::string_view kCipher =
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
constexpr std::string_view kTag = "76fc6ece0f4e1768cddf8853bb2d551b";

}  // namespace rkl::crypto::gcm_test_case_16
