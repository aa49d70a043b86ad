#pragma once
// Known-answer self-tests, run once at start-up (PROTOCOL §9): every algorithm the HSM uses
// is checked against a published or independently computed answer before any key is
// touched. If one fails the daemon reports NOT_SERVING and every cryptographic command
// returns FAILED_PRECONDITION "HSM self-test failed".
//
// Covered: AES-CMAC (RFC 4493), TDES-CMAC (SP 800-38B three-key example and a two-key
// answer), AES-KWP wrap and unwrap (RFC 5649), KCVs (AES and TDES), TR-31 versions B and D
// (TR-31:2018 A.7) and the rkl TMK profile round trip, AES-256-GCM seal and open (GCM spec
// test cases 14 and 16, plus a tampered tag), the §7 KDF (AES-128, AES-256, TDES), the §7
// auth tokens, HMAC-SHA256 (RFC 4231) and an RSA-OAEP pairwise round trip.
// Thread-safe; pure apart from the RSA key it generates.

#include <string>
#include <vector>

namespace rkl::hsm {

struct SelfTestResult {
  bool passed = true;
  std::vector<std::string> failures;  // names of the failed tests; never key material
};

// `force_failure` is the test-only switch (config `testing.fail_self_test`): it corrupts one
// expected answer so the real failure path runs.
SelfTestResult RunSelfTests(bool force_failure = false);

}  // namespace rkl::hsm
